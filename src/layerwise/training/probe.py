"""``layerwise probe-lr``: measure the largest stable learning rate on the user's data.

The guide fixes 0.01. The probe replaces that with a number: short trainings over a
geometric grid of rates, on a subset of the training data, for the first layer's
pretraining and for fine-tuning. A rate is stable when training stays finite, the loss
ends below where it started, and the divergence guard (the recipe's [guard] bounds, no
rollbacks allowed) finds nothing: no NaN or Inf, no runaway weight growth, no more than
``max_dead`` of the hidden units saturated, and with workers no replica drift past
``max_drift`` at an averaging round. Fine-tuning is probed from the stack pretrained for the same short budget at the
recommended pretraining rate. The recommendation is the stable rate with the lowest held-out loss, but no
more than half the largest stable rate: a margin below the edge.

With workers (``probe-lr --workers N``, which launches N processes like ``train
--workers N``) every trial is a distributed training: each worker takes its disjoint
share of the subset and the replicas are averaged every ``averaging_frequency`` batches,
as in the real run. A NaN, an Inf or replica drift found at an averaging round makes
that rate unstable.
The rates are the workers' own: the recipe's ``lr_correction`` is not applied to them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerwise._checks import InvalidInput
from layerwise.config import DistributedConfig, FinetuneConfig, RunConfig
from layerwise.runtime import resolve_device
from layerwise.stack import DeepBeliefNet
from layerwise.training.distributed import rank_world
from layerwise.training.finetune import evaluate, finetune
from layerwise.training.guard import DivergenceError, dead_fraction, first_non_finite
from layerwise.training.pretrain import pretrain


@dataclass
class ProbePoint:
    lr: float
    loss: float  # held-out loss at the end (nan when it blew up)
    stable: bool
    why: str  # "" when stable


def _strict_guard(cfg: RunConfig):
    """The recipe's guard bounds with no rollback: the first divergence ends the trial."""
    return dataclasses.replace(cfg.guard, enabled=True, max_rollbacks=0)


def geometric_grid(low: float, high: float, points: int) -> list[float]:
    if not (0 < low < high) or points < 2:
        raise InvalidInput(
            f"the learning-rate grid needs 0 < low < high and at least 2 points; got {low}, {high}, {points}"
        )
    return [float(f"{v:.3g}") for v in np.geomspace(low, high, points)]


