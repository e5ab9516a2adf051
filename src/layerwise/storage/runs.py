"""Run folders: what a user sees on disk, and who may write there.

``runs/NAME/`` holds config.toml (the resolved config), pretrained/, finetuned/,
checkpoint/, metrics.jsonl and plots/. An existing run folder is never reused: the next
free ``NAME-2``, ``NAME-3`` ... is claimed instead (``mkdir`` is the atomic claim), so
nothing already written is lost. A folder is locked while a process trains in it.
``layerwise finetune ... --out OUT`` keeps its checkpoints in ``OUT.partial/`` until OUT
is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from layerwise import config as config_mod
from layerwise._checks import Refused
from layerwise.config import RunConfig, resolve_config
from layerwise.data.budget import check_fits
from layerwise.reporting.reporter import Reporter
from layerwise.storage.artifacts import read_artifact

CONFIG = "config.toml"
METRICS = "metrics.jsonl"


@dataclass
class RunResult:
    run_dir: Path
    test_accuracy: float | None
    validation_accuracy: float | None
    pretrained: dict
    finetuned: dict
    seconds_pretrain: float
    seconds_finetune: float
    workers: int = 1


def write_config(folder: Path, cfg: RunConfig) -> None:
    (folder / CONFIG).write_text(config_mod.to_toml(cfg))


def read_config(folder: str | Path, what: str = "run folder") -> RunConfig:
    """The config.toml of a run (or staged pretraining) folder."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"'{folder}' is not a {what}: it has no {CONFIG}")
    return config_mod.load(folder / CONFIG)


def unique_run_dir(runs_dir: Path, name: str) -> Path:
    candidate, i = runs_dir / name, 1
    while candidate.exists():
        i += 1
        candidate = runs_dir / f"{name}-{i}"
    return candidate


def claim_run_dir(cfg: RunConfig, runs_dir: str | Path, splits) -> tuple[Path, RunConfig]:
    """Create the next free ``runs_dir/NAME[-k]`` and write the resolved config into it,
    once the name is one path component and the net and data fit in memory."""
    config_mod.check_name(cfg.name)
    hidden = resolve_config(cfg, splits.n_inputs).model.hidden
    assert hidden is not None  # resolve_config sets it
    # streamed data holds one block in memory at a time, not the data set
    rows = splits.train.source.block_rows() if splits.streamed else len(splits.train)
    check_fits([splits.n_inputs, *hidden], splits.n_labels, rows)
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    while True:  # mkdir is the atomic claim: two runs started at once get different folders
        run_dir = unique_run_dir(runs_dir, cfg.name or "run")
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            continue
    resolved = resolve_config(cfg, splits.n_inputs, name=run_dir.name)
    write_config(run_dir, resolved)
    return run_dir, resolved


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive lock on a run folder; a second writer is refused at once."""
    path = Path(run_dir) / ".lock"
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise Refused(
            f"run folder '{run_dir}' is in use by another layerwise process (pid {holder}); "
            "wait for it to finish or use another run folder"
        ) from None
    try:
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def partial_dir(out_dir: str | Path) -> Path:
    """Where ``layerwise finetune ... --out OUT`` keeps its checkpoint until OUT is written."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".partial")


def continue_log(path: Path | None, keep_lines: int | None, progress: bool, echo) -> Reporter:
    """A reporter appending to the metrics log ``path`` after its first ``keep_lines``
    lines (None: keep all). A resumed run drops what was logged after its checkpoint:
    it is replayed."""
    if path is None:
        return Reporter(None, progress=progress, echo=echo)
    if keep_lines is not None and path.exists():
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:keep_lines]))
    reporter = Reporter(path, progress=progress, echo=echo)
    reporter.lines = len(path.read_text().splitlines()) if path.exists() else 0
    return reporter


def result_from_disk(run_dir: Path) -> RunResult:
    """What a finished run folder reached, read from its manifests."""
    _, pre = read_artifact(run_dir / "pretrained")
    _, fin = read_artifact(run_dir / "finetuned")
    m = fin["metrics"]
    return RunResult(
        run_dir,
        m.get("test_accuracy"),
        m.get("validation_accuracy"),
        pre,
        fin,
        pre["metrics"].get("seconds", 0.0),
        m.get("seconds", 0.0),
        fin.get("config", {}).get("distributed", {}).get("workers", 1),
    )
