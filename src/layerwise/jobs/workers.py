"""Distributed jobs on one machine or many. ``train --workers N`` and ``probe-lr
--workers N`` start N workers as functions through PyTorch's launcher
(``distributed.launch``): each runs ``group_worker`` or ``probe_worker`` in a fresh
process, and what it returns comes back to the caller. A group started by torchrun on
a cluster (``torchrun ... -m layerwise train``) runs ``worker_main`` or ``probe`` in each
command, inside ``distributed.run_worker``."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from layerwise import runtime
from layerwise._checks import InvalidInput, LayerwiseError, Refused
from layerwise.config import RunConfig, resolve_config
from layerwise.data.splits import load_splits
from layerwise.jobs.common import read_checkpoint, silent
from layerwise.jobs.training import train_in
from layerwise.storage.runs import RunResult, claim_run_dir, read_config, result_from_disk, run_lock
from layerwise.training.distributed import (
    is_writer,
    join_group,
    launch,
    leave_group,
    rank_world,
    under_torchrun,
)
from layerwise.training.loop import LoopControl


def worker_main(
    cfg: RunConfig,
    runs_dir: str | Path,
    *,
    echo=None,
    run_dir: str | Path | None = None,
    device: str | None = None,
    control: LoopControl | None = None,
) -> RunResult | None:
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
    run_dir = Path(run_dir) if run_dir is not None else _group_folder(cfg, Path(runs_dir), splits)
    with run_lock(run_dir) if is_writer() and not claimed else contextlib.nullcontext():
        if (run_dir / "finetuned").exists():  # complete: a group restarted after its last worker finished
            return result_from_disk(run_dir) if is_writer() else None
        cfg = read_config(run_dir)
        cfg.name = run_dir.name
        cfg.device = device or cfg.device
        return train_in(
            run_dir, cfg, splits, read_checkpoint(run_dir), echo=echo if is_writer() else None, control=control
        )


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


def train_workers(
    cfg: RunConfig,
    workers: int,
    *,
    runs_dir: str | Path = "runs",
    max_restarts: int = 0,
    echo=None,
    control: LoopControl | None = None,
) -> RunResult:
    """``layerwise train RECIPE --workers N`` on one machine: claim a run folder, then
    start N workers on loopback; return what rank 0 wrote. Rank 0 hands its progress
    lines to ``echo`` in its own process as they come (``echo`` must be a module-level
    function: the workers are started by spawn)."""
    splits = load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed, report=echo or silent)
    run_dir, _ = claim_run_dir(cfg, runs_dir, splits)
    with run_lock(run_dir):
        return _group_in(run_dir, workers, max_restarts, echo, control=control)


def _group_in(
    run_dir: Path,
    workers: int,
    max_restarts: int,
    echo,
    threads: int | None = None,
    device: str | None = None,
    control: LoopControl | None = None,
) -> RunResult:
    """Run the workers of a claimed, locked run folder (they resume from its checkpoint,
    if any). A Ctrl-C stops them all: the last epoch-end checkpoint stands."""
    hint = f"continue with `layerwise train --resume {run_dir}`"
    try:
        results = launch(group_worker, (str(run_dir), threads, device, echo), workers, max_restarts=max_restarts)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(hint) from None
    except Refused as e:
        raise Refused(f"{e}\n{hint} once fixed") from None
    if control is not None and control.stop_requested:  # the workers had the Ctrl-C too, and stopped
        raise KeyboardInterrupt(hint)
    _user_errors(results, workers)
    return result_from_disk(run_dir)


def _user_errors(results: dict, workers: int) -> None:
    """Raise the user errors the workers returned (each once), as one."""
    errors = list(dict.fromkeys(r for r in results.values() if isinstance(r, str)))
    if errors:
        reported = "\n".join(f"layerwise: error: {e}" for e in errors)
        raise Refused(f"the {workers} workers stopped; the workers reported:\n{reported}")


def _in_group(job, threads: int | None, recipe_threads: int | None, device: str, precision: str, timeout: float):
    """Run ``job(control)`` as one worker started by ``launch``: the process policy (its
    share of the cores), a Ctrl-C that stops at the next batch boundary, the group
    joined and left. A user error comes back as its message: every rank meets the same
    one, and it would meet it again after a restart, so the group is not restarted."""
    rt = runtime.apply(
        threads, recipe_threads, local_workers=runtime.local_workers(), device=device, precision=precision
    )
    control = LoopControl()
    control.stop_on_first_interrupt()  # the launcher's own SIGINT, a second one, then stops it
    join_group(timeout, rt.device)
    try:
        result = job(control)
    except LayerwiseError as e:
        result = str(e)
    except KeyboardInterrupt:
        # the launcher is stopping the group: the other workers are gone or going, so no
        # barrier to leave by; what was checkpointed stands
        sys.stdout.flush()
        os._exit(130)
    leave_group()
    return result


def group_worker(run_dir: str, threads: int | None, device: str | None, echo) -> str | None:
    """What each worker of ``train --workers N`` runs: train in the claimed folder (from
    its checkpoint, if any). Returns None, or the message of a user error."""
    cfg = read_config(run_dir)

    def job(control: LoopControl) -> None:
        worker_main(cfg, Path(run_dir).parent, echo=echo, run_dir=run_dir, device=device, control=control)

    return _in_group(job, threads, cfg.threads, device or cfg.device, cfg.precision, cfg.distributed.timeout_minutes)


def resume(
    run_dir: str | Path,
    *,
    workers: int | None = None,
    allow_resize: bool = False,
    max_restarts: int = 0,
    threads: int | None = None,
    device: str | None = None,
    progress: bool = False,
    echo=None,
    control: LoopControl | None = None,
) -> RunResult:
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
        result = train_in(run_dir, cfg, splits, ckpt, progress=progress, echo=echo, control=control)
        assert result is not None  # one process writes
        return result


def probe(cfg: RunConfig, *, grid: list[float], subset: int, epochs: int, echo=None, in_group: bool = False) -> dict:
    """``layerwise probe-lr``: the learning-rate probe on the recipe's data. ``in_group``:
    as one worker of a joined group (``probe-lr --workers N``), where every trial trains
    with parameter averaging across the group; every rank returns the same result, and
    only rank 0 reports."""
    from layerwise.training.probe import probe_lr

    echo = echo if is_writer() else None
    splits = load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed, report=echo or silent)
    cfg = resolve_config(cfg, splits.n_inputs)
    return probe_lr(
        cfg,
        splits,
        grid=grid,
        subset=subset,
        epochs=epochs,
        report=echo,
        distributed=cfg.distributed if in_group else None,
    )


def probe_workers(
    recipe: str | Path,
    workers: int,
    *,
    grid: list[float],
    subset: int,
    epochs: int,
    threads: int | None = None,
    quiet: bool = False,
    echo=None,
    device: str | None = None,
    control: LoopControl | None = None,
) -> dict:
    """``layerwise probe-lr RECIPE --workers N``: check the data once (and fetch MNIST
    once, not in every worker), then run the probe as N workers on loopback, rank 0's
    lines going to ``echo`` as they come; returns the probe's result (every rank's is the
    same)."""
    from layerwise import config

    cfg = config.load(recipe)
    if device is not None:
        cfg.device = device
    load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed, report=silent if quiet else (echo or silent))
    trial = {"grid": grid, "subset": subset, "epochs": epochs}
    try:
        results = launch(probe_worker, (cfg.to_dict(), trial, threads, None if quiet else echo), workers)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("the probe was stopped; run it again for its results") from None
    if control is not None and control.stop_requested:
        raise KeyboardInterrupt("the probe was stopped; run it again for its results")
    _user_errors(results, workers)
    return results[0]


def probe_worker(recipe: dict, trial: dict, threads: int | None, echo) -> dict | str | None:
    """What each worker of ``probe-lr --workers N`` runs: the probe with parameter
    averaging across the group. Returns the probe's result, or the message of a user error."""
    from layerwise import config

    cfg = config.from_dict(recipe)
    return _in_group(
        lambda control: probe(cfg, **trial, echo=echo, in_group=True),
        threads,
        cfg.threads,
        cfg.device,
        cfg.precision,
        cfg.distributed.timeout_minutes,
    )