def first_layer_point(
    cfg: RunConfig,
    n_inputs: int,
    x: torch.Tensor,
    xv: torch.Tensor,
    lr: float,
    epochs: int,
    distributed: DistributedConfig | None = None,
) -> ProbePoint:
    """Train the recipe's first unit for ``epochs`` at ``lr``; is it stable?"""
    dbn = DeepBeliefNet(
        n_inputs,
        [(cfg.model.hidden or [max(1, n_inputs // 2)])[0]],
        unit=cfg.model.unit,
        visible=cfg.model.visible,
        seed=cfg.seed,
        init_std=cfg.model.init_std,
        device=x.device,
        precision=cfg.precision,
    )
    unit = dbn.layers[0]
    start = float(unit.reconstruction_cross_entropy(xv))
    pcfg = dataclasses.replace(cfg.pretrain, epochs=epochs, learning_rate=lr, monitor_samples=min(len(x), 1000))
    with np.errstate(all="ignore"):
        try:
            pretrain(dbn, x, None, pcfg, seed=cfg.seed, guard=_strict_guard(cfg), distributed=distributed)
        except DivergenceError as e:
            return ProbePoint(lr, math.nan, False, e.what)
    bad = first_non_finite(unit.named_parameters())
    end = float(unit.reconstruction_cross_entropy(xv))
    if bad is not None or not math.isfinite(end):
        return ProbePoint(lr, math.nan, False, f"NaN or Inf in {bad or 'the loss'}")
    dead = dead_fraction(unit.transform(xv))
    if dead > 0.5:
        return ProbePoint(lr, end, False, f"{100 * dead:.0f}% of hidden units saturated")
    if end >= start:
        return ProbePoint(lr, end, False, f"reconstruction cross-entropy rose ({start:.4g} -> {end:.4g})")
    return ProbePoint(lr, end, True, "")


def finetune_point(
    cfg: RunConfig,
    dbn: DeepBeliefNet,
    n_labels: int,
    data,
    lr: float,
    epochs: int,
    distributed: DistributedConfig | None = None,
) -> ProbePoint:
    """Fine-tune a classifier unrolled from the (briefly) pretrained ``dbn`` for
    ``epochs`` at ``lr``: fine-tuning starts from pretrained weights, and sigmoid nets
    from random weights sit on a plateau for the first epochs, which hides the rate."""
    x, y, xv, yv = data
    ft = cfg.finetune
    clf = dbn.to_classifier(n_labels, dropout_input=ft.dropout_input, dropout_hidden=ft.dropout_hidden, seed=cfg.seed)
    start, _ = evaluate(clf, xv, yv)
    fcfg = FinetuneConfig(
        **{
            **ft.__dict__,
            "learning_rate": lr,
            "epochs": epochs,
            "patience": None,
            "lr_schedule": "constant",
            "train_on_validation": False,
        }
    )
    try:
        finetune(
            clf,
            x,
            y,
            None,
            None,
            fcfg,
            seed=cfg.seed,
            guard=_strict_guard(cfg),
            distributed=distributed,
            precision=cfg.precision,
        )
    except DivergenceError as e:
        return ProbePoint(lr, math.nan, False, e.what)
    bad = first_non_finite(clf.named_parameters())
    end, _ = evaluate(clf, xv, yv)
    if bad is not None or not math.isfinite(end):
        return ProbePoint(lr, math.nan, False, f"NaN or Inf in {bad or 'the loss'}")
    if end >= start:
        return ProbePoint(lr, end, False, f"validation loss rose ({start:.4g} -> {end:.4g})")
    return ProbePoint(lr, end, True, "")


def recommend(points: list[ProbePoint]) -> tuple[float | None, float | None]:
    """(largest stable rate, recommended rate) of a sweep; None when nothing was stable."""
    stable = [p for p in points if p.stable]
    if not stable:
        return None, None
    largest = max(p.lr for p in stable)
    candidates = [p for p in stable if p.lr <= largest / 2] or [min(stable, key=lambda p: p.lr)]
    return largest, min(candidates, key=lambda p: p.loss).lr


def probe_lr(
    cfg: RunConfig,
    splits,
    *,
    grid: list[float],
    subset: int = 5000,
    epochs: int = 2,
    report=None,
    distributed: DistributedConfig | None = None,
) -> dict:
    """Sweep ``grid`` for the first layer and for fine-tuning on ``subset`` training
    samples (held-out: up to ``subset`` validation samples). Returns plain data.

    ``distributed`` (inside an initialized process group): every trial trains with
    parameter averaging across the group, each worker on its share of the subset; every
    rank returns the same result, because its decisions are taken on averaged weights."""
    workers = rank_world()[1] if distributed is not None else 1
    device = resolve_device(cfg.device)
    n = min(subset, len(splits.train))
    # the subset in memory on the device (from data streamed from disk: its first rows)
    x, y = (torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in splits.train.head(n))
    xv, yv = (torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in splits.validation.head(subset))
    out: dict[str, Any] = {"grid": grid, "samples": n, "epochs": epochs, "workers": workers}
    if workers > 1:
        assert distributed is not None  # workers > 1 only with it
        out["averaging_frequency"] = distributed.averaging_frequency
    dbn = None
    for phase in ("pretrain", "finetune"):
        points = []
        if phase == "finetune":
            # the starting point of fine-tuning: the stack pretrained for the same short
            # budget at the recommended (else the recipe's) pretraining rate
            rate = out["pretrain"]["recommended"] or cfg.pretrain.learning_rate
            source = "the probe's recommended" if out["pretrain"]["recommended"] else "the recipe's"
            dbn = DeepBeliefNet(
                splits.n_inputs,
                cfg.model.hidden,  # type: ignore[arg-type]  # a resolved config's (jobs.probe); None is refused
                unit=cfg.model.unit,
                visible=cfg.model.visible,
                seed=cfg.seed,
                init_std=cfg.model.init_std,
                device=device,
                precision=cfg.precision,
            )
            out["finetune_from"] = {"pretrain_lr": rate, "epochs_per_layer": epochs}
            try:
                pretrain(
                    dbn,
                    x,
                    None,
                    dataclasses.replace(cfg.pretrain, epochs=epochs, learning_rate=rate),
                    seed=cfg.seed,
                    guard=_strict_guard(cfg),
                    distributed=distributed,
                )
            except DivergenceError as e:
                why = (
                    f"the stack to fine-tune, pretrained at {source} pretraining rate {rate:g}, diverged: "
                    f"{e.what}; try lower pretraining rates"
                )
                out["finetune"] = {"points": [], "largest_stable": None, "recommended": None, "error": why}
                if report:
                    report(f"finetune: not probed: {why}")
                break
        for lr in grid:
            if phase == "pretrain":
                pt = first_layer_point(cfg, splits.n_inputs, x, xv, lr, epochs, distributed)
            else:
                assert dbn is not None  # built above for the finetune phase
                pt = finetune_point(cfg, dbn, splits.n_labels, (x, y, xv, yv), lr, epochs, distributed)
            points.append(pt)
            if report:
                report(f"{phase} lr={lr:g} loss={pt.loss:.4g} {'stable' if pt.stable else 'unstable: ' + pt.why}")
        largest, rec = recommend(points)
        out[phase] = {"points": [p.__dict__ for p in points], "largest_stable": largest, "recommended": rec}
    return out


def write_results(res: dict, out: str | Path) -> tuple[Path | None, Path]:
    """Write ``OUT.json`` (every number) and, with matplotlib, ``OUT.png`` (loss against
    rate); return their paths (None for a plot not drawn)."""
    import json

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = None
    try:
        from layerwise.reporting.plots import probe_plot

        png = out.with_suffix(".png")
        probe_plot(res, png)
    except ImportError:
        png = None
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    return png, out.with_suffix(".json")
