"""Pretraining units. Each is an ``nn.Module`` that owns its ``torch.Generator`` and meets
the ``Unit`` protocol, which is all that greedy pretraining knows of a unit: a new unit
type plugs in by implementing it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from layerwise.units.autoencoder import DenoisingAutoencoder
from layerwise.units.rbm import BernoulliRBM, GaussianBernoulliRBM


@runtime_checkable
class Unit(Protocol):
    n_visible: int
    n_hidden: int
    generator: torch.Generator

    def step(self, v: torch.Tensor, *, lr: float, momentum: float = 0.0, **options) -> None:
        """One update on the minibatch ``v`` (batch, n_visible)."""

    def transform(self, v: torch.Tensor) -> torch.Tensor:
        """The upward pass used for stacking: mean hidden activations (batch, n_hidden)."""

    def reconstruction_cross_entropy(self, v: torch.Tensor) -> torch.Tensor:
        """Mean reconstruction cross-entropy of ``v``, in nats per example."""

    def metrics(self, train_x: torch.Tensor, held_x: torch.Tensor | None) -> dict[str, float]:
        """The per-epoch numbers on equal-sized subsets of the training and held-out inputs."""


__all__ = ["Unit", "BernoulliRBM", "GaussianBernoulliRBM", "DenoisingAutoencoder"]
