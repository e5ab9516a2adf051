"""What the jobs share: the checkpoint trees of pretraining and fine-tuning (built from
each object's ``state_dict``), the checkpoint policy of a recipe, and the metrics that
manifests record."""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from layerwise._devices import restore
from layerwise.config import RunConfig, suggest_layers
from layerwise.data.sources import Splits
from layerwise.data.splits import loop_data
from layerwise.stack import DeepBeliefNet
from layerwise.storage import checkpointing
from layerwise.training.distributed import take_local_state
from layerwise.training.finetune import FinetuneState, evaluate
from layerwise.training.pretrain import PretrainProgress

# checkpoint paths whose tensors differ between the workers of a group even right after
# an averaging round (see distributed.gather_local_state)
FINETUNE_LOCAL = ("optimizer/", "finetune/guard/good_optimizer/")


def silent(_line: str) -> None:
    pass


def checkpoint_policy(cfg: RunConfig) -> dict:
    """The Checkpointer's keyword arguments from a recipe's [checkpoint]."""
    cc = cfg.checkpoint
    return {
        "every_epochs": cc.every_epochs,
        "every_batches": cc.every_batches,
        "every_seconds": None if cc.every_minutes is None else 60 * cc.every_minutes,
    }


def pretraining_state(dbn: DeepBeliefNet, generator: torch.Generator, progress: PretrainProgress) -> dict:
    """Everything greedy pretraining needs to go on exactly: every parameter and buffer
    of every unit (momentum, PCD chains, sparsity statistics), every generator, and the
    progress (layer, loop position and data order, the guard of the layer in progress)."""
    return {
        "dbn": dbn.state_dict(),
        "generators": {"units": [layer.generator.get_state() for layer in dbn.layers], "loop": generator.get_state()},
        "progress": progress.state_dict(),
    }


def load_pretraining_state(
    state: dict, dbn: DeepBeliefNet, generator: torch.Generator, progress: PretrainProgress
) -> bool:
    """Restore the state; True when every generator took its saved state (False: the
    checkpoint came from another kind of device, and the generators were seeded from it)."""
    dbn.load_state_dict(state["dbn"])
    exact = True
    for layer, g in zip(dbn.layers, state["generators"]["units"]):
        layer.generator, ok = restore(layer.generator, g)
        exact &= ok
    exact &= restore(generator, state["generators"]["loop"])[1]
    progress.load_state_dict(state["progress"])
    return exact


def remove_scratch(folder: Path) -> None:
    """Remove this worker's streamed activations (the folders pretraining left empty)."""
    for sub in sorted(folder.glob("*"), reverse=True) if folder.is_dir() else []:
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
    with contextlib.suppress(OSError):  # another worker's may still be there
        folder.rmdir()


def other_device(saved: str, now: torch.device, folder) -> None:
    """Warn when a checkpoint resumes on another device than the one that wrote it."""
    if torch.device(saved).type != now.type:
        warnings.warn(
            f"'{folder}' was checkpointed on {saved} and resumes on {now}: the run goes on, but its result "
            "will not be bitwise equal to an uninterrupted run (bitwise resume holds from CPU to CPU)",
            UserWarning,
            stacklevel=2,
        )


def pretrain_local_keys(dbn: DeepBeliefNet, layer: int) -> set[str]:
    """Checkpoint paths of the unit buffers (momentum, PCD chains, sparsity statistics):
    unlike the parameters, averaging leaves them different on every worker; so does the
    guard's copy of them for the layer in progress."""
    keys = {f"dbn/{k}" for k, _ in dbn.named_buffers()}
    if layer < len(dbn.layers):
        keys |= {f"progress/guard/good/{k}" for k, _ in dbn.layers[layer].named_buffers()}
    return keys


def finetuning_state(clf: torch.nn.Module, optimizer: torch.optim.Optimizer, fstate: FinetuneState) -> dict:
    """The weights, the optimizer state and the fine-tuning state (best weights so far,
    generators, data order and position, early stopping, the guard)."""
    return {"model": clf.state_dict(), "optimizer": optimizer.state_dict(), "finetune": fstate.state_dict()}


def load_finetuning_state(
    state: dict, clf: torch.nn.Module, optimizer: torch.optim.Optimizer, fstate: FinetuneState
) -> None:
    clf.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    fstate.load_state_dict(state["finetune"])


def loop_of(ckpt: dict) -> dict:
    """The loop position a checkpoint stands at."""
    return (ckpt["progress"] if ckpt["phase"] == "pretrain" else ckpt["finetune"])["loop"]


