"""Experiment: no hidden layer below a quarter of the input."""

from __future__ import annotations

from layerwise.advice.rules import suggest_layers
from layerwise.lab.core import figure, table
from layerwise.lab.runs import finetuned, pretrained, reconstruction

NAME = "bottleneck"
TITLE = "No layer below a quarter of the input"
CLAIM = '"No hidden layer should be less than a quarter of the input layer\'s nodes."'
SETUP = (
    "The advisor's first layer, then a second layer of 1/16, 1/8, 1/4 or 1/2 of the input, pretrained and "
    "fine-tuned at the budget's epochs: the second layer's reconstruction cross-entropy of the first layer's "
    "activations on test images, and the test accuracy."
)
FRACTIONS = ("1/16", "1/8", "1/4", "1/2")


def _value(fraction: str) -> float:
    top, bottom = fraction.split("/")
    return int(top) / int(bottom)


def cells(budget) -> list[dict]:
    return [{"fraction": f} for f in FRACTIONS]


def run_cell(settings: dict, data, budget) -> dict:
    d = data.take(budget)
    first = suggest_layers(d.n_inputs)[0]
    second = max(1, round(_value(settings["fraction"]) * d.n_inputs))
    dbn, _ = pretrained(d, [first, second], budget.pretrain_epochs, budget.batch_size)
    recon = reconstruction(dbn.layers[1], dbn.transform(d.xt, upto=1))
    return {
        "second_layer": second,
        "recon_second": recon,
        **finetuned(d, dbn.to_classifier(d.n_labels), budget.finetune_epochs, budget.batch_size),
    }


def verdict(records: list[dict], budget) -> dict:
    res = {r["settings"]["fraction"]: r["result"] for r in records}
    rows = [[f, res[f]["second_layer"], res[f]["recon_second"], 100 * res[f]["test_accuracy"]] for f in FRACTIONS]
    below = max(res[f]["test_accuracy"] for f in FRACTIONS if _value(f) < 0.25)
    quarter, half = res["1/4"]["test_accuracy"], res["1/2"]["test_accuracy"]
    worse_below = quarter >= below + 0.005
    v = "holds" if worse_below else "holds in part" if quarter >= below else "does not hold"
    why = (
        f"best test accuracy below a quarter {100 * below:.2f}%, at a quarter {100 * quarter:.2f}%, at a half "
        f"{100 * half:.2f}%."
    )
    return {
        "table": table(["second layer / input", "units", "recon. cross-entropy", "test accuracy %"], rows),
        "verdict": v,
        "why": why,
        "recommend": "no hidden layer below a quarter of the input (the advisor warns).",
    }


def plot(records: list[dict], path) -> None:
    f = [_value(r["settings"]["fraction"]) for r in records]
    with figure(path, figsize=(6, 4)) as ax:
        ax.plot(f, [100 * r["result"]["test_accuracy"] for r in records], "o-")
        ax.axvline(0.25, color="grey", ls=":")
        ax.set(xscale="log", xlabel="second layer / input", ylabel="test accuracy %", title="bottleneck")
