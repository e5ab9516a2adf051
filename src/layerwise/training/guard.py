"""Divergence detection (pure checks) and the guard that acts on it (rollback, lower
learning rate, stop with a diagnosis).

Policy and mechanism are split as in PyTorch's model averaging: the functions below look
at numbers and say what is wrong; ``DivergenceGuard`` owns the state (the last good
weights, held in memory and saved with every checkpoint, the rollback count, the
learning-rate scale) and decides.

A diverged net has stopped learning (the guide): NaN or Inf in weights or loss, weights
that grew far past their starting size, or a loss that rises epoch after epoch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from layerwise._checks import LayerwiseError
from layerwise.config import GuardConfig

# -- pure checks ----------------------------------------------------------------------


def first_non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first tensor holding NaN or Inf, else None. One reduction per
    tensor: sum() is NaN/Inf exactly when some element is (or when it overflows, which
    counts as divergence too)."""
    for name, t in named:
        if t.numel() and not math.isfinite(float(t.detach().sum())):
            return name
    return None


def weight_norm(params: Iterable[torch.Tensor]) -> float:
    return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in params))


def grew_past(norm: float, start: float, factor: float) -> bool:
    """True when a weight norm exceeds ``factor`` times its starting value (with a floor,
    so nets that start near zero are not flagged for ordinary growth)."""
    return norm > factor * max(start, 1.0)


def worse_than_best_for(history: list[float], k: int, tolerance: float = 0.05) -> bool:
    """True when each of the last ``k`` values is more than ``tolerance`` (relative)
    above the best value before them: the loss has risen and is not coming back. (A
    strictly rising test misses the oscillating blow-ups seen at very high rates.)"""
    if len(history) < k + 1:
        return False
    best = min(history[:-k])
    margin = max(tolerance * abs(best), 1e-3)  # near-zero losses: an absolute floor
    return all(v > best + margin for v in history[-k:])


def dead_fraction(h_mean: torch.Tensor, min_std: float = 0.01, edge: float = 0.02) -> float:
    """Fraction of hidden units saturated: always on or always off (mean probability
    within ``edge`` of 0 or 1 and std over the inputs below ``min_std``), carrying no
    information. Units near 0.5 that have not differentiated yet (small initial weights)
    do not count. ``h_mean`` is (samples, n_hidden). Healthy MNIST and digits layers
    measured 0.0; layers blown up by a learning rate of 10 measured 0.88-1.0."""
    if h_mean.shape[0] < 2:
        return 0.0
    mean, std = h_mean.mean(0), h_mean.std(0)
    saturated = (std < min_std) & ((mean < edge) | (mean > 1 - edge))
    return float(saturated.float().mean())


