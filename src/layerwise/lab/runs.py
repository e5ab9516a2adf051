"""What the experiments train, on the library's public API: pretrain a stack, fine-tune
it (or a net from random weights), score features with a linear classifier, and the
reconstruction numbers the guide talks about."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from layerwise.config import FinetuneConfig, PretrainConfig
from layerwise.stack import DeepBeliefNet, build_classifier
from layerwise.training.finetune import evaluate, finetune
from layerwise.training.pretrain import pretrain

PRETRAIN = PretrainConfig(learning_rate=0.05, momentum_switch_epoch=1, monitor_samples=1000)
FINETUNE = FinetuneConfig(learning_rate=0.1, momentum=0.9, patience=None)


def pretrained(
    data, hidden: list[int], epochs: int, batch_size: int, *, seed: int = 0, x=None, **pretrain_options
) -> tuple[DeepBeliefNet, list[dict]]:
    """A stack pretrained on ``x`` (default: the data's training inputs), its records."""
    dbn = DeepBeliefNet(data.n_inputs, hidden, seed=seed)
    cfg = dataclasses.replace(PRETRAIN, epochs=epochs, batch_size=batch_size, **pretrain_options)
    records = pretrain(dbn, data.x if x is None else x, data.xv, cfg, seed=seed) if epochs > 0 else []
    return dbn, records


def finetuned(data, clf: nn.Module, epochs: int, batch_size: int, *, seed: int = 0, x=None, y=None, **options) -> dict:
    """Fine-tune ``clf`` (in place) and return its validation and test accuracy."""
    cfg = dataclasses.replace(FINETUNE, epochs=epochs, batch_size=batch_size, **options)
    if epochs > 0:
        finetune(clf, data.x if x is None else x, data.y if y is None else y, data.xv, data.yv, cfg, seed=seed)
    return {
        "validation_accuracy": evaluate(clf, data.xv, data.yv)[1],
        "test_accuracy": evaluate(clf, data.xt, data.yt)[1],
    }


def random_classifier(data, hidden: list[int], *, seed: int = 0, relu: bool = False) -> nn.Sequential:
    clf = build_classifier([data.n_inputs, *hidden], data.n_labels, seed=seed)
    if relu:
        clf = nn.Sequential(*[nn.ReLU() if isinstance(m, nn.Sigmoid) else m for m in clf])
    return clf


@torch.no_grad()
def linear_probe(train_x, train_y, test_x, test_y, n_labels: int, epochs: int = 30, seed: int = 0) -> float:
    """Test accuracy of a softmax classifier trained on fixed features (full-batch Adam):
    what the features alone give."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(train_x.shape[1], n_labels, generator=g) * 0.01).requires_grad_()
    b = torch.zeros(n_labels, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    with torch.enable_grad():
        for _ in range(epochs * 4):
            loss = nn.functional.cross_entropy(train_x @ w + b, train_y) + 1e-4 * w.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return float(((test_x @ w + b).argmax(1) == test_y).float().mean())


@torch.no_grad()
def reconstruction(unit, x: torch.Tensor) -> float:
    """Mean reconstruction cross-entropy per example, in nats."""
    return float(unit.reconstruction_cross_entropy(x))


def unlike_the_data(x: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs unlike the data, of the same size and ink: uniform noise, each image's
    pixels shuffled, and binary noise at the data's mean intensity."""
    g = torch.Generator().manual_seed(seed)
    shuffled = torch.stack([row[torch.randperm(len(row), generator=g)] for row in x])
    return {
        "noise": torch.rand(x.shape, generator=g),
        "shuffled": shuffled,
        "binary_noise": (torch.rand(x.shape, generator=g) < x.mean()).float(),
    }
