"""Experiment: pretraining in stages, as data arrives."""

from __future__ import annotations

import dataclasses

from layerwise.advice.rules import suggest_layers
from layerwise.lab.core import figure, table
from layerwise.lab.runs import PRETRAIN, finetuned, reconstruction
from layerwise.stack import DeepBeliefNet
from layerwise.training.pretrain import pretrain

NAME = "stages"
TITLE = "Pretraining in stages"
CLAIM = '"pre-training can occur in several stages" (feed data, pause, resume when more arrives)'
SETUP = (
    "The advisor's net pretrained in two stages, on the first half of the training data and then on the "
    "second (the stack, momentum and generators carried over, as `layerwise pretrain --resume` does), against "
    "one stage over all of it, for the same epochs per stage; then fine-tuned alike."
)


def cells(budget) -> list[dict]:
    return [{"stages": 1}, {"stages": 2}]


def run_cell(settings: dict, data, budget) -> dict:
    d = data.take(budget)
    dbn = DeepBeliefNet(d.n_inputs, suggest_layers(d.n_inputs), seed=0)
    cfg = dataclasses.replace(PRETRAIN, epochs=budget.pretrain_epochs, batch_size=budget.batch_size)
    half = len(d.x) // 2
    parts = [d.x] if settings["stages"] == 1 else [d.x[:half], d.x[half:]]
    for x in parts:  # each stage: a greedy pass over every layer, from where the last one left the stack
        pretrain(dbn, x, None, cfg, seed=0)
    recon = reconstruction(dbn.layers[0], d.xt)
    return {
        "recon_first_layer": recon,
        **finetuned(d, dbn.to_classifier(d.n_labels), budget.finetune_epochs, budget.batch_size),
    }


def verdict(records: list[dict], budget) -> dict:
    res = {r["settings"]["stages"]: r["result"] for r in records}
    rows = [[k, res[k]["recon_first_layer"], 100 * res[k]["test_accuracy"]] for k in (1, 2)]
    gap = res[2]["test_accuracy"] - res[1]["test_accuracy"]
    rgap = (res[2]["recon_first_layer"] - res[1]["recon_first_layer"]) / res[1]["recon_first_layer"]
    v = "holds" if gap > -0.005 and rgap < 0.02 else "holds in part" if gap > -0.01 else "does not hold"
    why = (
        f"two stages on halves against one stage on all of it: test accuracy {100 * gap:+.2f} points, first-layer "
        f"reconstruction cross-entropy {100 * rgap:+.1f}%."
    )
    return {
        "table": table(["stages", "recon. cross-entropy, layer 1", "test accuracy %"], rows),
        "verdict": v,
        "why": why,
        "recommend": "stage pretraining as data arrives (`layerwise pretrain --resume FOLDER --data shards/`).",
    }


def plot(records: list[dict], path) -> None:
    with figure(path, figsize=(5, 4)) as ax:
        ax.bar(
            [f"{r['settings']['stages']} stage(s)" for r in records],
            [100 * r["result"]["test_accuracy"] for r in records],
        )
        ax.set(ylabel="test accuracy %", title="stages")
        lo = min(100 * r["result"]["test_accuracy"] for r in records)
        ax.set_ylim(max(0, lo - 5), 100)
