"""Experiment: hidden layers smaller than the input, or the layer learns the identity."""

from __future__ import annotations

import math

import torch

from layerwise.lab.core import figure, table
from layerwise.lab.runs import finetuned, pretrained, reconstruction, unlike_the_data

NAME = "widths"
TITLE = "Hidden layers smaller than the input"
CLAIM = (
    '"give them fewer neurons than your input ... you risk reconstructing the identity function" '
    "(hidden layers smaller than the input)"
)
SETUP = (
    "One RBM of width ratio x the input (1/8 to 2), CD-1 for the budget's epochs; its reconstruction "
    "cross-entropy above the inputs' own entropy (the excess, in nats per image) on test images and on inputs "
    "unlike the data: each image's pixels shuffled, and uniform noise. A layer that learned the identity "
    "reconstructs those too. Then a one-hidden-layer classifier fine-tuned from it."
)
RATIOS = (0.125, 0.25, 0.5, 1.0, 2.0)


def cells(budget) -> list[dict]:
    return [{"ratio": r} for r in RATIOS]


def _floor(x: torch.Tensor) -> float:
    """The least cross-entropy any reconstruction can reach: the inputs' binary entropy."""
    p = x.clamp(1e-7, 1 - 1e-7)
    return float(-(p * p.log() + (1 - p) * (1 - p).log()).sum(1).mean())


def run_cell(settings: dict, data, budget) -> dict:
    d = data.take(budget)
    width = max(1, round(settings["ratio"] * d.n_inputs))
    dbn, _ = pretrained(d, [width], budget.pretrain_epochs, budget.batch_size)
    unit = dbn.layers[0]
    out = {"width": width, "excess_test": reconstruction(unit, d.xt) - _floor(d.xt)}
    for kind, x in unlike_the_data(d.xt).items():
        if kind != "binary_noise":
            out[f"excess_{kind}"] = reconstruction(unit, x) - _floor(x)
    out.update(finetuned(d, dbn.to_classifier(d.n_labels), budget.finetune_epochs, budget.batch_size))
    return out


def verdict(records: list[dict], budget) -> dict:
    res = {r["settings"]["ratio"]: r["result"] for r in records}
    rows = [
        [
            f"{r:g}",
            res[r]["width"],
            res[r]["excess_test"],
            res[r]["excess_shuffled"],
            res[r]["excess_noise"],
            100 * res[r]["test_accuracy"],
        ]
        for r in RATIOS
    ]
    narrow = [r for r in RATIOS if r < 1]
    wide = [r for r in RATIOS if r >= 1]
    best_narrow = max(res[r]["test_accuracy"] for r in narrow)
    best_wide = max(res[r]["test_accuracy"] for r in wide)
    # the identity: a wide layer reconstructs shuffled images nearly as well as real ones
    ratio = lambda r: res[r]["excess_shuffled"] / max(res[r]["excess_test"], 1e-9)  # noqa: E731
    identity = ratio(max(RATIOS)) < 0.8 * ratio(0.5) and not math.isnan(ratio(0.5))
    no_gain = best_wide <= best_narrow + 0.005
    v = "holds" if identity and no_gain else "holds in part" if identity or no_gain else "does not hold"
    why = (
        f"shuffled images cost {ratio(max(RATIOS)):.2f}x the excess of real ones at width {max(RATIOS):g}x the input, "
        f"{ratio(0.5):.2f}x at 0.5x ({'closer to the identity' if identity else 'no sign of the identity'}); best "
        f"test accuracy {100 * best_wide:.2f}% at widths >= the input against {100 * best_narrow:.2f}% below it."
    )
    return {
        "table": table(
            ["width / input", "units", "excess, test", "excess, shuffled", "excess, noise", "test accuracy %"], rows
        ),
        "verdict": v,
        "why": why,
        "recommend": "first hidden layer below the input width (the advisor's default: 500 for 784 inputs).",
    }


def plot(records: list[dict], path) -> None:
    r = [rec["settings"]["ratio"] for rec in records]
    with figure(path, 1, 2, figsize=(10, 4)) as (a, b):
        for key, label in (
            ("excess_test", "test images"),
            ("excess_shuffled", "shuffled pixels"),
            ("excess_noise", "noise"),
        ):
            a.plot(r, [rec["result"][key] for rec in records], "o-", label=label)
        a.set(
            xscale="log",
            xlabel="width / input",
            ylabel="reconstruction excess (nats)",
            title="what the layer reconstructs",
        )
        a.legend()
        b.plot(r, [100 * rec["result"]["test_accuracy"] for rec in records], "o-")
        b.set(xscale="log", xlabel="width / input", ylabel="test accuracy %", title="after fine-tuning")
