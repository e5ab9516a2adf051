"""The one training loop that pretraining and fine-tuning share.

``run_loop`` knows no unit and no model: it shuffles the data once per epoch with its
own generator, cuts minibatches (the last one may be short), calls ``step`` on each, and
calls ``end_epoch`` to collect metrics and decide whether to stop. The data is in memory
or streamed from disk (``streams``): the loop sees only its order and its batches.
Progress and metrics go through a ``Reporter``; the library itself never prints.

Every trick that acts during training hooks in here once, as a plain call that returns:
the guard's ``Verdict`` (go on, roll back and run the epoch again, or stop with a
diagnosis), the averager's round (a non-finite round comes back as a value), the
checkpointer, and the ``LoopControl`` that the job owns (a Ctrl-C's stop request, and
hooks that run after every batch).
"""

from __future__ import annotations

import importlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from layerwise._checks import InvalidInput
from layerwise.data.streams import LoopData, as_data
from layerwise.reporting.reporter import Reporter
from layerwise.training.guard import OK, DivergenceError, DivergenceGuard, Verdict

BatchHook = Callable[[str, int, int, int], None]  # (loop description, rank, epoch from 1, batch from 1)


def hooks_from_env() -> list[BatchHook]:
    """The batch hook that ``LAYERWISE_BATCH_HOOK=module:function`` names, if any (as
    ``PYTHONBREAKPOINT`` names a debugger): how a test injects a fault at a chosen batch
    of a worker process it cannot reach otherwise."""
    spec = os.environ.get("LAYERWISE_BATCH_HOOK")
    if not spec:
        return []
    module, _, name = spec.partition(":")
    try:
        return [getattr(importlib.import_module(module), name)]
    except (ImportError, AttributeError) as e:
        raise InvalidInput(f"LAYERWISE_BATCH_HOOK={spec!r}: cannot load it ({e}); expected module:function") from None


@dataclass
class LoopControl:
    """What steers running loops from outside, owned by the job that runs them: a stop
    request (the command's first Ctrl-C: checkpoint at the next batch boundary, then
    raise KeyboardInterrupt), and ``hooks`` called after every batch."""

    hooks: list[BatchHook] = field(default_factory=hooks_from_env)
    stop_requested: bool = False

    def request_stop(self) -> None:
        self.stop_requested = True

    def stop_on_first_interrupt(self, then: Callable[[], None] | None = None) -> None:
        """Install a SIGINT handler: the first Ctrl-C requests a stop (and calls ``then``,
        say to tell the user), and gives way to Python's own, so a second one stops at once."""

        def handler(signum, frame) -> None:
            self.request_stop()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if then is not None:
                then()

        signal.signal(signal.SIGINT, handler)


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
        self.epoch, self.batch, self.order, self.stopped = (
            state["epoch"],
            state["batch"],
            state["order"],
            state["stopped"],
        )


class Checkpointer:
    """When to checkpoint: after every ``every_epochs`` epochs and/or when
    ``every_seconds`` have passed (checked after each batch), or every ``every_batches``
    batches. ``save(position)`` writes the state; the owner of the loop supplies it. The
    loop asks whether a checkpoint is due, has the guard verify the weights, then saves."""

    def __init__(
        self,
        save: Callable[[LoopPosition], None],
        *,
        every_epochs: int | None = 1,
        every_seconds: float | None = None,
        every_batches: int | None = None,
    ):
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
        return bool(
            (self.every_batches and self._batches % self.every_batches == 0)
            or (self.every_seconds and time.monotonic() - self._last >= self.every_seconds)
        )

    def due_after_epoch(self, pos: LoopPosition) -> bool:
        return bool(self.every_epochs and (pos.epoch % self.every_epochs == 0 or pos.stopped))


def _checkpoint(checkpointer: Checkpointer, guard: DivergenceGuard | None, pos: LoopPosition) -> Verdict:
    """Nothing diverged is ever saved: the guard looks at the weights first (and rolls
    back instead, if they hold NaN or Inf)."""
    verdict = OK if guard is None else guard.verify(pos.epoch, pos.batch)
    if verdict.ok:
        checkpointer.save_now(pos)
    return verdict