def open_checkpoint(folder: Path, job: str, take=None) -> dict | None:
    """The checkpoint tree that ``job`` ("train", "stage", "finetune") left in
    ``folder/checkpoint`` (None: there is none yet). ``take`` picks this worker's own
    tensors of a group's checkpoint. The first step of every job's resume."""
    if not checkpointing.exists(folder / "checkpoint"):
        return None
    return checkpointing.load_state(folder / "checkpoint", job, take=take)


def read_checkpoint(folder: Path) -> dict | None:
    """The checkpoint tree of a ``train`` run folder as this worker saved it (None: there
    is none)."""
    return open_checkpoint(folder, "train", take=lambda tensors, meta: take_local_state(tensors, meta.get("world", 1)))


def log_resume(reporter, ckpt: dict, device: torch.device, folder) -> None:
    """The ``resume`` record of a job that goes on from ``ckpt`` (where its loop stands,
    the threads and device it goes on with), and the warning when the checkpoint was
    written on another kind of device. The last step of every job's resume."""
    pos = loop_of(ckpt)
    reporter.log(
        {
            "phase": "resume",
            "from": ckpt["phase"],
            "layer": ckpt.get("progress", {}).get("layer"),
            "epoch": pos["epoch"],
            "batch": pos["batch"],
            "threads": torch.get_num_threads(),
            "device": str(device),
        }
    )
    other_device(ckpt.get("device", "cpu"), device, folder)


def build_net(cfg: RunConfig, n_inputs: int, device: torch.device, n_labels: int | None = None) -> DeepBeliefNet:
    """The net a recipe describes, on ``device``: the one place a job builds one. The
    hidden sizes are the recipe's, else the guide's rule; ``n_labels`` feeds the top RBM
    the labels when ``[model] top_labels`` asks for it."""
    m = cfg.model
    return DeepBeliefNet(
        n_inputs,
        list(m.hidden or suggest_layers(n_inputs)),
        unit=m.unit,
        visible=m.visible,
        seed=cfg.seed,
        init_std=m.init_std,
        device=device,
        precision=cfg.precision,
        top_labels=(n_labels or 0) if m.top_labels else 0,
    )


def pretrain_metrics(records: list[dict]) -> dict:
    """A pretrained manifest's metrics: each layer's last reconstruction cross-entropy
    and free-energy gap (where measured), and the guard's rollbacks."""
    last = {
        f"layer{r['layer']}_{k}": v
        for r in records
        if r["phase"] == "pretrain"
        for k, v in r.items()
        if k.startswith(("recon", "free"))
    }
    last["guard_events"] = [r for r in records if r["phase"] == "guard"]
    return last


def final_metrics(clf, result, ft, seconds: float, splits: Splits) -> tuple[dict, float | None, float | None]:
    """The finetuned manifest's metrics: validation (unless it was trained on) and test."""
    metrics = {
        "seconds": round(seconds, 2),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "guard_events": [r for r in result.records if r["phase"] == "guard"],
    }
    val_acc = test_acc = None
    if ft.train_on_validation:
        metrics["validation"] = "joined the training data (train_on_validation)"
    elif splits.validation is not None:
        metrics["validation_loss"], val_acc = evaluate(clf, loop_data(splits.validation))
        metrics["validation_accuracy"] = val_acc
    if splits.test is not None:
        metrics["test_loss"], test_acc = evaluate(clf, loop_data(splits.test))
        metrics["test_accuracy"] = test_acc
    return metrics, val_acc, test_acc


def write_plots(folder: Path, metrics_path: Path, dbn: DeepBeliefNet, say, test=None) -> None:
    """Learning curves (from every record of the log: resumed runs too), filters, and the
    pretrained stack's reconstructions of test images (``test``: a data set) and samples."""
    try:
        from layerwise.reporting import plots
    except ImportError:
        say("plots skipped: matplotlib is not installed (pip install 'layerwise[plots]')")
        return
    from layerwise.use import write_pictures

    records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    plots.write_run_plots(folder, records, dbn.layers[0].weight)
    x = None if test is None else torch.as_tensor(np.ascontiguousarray(test.head(16)[0]), dtype=torch.float32)
    write_pictures(folder, dbn, x)


class Stopwatch:
    """Seconds per phase, carried over from a checkpoint and counted on."""

    _phase: str | None  # the phase being timed (None between phases)

    def __init__(self, seconds: dict | None = None):
        self.seconds = dict(seconds or {"pretrain": 0.0, "finetune": 0.0})
        self._phase, self._t0 = None, 0.0

    def start(self, phase: str) -> None:
        self._phase, self._t0 = phase, time.perf_counter()

    def stop(self) -> None:
        self.seconds = self.now()
        self._phase = None

    def now(self) -> dict:
        out = dict(self.seconds)
        if self._phase is not None:
            out[self._phase] += time.perf_counter() - self._t0
        return out
