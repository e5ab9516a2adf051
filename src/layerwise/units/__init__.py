"""Pretraining units: each is an nn.Module with ``step`` (one update on a minibatch),
``transform`` (the upward pass for stacking) and ``reconstruction_cross_entropy``."""

from layerwise.units.autoencoder import DenoisingAutoencoder
from layerwise.units.rbm import BernoulliRBM, GaussianBernoulliRBM

__all__ = ["BernoulliRBM", "GaussianBernoulliRBM", "DenoisingAutoencoder"]
