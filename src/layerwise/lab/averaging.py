"""Experiment: parameter averaging over workers and the learning rate (the guide's first trick).

Every cell is a real distributed run: ``jobs.train_workers`` (what ``layerwise train
--workers N`` runs) through PyTorch's launcher, on the budget's share of the data written to ``.npz`` files, with the guard off
(to see raw divergence). This experiment replaces the old ``benchmarks/lr_sweep.py``.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np

from layerwise import config, runtime
from layerwise._checks import LayerwiseError
from layerwise.advice.rules import suggest_layers
from layerwise.jobs import train, train_workers
from layerwise.lab.core import figure, table

NAME = "averaging"
TITLE = "Averaging and the learning rate"
CLAIM = (
    '"lower the learning rate ... Higher than [0.01] makes the weights diverge" (distributed training '
    "averages parameters across workers)"
)
SETUP = (
    "The advisor's net trained by `layerwise train --workers N` (parameter averaging every k minibatches) at "
    "the same rate for pretraining and fine-tuning, guard off, equal epochs: test accuracy, and whether the "
    "weights diverged (NaN or Inf) or the net learned nothing (at most twice chance). Beside the guide's remedy "
    "(a lower rate), the modern one: DiLoCo's outer Nesterov step on the averaged change (outer rate 0.7, "
    "momentum 0.9), and the learning-rate corrections for N workers. At the full budget each run trains 3 "
    "pretraining and 8 fine-tuning epochs on all the training data."
)


def cells(budget) -> list[dict]:
    rates: tuple[float, ...]
    workers: tuple[int, ...]
    freqs: tuple[int, ...]
    if budget.name == "full":
        rates, workers, freqs = (0.001, 0.01, 0.1, 0.3, 1.0), (1, 2, 4, 8), (1, 5, 20)
    elif budget.name == "quick":
        rates, workers, freqs = (0.01, 0.1, 1.0), (1, 2, 4), (5,)
    else:
        rates, workers, freqs = (0.1,), (1, 2), (5,)
    grid = [
        {"lr": r, "workers": w, "frequency": f, "remedy": "none"}
        for r in rates
        for w in workers
        for f in (freqs if w > 1 else freqs[:1])
    ]
    many = [w for w in workers if w >= 2][-2:] if budget.name != "tiny" else [2]
    for w in many:
        grid += [{"lr": 0.1, "workers": w, "frequency": 5, "remedy": m} for m in ("nesterov", "sqrt", "linear")]
    # every cell is a launcher run; at the full budget they train fewer epochs than the in-process experiments
    pre, ft = EPOCHS.get(budget.name, (budget.pretrain_epochs, budget.finetune_epochs))
    return [{**c, "pretrain_epochs": pre, "finetune_epochs": ft} for c in grid]


EPOCHS = {"full": (3, 8)}  # (pretraining, fine-tuning) epochs per run, where not the budget's


RECIPE = """seed = 0
[data]
source = "files"
train = "{folder}/train.npz"
test = "{folder}/test.npz"
[model]
hidden = {hidden}
[pretrain]
epochs = {pre}
batch_size = {batch}
learning_rate = {lr}
momentum_switch_epoch = 1
[finetune]
epochs = {ft}
batch_size = {batch}
learning_rate = {lr}
momentum = 0.9
patience = "none"
[guard]
enabled = false
[distributed]
averaging_frequency = {freq}
lr_correction = "{correction}"
outer_optimizer = "{outer}"
"""


def run_cell(settings: dict, data, budget) -> dict:
    d = data.take(budget)
    remedy = settings["remedy"]
    tmp: str | Path  # the folder's name, then its Path
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(
            tmp / "train.npz",
            x=np.concatenate([d.x.numpy(), d.xv.numpy()]),
            y=np.concatenate([d.y.numpy(), d.yv.numpy()]),
        )
        np.savez(tmp / "test.npz", x=d.xt.numpy(), y=d.yt.numpy())
        (tmp / "r.toml").write_text(
            RECIPE.format(
                hidden=json.dumps(suggest_layers(d.n_inputs)),
                pre=settings["pretrain_epochs"],
                ft=settings["finetune_epochs"],
                batch=budget.batch_size,
                lr=settings["lr"],
                freq=settings["frequency"],
                correction=remedy if remedy in ("sqrt", "linear") else "none",
                outer="nesterov" if remedy == "nesterov" else "none",
                folder=tmp,
            )
        )
        cfg = config.load(tmp / "r.toml")
        cfg.threads, cfg.name = 1, "r"
        try:  # one worker trains here, at one thread; a group through the launcher, one thread each
            if settings["workers"] > 1:
                result = train_workers(cfg, settings["workers"], runs_dir=tmp / "runs")
            else:
                with runtime.threads(1):
                    result = train(cfg, runs_dir=tmp / "runs")
        except LayerwiseError as e:  # a diverged run is a result of the experiment
            return {"test_accuracy": math.nan, "diverged": 1, "learned": 0, "error": str(e).splitlines()[-1][:200]}
        acc = result.test_accuracy if result.test_accuracy is not None else math.nan
    diverged = int(not math.isfinite(acc))
    return {"test_accuracy": acc, "diverged": diverged, "learned": int(acc > 2 / d.n_labels)}


def verdict(records: list[dict], budget) -> dict:
    plain = [r for r in records if r["settings"]["remedy"] == "none"]
    rows = [
        [
            r["settings"]["lr"],
            r["settings"]["workers"],
            r["settings"]["frequency"],
            r["settings"]["remedy"],
            100 * r["result"]["test_accuracy"],
            r["result"]["diverged"],
            r["result"]["learned"],
        ]
        for r in records
    ]
    high = [r for r in plain if r["settings"]["lr"] > 0.01 and r["settings"]["workers"] > 1]
    share = sum(r["result"]["diverged"] or not r["result"]["learned"] for r in high) / max(len(high), 1)
    best: dict[int, tuple[float, float]] = {}  # workers -> (rate, test accuracy)
    for r in plain:
        w = r["settings"]["workers"]
        if math.isfinite(r["result"]["test_accuracy"]) and (w not in best or r["result"]["test_accuracy"] > best[w][1]):
            best[w] = (r["settings"]["lr"], r["result"]["test_accuracy"])
    low_best = all(lr <= 0.01 for w, (lr, _) in best.items() if w > 1)
    v = "holds" if share >= 0.5 and low_best else "holds in part" if share > 0 or low_best else "does not hold"
    per = "; ".join(f"{w} worker{'s' * (w > 1)}: {lr:g} ({100 * a:.2f}%)" for w, (lr, a) in sorted(best.items()))
    remedies = [r for r in records if r["settings"]["remedy"] != "none"]
    at = {
        (r["settings"]["workers"], r["settings"]["frequency"]): r["result"]["test_accuracy"]
        for r in plain
        if r["settings"]["lr"] == 0.1
    }
    gaps = []
    for w in sorted({r["settings"]["workers"] for r in remedies}):
        rem = ", ".join(
            f"{r['settings']['remedy']} {100 * r['result']['test_accuracy']:.2f}%"
            for r in remedies
            if r["settings"]["workers"] == w
        )
        gaps.append(f"{w} workers {100 * at.get((w, 5), math.nan):.2f}% plain, {rem}")
    one = next((a for (w, _), a in at.items() if w == 1), math.nan)  # one worker: one frequency
    why = (
        f"{100 * share:.0f}% of the multi-worker runs above 0.01 diverged or learned nothing; best rate per worker "
        f"count: {per}. At rate 0.1, averaging every 5, against one worker's {100 * one:.2f}%: "
        f"{'; '.join(gaps) or 'no remedies run'}."
    )
    top = max(best.values(), key=lambda p: p[1])[0] if best else 0.01
    most = max(best) if best else 1
    guide = [
        r["result"]["test_accuracy"] for r in plain if r["settings"]["lr"] == 0.01 and r["settings"]["workers"] == most
    ]
    cost = (
        f"; with {most} workers the guide's 0.01 gave {100 * max(guide):.2f}% against {100 * best[most][1]:.2f}%"
        if guide and math.isfinite(max(guide))
        else ""
    )
    return {
        "table": table(
            ["rate", "workers", "averaging every", "remedy", "test accuracy %", "diverged", "learned"], rows
        ),
        "verdict": v,
        "why": why,
        "recommend": f"measure the rate with `layerwise probe-lr --workers N` (here the best was {top:g}{cost}).",
    }


def plot(records: list[dict], path) -> None:
    with figure(path, figsize=(6, 4)) as ax:
        plain = [r for r in records if r["settings"]["remedy"] == "none"]
        for w in sorted({r["settings"]["workers"] for r in plain}):
            for f in sorted({r["settings"]["frequency"] for r in plain if r["settings"]["workers"] == w}):
                pts = sorted(
                    (r["settings"]["lr"], r["result"]["test_accuracy"])
                    for r in plain
                    if r["settings"]["workers"] == w and r["settings"]["frequency"] == f
                )
                ax.plot(
                    [p[0] for p in pts],
                    [100 * (p[1] if math.isfinite(p[1]) else 0) for p in pts],
                    "o-",
                    label=f"{w} worker{'s' * (w > 1)}" + (f", every {f}" if w > 1 else ""),
                )
        ax.axvline(0.01, color="grey", ls=":")
        ax.set(xscale="log", xlabel="learning rate", ylabel="test accuracy % (0: diverged)", title="averaging")
        ax.legend(fontsize=7)