def run_loop(
    *,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    data: LoopData | None = None,
    batch_size: int,
    epochs: int,
    generator: torch.Generator,
    step: Callable[[torch.Tensor, torch.Tensor | None, int], float | None],
    end_epoch: Callable[[int, float], bool | Verdict],
    reporter: Reporter,
    desc: str,
    position: LoopPosition | None = None,
    checkpointer: Checkpointer | None = None,
    guard: DivergenceGuard | None = None,
    averager=None,
    control: LoopControl | None = None,
) -> int:
    """Train until ``epochs`` epochs are done; return the number of epochs run.

    The data is ``x`` and ``y`` (tensors), or ``data`` (``streams.TensorData`` or
    ``streams.ShardedData``). ``step(xb, yb, epoch)`` is called per minibatch;
    ``end_epoch(epoch, seconds)`` after each epoch returns True to stop early, or the
    guard's verdict when it was not ``ok``. ``position`` (updated in place) resumes a
    loop where a checkpoint left it: same epoch, same data order, next batch.
    """
    data = as_data(x, y) if data is None else data
    pos = position if position is not None else LoopPosition()
    control = control if control is not None else LoopControl()
    rank, world = (averager.rank, averager.world) if averager is not None else (0, 1)
    n_batches = (data.share(world) + batch_size - 1) // batch_size
    while pos.epoch < epochs and not pos.stopped:
        verdict, stop = _epoch(
            data,
            pos,
            epochs,
            batch_size,
            n_batches,
            generator,
            step,
            end_epoch,
            reporter,
            desc,
            checkpointer,
            guard,
            averager,
            control,
            rank,
            world,
        )
        if verdict.action == "stop":
            raise verdict.error()
        if verdict.action == "rollback":
            # the guard restored the best weights so far and lowered the rate: run the
            # epoch again, same data order; the restored weights anchor the outer optimizer
            pos.batch = 0
            if averager is not None:
                averager.restart()
            continue
        pos.epoch, pos.batch, pos.order, pos.stopped = pos.epoch + 1, 0, None, stop
        if checkpointer is not None and checkpointer.due_after_epoch(pos):
            # end_epoch's guard has just checked these weights: a rollback cannot come here
            verdict = _checkpoint(checkpointer, guard, pos)
            if verdict.action == "stop":
                raise verdict.error()
    return pos.epoch


def _epoch(
    data: LoopData,
    pos: LoopPosition,
    epochs: int,
    batch_size: int,
    n_batches: int,
    generator,
    step,
    end_epoch,
    reporter: Reporter,
    desc: str,
    checkpointer,
    guard,
    averager,
    control: LoopControl,
    rank: int,
    world: int,
) -> tuple[Verdict, bool]:
    """Run the rest of the epoch at ``pos``; return the first verdict that was not ``ok``
    (the epoch cut short) or ``ok``, and whether ``end_epoch`` asked to stop."""
    epoch = pos.epoch
    t0 = time.perf_counter()
    if pos.order is None:
        pos.order, pos.batch = data.epoch_order(generator, rank, world), 0
    batches = data.batches(pos.order, batch_size, pos.batch, rank, world)
    if averager is not None:
        # rounds fall every k batches of an epoch (and at its end), counted from the
        # epoch start: the schedule follows the position, so a resumed group keeps it
        averager.step = pos.batch
    with reporter.bar(n_batches, f"{desc} epoch {epoch + 1}/{epochs}") as bar:
        bar.update(pos.batch)
        while pos.batch < n_batches:
            xb, yb = next(batches)
            loss = step(xb, yb, epoch)
            pos.batch += 1
            bar.update()
            problem = None if averager is None else averager.after_step()
            verdict = _judge(guard, problem, epoch, pos.batch, loss, world)
            if not verdict.ok:
                return verdict, False
            for hook in control.hooks:
                hook(desc, rank, epoch + 1, pos.batch)
            if control.stop_requested:
                if checkpointer is not None:  # a consistent state: between two batches
                    verdict = _checkpoint(checkpointer, guard, pos)
                    if not verdict.ok:
                        return verdict, False
                raise KeyboardInterrupt
            if checkpointer is not None and pos.batch < n_batches and checkpointer.due_after_batch():
                verdict = _checkpoint(checkpointer, guard, pos)
                if not verdict.ok:
                    return verdict, False
        problem = None if averager is None else averager.average_now()  # validation sees the averaged weights
        verdict = _judge(guard, problem, epoch, pos.batch, None, world, every_batch=False)
        if not verdict.ok:
            return verdict, False
        outcome = end_epoch(epoch, time.perf_counter() - t0)
    if isinstance(outcome, Verdict):
        return outcome, False
    return OK, bool(outcome)


def _judge(
    guard: DivergenceGuard | None,
    problem: str | None,
    epoch: int,
    batch: int,
    loss: float | None,
    world: int,
    every_batch: bool = True,
) -> Verdict:
    """The guard's verdict after a batch: on an averaging round that went wrong (every
    rank sees it at the same round), else on the batch's loss and weights (one process:
    in a group, NaN shows at the averaging round)."""
    if problem is not None:
        if guard is None:
            raise DivergenceError(problem, problem)
        return guard.diverge(problem, epoch, batch)
    if guard is not None and world == 1 and every_batch:
        return guard.after_batch(epoch, batch, loss)
    return OK
