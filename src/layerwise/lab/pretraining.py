"""Experiment: pretrain on the raw data first, then fine-tune, at a few labelled examples."""

from __future__ import annotations

from layerwise.advice.rules import suggest_layers
from layerwise.lab.core import figure, table
from layerwise.lab.runs import finetuned, pretrained, random_classifier

NAME = "pretraining"
TITLE = "Pretraining, then fine-tuning"
CLAIM = (
    '"pre-train your net first on the raw data ... then fine-tuning" (unsupervised layer-wise pretraining, '
    "then backpropagation)"
)
SETUP = (
    "The advisor's net, fine-tuned on the first N labelled training examples: from a stack pretrained on all the "
    "training inputs (labels unused), from random weights (sigmoid, as the pretrained net), and a ReLU net from "
    "random weights (the modern baseline). Equal fine-tuning epochs."
)
LABELS = (100, 1000, 10000, 50000)
MODES = ("pretrained", "random", "relu")
_STACKS: dict = {}  # the pretrained stack, made once per data and budget in this process


def cells(budget) -> list[dict]:
    return [{"labels": n, "start": m} for n in LABELS if n <= budget.train for m in MODES]


def run_cell(settings: dict, data, budget) -> dict:
    d = data.take(budget)
    hidden = suggest_layers(d.n_inputs)
    n = settings["labels"]
    if settings["start"] == "pretrained":
        key = (d.fingerprint, budget.name, tuple(hidden))
        if key not in _STACKS:
            _STACKS[key] = pretrained(d, hidden, budget.pretrain_epochs, budget.batch_size)[0]
        clf = _STACKS[key].to_classifier(d.n_labels)
    else:
        clf = random_classifier(d, hidden, relu=settings["start"] == "relu")
    # as many updates for every N: epochs scaled so that small N is not starved
    epochs = max(budget.finetune_epochs, min(200, budget.finetune_epochs * len(d.x) // max(n, 1)))
    return {"epochs": epochs, **finetuned(d, clf, epochs, min(budget.batch_size, n), x=d.x[:n], y=d.y[:n])}


def verdict(records: list[dict], budget) -> dict:
    acc = {(r["settings"]["labels"], r["settings"]["start"]): r["result"]["test_accuracy"] for r in records}
    ns = sorted({n for n, _ in acc})
    rows = [[n, *(100 * acc[(n, m)] for m in MODES)] for n in ns]
    gain = [acc[(n, "pretrained")] - acc[(n, "random")] for n in ns]
    vs_relu = [acc[(n, "pretrained")] - acc[(n, "relu")] for n in ns]
    if all(g > 0.005 for g in gain) and vs_relu[0] > 0:
        v = "holds"
    elif gain[0] > 0.005:
        v = "holds in part"
    else:
        v = "does not hold"
    why = (
        f"pretraining changed test accuracy by {', '.join(f'{100 * g:+.1f}' for g in gain)} points against the same "
        f"sigmoid net from random weights, and by {', '.join(f'{100 * g:+.1f}' for g in vs_relu)} against a ReLU net, "
        f"at {', '.join(map(str, ns))} labels."
    )
    return {
        "table": table(["labelled examples", "pretrained %", "random sigmoid %", "random ReLU %"], rows),
        "verdict": v,
        "why": why,
        "recommend": "pretrain (the default of `layerwise train`), most of all when labels are few.",
    }


def plot(records: list[dict], path) -> None:
    with figure(path, figsize=(6, 4)) as ax:
        for m in MODES:
            pts = sorted(
                (r["settings"]["labels"], r["result"]["test_accuracy"]) for r in records if r["settings"]["start"] == m
            )
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=m)
        ax.set(xscale="log", xlabel="labelled examples", ylabel="test accuracy %", title="pretraining and labels")
        ax.legend()
