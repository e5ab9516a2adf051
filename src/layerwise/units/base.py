"""What every pretraining unit shares: its sizes, its own ``torch.Generator``, weights
``(n_hidden, n_visible)`` laid out as ``nn.Linear`` lays them out (so a trained layer
copies straight into a classifier), two biases, and a momentum ("velocity") buffer per
parameter, so that momentum lands in ``state_dict``."""

from __future__ import annotations

import torch
from torch import nn

from layerwise._checks import check_int


class UnitBase(nn.Module):
    def __init__(self, n_visible: int, n_hidden: int, *, seed: int = 0) -> None:
        super().__init__()
        name = type(self).__name__
        check_int(name, "n_visible", n_visible, low=1)
        check_int(name, "n_hidden", n_hidden, low=1)
        self.n_visible = n_visible
        self.n_hidden = n_hidden
        self.generator = torch.Generator().manual_seed(seed)

    def _init_parameters(self, weight: torch.Tensor, *, requires_grad: bool) -> None:
        """The weights as given, zero biases, zero velocities (in the weights' dtype)."""
        dtype = weight.dtype
        self.weight = nn.Parameter(weight, requires_grad=requires_grad)
        self.visible_bias = nn.Parameter(torch.zeros(self.n_visible, dtype=dtype), requires_grad=requires_grad)
        self.hidden_bias = nn.Parameter(torch.zeros(self.n_hidden, dtype=dtype), requires_grad=requires_grad)
        self.register_buffer("weight_velocity", torch.zeros_like(weight))
        self.register_buffer("visible_bias_velocity", torch.zeros(self.n_visible, dtype=dtype))
        self.register_buffer("hidden_bias_velocity", torch.zeros(self.n_hidden, dtype=dtype))

    def extra_repr(self) -> str:
        return f"n_visible={self.n_visible}, n_hidden={self.n_hidden}"
