"""The ``layerwise`` command. Thin: parses arguments, calls the library, prints.

    layerwise train recipes/quick-mnist.toml          pretrain, back up, fine-tune, test
    layerwise evaluate runs/quick-mnist/finetuned     test accuracy of a saved classifier
    layerwise predict runs/quick-mnist/finetuned x.npz --out predictions.npz
    layerwise data fetch mnist                        download MNIST into the user cache
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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


def _say(line: str) -> None:
    """Print a progress line at once (piped output is block-buffered otherwise)."""
    print(line, flush=True)


def _err(msg: str) -> int:
    print(f"layerwise: error: {msg}", file=sys.stderr)
    return 2


def cmd_train(args) -> int:
    from layerwise import config, jobs, runtime
    from layerwise.distributed import run_worker, under_torchrun
    from layerwise.runs import read_config

    echo = None if args.quiet else _say
    bars = not args.quiet and sys.stderr.isatty()
    if args.resume:
        if args.recipe or args.name:
            return _err("--resume takes the run folder alone: its config.toml is the recipe")
        runtime.apply(args.threads, read_config(args.resume).threads)
        _print_result(jobs.resume(args.resume, progress=bars, echo=echo))
        return 0
    if not args.recipe:
        return _err("train needs a RECIPE (or --resume RUN_FOLDER)")
    cfg = config.load(args.recipe)
    if args.name:
        cfg.name = args.name
    if args.threads:
        cfg.threads = args.threads  # recorded in the run's config.toml
    if under_torchrun():  # one worker of a distributed run (torchrun, or --workers)
        runtime.apply(args.threads, cfg.threads, local_workers=runtime.local_workers())
        run_worker(lambda: jobs.worker_main(cfg, args.runs_dir, echo=echo),
                   timeout_minutes=cfg.distributed.timeout_minutes, on_result=_print_result)
    if not _advise_or_stop(cfg, args.strict, args.quiet, workers=args.workers):
        return 2
    if args.workers > 1:
        result = jobs.train_workers(cfg, args.workers, runs_dir=args.runs_dir, max_restarts=args.max_restarts, echo=echo)
        if echo is not None:
            return 0  # rank 0's own summary came through echo
    else:
        runtime.apply(args.threads, cfg.threads)
        result = jobs.train(cfg, runs_dir=args.runs_dir, progress=bars, echo=echo)
    _print_result(result)
    return 0


def _print_result(result) -> None:
    print(f"pretraining {result.seconds_pretrain:.1f} s, fine-tuning {result.seconds_finetune:.1f} s")
    if result.validation_accuracy is not None:
        print(f"validation accuracy: {100 * result.validation_accuracy:.2f}%")
    if result.test_accuracy is not None:
        print(f"test accuracy: {100 * result.test_accuracy:.2f}%")
    else:
        print("test accuracy: n/a (the recipe names no test data)")
    print(f"run folder: {result.run_dir}", flush=True)


def _advise_or_stop(cfg, strict: bool, quiet: bool, workers: int = 1) -> bool:
    """Show the advisor's findings; False (stop before any work) on an error, or on a
    warning with --strict."""
    from layerwise.advice import format_findings, recipe_findings

    findings, _ = recipe_findings(cfg, workers=workers)
    blocking = [f for f in findings if f.severity == "error" or (strict and f.severity == "warning")]
    if findings and (blocking or not quiet):
        print(format_findings(findings), file=sys.stderr if blocking else sys.stdout, flush=True)
    if blocking:
        why = "errors" if any(f.severity == "error" for f in blocking) else "warnings (--strict)"
        _err(f"the recipe has {why}; nothing was run")
        return False
    return True


def cmd_check(args) -> int:
    import json

    from layerwise import config
    from layerwise.advice import format_findings, recipe_findings

    cfg = config.load(args.recipe)
    findings, inspected = recipe_findings(cfg, workers=args.workers)
    if args.format == "json":
        print(json.dumps({"recipe": args.recipe, "data_inspected": inspected,
                          "findings": [f.to_dict() for f in findings]}, indent=2))
    else:
        print(format_findings(findings))
        if not inspected:
            print("note: the data was not inspected (not downloaded yet, or unreadable); data rules were skipped")
    bad = [f for f in findings if f.severity == "error" or (args.strict and f.severity == "warning")]
    return 2 if bad else 0


def cmd_probe_lr(args) -> int:
    from layerwise import config, jobs, runtime
    from layerwise.distributed import run_worker, under_torchrun
    from layerwise.probe import geometric_grid

    cfg = config.load(args.recipe)
    grid = geometric_grid(args.low, args.high, args.points)
    echo = None if args.quiet else _say
    trial = {"grid": grid, "subset": args.subset, "epochs": args.epochs}
    if under_torchrun():  # one worker of `probe-lr --workers N`
        runtime.apply(args.threads, cfg.threads, local_workers=runtime.local_workers())
        run_worker(lambda: jobs.probe(cfg, **trial, echo=echo, in_group=True),
                   timeout_minutes=cfg.distributed.timeout_minutes, on_result=lambda res: _print_probe(res, args))
    if args.workers > 1:
        jobs.probe_workers(args.recipe, args.workers, low=args.low, high=args.high, points=args.points,
                           subset=args.subset, epochs=args.epochs, out=args.out, threads=args.threads,
                           quiet=args.quiet, echo=_say)
        return 0
    runtime.apply(args.threads, cfg.threads)
    _print_probe(jobs.probe(cfg, **trial, echo=echo), args)
    return 0


def _print_probe(res: dict, args) -> None:
    from layerwise.probe import write_results

    if res["workers"] > 1:
        print(f"{res['workers']} workers, averaging every {res['averaging_frequency']} batches "
              "(the rates are the workers' own: no lr_correction applied)")
    for phase in ("pretrain", "finetune"):
        r = res[phase]
        if r.get("error"):
            print(f"{phase}: not probed: {r['error']}")
        elif r["largest_stable"] is None:
            print(f"{phase}: no stable rate in [{args.low:g}, {args.high:g}]; try lower rates")
        else:
            print(f"{phase}: largest stable rate {r['largest_stable']:g}, recommended {r['recommended']:g}")
    png, data = write_results(res, args.out)
    if png is not None:
        print(f"plot: {png}")
    print(f"data: {data}", flush=True)


def cmd_advise(args) -> int:
    import json

    from layerwise.advice import suggest

    s = suggest(args.inputs, args.labels, workers=args.workers, samples=args.samples)
    if args.format == "json":
        print(json.dumps(s, indent=2))
        return 0
    print("suggested net: " + " -> ".join(map(str, s["layers"])))
    for name, item in s["hyperparameters"].items():
        print(f"  {name} = {item['value']}")
        print(f"      {item['why']}")
    return 0


def _classifier(path):
    from layerwise.artifacts import load_model

    model, manifest = load_model(path)
    if manifest["kind"] != "finetuned":
        raise ValueError(f"'{path}' holds a {manifest['kind']} net; evaluate and predict need a finetuned one")
    return model, manifest


def cmd_evaluate(args) -> int:
    from layerwise import config, runtime
    from layerwise.data import as_tensors, load_npz, load_splits, validate
    from layerwise.finetune import evaluate

    runtime.apply(args.threads)
    model, manifest = _classifier(args.model)
    arch = manifest["architecture"]
    if args.data:
        ds = validate(load_npz(args.data, require_labels=True), n_inputs=arch["sizes"][0], n_labels=arch["n_labels"])
    else:
        cfg = config.from_dict(manifest["config"])
        ds = load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed).test
        if ds is None:
            return _err(f"the config of '{args.model}' names no test data; pass --data FILE.npz")
        ds = validate(ds, n_inputs=arch["sizes"][0], n_labels=arch["n_labels"])
    loss, acc = evaluate(model, *as_tensors(ds))
    print(f"data: {ds.name} ({len(ds)} samples)")
    print(f"loss: {loss:.4f}")
    print(f"test accuracy: {100 * acc:.2f}%")
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    from layerwise import runtime
    from layerwise._files import atomic_write
    from layerwise.data import as_tensors, load_npz, validate
    from layerwise.finetune import predict_proba

    runtime.apply(args.threads)
    model, manifest = _classifier(args.model)
    ds = validate(load_npz(args.data), n_inputs=manifest["architecture"]["sizes"][0], n_labels=manifest["architecture"]["n_labels"])
    proba = predict_proba(model, as_tensors(ds)[0]).numpy()
    labels = proba.argmax(1)
    if args.out:
        atomic_write(args.out, lambda f: np.savez(f, labels=labels, probabilities=proba))
        print(f"wrote labels and probabilities of {len(labels)} samples to {args.out}")
    else:
        print("index,label,probability")
        for i, (lab, p) in enumerate(zip(labels, proba.max(1))):
            print(f"{i},{lab},{p:.4f}")
    if ds.y is not None:
        print(f"accuracy against the file's labels: {100 * float((labels == ds.y).mean()):.2f}%", file=sys.stderr)
    return 0


def cmd_pretrain(args) -> int:
    from layerwise import config, jobs, runtime
    from layerwise.runs import read_config

    echo = None if args.quiet else _say
    bars = not args.quiet and sys.stderr.isatty()
    if args.resume:
        if args.recipe or args.out:
            return _err("--resume takes the pretraining folder alone (plus --data/--epochs)")
        runtime.apply(args.threads, read_config(args.resume, "staged pretraining folder").threads)
        res = jobs.pretrain_stage(args.resume, data=args.data, epochs=args.epochs, progress=bars, echo=echo)
    else:
        if not (args.recipe and args.data and args.out):
            return _err("pretrain needs RECIPE --data FILE.npz --out FOLDER (or --resume FOLDER)")
        cfg = config.load(args.recipe)
        if args.threads:
            cfg.threads = args.threads
        runtime.apply(args.threads, cfg.threads)
        res = jobs.pretrain_stage(args.out, cfg=cfg, data=args.data, epochs=args.epochs, progress=bars, echo=echo)
    print(f"stage {res.stage}: {res.seconds:.1f} s, {len(res.manifest['stages'])} stage(s) recorded")
    print(f"pretrained net: {res.artifact}")
    return 0


def cmd_finetune(args) -> int:
    from layerwise import config, jobs, runtime

    cfg = config.load(args.recipe)
    if args.threads:
        cfg.threads = args.threads
    runtime.apply(args.threads, cfg.threads)
    echo = None if args.quiet else _say
    res = jobs.finetune_pretrained(args.pretrained, cfg, args.out, progress=not args.quiet and sys.stderr.isatty(),
                                   echo=echo)
    print(f"fine-tuning {res.seconds_finetune:.1f} s")
    if res.test_accuracy is not None:
        print(f"test accuracy: {100 * res.test_accuracy:.2f}%")
    print(f"finetuned net: {res.run_dir} (parent {res.pretrained['weights_sha256'][:16]})")
    return 0


def cmd_models(args) -> int:
    from layerwise.catalog import find_artifacts, table

    if not Path(args.dir).is_dir():
        return _err(f"'{args.dir}' is not a folder")
    rows = find_artifacts(args.dir)
    if args.format == "json":
        import json

        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no layerwise models under '{args.dir}'")
    else:
        print(table(rows))
    return 0


def cmd_data_fetch(args) -> int:
    from layerwise.data import fetch_mnist

    if args.dataset != "mnist":
        return _err(f"unknown dataset {args.dataset!r}; 'mnist' is the one that is downloaded")
    path = fetch_mnist()
    print(f"mnist: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layerwise", description="Layer-wise pretraining and fine-tuning of deep nets.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="pretrain, save the pretrained net, fine-tune, evaluate")
    t.add_argument("recipe", nargs="?", help="TOML recipe, e.g. recipes/quick-mnist.toml")
    t.add_argument("--resume", metavar="RUN_FOLDER",
                   help="continue an interrupted run (e.g. runs/NAME) from its last checkpoint")
    t.add_argument("--name", help="run name (default: the recipe's name, else its file stem)")
    t.add_argument("--runs-dir", default="runs", help="folder that holds run folders (default: runs)")
    t.add_argument("--threads", type=int, help="torch CPU threads (default: the recipe's, else min(2, cores))")
    t.add_argument("--quiet", action="store_true", help="print only the final summary")
    t.add_argument("--strict", action="store_true", help="treat the advisor's warnings as errors")
    t.add_argument("--workers", type=_at_least(1), default=1,
                   help="train on N worker processes on this machine, averaging parameters (torch.distributed, gloo)")
    t.add_argument("--max-restarts", type=_at_least(0), default=0,
                   help="with --workers: restart the group this many times when a worker dies, from the last checkpoint")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("check", help="check a recipe against the guide's rules of thumb")
    c.add_argument("recipe", help="TOML recipe")
    c.add_argument("--workers", type=_at_least(1), default=1, help="number of workers the recipe will run on")
    c.add_argument("--strict", action="store_true", help="exit with status 2 on warnings too")
    c.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    c.set_defaults(func=cmd_check)

    pr = sub.add_parser("probe-lr", help="measure the largest stable learning rate on the recipe's data")
    pr.add_argument("recipe", help="TOML recipe")
    pr.add_argument("--low", type=float, default=1e-4, help="lowest rate of the grid (default 1e-4)")
    pr.add_argument("--high", type=float, default=10.0, help="highest rate of the grid (default 10)")
    pr.add_argument("--points", type=int, default=11, help="rates in the geometric grid (default 11)")
    pr.add_argument("--subset", type=int, default=5000, help="training samples used (default 5000)")
    pr.add_argument("--epochs", type=int, default=2, help="epochs per trial (default 2)")
    pr.add_argument("--workers", type=_at_least(1), default=1,
                    help="probe N averaged worker processes on this machine, as `train --workers N` trains")
    pr.add_argument("--out", default="probe-lr", help="path stem of the PNG plot and JSON results (default probe-lr)")
    pr.add_argument("--threads", type=int, help="torch CPU threads")
    pr.add_argument("--quiet", action="store_true", help="print only the summary")
    pr.set_defaults(func=cmd_probe_lr)

    a = sub.add_parser("advise", help="suggest a net and hyperparameters, with reasons")
    a.add_argument("--inputs", type=int, required=True, help="input features, e.g. 784")
    a.add_argument("--labels", type=int, required=True, help="number of labels, e.g. 10")
    a.add_argument("--workers", type=_at_least(1), default=1, help="workers that will average parameters")
    a.add_argument("--samples", type=int, help="training samples (for the batch size)")
    a.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    a.set_defaults(func=cmd_advise)

    pt = sub.add_parser("pretrain", help="staged pretraining: feed data, pause, resume when more arrives")
    pt.add_argument("recipe", nargs="?", help="recipe for the first stage ([model], [pretrain])")
    pt.add_argument("--data", help=".npz with an array x: the data of this stage")
    pt.add_argument("--out", help="pretraining folder to create (first stage)")
    pt.add_argument("--resume", metavar="FOLDER", help="go on in a pretraining folder: finish an interrupted stage, or a new stage with --data")
    pt.add_argument("--epochs", type=int, help="epochs per layer for this stage (default: the recipe's)")
    pt.add_argument("--threads", type=int, help="torch CPU threads")
    pt.add_argument("--quiet", action="store_true", help="print only the final summary")
    pt.set_defaults(func=cmd_pretrain)

    ft = sub.add_parser("finetune", help="fine-tune a copy of a saved pretrained net into a new artifact")
    ft.add_argument("pretrained", help="a pretrained artifact folder, e.g. runs/NAME/pretrained")
    ft.add_argument("--recipe", required=True, help="recipe whose [data] and [finetune] are used")
    ft.add_argument("--out", required=True, help="new artifact folder (must not exist)")
    ft.add_argument("--threads", type=int, help="torch CPU threads")
    ft.add_argument("--quiet", action="store_true", help="print only the final summary")
    ft.set_defaults(func=cmd_finetune)

    mo = sub.add_parser("models", help="list the saved nets under a folder, with their lineage")
    mo.add_argument("dir", nargs="?", default="runs", help="folder to search (default: runs)")
    mo.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    mo.set_defaults(func=cmd_models)

    e = sub.add_parser("evaluate", help="accuracy of a finetuned net on its test data or a .npz file")
    e.add_argument("model", help="a finetuned artifact folder, e.g. runs/NAME/finetuned")
    e.add_argument("--data", help=".npz with x and y (default: the test split of the run's data)")
    e.add_argument("--threads", type=int, help="torch CPU threads")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="labels and probabilities for the inputs in a .npz file")
    r.add_argument("model", help="a finetuned artifact folder")
    r.add_argument("data", help=".npz with an array x")
    r.add_argument("--out", help="write labels and probabilities to this .npz instead of printing")
    r.add_argument("--threads", type=int, help="torch CPU threads")
    r.set_defaults(func=cmd_predict)

    d = sub.add_parser("data", help="data sets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download a data set into the user cache")
    f.add_argument("dataset", help="mnist")
    f.set_defaults(func=cmd_data_fetch)
    return p


def _on_first_interrupt(signum, frame) -> None:
    """First Ctrl-C: let the loop finish its batch and checkpoint; a second one stops at once."""
    import signal

    from layerwise.loop import request_stop

    request_stop()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("\nlayerwise: stopping after this batch and saving a checkpoint (Ctrl-C again to stop now)",
          file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    from layerwise import runtime

    runtime.set_wait_policy()  # before anything imports torch: OpenMP reads it when torch loads
    from layerwise.loop import clear_stop

    args = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, _on_first_interrupt)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError, RuntimeError) as e:
        return _err(str(e))
    except KeyboardInterrupt:
        print("layerwise: interrupted; continue with `layerwise train --resume RUN_FOLDER` "
              "(or `layerwise pretrain --resume FOLDER`, or the same `layerwise finetune` command)", file=sys.stderr)
        return 130
    finally:
        clear_stop()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
