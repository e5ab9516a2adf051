"""Denoising autoencoder with tied weights (Vincent et al. 2008).

    x~ = x * m,  m_i ~ Bernoulli(1 - noise)        masking noise: zero a fraction of inputs
    h  = sigmoid(c + x~ W^T)                       W: (n_hidden, n_visible)
    z  = b + h W                                   reconstruction logits
    L  = -sum_i [x_i log sigmoid(z_i) + (1 - x_i) log(1 - sigmoid(z_i))]

The loss is computed from the logits (``binary_cross_entropy_with_logits``), never as
``log(sigmoid(.))``. Training is a gradient step with momentum and L2 weight decay on the
weights; the velocities are buffers so they land in ``state_dict``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from layerwise import _devices
from layerwise._checks import check_range
from layerwise.units.base import UnitBase


class DenoisingAutoencoder(UnitBase):
    """Tied-weight sigmoid autoencoder trained on masked inputs in [0, 1]."""

    visible_kind = "bernoulli"

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        *,
        seed: int = 0,
        init_std: float | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(n_visible, n_hidden, seed=seed)
        # Glorot-uniform range for sigmoid units (4 * sqrt(6 / (fan_in + fan_out))) unless given
        if init_std is None:
            bound = 4.0 * (6.0 / (n_visible + n_hidden)) ** 0.5
            weight = (torch.rand(n_hidden, n_visible, generator=self.generator, dtype=dtype) * 2 - 1) * bound
        else:
            check_range(type(self).__name__, "init_std", init_std, low=0.0)
            weight = torch.randn(n_hidden, n_visible, generator=self.generator, dtype=dtype) * init_std
        self._init_parameters(weight, requires_grad=True)

    def mean_hiddens(self, v: torch.Tensor) -> torch.Tensor:
        """h = sigmoid(c + v W^T), shape (batch, n_hidden)."""
        return torch.sigmoid(torch.addmm(self.hidden_bias, v, self.weight.t()))

    def transform(self, v: torch.Tensor) -> torch.Tensor:
        return self.mean_hiddens(v)

    def corrupt(self, v: torch.Tensor, noise: float) -> torch.Tensor:
        """Masking noise: each input is set to 0 with probability ``noise``."""
        if noise <= 0:
            return v
        keep = torch.rand(v.shape, generator=self.generator, dtype=v.dtype, device=v.device) >= noise
        return v * keep

    def reconstruction_logits(self, v: torch.Tensor) -> torch.Tensor:
        """z = b + h(v) W, shape (batch, n_visible)."""
        return torch.addmm(self.visible_bias, self.mean_hiddens(v), self.weight)

    def loss(self, v: torch.Tensor, noise: float = 0.0) -> torch.Tensor:
        """Reconstruction cross-entropy of clean ``v`` from its corrupted copy, in nats
        per example."""
        logits = self.reconstruction_logits(self.corrupt(v, noise))
        return F.binary_cross_entropy_with_logits(logits, v, reduction="sum") / v.shape[0]

    @torch.no_grad()
    def reconstruction_cross_entropy(self, v: torch.Tensor) -> torch.Tensor:
        """The loss with no corruption: what the unit reports per epoch (no graph)."""
        return self.loss(v, 0.0)

    def step(
        self, v: torch.Tensor, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, noise: float = 0.25
    ) -> None:
        """One gradient step with momentum on the minibatch ``v`` (batch, n_visible)."""
        params = (self.weight, self.visible_bias, self.hidden_bias)
        with torch.enable_grad():
            if _devices.bf16_products(self.precision, v.device):
                # bf16 products; the loss (binary_cross_entropy_with_logits) autocasts to fp32
                with torch.autocast(v.device.type, dtype=torch.bfloat16):
                    loss = self.loss(v, noise)
            else:
                loss = self.loss(v, noise)
            grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            velocities = (self.weight_velocity, self.visible_bias_velocity, self.hidden_bias_velocity)
            for i, (p, g, vel) in enumerate(zip(params, grads, velocities)):
                if weight_decay and i == 0:
                    g = g + weight_decay * p
                vel.mul_(momentum).add_(g, alpha=-lr)
                p.add_(vel)

    @torch.no_grad()
    def metrics(self, train_x: torch.Tensor, held_x: torch.Tensor | None) -> dict[str, float]:
        """Reconstruction cross-entropy on training and held-out inputs."""
        m = {"recon_ce_train": float(self.reconstruction_cross_entropy(train_x))}
        if held_x is not None:
            m["recon_ce_heldout"] = float(self.reconstruction_cross_entropy(held_x))
        return m
