"""Experiment: three to four hidden layers; deeper nets lose accuracy."""

from __future__ import annotations

import math

from layerwise.advice.rules import suggest_layers
from layerwise.lab.core import figure, table
from layerwise.lab.runs import finetuned, pretrained, random_classifier

NAME = "depth"
TITLE = "Three to four hidden layers"
CLAIM = '"three to four hidden layers, as accuracy tends to decrease beyond that depth"'
SETUP = (
    "Nets of 1 to 6 equal hidden layers holding as many weights as the advisor's net, pretrained and from "
    "random weights, fine-tuned for the budget's epochs."
)


def cells(budget) -> list[dict]:
    depths = range(1, 7) if budget.name == "full" else range(1, 5)
    return [{"depth": k, "start": s} for k in depths for s in ("pretrained", "random")]


def widths(n_inputs: int, depth: int) -> list[int]:
    """Equal widths w with n*w + (depth-1)*w^2 weights, as many as the advisor's net."""
    ref = suggest_layers(n_inputs)
    budget = sum(a * b for a, b in zip([n_inputs, *ref[:-1]], ref))
    if depth == 1:
        return [max(1, budget // n_inputs)]
    a, b = depth - 1, n_inputs
    return [max(1, int((-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)))] * depth


def run_cell(settings: dict, data, budget) -> dict:
    d = data.take(budget)
    hidden = widths(d.n_inputs, settings["depth"])
    if settings["start"] == "pretrained":
        clf = pretrained(d, hidden, budget.pretrain_epochs, budget.batch_size)[0].to_classifier(d.n_labels)
    else:
        clf = random_classifier(d, hidden)
    return {"width": hidden[0], **finetuned(d, clf, budget.finetune_epochs, budget.batch_size)}


def verdict(records: list[dict], budget) -> dict:
    acc = {(r["settings"]["depth"], r["settings"]["start"]): r["result"] for r in records}
    depths = sorted({k for k, _ in acc})
    rows = [
        [
            k,
            acc[(k, "pretrained")]["width"],
            100 * acc[(k, "pretrained")]["test_accuracy"],
            100 * acc[(k, "random")]["test_accuracy"],
        ]
        for k in depths
    ]
    best = max(depths, key=lambda k: acc[(k, "pretrained")]["test_accuracy"])
    deep = [k for k in depths if k > 4]
    falls = bool(deep) and all(
        acc[(k, "pretrained")]["test_accuracy"] < acc[(best, "pretrained")]["test_accuracy"] for k in deep
    )
    v = (
        "holds"
        if best in (3, 4) and (falls or not deep)
        else "holds in part"
        if falls or best in (3, 4)
        else "does not hold"
    )
    pct = {k: f"{100 * acc[(k, 'pretrained')]['test_accuracy']:.2f}%" for k in depths}
    deeper = (
        f"; deeper than 4: {', '.join(pct[k] for k in deep)}"
        if deep
        else "; depths beyond 4 were not run at this budget"
    )
    chance = 2 / max(int(r["result"].get("n_labels", 10)) for r in records) if records else 0.2
    stuck = [k for k in depths if acc[(k, "random")]["test_accuracy"] <= chance]
    rand = (
        f"; from random weights, {', '.join(map(str, stuck))} hidden layers learned nothing "
        f"({100 * acc[(stuck[0], 'random')]['test_accuracy']:.2f}%), while pretrained they did"
        if stuck
        else ""
    )
    why = f"the best pretrained depth was {best} ({pct[best]}){deeper}{rand}."
    return {
        "table": table(["hidden layers", "width", "pretrained %", "random %"], rows),
        "verdict": v,
        "why": why,
        "recommend": f"{best} hidden layers at this size of net and data; the advisor suggests 2-4.",
    }


def plot(records: list[dict], path) -> None:
    with figure(path, figsize=(6, 4)) as ax:
        for s in ("pretrained", "random"):
            pts = sorted(
                (r["settings"]["depth"], r["result"]["test_accuracy"]) for r in records if r["settings"]["start"] == s
            )
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=s)
        ax.set(xlabel="hidden layers (equal weights)", ylabel="test accuracy %", title="depth")
        ax.legend()
