"""The lab's mechanics: data, budgets, the cell cache, and the page.

An experiment is a module with ``NAME``, ``TITLE``, ``CLAIM`` (the guide's words),
``SETUP`` (one paragraph), ``cells(budget)`` (a list of JSON-ready settings: one training
run each), ``run_cell(settings, data, budget)`` (the numbers of one run, JSON-ready),
``verdict(results, budget)`` (the table, the verdict and the recommended setting) and
``plot(results, path)``.

Cells are cached as JSON under ``OUT/cells/EXPERIMENT/KEY.json``, the key a sha256 of the
experiment, the settings, the budget and the data's fingerprint. A rerun skips finished
cells; a killed lab loses at most the cell under way.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from layerwise._checks import InvalidInput
from layerwise._files import atomic_write

VERDICTS = ("holds", "holds in part", "does not hold")


@dataclass(frozen=True)
class Budget:
    """How much each cell trains: ``quick`` (minutes on 2 cores, subsets) or ``full``."""

    name: str
    train: int  # training samples (at most)
    test: int  # test samples (at most)
    pretrain_epochs: int
    finetune_epochs: int
    batch_size: int = 100


BUDGETS = {
    "tiny": Budget("tiny", 300, 200, 1, 1, 50),  # for the tests: seconds
    "quick": Budget("quick", 3000, 2000, 2, 4),
    "full": Budget("full", 50000, 10000, 10, 20),
}


@dataclass
class LabData:
    """Train, validation and test tensors (inputs in [0, 1], int64 labels) and the
    fingerprint that keys the cache."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    xv: torch.Tensor
    yv: torch.Tensor
    xt: torch.Tensor
    yt: torch.Tensor
    n_labels: int
    fingerprint: str

    @property
    def n_inputs(self) -> int:
        return int(self.x.shape[1])

    def take(self, budget: Budget) -> LabData:
        """The budget's share: the first ``train`` / ``test`` samples (validation: as test)."""
        n, m = budget.train, budget.test
        return LabData(
            self.name,
            self.x[:n],
            self.y[:n],
            self.xv[:m],
            self.yv[:m],
            self.xt[:m],
            self.yt[:m],
            self.n_labels,
            self.fingerprint,
        )


def load(data: str | None = None, test: str | None = None, *, seed: int = 0) -> LabData:
    """MNIST (``data`` None), or the user's ``.npz`` pair (``data`` with x and y; ``test``
    with x and y; the validation split is held out of ``data``)."""
    from layerwise.config import DataConfig
    from layerwise.data.splits import load_splits

    if data is None:
        cfg = DataConfig(source="mnist")
    else:
        if test is None:
            raise InvalidInput("--data needs --test: the lab measures accuracy on held-out test data")
        cfg = DataConfig(source="files", train=str(data), test=str(test))
    s = load_splits(cfg, seed=seed)
    t = lambda ds: (torch.from_numpy(ds.x), torch.from_numpy(ds.y))  # noqa: E731
    (x, y), (xv, yv), (xt, yt) = t(s.train), t(s.validation), t(s.test)
    # read just above; and load_splits always sets n_labels
    assert s.validation is not None and s.test is not None and s.n_labels is not None
    fp = hashlib.sha256("".join(d.fingerprint for d in (s.train, s.validation, s.test)).encode()).hexdigest()
    return LabData("mnist" if data is None else Path(data).name, x, y, xv, yv, xt, yt, s.n_labels, fp)


class Cache:
    """Finished cells as JSON files, one per cell."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @staticmethod
    def key(experiment: str, settings: dict, budget: Budget, fingerprint: str) -> str:
        blob = json.dumps(
            {"experiment": experiment, "settings": settings, "budget": budget.__dict__, "data": fingerprint},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def path(self, experiment: str, key: str) -> Path:
        return self.folder / experiment / f"{key}.json"

    def get(self, experiment: str, key: str) -> dict | None:
        p = self.path(experiment, key)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except ValueError:  # torn by a crash mid-write cannot happen (atomic), but a hand edit can
            return None

    def put(self, experiment: str, key: str, record: dict) -> None:
        p = self.path(experiment, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, lambda f: f.write(json.dumps(record, indent=1).encode()))


def run_experiment(module, data: LabData, budget: Budget, cache: Cache, say=None) -> list[dict]:
    """Every cell of an experiment, from the cache where finished; returns the records
    (``settings`` and ``result`` each), in the order of ``cells``."""
    records = []
    cells = module.cells(budget)
    for i, settings in enumerate(cells):
        key = Cache.key(module.NAME, settings, budget, data.fingerprint)
        rec = cache.get(module.NAME, key)
        if rec is None:
            t0 = time.perf_counter()
            torch.manual_seed(0)
            result = module.run_cell(settings, data, budget)
            rec = {
                "settings": settings,
                "result": result,
                "seconds": round(time.perf_counter() - t0, 2),
                "ran": {"commit": commit(), "date": time.strftime("%Y-%m-%d")},
            }
            cache.put(module.NAME, key, rec)
            if say:
                say(f"{module.NAME} {i + 1}/{len(cells)} {json.dumps(settings)}: {json.dumps(result)}")
        elif say:
            say(f"{module.NAME} {i + 1}/{len(cells)} {json.dumps(settings)}: cached")
        records.append(rec)
    return records


def commit() -> str:
    """The short commit of the code that runs (unknown outside a git checkout)."""
    import subprocess

    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        return "unknown"


def provenance(records: list[dict]) -> str:
    """Where the cells of a page come from: the dates and commits they ran at."""
    ran = [r.get("ran") for r in records]
    known = [r for r in ran if r]
    dates = sorted({r["date"] for r in known})
    commits = sorted({r["commit"] for r in known})
    parts = []
    if known:
        parts.append(
            f"{len(known)} cells ran on {', '.join(dates)} at commit{'s' * (len(commits) > 1)} {', '.join(commits)}"
        )
    if len(known) < len(ran):
        parts.append(
            f"{len(ran) - len(known)} cells come from a cache written before cells recorded their commit and date"
        )
    return "; ".join(parts)


def table(headers: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def section(module, verdict: dict, plot_name: str | None) -> str:
    """The markdown of one experiment: claim, set-up, table, verdict, recommendation."""
    lines = [f"## {module.TITLE}", "", f"> {module.CLAIM}", "", f"**Set-up.** {module.SETUP}", "", verdict["table"], ""]
    if plot_name:
        lines += [f"![{module.NAME}]({plot_name})", ""]
    lines += [
        f"**Verdict: {verdict['verdict']}.** {verdict['why']}",
        "",
        f"**layerwise recommends:** {verdict['recommend']}",
        "",
    ]
    return "\n".join(lines)


@contextmanager
def figure(path, *grid: int, figsize=(6, 4)):
    """A matplotlib figure (Agg, no display) whose axes the block draws on, saved to
    ``path`` at the end; ``grid`` is ``subplots``' rows and columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*grid, figsize=figsize)
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(path, dpi=80)
    finally:
        plt.close(fig)
