"""Parameter averaging over torch.distributed: the mechanism (stateless functions) and
the policy (``PeriodicAverager``, which owns the step counter), split as in PyTorch's
``torch.distributed.algorithms.model_averaging``.

Why not PyTorch's own averager: ``get_params_to_average`` keeps only parameters whose
``.grad`` is set, and RBM units are updated by hand under ``no_grad`` with no gradients
at all, so it would average nothing of an RBM; it also never averages buffers or
optimizer state. Here the tensors to average are named explicitly (``trained_tensors``),
and one flat all_reduce carries them all (one call per round: up to twice as fast as one
per tensor for the 1.67M-parameter 784-500-500-2000-10 net).

Process groups (joining, leaving, launching workers) are ``distributed``'s; the loop
calls the averager.
"""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist
from torch import nn

from layerwise._checks import Refused, check_int
from layerwise.training.distributed import collective_device


def trained_tensors(
    module: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, include_optimizer_state: bool = False
) -> list[torch.Tensor]:
    """Every floating tensor that training changes: all parameters (with or without a
    gradient), the floating buffers whose name says they are training state (momentum
    "velocity" buffers of the units), and, when asked, the optimizer's floating state
    (SGD momentum, Adam moments). PCD chains and sparsity statistics are per-worker
    samples and stay local."""
    out = [p.data for p in module.parameters()]
    if include_optimizer_state:
        out += [b for name, b in module.named_buffers() if name.endswith("_velocity")]
        if optimizer is not None:
            for state in optimizer.state.values():
                out += [v for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and k != "step"]
    return out


DRIFT_SAMPLE = 65536  # entries the replica drift is measured on (evenly strided)
DRIFT_FLOOR_RMS = (
    0.1  # default [guard] drift_floor: drift is measured against weights at least this large (RMS per entry)
)


