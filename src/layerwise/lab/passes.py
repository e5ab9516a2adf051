"""Experiment: how many pretraining passes (Hinton's net made 30)."""

from __future__ import annotations

import torch

from layerwise.advice.rules import suggest_layers
from layerwise.lab.core import figure, table
from layerwise.lab.runs import finetuned, linear_probe, pretrained

NAME = "passes"
TITLE = "Pretraining passes"
CLAIM = '"Hinton\'s network made 30 passes in pretraining to achieve its 99 percent accuracy"'
SETUP = (
    "The advisor's net pretrained for 0 to 30 CD-1 passes per layer. For each: a linear classifier on the "
    "top layer's features (what pretraining alone gives) and full fine-tuning (what backpropagation adds). "
    "Greedy pretraining with a classifier on top gave 2.49% error in Hinton, Osindero & Teh 2006 (with a "
    "larger net and a generative top layer)."
)
PASSES = (0, 1, 3, 10, 30)


def cells(budget) -> list[dict]:
    top = 30 if budget.name == "full" else 3
    return [{"passes": p} for p in PASSES if p <= top]


def run_cell(settings: dict, data, budget) -> dict:
    d = data.take(budget)
    dbn, _ = pretrained(d, suggest_layers(d.n_inputs), settings["passes"], budget.batch_size)
    with torch.no_grad():
        probe = linear_probe(dbn.transform(d.x), d.y, dbn.transform(d.xt), d.yt, d.n_labels)
    return {
        "linear_accuracy": probe,
        **finetuned(d, dbn.to_classifier(d.n_labels), budget.finetune_epochs, budget.batch_size),
    }


def verdict(records: list[dict], budget) -> dict:
    res = {r["settings"]["passes"]: r["result"] for r in records}
    ps = sorted(res)
    rows = [[p, 100 * res[p]["linear_accuracy"], 100 * res[p]["test_accuracy"]] for p in ps]
    lin_gain = res[ps[-1]]["linear_accuracy"] - res[ps[0]]["linear_accuracy"]
    ft_gain = res[ps[-1]]["test_accuracy"] - res[ps[0]]["test_accuracy"]
    last_step = res[ps[-1]]["test_accuracy"] - res[ps[-2]]["test_accuracy"] if len(ps) > 1 else 0.0
    v = (
        "holds"
        if ft_gain > 0.005 and last_step >= 0
        else "holds in part"
        if lin_gain > 0.005 or ft_gain > 0
        else "does not hold"
    )
    best = max(ps, key=lambda p: res[p]["test_accuracy"])
    why = (
        f"from {ps[0]} to {ps[-1]} passes the linear classifier on the top features went "
        f"{100 * res[ps[0]]['linear_accuracy']:.2f}% -> {100 * res[ps[-1]]['linear_accuracy']:.2f}% and the "
        f"fine-tuned net {100 * res[ps[0]]['test_accuracy']:.2f}% -> {100 * res[ps[-1]]['test_accuracy']:.2f}% "
        f"(best at {best} passes); greedy pretraining alone gave {100 * (1 - res[ps[-1]]['linear_accuracy']):.2f}% "
        "error against the literature's 2.49%."
    )
    return {
        "table": table(["passes per layer", "linear on top features %", "fine-tuned %"], rows),
        "verdict": v,
        "why": why,
        "recommend": f"the passes where fine-tuned accuracy stops rising on your budget ({best} here).",
    }


def plot(records: list[dict], path) -> None:
    ps = [r["settings"]["passes"] for r in records]
    with figure(path, figsize=(6, 4)) as ax:
        ax.plot(ps, [100 * r["result"]["linear_accuracy"] for r in records], "o-", label="linear on top features")
        ax.plot(ps, [100 * r["result"]["test_accuracy"] for r in records], "o-", label="fine-tuned")
        ax.set(xscale="symlog", xlabel="pretraining passes per layer", ylabel="test accuracy %", title="passes")
        ax.legend()
