"""Supervised fine-tuning by backpropagation, on the shared loop.

Cross-entropy on the labels, SGD with momentum or Adam, optional dropout (already in the
classifier), a learning-rate schedule, and early stopping on validation loss that keeps
the best weights. With ``train_on_validation`` the validation data joins the training
data and the net trains for the fixed epoch count (as Hinton & Salakhutdinov did on all
60k MNIST images); no early stopping is possible then.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from layerwise import _devices
from layerwise._devices import device_generator
from layerwise.config import DistributedConfig, FinetuneConfig, GuardConfig
from layerwise.data.streams import as_data, concat
from layerwise.reporting.reporter import Reporter
from layerwise.training.averaging import PeriodicAverager, from_rank0, make_averager
from layerwise.training.distributed import collective_device
from layerwise.training.fused import FusedClassifierStep
from layerwise.training.guard import DivergenceGuard, make_guard
from layerwise.training.loop import Checkpointer, LoopControl, LoopPosition, run_loop


def _device_rng(device: torch.device):
    """The default generator state of a GPU (what nn.Dropout draws from there)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@dataclass
class FinetuneResult:
    model: nn.Module
    records: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_validation_loss: float | None = None
    epochs_run: int = 0


def lr_at(cfg: FinetuneConfig, epoch: int) -> float:
    if cfg.lr_schedule == "exponential":
        return cfg.learning_rate * cfg.lr_decay**epoch
    if cfg.lr_schedule == "cosine":
        return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / max(cfg.epochs, 1)))
    return cfg.learning_rate


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _chunks(x, y, chunk: int):
    """(x, y) chunks of tensors (anywhere) or of loop data (``streams``), in order."""
    if hasattr(x, "chunks"):
        yield from x.chunks(chunk)
        return
    for s in range(0, len(x), chunk):
        yield x[s : s + chunk], None if y is None else y[s : s + chunk]


