"""Experiment: fine-tuning destroys the feature blend of the pretrained net."""

from __future__ import annotations

import copy

import torch

from layerwise.advice.rules import suggest_layers
from layerwise.lab.core import figure, table
from layerwise.lab.runs import finetuned, linear_probe, pretrained

NAME = "blend"
TITLE = "Fine-tuning and the feature blend"
CLAIM = (
    '"fine-tuning will destroy the feature blend of the pretrained net" (so save the pretrained net before fine-tuning)'
)
SETUP = (
    "The advisor's net pretrained on all training inputs, then fine-tuned on the classes of the first half of "
    "the labels only. How far the first layer moved (linear CKA of its activations on test images, and the "
    "relative change of its weights), and which net's top features serve the other classes better: a linear "
    "classifier on each net's features for the second half of the labels."
)


def cells(budget) -> list[dict]:
    return [{"task": "first half of the labels, then the second"}]


@torch.no_grad()
def cka(a: torch.Tensor, b: torch.Tensor) -> float:
    """Linear centered kernel alignment of two activation matrices (samples, units)."""
    a, b = a - a.mean(0), b - b.mean(0)
    return float((a.t() @ b).pow(2).sum() / ((a.t() @ a).pow(2).sum().sqrt() * (b.t() @ b).pow(2).sum().sqrt()))


def _features(net: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net[:-1](x)  # everything but the head: the top hidden layer's activations


def run_cell(settings: dict, data, budget) -> dict:
    d = data.take(budget)
    dbn, _ = pretrained(d, suggest_layers(d.n_inputs), budget.pretrain_epochs, budget.batch_size)
    half = d.n_labels // 2
    first, second = d.y < half, d.yt >= half
    pre = dbn.to_classifier(d.n_labels)
    ft = copy.deepcopy(pre)
    finetuned(d, ft, budget.finetune_epochs, budget.batch_size, x=d.x[first], y=d.y[first])
    # nn.Sequential types its items as nn.Module: [0] is the first Linear
    w0, w1 = pre[0].weight.detach(), ft[0].weight.detach()  # type: ignore[operator]
    out = {
        "first_layer_cka": cka(torch.sigmoid(pre[0](d.xt)), torch.sigmoid(ft[0](d.xt))),
        "first_layer_change": float((w1 - w0).norm() / w0.norm()),
    }
    tr, te = d.y >= half, second
    for name, net in (("pretrained", pre), ("finetuned", ft)):
        out[f"other_classes_{name}"] = linear_probe(
            _features(net, d.x[tr]), d.y[tr], _features(net, d.xt[te]), d.yt[te], d.n_labels
        )
    return out


def verdict(records: list[dict], budget) -> dict:
    r = records[0]["result"]
    rows = [
        [
            r["first_layer_cka"],
            r["first_layer_change"],
            100 * r["other_classes_pretrained"],
            100 * r["other_classes_finetuned"],
        ]
    ]
    loss = r["other_classes_pretrained"] - r["other_classes_finetuned"]
    moved = r["first_layer_cka"] < 0.9
    v = "holds" if loss > 0.005 else "holds in part" if moved else "does not hold"
    why = (
        f"the first layer's activations kept a CKA of {r['first_layer_cka']:.3f} with the pretrained ones (weights "
        f"moved by {100 * r['first_layer_change']:.1f}%); on the other classes the pretrained net's features gave "
        f"{100 * r['other_classes_pretrained']:.2f}% and the fine-tuned net's {100 * r['other_classes_finetuned']:.2f}%."
    )
    return {
        "table": table(
            [
                "first-layer CKA",
                "first-layer weight change",
                "other classes: pretrained features %",
                "other classes: fine-tuned features %",
            ],
            rows,
        ),
        "verdict": v,
        "why": why,
        "recommend": "keep the pretrained net (`layerwise train` writes it, read-only, before fine-tuning)"
        + (
            "."
            if v != "does not hold"
            else ": it costs one file and starts other tasks, though here "
            "fine-tuning left the features nearly as they were."
        ),
    }


def plot(records: list[dict], path) -> None:
    r = records[0]["result"]
    with figure(path, figsize=(5, 4)) as ax:
        ax.bar(["pretrained", "fine-tuned"], [100 * r["other_classes_pretrained"], 100 * r["other_classes_finetuned"]])
        ax.set(ylabel="linear accuracy on the other classes %", title=f"first-layer CKA {r['first_layer_cka']:.2f}")
