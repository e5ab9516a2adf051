"""The one training loop that pretraining and fine-tuning share.

``run_loop`` knows no unit and no model: it shuffles the data once per epoch with its
own generator, cuts minibatches (the last one may be short), calls ``step`` on each, and
calls ``end_epoch`` to collect metrics and decide whether to stop. The data is in memory
or streamed from disk (``streams``): the loop sees only its order and its batches. Progress and metrics
go through a ``Reporter``; the library itself never prints.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from typing import Callable

import torch

from layerwise.data.streams import as_data
from layerwise.reporting.reporter import Reporter
from layerwise.training.guard import Rollback
from layerwise._checks import InvalidInput


_stop_requested = False


def request_stop() -> None:
    """Ask every running loop to checkpoint at its next batch boundary and then raise
    KeyboardInterrupt (the CLI calls this on the first Ctrl-C)."""
    global _stop_requested
    _stop_requested = True


def stop_requested() -> bool:
    return _stop_requested


def clear_stop() -> None:
    global _stop_requested
    _stop_requested = False


@dataclass
class LoopPosition:
    """Where a loop stands: the epoch under way, how many of its batches are done, and
    that epoch's data order (None between epochs). Saved in checkpoints."""

    epoch: int = 0
    batch: int = 0
    order: torch.Tensor | None = None
    stopped: bool = False  # end_epoch asked to stop (early stopping)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "order": self.order, "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch, self.order, self.stopped = state["epoch"], state["batch"], state["order"], state["stopped"]


class Checkpointer:
    """When to checkpoint: after every ``every_epochs`` epochs and/or when
    ``every_seconds`` have passed (checked after each batch), or every ``every_batches``
    batches. ``save(position)`` writes the state; the owner of the loop supplies it. The
    loop asks whether a checkpoint is due, has the guard verify the weights, then saves."""

    def __init__(self, save: Callable[[LoopPosition], None], *, every_epochs: int | None = 1,
                 every_seconds: float | None = None, every_batches: int | None = None):
        self.save = save
        self.every_epochs = every_epochs
        self.every_seconds = every_seconds
        self.every_batches = every_batches
        self._last = time.monotonic()
        self._batches = 0

    def save_now(self, pos: LoopPosition) -> None:
        self.save(pos)
        self._last = time.monotonic()

    def due_after_batch(self) -> bool:
        """Count a batch; True when a mid-epoch checkpoint is due."""
        self._batches += 1
        return bool((self.every_batches and self._batches % self.every_batches == 0) or (
            self.every_seconds and time.monotonic() - self._last >= self.every_seconds))

    def due_after_epoch(self, pos: LoopPosition) -> bool:
        return bool(self.every_epochs and (pos.epoch % self.every_epochs == 0 or pos.stopped))


def kill_point(desc: str, rank: int = 0) -> tuple[int, int, str] | None:
    """For tests that kill a run at a chosen batch, deterministically: the
    ``LAYERWISE_TEST_KILL`` environment variable lists, comma-separated, one kill point
    per life of the process (its restart count under torchrun, else 0), each
    ``[RANK/]LOOP@EPOCH.BATCH[:INT|:GROUPINT]``: in the loop whose description starts
    with LOOP ("pretrain layer 2", "finetune"), right after batch BATCH of epoch EPOCH
    (both counted from 1), the process sends itself SIGKILL; SIGINT with ``:INT``, as a
    Ctrl-C does; with ``:GROUPINT``, SIGINT to its parent's process group, as a Ctrl-C in
    a terminal reaches a --workers run (the command and PyTorch's launcher, which stops
    the workers: they run in sessions of their own). Returns (epoch, batch, how), or None."""
    spec = os.environ.get("LAYERWISE_TEST_KILL")
    if not spec:
        return None
    lives = spec.split(",")
    life = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if life >= len(lives) or not lives[life].strip():
        return None
    m = re.fullmatch(r"(?:(\d+)/)?(.+)@(\d+)\.(\d+)(?::(INT|GROUPINT))?", lives[life].strip())
    if m is None:
        raise InvalidInput(f"LAYERWISE_TEST_KILL: cannot read {lives[life]!r}; expected [RANK/]LOOP@EPOCH.BATCH[:INT|:GROUPINT]")
    who, loop, epoch, batch, how = m.groups()
    if (who is not None and int(who) != rank) or not desc.startswith(loop):
        return None
    return int(epoch), int(batch), how or "KILL"