@torch.no_grad()
def evaluate(model: nn.Module, x, y: torch.Tensor | None = None, chunk: int = 10000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (a fraction) of ``model`` on (x, y), in eval mode,
    on the model's device (chunks are moved there). ``x`` may be loop data with labels
    (``streams.TensorData`` / ``ShardedData``), ``y`` then None."""
    was_training = model.training
    model.eval()
    device = _device(model)
    loss, correct, n = 0.0, 0, 0
    for xb, yb in _chunks(x, y, chunk):
        xb, yb = xb.to(device), yb.to(device)
        logits = model(xb)
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
        n += len(xb)
    model.train(was_training)
    return loss / n, correct / n


@torch.no_grad()
def predict_proba(model: nn.Module, x, chunk: int = 10000) -> torch.Tensor:
    """Class probabilities (rows, labels) on the CPU, computed on the model's device."""
    was_training = model.training
    model.eval()
    device = _device(model)
    out = torch.cat([torch.softmax(model(xb.to(device)), 1).cpu() for xb, _ in _chunks(x, None, chunk)])
    model.train(was_training)
    return out


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor, precision: str = "fp32"
) -> torch.Tensor:
    """One backprop step; returns the loss as a tensor on the device (no sync). In bf16
    the forward pass runs under autocast (bf16 products, fp32 loss); the parameters and
    the optimizer state stay fp32."""
    if _devices.bf16_products(precision, xb.device):
        with torch.autocast(xb.device.type, dtype=torch.bfloat16):
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb)
    else:
        loss = F.cross_entropy(model(xb), yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def apply_max_norm(model: nn.Module, c: float) -> None:
    """Scale down every unit's incoming weights (each row of each Linear weight) whose L2
    norm exceeds ``c`` to norm ``c`` (the max-norm constraint of Srivastava et al. 2014)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            norms = torch.linalg.vector_norm(m.weight, dim=1, keepdim=True)
            if bool((norms > c).any()):  # one check per layer (renorm_ was 100x slower here)
                m.weight.mul_(torch.clamp(c / norms, max=1.0))


def make_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


@dataclass
class FinetuneState:
    """Everything fine-tuning carries between batches besides the model and optimizer:
    the loop position and data-order generator, the epoch's loss accumulators, the
    early-stopping state, the records, and the guard (set by ``finetune``). Its
    ``state_dict`` also holds the global generator's state, which nn.Dropout draws
    from (on a GPU, the default generator of that GPU): a checkpoint is written from
    inside the loop, where that is fine-tuning's own."""

    position: LoopPosition = field(default_factory=LoopPosition)
    generator: torch.Generator | None = None
    loss_sum: float = 0.0
    count: int = 0
    best: float = math.inf
    best_epoch: int | None = None
    since_best: int = 0
    best_state: dict | None = None
    records: list = field(default_factory=list)
    rng_state: torch.Tensor | None = None  # global RNG to restore on resume
    device_rng_state: torch.Tensor | None = None  # the GPU's default generator (None on the CPU)
    guard: DivergenceGuard | None = None
    guard_state: dict | None = None  # a checkpointed guard, taken over by ``finetune``
    exact: bool = True  # False when resumed from a checkpoint of another device type
    averager: PeriodicAverager | None = None  # the PeriodicAverager in a group (its outer optimizer's momentum)
    outer_state: dict | None = None  # a checkpointed outer optimizer, taken over by ``finetune``

    def state_dict(self) -> dict:
        # saved once there is a generator: the caller's, or the one ``finetune`` sets
        return {
            "loop": self.position.state_dict(),
            "generator": self.generator.get_state(),  # type: ignore[union-attr]
            "global_generator": torch.get_rng_state(),
            "device_generator": _device_rng(self.generator.device),  # type: ignore[union-attr]
            "loss_sum": self.loss_sum,
            "count": self.count,
            "best": None if math.isinf(self.best) else self.best,
            "best_epoch": self.best_epoch,
            "since_best": self.since_best,
            "best_state": self.best_state,
            "records": self.records,
            "guard": None if self.guard is None else self.guard.state_dict(),
            # mypy does not narrow on the getattr test
            "outer": None if getattr(self.averager, "outer", None) is None else self.averager.outer.state_dict(),  # type: ignore[union-attr]
        }

    def load_state_dict(self, state: dict) -> None:
        self.position.load_state_dict(state["loop"])
        if self.generator is None:
            self.generator = torch.Generator()
        self.generator, self.exact = _devices.restore(self.generator, state["generator"])
        self.rng_state, self.device_rng_state = state["global_generator"], state.get("device_generator")
        self.loss_sum, self.count = state["loss_sum"], state["count"]
        self.best = math.inf if state["best"] is None else state["best"]
        self.best_epoch, self.since_best = state["best_epoch"], state["since_best"]
        self.best_state, self.records = state["best_state"], state["records"]
        self.guard, self.guard_state = None, state["guard"]
        self.averager, self.outer_state = None, state.get("outer")


def finetune(
    model: nn.Module,
    x_train,
    y_train: torch.Tensor | None,
    x_val,
    y_val: torch.Tensor | None,
    cfg: FinetuneConfig,
    *,
    seed: int = 0,
    reporter: Reporter | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    state: FinetuneState | None = None,
    checkpointer: Checkpointer | None = None,
    guard: GuardConfig | None = None,
    distributed: DistributedConfig | None = None,
    precision: str = "fp32",
    control: LoopControl | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` (modified in place) and return it with its history.

    With validation data and ``cfg.patience`` set, training stops after ``patience``
    epochs without a lower validation loss, and the best weights are restored.
    The data are tensors (moved to the model's device once) or loop data with labels
    (``streams``; ``y_train`` and ``y_val`` then None), streamed from disk when it is
    ``ShardedData``.
    To resume, pass the restored ``optimizer`` and ``state``; ``state`` is updated in
    place so a ``checkpointer`` can save it.
    """
    reporter = reporter or Reporter()
    device = _device(model)
    train = as_data(x_train, y_train, device)
    val = None if x_val is None else as_data(x_val, y_val, device)
    has_val = val is not None
    if cfg.train_on_validation and has_val:
        train, val = concat(train, val), None
        has_val = False  # the validation data is training data now
    optimizer = optimizer if optimizer is not None else make_optimizer(model, cfg)
    st = state if state is not None else FinetuneState()
    if st.generator is None:
        st.generator = device_generator(device, seed)

    g = make_guard(guard, model, "fine-tuning", cfg.learning_rate, optimizer, st.records, reporter, st.guard_state)
    st.guard, st.guard_state = g, None
    if g is not None:

        def restart_epoch():
            st.loss_sum, st.count = 0.0, 0

        g.on_rollback = restart_epoch

    # the hand-written step of a build_classifier net (same arithmetic, masks drawn faster)
    # (bf16 where it has no bf16 products, such as MPS, stays with autograd, which runs it in fp32)
    fused = (
        FusedClassifierStep.make(model, precision)
        if cfg.fused and (precision != "bf16" or _devices.bf16_products(precision, device))
        else None
    )

    def step(xb, yb, epoch):
        if g is not None:  # the schedule's rate, lowered by the guard's rollbacks
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, epoch) * g.lr_scale
        loss = fused(xb, yb, optimizer) if fused is not None else train_step(model, optimizer, xb, yb, precision)
        if cfg.max_norm is not None:
            apply_max_norm(model, cfg.max_norm)
        value = float(loss)
        st.loss_sum += value * len(xb)
        st.count += len(xb)
        return value

    averager = make_averager(distributed, guard, model, optimizer, outer_state=st.outer_state)
    st.averager, st.outer_state = averager, None

    def end_epoch(epoch, seconds):
        if averager is not None:  # the training loss over every worker's shard
            import torch.distributed as dist

            both = torch.tensor([st.loss_sum, float(st.count)], dtype=torch.float64, device=collective_device())
            dist.all_reduce(both)
            st.loss_sum, st.count = float(both[0]), int(both[1])
        rec = {
            "phase": "finetune",
            "epoch": epoch + 1,
            "lr": lr_at(cfg, epoch) * (1 if g is None else g.lr_scale),
            "train_loss": st.loss_sum / max(st.count, 1),
            "seconds": round(seconds, 3),
        }
        st.loss_sum, st.count = 0.0, 0
        if g is not None:
            verdict = g.after_epoch(epoch, -1, rec["train_loss"])
            if not verdict.ok:  # a rollback runs this epoch again: it is not logged
                return verdict
        stop = False
        if has_val:
            val_loss, val_acc = evaluate(model, val)
            if averager is not None:  # every worker stops on the same epoch: rank 0's numbers
                val_loss, val_acc = from_rank0([val_loss, val_acc])
            rec.update(val_loss=val_loss, val_accuracy=val_acc)
            if val_loss < st.best:
                st.best, st.best_epoch, st.since_best = val_loss, epoch + 1, 0
                st.best_state = copy.deepcopy(model.state_dict())
            else:
                st.since_best += 1
                stop = cfg.patience is not None and st.since_best >= cfg.patience
        st.records.append(rec)
        reporter.log(rec)
        reporter.parameters(model, "finetune", epoch + 1)
        for group in optimizer.param_groups:  # schedule for the next epoch
            group["lr"] = lr_at(cfg, epoch + 1)
        return stop

    for group in optimizer.param_groups:
        group["lr"] = lr_at(cfg, st.position.epoch)
    model.train()
    # nn.Dropout draws from the global generator (on a GPU, that GPU's): seed it here (or
    # restore it on resume) and give the caller's generator state back afterwards
    gpus = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus, device_type="cuda" if gpus else "cpu"):
        if st.rng_state is not None:
            torch.set_rng_state(st.rng_state)
        else:
            torch.manual_seed(seed)
        if gpus:
            if st.device_rng_state is not None and st.exact:
                torch.cuda.set_rng_state(st.device_rng_state, device)
            else:
                with torch.cuda.device(device):  # that GPU's generator, not the current one's
                    torch.cuda.manual_seed(seed)
        epochs_run = run_loop(
            data=train,
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            generator=st.generator,
            step=step,
            end_epoch=end_epoch,
            reporter=reporter,
            desc="finetune",
            position=st.position,
            checkpointer=checkpointer,
            guard=g,
            averager=averager,
            control=control,
        )
    if st.best_state is not None:
        model.load_state_dict(st.best_state)
    model.eval()
    return FinetuneResult(model, st.records, st.best_epoch, None if st.best_epoch is None else st.best, epochs_run)
