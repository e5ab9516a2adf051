"""Experiment: minibatch size (the advisor's rule: 10 to 100)."""

from __future__ import annotations

import copy
import dataclasses

from layerwise.advice.rules import suggest_layers
from layerwise.lab.core import figure, table
from layerwise.lab.runs import FINETUNE, pretrained
from layerwise.training.finetune import evaluate, finetune

NAME = "batch"
TITLE = "Minibatch size"
CLAIM = "minibatches of 10 to 100 examples (the advisor's rule, after Hinton's practical guide)"
SETUP = (
    "The advisor's net pretrained once, then fine-tuned from it with minibatches of 10, 100 and 1000 at the "
    "same learning rate: validation accuracy after the budget's epochs (equal epochs), and at the wall time "
    "that batch 100 took for them (equal time; batch 1000 runs three times the epochs to have that time)."
)
SIZES = (10, 100, 1000)
_STACKS: dict = {}


def cells(budget) -> list[dict]:
    return [{"batch_size": b} for b in SIZES]


def run_cell(settings: dict, data, budget) -> dict:
    d = data.take(budget)
    key = (d.fingerprint, budget.name)
    if key not in _STACKS:
        _STACKS[key] = pretrained(d, suggest_layers(d.n_inputs), budget.pretrain_epochs, budget.batch_size)[0]
    clf = copy.deepcopy(_STACKS[key]).to_classifier(d.n_labels)
    b = settings["batch_size"]
    epochs = budget.finetune_epochs * (3 if b > 100 else 1)
    res = finetune(clf, d.x, d.y, d.xv, d.yv, dataclasses.replace(FINETUNE, epochs=epochs, batch_size=b), seed=0)
    curve = [(r["seconds"], r["val_accuracy"]) for r in res.records if r["phase"] == "finetune"]
    return {
        "epochs": epochs,
        "seconds": [s for s, _ in curve],
        "val_accuracy": [a for _, a in curve],
        "test_accuracy": evaluate(clf, d.xt, d.yt)[1],
    }


def _at(res: dict, epochs: int | None = None, seconds: float | None = None) -> float:
    """Validation accuracy after ``epochs`` epochs, or at the last epoch done by ``seconds``."""
    if epochs is not None:
        return res["val_accuracy"][min(epochs, len(res["val_accuracy"])) - 1]
    t, best = 0.0, res["val_accuracy"][0]
    for s, a in zip(res["seconds"], res["val_accuracy"]):
        t += s
        if t > seconds * 1.05:  # type: ignore[operator]  # given when epochs is not
            break
        best = a
    return best


def verdict(records: list[dict], budget) -> dict:
    res = {r["settings"]["batch_size"]: r["result"] for r in records}
    e = budget.finetune_epochs
    t = sum(res[100]["seconds"][:e])
    rows = [[b, 100 * _at(res[b], epochs=e), 100 * _at(res[b], seconds=t)] for b in SIZES]
    eq_epochs = max(SIZES, key=lambda b: _at(res[b], epochs=e))
    eq_time = max(SIZES, key=lambda b: _at(res[b], seconds=t))
    inside = [b for b in (eq_epochs, eq_time) if 10 <= b <= 100]
    v = "holds" if len(inside) == 2 else "holds in part" if inside else "does not hold"
    why = f"best at equal epochs: batch {eq_epochs}; best at equal wall time ({t:.1f} s): batch {eq_time}."
    return {
        "table": table(["batch size", f"val. accuracy after {e} epochs %", f"val. accuracy at {t:.1f} s %"], rows),
        "verdict": v,
        "why": why,
        "recommend": f"batch {eq_time} for a fixed time budget; 100 is the default.",
    }


def plot(records: list[dict], path) -> None:
    import itertools

    with figure(path, figsize=(6, 4)) as ax:
        for r in records:
            t = list(itertools.accumulate(r["result"]["seconds"]))
            ax.plot(
                t, [100 * a for a in r["result"]["val_accuracy"]], "o-", label=f"batch {r['settings']['batch_size']}"
            )
        ax.set(xlabel="fine-tuning wall time (s)", ylabel="validation accuracy %", title="minibatch size")
        ax.legend()
