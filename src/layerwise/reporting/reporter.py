"""Where progress and metrics go: the library never prints, it hands records to a
``Reporter``; the command line decides how they look."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm


class Reporter:
    """Where progress and metrics go. The default is silent.

    ``metrics_path``: a ``metrics.jsonl`` file that gets one JSON object per record,
    flushed as it is written. ``progress``: show tqdm bars on stderr. ``echo``: a
    callable that receives a one-line summary of each record (the CLI passes a printer).
    """

    def __init__(self, metrics_path: str | Path | None = None, *, progress: bool = False, echo=None, board=None):
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.progress = progress
        self.echo = echo
        self.board = board  # a tensorboard.Board, or None
        self.records: list[dict] = []
        self.lines = 0  # lines in metrics_path, counting those of an earlier (resumed) process

    def log(self, record: dict) -> None:
        self.records.append(record)
        self.lines += 1
        if self.metrics_path is not None:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.echo is not None:
            self.echo(format_record(record))
        if self.board is not None:
            self.board.record(record)

    def parameters(self, module, prefix: str, step: int) -> None:
        """A trained module's parameters at the end of an epoch (to TensorBoard, if any)."""
        if self.board is not None:
            self.board.parameters(module, prefix, step)

    def bar(self, total: int, desc: str) -> tqdm:
        """A progress bar on stderr for ``total`` batches (a silent one unless ``progress``)."""
        return tqdm(total=total, desc=desc, leave=False, unit="batch", dynamic_ncols=True, disable=not self.progress)


def format_record(record: dict) -> str:
    parts = []
    for k, v in record.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)
