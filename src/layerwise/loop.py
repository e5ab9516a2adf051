"""The one training loop that pretraining and fine-tuning share.

``run_loop`` knows no unit and no model: it shuffles the data once per epoch with its
own generator, cuts minibatches (the last one may be short), calls ``step`` on each, and
calls ``end_epoch`` to collect metrics and decide whether to stop. Progress and metrics
go through a ``Reporter``; the library itself never prints.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


class Reporter:
    """Where progress and metrics go. The default is silent.

    ``metrics_path``: a ``metrics.jsonl`` file that gets one JSON object per record,
    flushed as it is written. ``progress``: show tqdm bars on stderr. ``echo``: a
    callable that receives a one-line summary of each record (the CLI passes a printer).
    """

    def __init__(self, metrics_path: str | Path | None = None, *, progress: bool = False, echo=None):
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.progress = progress
        self.echo = echo
        self.records: list[dict] = []

    def log(self, record: dict) -> None:
        self.records.append(record)
        if self.metrics_path is not None:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.echo is not None:
            self.echo(format_record(record))

    def bar(self, total: int, desc: str):
        if not self.progress:
            return _NullBar()
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, unit="batch", dynamic_ncols=True)


def format_record(record: dict) -> str:
    parts = []
    for k, v in record.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


def run_loop(
    *,
    x: torch.Tensor,
    y: torch.Tensor | None,
    batch_size: int,
    epochs: int,
    generator: torch.Generator,
    step: Callable[[torch.Tensor, torch.Tensor | None, int], None],
    end_epoch: Callable[[int, float], bool],
    reporter: Reporter,
    desc: str,
) -> int:
    """Train for up to ``epochs`` epochs; return the number of epochs run.

    ``step(xb, yb, epoch)`` is called per minibatch; ``end_epoch(epoch, seconds)`` after
    each epoch returns True to stop early.
    """
    n = x.shape[0]
    n_batches = (n + batch_size - 1) // batch_size
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        # one gather per epoch, then contiguous slices: no per-batch copies
        xs = x.index_select(0, order)
        ys = None if y is None else y.index_select(0, order)
        bar = reporter.bar(n_batches, f"{desc} epoch {epoch + 1}/{epochs}")
        try:
            for start in range(0, n, batch_size):
                step(xs[start : start + batch_size], None if ys is None else ys[start : start + batch_size], epoch)
                bar.update()
        finally:
            bar.close()
        if end_epoch(epoch, time.perf_counter() - t0):
            return epoch + 1
    return epochs