def _kill(how: str) -> None:
    if how == "GROUPINT":
        os.killpg(os.getpgid(os.getppid()), signal.SIGINT)
    else:
        os.kill(os.getpid(), signal.SIGINT if how == "INT" else signal.SIGKILL)


def _checkpoint(checkpointer: Checkpointer, guard, pos: LoopPosition) -> None:
    """Nothing diverged is ever saved: the guard looks at the weights first (and rolls
    back instead, raising Rollback, if they hold NaN or Inf)."""
    if guard is not None:
        guard.verify(pos.epoch, pos.batch)
    checkpointer.save_now(pos)


def run_loop(
    *,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    data=None,
    batch_size: int,
    epochs: int,
    generator: torch.Generator,
    step: Callable[[torch.Tensor, torch.Tensor | None, int], float | None],
    end_epoch: Callable[[int, float], bool],
    reporter: Reporter,
    desc: str,
    position: LoopPosition | None = None,
    checkpointer: Checkpointer | None = None,
    guard=None,
    averager=None,
) -> int:
    """Train until ``epochs`` epochs are done; return the number of epochs run.

    The data is ``x`` and ``y`` (tensors), or ``data`` (``streams.TensorData`` or
    ``streams.ShardedData``). ``step(xb, yb, epoch)`` is called per minibatch;
    ``end_epoch(epoch, seconds)`` after each epoch returns True to stop early. ``position`` (updated in place) resumes a loop
    where a checkpoint left it: same epoch, same data order, next batch.
    """
    
    data = as_data(x, y) if data is None else data
    pos = position if position is not None else LoopPosition()
    rank, world = (averager.rank, averager.world) if averager is not None else (0, 1)
    n_batches = (data.share(world) + batch_size - 1) // batch_size
    kill = kill_point(desc, rank)
    while pos.epoch < epochs and not pos.stopped:
        epoch = pos.epoch
        t0 = time.perf_counter()
        if pos.order is None:
            pos.order, pos.batch = data.epoch_order(generator, rank, world), 0
        batches = data.batches(pos.order, batch_size, pos.batch, rank, world)
        bar = reporter.bar(n_batches, f"{desc} epoch {epoch + 1}/{epochs}")
        bar.update(pos.batch)
        if averager is not None:
            # rounds fall every k batches of an epoch (and at its end), counted from the
            # epoch start: the schedule follows the position, so a resumed group keeps it
            averager.step = pos.batch
        try:
            while pos.batch < n_batches:
                xb, yb = next(batches)
                loss = step(xb, yb, epoch)
                pos.batch += 1
                bar.update()
                if averager is not None:
                    averager.after_step()
                if guard is not None and world == 1:  # distributed: NaN shows at the averaging round
                    guard.after_batch(epoch, pos.batch, loss)
                if kill is not None and kill[:2] == (epoch + 1, pos.batch):
                    _kill(kill[2])
                if _stop_requested:
                    if checkpointer is not None:
                        _checkpoint(checkpointer, guard, pos)  # a consistent state: between two batches
                    raise KeyboardInterrupt
                if checkpointer is not None and pos.batch < n_batches and checkpointer.due_after_batch():
                    _checkpoint(checkpointer, guard, pos)
            if averager is not None:
                averager.average_now()  # validation and early stopping see the averaged weights
            stop = end_epoch(epoch, time.perf_counter() - t0)
        except FloatingPointError as e:  # a worker diverged: every rank sees it at the same round
            if guard is None:
                raise
            try:
                guard.diverge(str(e), epoch, pos.batch)
            except Rollback:
                pos.batch = 0
                if averager is not None:
                    averager.restart()  # the restored weights are the outer optimizer's new anchor
                continue
        except Rollback:
            # the guard restored the best weights so far and lowered the rate: run the
            # epoch again, same data order
            pos.batch = 0
            if averager is not None:
                averager.restart()
            continue
        finally:
            bar.close()
        pos.epoch, pos.batch, pos.order, pos.stopped = epoch + 1, 0, None, bool(stop)
        if checkpointer is not None and checkpointer.due_after_epoch(pos):
            _checkpoint(checkpointer, guard, pos)
    return pos.epoch