# -- the stateful guard ---------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the guard found, for the loop to act on: ``ok``; ``rollback`` (the last good
    state is restored and the rate lowered: run the epoch again); ``stop`` (diverged more
    often than allowed: ``diagnosis`` says what, where, and what to change)."""

    action: str  # "ok" | "rollback" | "stop"
    what: str = ""
    diagnosis: str = ""

    @property
    def ok(self) -> bool:
        return self.action == "ok"

    def error(self) -> DivergenceError:
        """The error a ``stop`` ends the run with."""
        return DivergenceError(self.diagnosis, self.what)


OK = Verdict("ok")


class DivergenceError(LayerwiseError, RuntimeError):
    """Training diverged more times than the guard allows; the message is the diagnosis,
    ``what`` the last thing found (for example "NaN or Inf in weight")."""

    def __init__(self, message: str, what: str = ""):
        super().__init__(message)
        self.what = what


@dataclass
class GuardEvent:
    what: str
    where: str
    epoch: int
    batch: int | None  # None: found at the end of the epoch
    lr_before: float
    lr_after: float

    def to_dict(self) -> dict:
        return {
            "phase": "guard",
            "event": "rollback",
            "what": self.what,
            "where": self.where,
            "epoch": self.epoch,
            "batch": self.batch,
            "lr_before": self.lr_before,
            "lr_after": self.lr_after,
        }

    @classmethod
    def from_dict(cls, d: dict) -> GuardEvent:
        return cls(d["what"], d["where"], d["epoch"], d["batch"], d["lr_before"], d["lr_after"])


@dataclass
class DivergenceGuard:
    """Watches one module (and optionally its optimizer) during a training loop.

    - ``check_every``: look for NaN/Inf in the weights every N batches (and in the loss
      every batch, where the loop has one); the cost is one reduction per tensor.
    - ``max_growth``: weight norm past this multiple of its starting value is divergence.
    - ``max_dead``: more than this fraction of saturated hidden units is divergence.
    - ``rising_epochs``: the monitored loss staying more than 5% above its best for this
      many epochs is divergence.
    - on divergence: restore the weights (and optimizer state) of the best epoch so far,
      multiply the learning rate by ``lr_factor``, log the event, restart the epoch;
      after ``max_rollbacks`` rollbacks, a ``stop`` verdict with a diagnosis.
    """

    module: nn.Module
    where: str
    lr: float
    optimizer: torch.optim.Optimizer | None = None
    lr_factor: float = 0.5
    max_rollbacks: int = 3
    max_growth: float = 1000.0  # healthy MNIST layers grew 11-22x from N(0, 0.01^2)
    rising_epochs: int = 3
    check_every: int = 10
    max_dead: float = 0.5
    log: Callable[[dict], None] | None = None
    on_rollback: Callable[[], None] | None = None  # e.g. reset a loss accumulator
    rate_key: str | None = None  # the recipe key of the rate, named in the diagnosis (pretrain.learning_rate)
    events: list = field(default_factory=list)

    def __post_init__(self):
        self.start_norm = weight_norm(self.module.parameters())
        self.history: list[float] = []
        self._batches = 0
        self.snapshot()

    @property
    def lr_scale(self) -> float:
        return self.lr_factor ** len(self.events)

    @property
    def current_lr(self) -> float:
        return self.lr * self.lr_scale

    def state_dict(self) -> dict:
        """What a checkpoint holds so that a resumed guard acts as this one would: the
        last good weights and optimizer state, the loss histories, the batch counter and
        the rollbacks so far."""
        return {
            "good": self._good,
            "good_optimizer": self._good_opt,
            "start_norm": self.start_norm,
            "history": list(self.history),
            "good_history": list(self._good_history),
            "batches": self._batches,
            "events": [e.to_dict() for e in self.events],
        }

    def load_state_dict(self, state: dict) -> None:
        self._good = {k: v.clone() for k, v in state["good"].items()}
        self._good_opt = copy.deepcopy(state["good_optimizer"])
        self.start_norm = state["start_norm"]
        self.history = list(state["history"])
        self._good_history = list(state["good_history"])
        self._batches = state["batches"]
        self.events = [GuardEvent.from_dict(e) for e in state["events"]]

    def snapshot(self) -> None:
        """Remember the current state as the last good one (in memory; checkpoints save it
        through ``state_dict()``)."""
        self._good = copy.deepcopy(self.module.state_dict())
        self._good_opt = None if self.optimizer is None else copy.deepcopy(self.optimizer.state_dict())
        self._good_history = list(self.history)

    def diverge(self, what: str, epoch: int, batch: int) -> Verdict:
        """Act on a divergence: restore the best state, lower the rate, log, and return a
        ``rollback``; after ``max_rollbacks`` return a ``stop`` with the diagnosis instead.
        ``batch`` < 0 means it was found at the end of the epoch."""
        before = self.current_lr
        if len(self.events) >= self.max_rollbacks:
            rates = " -> ".join(f"{self.lr * self.lr_factor**i:g}" for i in range(len(self.events) + 1))
            when = f"at the end of epoch {epoch + 1}" if batch < 0 else f"at epoch {epoch + 1}, batch {batch}"
            return Verdict(
                "stop",
                what,
                f"{self.where} diverged {when}: {what}, at learning rate {before:g} "
                f"after {len(self.events)} rollbacks (rates tried: {rates}). Nothing diverged was saved. "
                f"Fix: set {self.rate_key or 'the learning rate'} below {before:g} (the guide's default is 0.01), or "
                "measure a stable rate with `layerwise probe-lr`",
            )
        self.module.load_state_dict(self._good)
        if self.optimizer is not None:
            # a copy: load_state_dict keeps the given tensors as the optimizer's own, and
            # the next step would then change the good state in place
            self.optimizer.load_state_dict(copy.deepcopy(self._good_opt))
        self.history = list(self._good_history)
        event = GuardEvent(what, self.where, epoch + 1, None if batch < 0 else batch, before, before * self.lr_factor)
        self.events.append(event)
        if self.log is not None:
            self.log(event.to_dict())
        if self.on_rollback is not None:
            self.on_rollback()
        return Verdict("rollback", what)

    def after_batch(self, epoch: int, batch: int, loss: float | None = None) -> Verdict:
        if loss is not None and not math.isfinite(loss):
            return self.diverge(f"loss is {loss}", epoch, batch)
        self._batches += 1
        if self._batches % self.check_every == 0:
            return self.verify(epoch, batch)
        return OK

    def verify(self, epoch: int, batch: int) -> Verdict:
        """Full NaN/Inf check of the weights; rolls back if any (call before a checkpoint)."""
        bad = first_non_finite(self.module.named_parameters())
        return OK if bad is None else self.diverge(f"NaN or Inf in {bad}", epoch, batch)

    def after_epoch(self, epoch: int, batch: int, monitored: float, dead: float | None = None) -> Verdict:
        """Epoch-end checks on the monitored loss and the weight norm; the best healthy
        epoch so far is the state a rollback returns to."""
        found = self._epoch_problem(monitored, dead)
        if found is not None:
            return self.diverge(found, epoch, batch)
        if monitored <= min(self.history):
            self.snapshot()  # the best state so far is the one to roll back to
        return OK

    def _epoch_problem(self, monitored: float, dead: float | None) -> str | None:
        """What is wrong at the end of an epoch (None: nothing); a healthy epoch's loss
        joins the history."""
        bad = first_non_finite(self.module.named_parameters())
        if bad is not None:
            return f"NaN or Inf in {bad}"
        if not math.isfinite(monitored):
            return f"the monitored loss is {monitored}"
        norm = weight_norm(self.module.parameters())
        if grew_past(norm, self.start_norm, self.max_growth):
            return f"weight norm {norm:.3g} grew past {self.max_growth:g}x its start ({self.start_norm:.3g})"
        if dead is not None and dead > self.max_dead:
            return f"{100 * dead:.0f}% of the hidden units are saturated (always on or off)"
        self.history.append(monitored)
        if worse_than_best_for(self.history, self.rising_epochs):
            return (
                f"the monitored loss stayed above its best ({min(self.history):.4g}) for {self.rising_epochs} "
                f"epochs ({', '.join(f'{h:.4g}' for h in self.history[-self.rising_epochs :])})"
            )
        return None


def make_guard(
    cfg: GuardConfig | None,
    module,
    where: str,
    lr: float,
    optimizer,
    records: list,
    reporter,
    state: dict | None = None,
):
    """A DivergenceGuard from its config (None when disabled) that logs its rollbacks
    to the records and the reporter; ``state`` (a checkpointed ``state_dict``) continues one."""
    if cfg is None or not cfg.enabled:
        return None

    def log(event: dict) -> None:
        records.append(event)
        reporter.log(event)

    guard = DivergenceGuard(
        module,
        where,
        lr,
        optimizer,
        lr_factor=cfg.lr_factor,
        max_rollbacks=cfg.max_rollbacks,
        max_growth=cfg.max_growth,
        rising_epochs=cfg.rising_epochs,
        check_every=cfg.check_every,
        max_dead=cfg.max_dead,
        log=log,
        rate_key="finetune.learning_rate" if where == "fine-tuning" else "pretrain.learning_rate",
    )
    if state is not None:
        guard.load_state_dict(state)
    return guard
