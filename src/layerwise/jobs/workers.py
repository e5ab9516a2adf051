"""Distributed jobs on one machine or many: ``train --workers N`` and ``probe-lr
--workers N`` launch N copies of the same command through PyTorch's launcher; each copy
(a worker, started by ``--workers`` or by torchrun on a cluster) runs ``worker_main`` or
``probe`` inside ``distributed.run_worker``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from layerwise.config import RunConfig, resolve_config
from layerwise.data.sources import load_splits
from layerwise.training.distributed import is_writer, launch_workers, rank_world, under_torchrun, workers_failed
from layerwise.jobs.common import read_checkpoint, silent
from layerwise.jobs.training import train_in
from layerwise.training.loop import LoopControl
from layerwise.storage.runs import CONFIG, RunResult, claim_run_dir, read_config, result_from_disk, run_lock
from layerwise._checks import InvalidInput


def worker_main(cfg: RunConfig, runs_dir: str | Path, *, echo=None, run_dir: str | Path | None = None,
                device: str | None = None, control: LoopControl | None = None) -> RunResult | None:
    """One worker of a distributed run, inside a joined group. ``run_dir``: started by
    ``--workers`` (or a resume) for that claimed and locked folder, whose config.toml it
    trains. Otherwise (torchrun run by hand, on one node or many) rank 0
    claims a new run folder as ``--workers`` does, and holds its lock. Rank 0 writes
    everything, the others only train. A restarted group (``--max-restarts``) resumes
    from the last checkpoint of its folder. ``device`` (``--device``) overrides the
    config's."""
    if under_torchrun() and rank_world()[1] == 1 and int(os.environ["WORLD_SIZE"]) > 1:
        raise RuntimeError("worker_main runs inside a joined process group: call it through distributed.run_worker")
    splits = load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed, report=silent)
    claimed = run_dir is not None
    run_dir = Path(run_dir) if claimed else _group_folder(cfg, Path(runs_dir), splits)
    with run_lock(run_dir) if is_writer() and not claimed else contextlib.nullcontext():
        if (run_dir / "finetuned").exists():  # complete: a group restarted after its last worker finished
            return result_from_disk(run_dir) if is_writer() else None
        cfg = read_config(run_dir)
        cfg.name = run_dir.name
        cfg.device = device or cfg.device
        return train_in(run_dir, cfg, splits, read_checkpoint(run_dir), echo=echo if is_writer() else None,
                        control=control)


def _group_folder(cfg: RunConfig, runs_dir: Path, splits) -> Path:
    """The run folder of a group started by hand: claimed by rank 0 on the group's first
    start (a restart of the same launch finds it again), its name sent to every rank."""
    from layerwise.training.distributed import broadcast_bytes

    name = b""
    if is_writer():
        marker = runs_dir / f".torchrun-{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}"
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        if restarted and marker.is_file() and (runs_dir / marker.read_text()).is_dir():
            name = marker.read_text().encode()
        else:
            marker.unlink(missing_ok=True)  # an earlier launch's: never found by a restart of this one
            run_dir, _ = claim_run_dir(cfg, runs_dir, splits)
            marker.write_text(run_dir.name)
            name = run_dir.name.encode()
    return runs_dir / broadcast_bytes(name).decode()


def train_workers(cfg: RunConfig, workers: int, *, runs_dir: str | Path = "runs", max_restarts: int = 0,
                  echo=None, control: LoopControl | None = None) -> RunResult:
    """``layerwise train RECIPE --workers N`` on one machine: claim a run folder, then
    start N workers on loopback; return what rank 0 wrote. ``echo`` gets rank 0's
    progress lines as they come, and its summary at the end."""
    splits = load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed, report=echo or silent)
    run_dir, _ = claim_run_dir(cfg, runs_dir, splits)
    with run_lock(run_dir):
        return _group_in(run_dir, workers, max_restarts, echo, control=control)


