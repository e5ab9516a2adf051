"""Greedy layer-wise pretraining: for each layer, run the shared loop with that unit's
step, on the mean activations of the layers below.

Pretraining knows a unit only through the ``Unit`` protocol (``step``,
``transform``, ``reconstruction_cross_entropy``, ``metrics``). Per epoch each layer
reports its ``metrics`` on (a fixed subset of) the training data and on held-out data:
the reconstruction cross-entropy, and for RBMs the free-energy gap
``mean F(held-out) - mean F(train)``, which grows when the RBM overfits (Hinton's
practical guide, section 6).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from layerwise._checks import InvalidInput
from layerwise._devices import device_generator
from layerwise.config import DistributedConfig, GuardConfig, PretrainConfig
from layerwise.data.streams import as_data, wait_for_activations
from layerwise.reporting.reporter import Reporter
from layerwise.stack import DeepBeliefNet
from layerwise.training.averaging import from_rank0, make_averager
from layerwise.training.distributed import barrier, rank_world
from layerwise.training.guard import DivergenceGuard, dead_fraction, make_guard
from layerwise.training.loop import Checkpointer, LoopControl, LoopPosition, run_loop
from layerwise.units import DenoisingAutoencoder, Unit


def step_options(unit: Unit, cfg: PretrainConfig) -> dict:
    """The keyword arguments of ``unit.step`` that a recipe's ``[pretrain]`` sets: the
    units take plain arguments and know nothing of recipes."""
    if isinstance(unit, DenoisingAutoencoder):
        return {"weight_decay": cfg.weight_decay, "noise": cfg.noise}
    return {
        "weight_decay": cfg.weight_decay,
        "k": cfg.cd_k,
        "persistent": cfg.persistent,
        "sparsity_target": cfg.sparsity_target,
        "sparsity_cost": cfg.sparsity_cost,
    }


def momentum_at(cfg: PretrainConfig, epoch: int) -> float:
    return cfg.momentum if epoch < cfg.momentum_switch_epoch else cfg.final_momentum


@torch.no_grad()
def layer_metrics(unit: Unit, train_x: torch.Tensor, held_x: torch.Tensor | None) -> dict:
    """The unit's own per-epoch numbers (reconstruction cross-entropy in nats per example
    on train and held-out inputs; for RBMs the free-energy gap) and the fraction of
    saturated hidden units. Both inputs should be subsets of equal size."""
    m = unit.metrics(train_x, held_x)
    return {"recon_ce_train": m.pop("recon_ce_train"), "dead_units": dead_fraction(unit.transform(train_x)), **m}


@dataclass
class PretrainProgress:
    """The greedy state: which layer is training, where its loop stands, and the guard
    watching it (set by ``pretrain`` for the layer in progress)."""

    layer: int = 0
    position: LoopPosition = field(default_factory=LoopPosition)
    guard: DivergenceGuard | None = None
    guard_state: dict | None = None  # a checkpointed guard, taken over by the layer in progress
    averager: object | None = None  # the layer's PeriodicAverager in a group (its outer optimizer's momentum)
    outer_state: dict | None = None  # a checkpointed outer optimizer, taken over likewise

    def state_dict(self) -> dict:
        outer = getattr(self.averager, "outer", None)
        return {
            "layer": self.layer,
            "loop": self.position.state_dict(),
            "guard": None if self.guard is None else self.guard.state_dict(),
            "outer": None if outer is None else outer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.layer = state["layer"]
        self.position.load_state_dict(state["loop"])
        self.guard, self.guard_state = None, state["guard"]
        self.averager, self.outer_state = None, state.get("outer")


def pretrain(
    dbn: DeepBeliefNet,
    x_train,
    x_heldout,
    cfg: PretrainConfig,
    *,
    seed: int = 0,
    reporter: Reporter | None = None,
    progress: PretrainProgress | None = None,
    generator: torch.Generator | None = None,
    records: list[dict] | None = None,
    checkpointer: Checkpointer | None = None,
    guard: GuardConfig | None = None,
    distributed: DistributedConfig | None = None,
    scratch: Path | None = None,
    labels: torch.Tensor | None = None,
    heldout_labels: torch.Tensor | None = None,
    control: LoopControl | None = None,
) -> list[dict]:
    """Pretrain every layer of ``dbn`` in turn for ``cfg.epochs`` epochs.

    ``x_train`` (n, n_visible) and ``x_heldout`` are float32 tensors already validated
    (moved to the net's device once), or loop data (``streams.TensorData``,
    ``streams.ShardedData`` streamed from disk; then each trained layer's activations
    are written once as shards under ``scratch``, for the next layer, and removed at
    the end). Returns the per-epoch metric records (also sent to ``reporter``).

    To resume, pass the ``progress``, the data-order ``generator`` and the ``records``
    of the interrupted run (a checkpoint holds them); ``progress`` is updated in place
    (and holds the guard of the layer in progress), so a ``checkpointer`` can save it.
    """
    reporter = reporter or Reporter()
    device = dbn.device
    generator = generator if generator is not None else device_generator(device, seed)
    progress = progress if progress is not None else PretrainProgress()
    records = records if records is not None else []
    train = as_data(x_train, device=device)
    inp, held = train, None if x_heldout is None else as_data(x_heldout, device=device)
    if dbn.top_labels:
        _check_top_labels(train, labels, "training")
        if held is not None and heldout_labels is not None:
            _check_top_labels(held, heldout_labels, "held-out")
    # the layers below the one in progress are trained: start from their activations
    for j in range(progress.layer):
        inp, held = _up(dbn, j, inp, scratch), None if held is None else _up(dbn, j, held, scratch, "heldout")
    n_mon = min(cfg.monitor_samples, len(train))
    for i in range(progress.layer, len(dbn.layers)):
        unit = dbn.layers[i]
        if i == len(dbn.layers) - 1 and dbn.top_labels:  # the top RBM learns the labels beside the features
            assert labels is not None  # _check_top_labels refused top_labels without them
            inp = _joined(dbn, inp, labels)
            held = None if held is None or heldout_labels is None else _joined(dbn, held, heldout_labels)
        if progress.layer != i:
            progress.layer, progress.position = i, LoopPosition()
        # Unit.step's **options stand for each unit's own keyword arguments, which a Protocol cannot state
        kwargs = step_options(unit, cfg)  # type: ignore[arg-type]
        g = make_guard(
            guard,
            unit,
            f"pretraining of layer {i + 1}",
            cfg.learning_rate,
            None,
            records,
            reporter,
            progress.guard_state,
        )
        progress.guard, progress.guard_state = g, None

        def step(xb, _yb, epoch, unit=unit, kwargs=kwargs, g=g):
            lr = cfg.learning_rate if g is None else g.current_lr
            unit.step(xb, lr=lr, momentum=momentum_at(cfg, epoch), **kwargs)

        mon_train = inp.head(n_mon)
        mon_held = None if held is None else held.head(n_mon)

        def end_epoch(epoch, seconds, i=i, unit=unit, mon_train=mon_train, mon_held=mon_held, g=g):
            rec = {"phase": "pretrain", "layer": i, "epoch": epoch + 1, "seconds": round(seconds, 3)}
            rec.update(layer_metrics(unit, mon_train, mon_held))
            if distributed is not None:  # the guard decides on rank 0's numbers on every worker
                rec["recon_ce_train"], rec["dead_units"] = from_rank0([rec["recon_ce_train"], rec["dead_units"]])
            if g is not None:
                verdict = g.after_epoch(epoch, -1, rec["recon_ce_train"], rec["dead_units"])
                if not verdict.ok:  # a rollback runs this epoch again: it is not logged
                    return verdict
                rec["lr"] = g.current_lr
            records.append(rec)
            reporter.log(rec)
            reporter.parameters(unit, f"pretrain/layer{i + 1}", epoch + 1)
            return False

        averager = make_averager(distributed, guard, unit, outer_state=progress.outer_state)
        progress.averager, progress.outer_state = averager, None
        run_loop(
            data=inp,
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            generator=generator,
            step=step,
            end_epoch=end_epoch,
            reporter=reporter,
            position=progress.position,
            checkpointer=checkpointer,
            guard=g,
            averager=averager,
            control=control,
            desc=f"pretrain layer {i + 1}/{len(dbn.layers)} ({unit.n_visible}->{unit.n_hidden})",
        )
        if i + 1 < len(dbn.layers):
            # the next layer trains on this layer's mean activations
            inp, held = _up(dbn, i, inp, scratch), None if held is None else _up(dbn, i, held, scratch, "heldout")
    inp.discard()
    if held is not None:
        held.discard()
    progress.layer, progress.position, progress.guard, progress.averager = len(dbn.layers), LoopPosition(), None, None
    return records


def _check_top_labels(data, labels: torch.Tensor | None, what: str) -> None:
    """Before any layer trains: a top RBM that learns the labels needs them, beside data in memory."""
    if data.streamed:
        raise InvalidInput(
            f"[model] top_labels needs the {what} data in memory; it is streamed from disk here "
            "(raise --max-memory, or leave top_labels off)"
        )
    if labels is None:
        raise InvalidInput(f"[model] top_labels: the top RBM learns the labels, and the {what} data came without them")
    if len(labels) != len(data):
        raise InvalidInput(f"[model] top_labels: {len(labels)} {what} labels for {len(data)} samples")


def _joined(dbn: DeepBeliefNet, data, labels: torch.Tensor):
    """Loop data of the top RBM's inputs: the features below it and the labels one-hot."""
    return as_data(dbn.with_labels(data.x, labels), data.y, data.x.device)


def _up(dbn: DeepBeliefNet, j: int, data, scratch: Path | None, part: str = "train"):
    """The mean activations of layer j over ``data`` (the activations of the layer below
    it), for layer j + 1; the layer below's streamed activations are removed. In a
    group, the layers are the same on every worker after the epoch's last averaging
    round: rank 0 writes the shards, the others wait and read them."""
    unit = dbn.layers[j]
    folder = None if scratch is None else Path(scratch) / f"{part}-layer-{j + 1}"
    if not data.streamed:
        return data.map(unit.transform, folder)
    key = hashlib.sha256(
        b"".join(t.detach().cpu().numpy().tobytes() for layer in dbn.layers[: j + 1] for t in layer.parameters())
    ).hexdigest()
    rank, world = rank_world()
    if rank != 0:
        # rank 0 writes (for as long as that takes: a barrier would time out on a large
        # layer); the shards are complete once their folder is renamed into place
        # streamed data comes with its scratch folder (ShardedData.map refuses None)
        wait_for_activations(folder, key)  # type: ignore[arg-type]
    out = data.map(unit.transform, folder, key)
    if rank == 0:
        data.discard()
    barrier()
    return out
