"""The arguments of the ``layerwise`` command: one sub-parser per command, a ``help=``
on every flag, and each command's function as its default."""

from __future__ import annotations

import argparse

from layerwise.cli.commands import (
    cmd_advise,
    cmd_check,
    cmd_data_fetch,
    cmd_finetune,
    cmd_lab,
    cmd_pretrain,
    cmd_probe_lr,
    cmd_train,
)
from layerwise.cli.tools import (
    cmd_encode,
    cmd_evaluate,
    cmd_export,
    cmd_models,
    cmd_predict,
    cmd_reconstruct,
    cmd_sample,
    cmd_show,
)


def _at_least(low: int):
    """An argparse type: an int of at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _device(text: str) -> str:
    """An argparse type: a device spec (auto, cpu, cuda, cuda:N)."""
    from layerwise._checks import check_device

    try:
        return check_device(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}") from None


def _size(text: str) -> str:
    """An argparse type: a size such as 600M or 2G (kept as written, for the config)."""
    from layerwise._checks import parse_size

    try:
        parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layerwise", description="Layer-wise pretraining and fine-tuning of deep nets.")
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of any error (also: LAYERWISE_DEBUG=1)"
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="pretrain, save the pretrained net, fine-tune, evaluate")
    t.add_argument("recipe", nargs="?", help="TOML recipe, e.g. recipes/quick-mnist.toml")
    t.add_argument(
        "--resume", metavar="RUN_FOLDER", help="continue an interrupted run (e.g. runs/NAME) from its last checkpoint"
    )
    t.add_argument("--name", help="run name (default: the recipe's name, else its file stem)")
    t.add_argument("--runs-dir", default="runs", help="folder that holds run folders (default: runs)")
    t.add_argument("--threads", type=_at_least(1), help="torch CPU threads (default: the recipe's, else min(2, cores))")
    t.add_argument(
        "--device",
        type=_device,
        help="where to train: auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: the recipe's, else auto)",
    )
    t.add_argument(
        "--max-memory",
        metavar="SIZE",
        type=_size,
        help="stream training inputs larger than SIZE (e.g. 600M) from disk instead of loading them",
    )
    t.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also write TensorBoard events to DIR (needs the tensorboard "
        'extra); the same as [log] tensorboard = "DIR"',
    )
    t.add_argument("--quiet", action="store_true", help="print only the final summary")
    t.add_argument("--strict", action="store_true", help="treat the advisor's warnings as errors")
    t.add_argument(
        "--workers",
        type=_at_least(1),
        help="train on N worker processes on this machine, averaging parameters (torch.distributed, gloo); "
        "with --resume, the default is the group size that wrote the checkpoint",
    )
    t.add_argument(
        "--max-restarts",
        type=_at_least(0),
        default=0,
        help="with --workers: restart the group this many times when a worker dies, from the last checkpoint",
    )
    t.add_argument(
        "--allow-resize",
        action="store_true",
        help="with --resume: accept another --workers than the checkpoint's (the result is not bitwise)",
    )
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("check", help="check a recipe against the guide's rules of thumb")
    c.add_argument("recipe", help="TOML recipe")
    c.add_argument("--workers", type=_at_least(1), default=1, help="number of workers the recipe will run on")
    c.add_argument("--strict", action="store_true", help="exit with status 2 on warnings too")
    c.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    c.add_argument(
        "--findings",
        metavar="FILE",
        help="a lab's findings.json (`layerwise lab` writes OUT/findings.json): its measured verdicts "
        "beside the guide's rules (default: the MNIST lab published with layerwise)",
    )
    c.set_defaults(func=cmd_check)

    pr = sub.add_parser("probe-lr", help="measure the largest stable learning rate on the recipe's data")
    pr.add_argument("recipe", help="TOML recipe")
    pr.add_argument("--low", type=float, default=1e-4, help="lowest rate of the grid (default 1e-4)")
    pr.add_argument("--high", type=float, default=10.0, help="highest rate of the grid (default 10)")
    pr.add_argument("--points", type=_at_least(2), default=11, help="rates in the geometric grid (default 11)")
    pr.add_argument("--subset", type=_at_least(1), default=5000, help="training samples used (default 5000)")
    pr.add_argument("--epochs", type=_at_least(1), default=2, help="epochs per trial (default 2)")
    pr.add_argument(
        "--workers",
        type=_at_least(1),
        default=1,
        help="probe N averaged worker processes on this machine, as `train --workers N` trains",
    )
    pr.add_argument("--out", default="probe-lr", help="path stem of the PNG plot and JSON results (default probe-lr)")
    pr.add_argument("--threads", type=_at_least(1), help="torch CPU threads")
    pr.add_argument(
        "--device",
        type=_device,
        help="where to train: auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: the recipe's, else auto)",
    )
    pr.add_argument("--quiet", action="store_true", help="print only the summary")
    pr.set_defaults(func=cmd_probe_lr)

    a = sub.add_parser("advise", help="suggest a net and hyperparameters, with reasons")
    a.add_argument("--inputs", type=_at_least(2), required=True, help="input features, e.g. 784")
    a.add_argument("--labels", type=_at_least(2), required=True, help="number of labels, e.g. 10")
    a.add_argument("--workers", type=_at_least(1), default=1, help="workers that will average parameters")
    a.add_argument("--samples", type=_at_least(1), help="training samples (for the batch size)")
    a.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    a.add_argument(
        "--findings",
        metavar="FILE",
        help="a lab's findings.json (`layerwise lab` writes OUT/findings.json): its measured verdicts "
        "beside the guide's rules (default: the MNIST lab published with layerwise)",
    )
    a.set_defaults(func=cmd_advise)

    pt = sub.add_parser("pretrain", help="staged pretraining: feed data, pause, resume when more arrives")
    pt.add_argument("recipe", nargs="?", help="recipe for the first stage ([model], [pretrain])")
    pt.add_argument(
        "--data",
        help="the data of this stage: a .npz with an array x, a .npy, or a folder of shards "
        "(a folder again: only the shards no earlier stage has seen)",
    )
    pt.add_argument("--out", help="pretraining folder to create (first stage)")
    pt.add_argument(
        "--resume",
        metavar="FOLDER",
        help="go on in a pretraining folder: finish an interrupted stage, or a new stage with --data",
    )
    pt.add_argument("--epochs", type=_at_least(0), help="epochs per layer for this stage (default: the recipe's)")
    pt.add_argument("--threads", type=_at_least(1), help="torch CPU threads")
    pt.add_argument(
        "--device",
        type=_device,
        help="where to train: auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: the recipe's, else auto)",
    )
    pt.add_argument(
        "--max-memory",
        metavar="SIZE",
        type=_size,
        help="stream stage data larger than SIZE (e.g. 600M) from disk instead of loading it",
    )
    pt.add_argument("--quiet", action="store_true", help="print only the final summary")
    pt.set_defaults(func=cmd_pretrain)

    ft = sub.add_parser("finetune", help="fine-tune a copy of a saved pretrained net into a new artifact")
    ft.add_argument("pretrained", help="a pretrained artifact folder, e.g. runs/NAME/pretrained")
    ft.add_argument("--recipe", required=True, help="recipe whose [data] and [finetune] are used")
    ft.add_argument("--out", required=True, help="new artifact folder (must not exist)")
    ft.add_argument("--threads", type=_at_least(1), help="torch CPU threads")
    ft.add_argument(
        "--device",
        type=_device,
        help="where to train: auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: the recipe's, else auto)",
    )
    ft.add_argument("--quiet", action="store_true", help="print only the final summary")
    ft.set_defaults(func=cmd_finetune)

    mo = sub.add_parser("models", help="list the saved nets under a folder, with their lineage")
    mo.add_argument("dir", nargs="?", default="runs", help="folder to search (default: runs)")
    mo.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    mo.set_defaults(func=cmd_models)

    e = sub.add_parser("evaluate", help="accuracy of a finetuned net on its test data or a .npz file")
    e.add_argument("model", help="a finetuned artifact folder, e.g. runs/NAME/finetuned")
    e.add_argument(
        "--data", help=".npz with x and y, or a folder of .npz shards (default: the test split of the run's data)"
    )
    e.add_argument("--threads", type=_at_least(1), help="torch CPU threads")
    e.add_argument("--device", type=_device, default="auto", help="auto (default), cpu, cuda or cuda:N")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="labels and probabilities for the inputs in a .npz file")
    r.add_argument("model", help="a finetuned artifact folder")
    r.add_argument("data", help=".npz with an array x, a .npy, or a folder of shards")
    r.add_argument("--out", help="write labels and probabilities to this .npz instead of printing")
    r.add_argument("--force", action="store_true", help="replace --out if it exists")
    r.add_argument("--threads", type=_at_least(1), help="torch CPU threads")
    r.add_argument("--device", type=_device, default="auto", help="auto (default), cpu, cuda or cuda:N")
    r.set_defaults(func=cmd_predict)

    x = sub.add_parser("export", help="a saved net as ONNX or TorchScript (pretrained nets as encoders)")
    x.add_argument(
        "model", help="an artifact folder: finetuned (inputs to logits) or pretrained (inputs to top features)"
    )
    x.add_argument(
        "--format", choices=("onnx", "torchscript"), required=True, help="onnx (needs the export extra) or torchscript"
    )
    x.add_argument("--out", required=True, help="the file to write, e.g. model.onnx")
    x.add_argument("--force", action="store_true", help="replace --out if it exists")
    x.set_defaults(func=cmd_export)

    en = sub.add_parser("encode", help="features of a saved net's hidden layer for the inputs of a file")
    en.add_argument("model", help="an artifact folder, pretrained or finetuned")
    en.add_argument("data", help=".npz with an array x (and y, kept), a .npy, or a folder of shards")
    en.add_argument("--layer", type=_at_least(1), help="hidden layer, 1 = the first (default: the top)")
    en.add_argument("--out", required=True, help="the .npz to write (x: features, y: the labels if the data had them)")

    rc = sub.add_parser("reconstruct", help="inputs up through a pretrained stack and down again")
    rc.add_argument("model", help="a pretrained artifact folder")
    rc.add_argument("data", help=".npz with an array x, a .npy, or a folder of shards")
    rc.add_argument("--out", required=True, help="the .npz to write (x: the reconstructions)")
    rc.add_argument("--png", help="also draw the first inputs over their reconstructions (square images)")

    sm = sub.add_parser("sample", help="samples of a pretrained stack of RBMs (Gibbs sampling in the top RBM)")
    sm.add_argument("model", help="a pretrained artifact folder")
    sm.add_argument("-n", type=_at_least(1), default=64, help="samples (default 64)")
    sm.add_argument("--steps", type=_at_least(1), default=1000, help="Gibbs steps in the top RBM (default 1000)")
    sm.add_argument("--label", type=int, help="clamp a label (needs a top RBM trained with the labels)")
    sm.add_argument("--seed", type=int, default=0, help="seed of the chains (default 0)")
    sm.add_argument("--png", help="draw the samples (square images)")
    sm.add_argument("--out", help="also write them to this .npz (x)")
    sh = sub.add_parser("show", help="pictures of a saved net: filters, reconstructions, samples")
    sh.add_argument("model", help="an artifact folder (a finetuned net is drawn with its run's pretrained stack)")
    sh.add_argument("--out", required=True, help="folder for the PNGs")
    sh.add_argument("--data", help="inputs to reconstruct (default: the test data the net was trained with)")
    sh.add_argument("--steps", type=_at_least(1), default=1000, help="Gibbs steps of the samples (default 1000)")
    for cmd, fn in ((en, cmd_encode), (rc, cmd_reconstruct), (sm, cmd_sample), (sh, cmd_show)):
        if cmd is not sh:
            cmd.add_argument("--force", action="store_true", help="replace --out if it exists")
        cmd.add_argument("--threads", type=_at_least(1), help="torch CPU threads")
        cmd.add_argument("--device", type=_device, default="auto", help="auto (default), cpu, cuda or cuda:N")
        cmd.set_defaults(func=fn)

    lb = sub.add_parser("lab", help="measure the guide's tricks: experiments with verdicts, plots and a page")
    lb.add_argument(
        "experiments",
        nargs="*",
        metavar="EXPERIMENT",
        help="experiments to run (default: all): averaging, rounds, widths, bottleneck, depth, "
        "pretraining, blend, stages, passes, batch",
    )
    lb.add_argument(
        "--budget",
        choices=("tiny", "quick", "full"),
        default="quick",
        help="quick: minutes on 2 cores, on subsets (default); full: the published numbers",
    )
    lb.add_argument("--data", help="your training data (.npz with x and y) instead of MNIST; needs --test")
    lb.add_argument("--test", help="your test data (.npz with x and y)")
    lb.add_argument(
        "--out", default="lab", help="folder for the cache, the JSON, the plots and TRICKS.md (default lab)"
    )
    lb.add_argument("--threads", type=_at_least(1), help="torch CPU threads")
    lb.add_argument(
        "--publish", metavar="DOCS", help="also copy the page into DOCS/TRICKS.md, its JSON and plots into DOCS/lab/"
    )
    lb.add_argument("--quiet", action="store_true", help="print only where the page is")
    lb.set_defaults(func=cmd_lab)

    d = sub.add_parser("data", help="data sets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download a data set into the user cache")
    f.add_argument("dataset", help="mnist")
    f.set_defaults(func=cmd_data_fetch)
    return p