def _group_in(run_dir: Path, workers: int, max_restarts: int, echo, threads: int | None = None,
              device: str | None = None, control: LoopControl | None = None) -> RunResult:
    """Run the workers of a claimed, locked run folder (they resume from its checkpoint,
    if any). A Ctrl-C stops them all: the last epoch-end checkpoint stands."""
    flags = ["--quiet"] if echo is None else []  # rank 0 prints its progress (and the summary) unless quiet
    flags += ["--threads", str(threads)] if threads else []
    flags += ["--device", device] if device else []
    proc = launch_workers(["train", str(run_dir / CONFIG), "--runs-dir", str(run_dir.parent), "--in-run-folder", *flags],
                          workers,
                          max_restarts=max_restarts, on_line=echo)
    if control is not None and control.stop_requested:  # the workers had the Ctrl-C too, and stopped
        raise KeyboardInterrupt(f"continue with `layerwise train --resume {run_dir}`")
    if proc.returncode != 0:
        raise workers_failed(proc, workers, f"\ncontinue with `layerwise train --resume {run_dir}` once fixed")
    return result_from_disk(run_dir)


def resume(run_dir: str | Path, *, workers: int | None = None, allow_resize: bool = False, max_restarts: int = 0,
           threads: int | None = None, device: str | None = None, progress: bool = False, echo=None,
           control: LoopControl | None = None) -> RunResult:
    """Continue an interrupted ``train`` run from its last checkpoint, with the group size
    that wrote it (``workers`` other than that only with ``allow_resize``: the result is
    then not bitwise the uninterrupted run's). A run that died before its first
    checkpoint starts over, on ``workers`` (default 1). ``device`` overrides the
    config's (a checkpoint of another kind of device goes on, not bitwise)."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    cfg.name = run_dir.name
    cfg.device = device or cfg.device
    with run_lock(run_dir):
        if (run_dir / "finetuned").exists():
            raise InvalidInput(f"run '{run_dir}' is complete (finetuned/ exists); nothing to resume")
        splits = load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed, report=echo or silent)
        ckpt = read_checkpoint(run_dir)
        saved = None if ckpt is None else ckpt["workers"]
        n = workers or saved or 1
        if saved is not None and n != saved and not allow_resize:
            raise InvalidInput(
                f"'{run_dir}' was checkpointed by {saved} worker{'s' * (saved > 1)}; resume it with --workers {saved} "
                f"(the default), or add --allow-resize to accept a result that is not bitwise the uninterrupted run's"
            )
        if n > 1:
            return _group_in(run_dir, n, max_restarts, echo, threads, device, control)
        return train_in(run_dir, cfg, splits, ckpt, progress=progress, echo=echo, control=control)


def probe(cfg: RunConfig, *, grid: list[float], subset: int, epochs: int, echo=None, in_group: bool = False) -> dict:
    """``layerwise probe-lr``: the learning-rate probe on the recipe's data. ``in_group``:
    as one worker of a joined group (``probe-lr --workers N``), where every trial trains
    with parameter averaging across the group; every rank returns the same result, and
    only rank 0 reports."""
    from layerwise.training.probe import probe_lr

    echo = echo if is_writer() else None
    splits = load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed, report=echo or silent)
    cfg = resolve_config(cfg, splits.n_inputs)
    return probe_lr(cfg, splits, grid=grid, subset=subset, epochs=epochs, report=echo,
                    distributed=cfg.distributed if in_group else None)


def probe_workers(recipe: str | Path, workers: int, *, low: float, high: float, points: int, subset: int, epochs: int,
                  out: str | Path, threads: int | None = None, quiet: bool = False, echo=None,
                  device: str | None = None, control: LoopControl | None = None) -> None:
    """``layerwise probe-lr RECIPE --workers N``: check the data once (and fetch MNIST
    once, not in every worker), then run the probe as N workers on loopback; rank 0
    prints and writes the results, and ``echo`` gets its lines as they come."""
    from layerwise import config

    cfg = config.load(recipe)
    load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed, report=silent if quiet else (echo or silent))
    argv = ["probe-lr", str(recipe), "--low", str(low), "--high", str(high), "--points", str(points),
            "--subset", str(subset), "--epochs", str(epochs), "--out", str(out)]
    argv += ["--threads", str(threads)] if threads else []
    argv += ["--device", device] if device else []
    argv += ["--quiet"] if quiet else []
    proc = launch_workers(argv, workers, on_line=echo)
    if control is not None and control.stop_requested:
        raise KeyboardInterrupt("the probe was stopped; run it again for its results")
    if proc.returncode != 0:
        raise workers_failed(proc, workers)