@torch.no_grad()
def average_tensors(
    tensors: list[torch.Tensor], group=None, drift_floor: float = DRIFT_FLOOR_RMS, drift: bool = True
) -> float:
    """Replace each tensor, on every rank, by its mean over the ranks of ``group``, with
    one flat all_reduce; return the replica drift before the round, max over ranks of
    ||local - mean|| / max(||mean||, drift_floor * sqrt(n)) on an evenly strided sample
    of at most DRIFT_SAMPLE entries (the same number on every rank; 0.0 without
    ``drift``, which saves a second collective). Returns NaN when the average is not
    finite: a diverged worker is caught at the round, and nothing is copied back, so no
    finite replica takes the NaN."""
    if not tensors:
        return 0.0
    world = dist.get_world_size(group)
    flat = torch.cat([t.reshape(-1) for t in tensors])  # one buffer, one all_reduce
    # the drift is measured on an evenly strided sample of at most DRIFT_SAMPLE entries:
    # a full pass over a large net cost as much as the all_reduce itself
    stride = max(1, flat.numel() // DRIFT_SAMPLE)
    local = flat[::stride].clone() if drift else None
    t0 = time.monotonic()
    try:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    except RuntimeError as e:  # gloo's timeout and lost-peer errors (DistBackendError is one)
        raise Refused(
            f"parameter averaging: no answer from the other workers after {time.monotonic() - t0:.0f} s; "
            f"a worker hung or died (the timeout is distributed.timeout_minutes). Cause: {str(e).splitlines()[0]}"
        ) from None
    flat.div_(world)
    size = float(flat.norm())  # NaN or Inf anywhere in the average shows here (one pass)
    if not math.isfinite(size):
        return math.nan
    spread = 0.0
    if drift:
        # replica drift: how far the farthest worker had moved from the average, relative
        # to the average's size, but never to less than an RMS of drift_floor per entry: a
        # freshly initialized layer (weights ~0.01) is not diverging when its replicas
        # differ by a few updates
        mean = flat[::stride]
        assert local is not None  # taken above with drift
        scale = max(float(mean.norm()), drift_floor * math.sqrt(mean.numel()))
        mine = torch.tensor([float(torch.dist(local, mean)) / scale], dtype=torch.float64, device=flat.device)
        dist.all_reduce(mine, op=dist.ReduceOp.MAX, group=group)
        spread = float(mine)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n
    return spread


class OuterNesterov:
    """An outer optimizer over averaging rounds, after DiLoCo (Douillard et al. 2023).

    Each round, the workers' average moved the weights from the *anchor* (the weights
    of the round before, the same on every worker) to ``avg``. The change, taken as a
    pseudo-gradient ``g = anchor - avg`` (so that a descent step moves toward the
    average), is applied with Nesterov momentum, as ``torch.optim.SGD(nesterov=True)``
    applies a gradient::

        b <- mu * b + g
        w <- anchor - lr * (g + mu * b)  =  avg + (1 - lr) * g - lr * mu * b

    written in the second form, so that ``lr = 1``, ``mu = 0`` gives the average itself,
    bit for bit (plain averaging). The paper used ``lr = 0.7``, ``mu = 0.9``. The anchor
    and momentum are the same on every worker; ``state_dict`` carries the momentum (the
    anchor is the weights themselves right after a round)."""

    def __init__(self, lr: float, momentum: float):
        self.lr, self.momentum = lr, momentum
        self.anchor: list[torch.Tensor] | None = None
        self.buffers: list[torch.Tensor] | None = None

    def reset(self, tensors: list[torch.Tensor], buffers: list[torch.Tensor] | None = None) -> None:
        """Start from these weights (the anchor), with zero momentum or ``buffers``."""
        self.anchor = [t.detach().clone() for t in tensors]
        self.buffers = (
            [torch.zeros_like(t) for t in tensors]
            if buffers is None
            else [b.to(t.device, t.dtype).clone() for b, t in zip(buffers, tensors)]
        )

    @torch.no_grad()
    def step(self, tensors: list[torch.Tensor]) -> None:
        """``tensors`` hold the workers' average; replace them by the outer step's result."""
        if self.anchor is None:
            self.reset(tensors)
            return
        assert self.buffers is not None  # reset() sets them with the anchor
        for t, a, b in zip(tensors, self.anchor, self.buffers):
            g = a - t  # the pseudo-gradient: the average lies at anchor - g
            b.mul_(self.momentum).add_(g)
            t.add_(g, alpha=1 - self.lr).add_(b, alpha=-self.lr * self.momentum)
            a.copy_(t)

    def state_dict(self) -> dict:
        return {"momentum_buffers": None if self.buffers is None else [b.clone() for b in self.buffers]}


class PeriodicAverager:
    """Average the given tensors after every ``period``-th step (steps counted from 1:
    after step k, 2k, ...). ``period`` 1 averages after every step. The training loop
    sets ``step`` to the batch index at each epoch start, so the rounds fall at the same
    batches of every epoch, in a resumed run too."""

    def __init__(
        self,
        period: int,
        tensors_fn,
        group=None,
        *,
        rank: int | None = None,
        world: int | None = None,
        max_drift: float | None = None,
        drift_floor: float = DRIFT_FLOOR_RMS,
        outer: OuterNesterov | None = None,
        outer_fn=None,
    ):
        self.period = check_int("PeriodicAverager", "period", period, low=1)
        self.tensors_fn = tensors_fn
        self.group = group
        self.step = 0
        self.rounds = 0
        self.max_drift = max_drift
        self.drift_floor = drift_floor
        self.last_drift = 0.0
        self.rank = dist.get_rank(group) if rank is None else rank
        self.world = dist.get_world_size(group) if world is None else world
        # the outer optimizer acts on the parameters (``outer_fn``), not on momentum buffers
        self.outer, self.outer_fn = outer, outer_fn
        if outer is not None and outer.anchor is None:
            outer.reset(outer_fn())

    def restart(self) -> None:
        """The weights were set from outside (a guard's rollback): they are the new anchor."""
        if self.outer is not None:
            self.outer.reset(self.outer_fn())

    def after_step(self) -> str | None:
        """Count a step; average when due. Returns what went wrong in the round (see
        ``average_now``), None when no round was due or it went well."""
        self.step += 1
        if self.step % self.period:
            return None
        return self.average_now()

    def average_now(self) -> str | None:
        """Average now. Returns what went wrong, the same on every rank (None: nothing):
        an average holding NaN or Inf (nothing was copied back), or replicas that had
        drifted past ``max_drift``."""
        drift = average_tensors(self.tensors_fn(), self.group, self.drift_floor, drift=self.max_drift is not None)
        if math.isnan(drift):
            return (
                "parameter averaging: the average holds NaN or Inf, so at least one worker diverged "
                "(lower the learning rate; the guide's default is 0.01)"
            )
        self.last_drift = drift
        if self.outer is not None:
            self.outer.step(self.outer_fn())
        self.rounds += 1
        if self.max_drift is not None and self.last_drift > self.max_drift:
            return (
                f"replica drift {self.last_drift:.3g}: before averaging round {self.rounds} a worker's parameters "
                f"were {self.last_drift:.3g}x the size of the average away from it (bound {self.max_drift:g})"
            )
        return None


def make_averager(
    distributed,
    guard,
    module: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    outer_state: dict | None = None,
):
    """The averager of a training loop from the [distributed] and [guard] configs: every
    trained tensor of ``module`` (and the optimizer state when asked), the guard's
    replica-drift bound when the guard is on, the outer optimizer when asked (its
    momentum from ``outer_state``, a checkpointed ``OuterNesterov.state_dict``). None
    outside a distributed run."""
    if distributed is None:
        return None
    outer = None
    if distributed.outer_optimizer == "nesterov":
        outer = OuterNesterov(distributed.outer_lr, distributed.outer_momentum)
        outer.reset([p.data for p in module.parameters()], (outer_state or {}).get("momentum_buffers"))
    return PeriodicAverager(
        distributed.averaging_frequency,
        lambda: trained_tensors(module, optimizer, include_optimizer_state=distributed.average_optimizer_state),
        max_drift=guard.max_drift if guard is not None and guard.enabled else None,
        drift_floor=guard.drift_floor if guard is not None else DRIFT_FLOOR_RMS,
        outer=outer,
        outer_fn=lambda: [p.data for p in module.parameters()],
    )


def from_rank0(values: list[float]) -> list[float]:
    """Rank 0's values on every rank (a broadcast), so that decisions taken on them (early
    stopping, the guard) cannot split the group when last-bit differences between
    machines make the ranks' own numbers differ. Unchanged outside a distributed run."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.broadcast(t, src=0)
    return [float(v) for v in t]
