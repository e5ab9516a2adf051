"""What every pretraining unit shares: its sizes, its own ``torch.Generator``, weights
``(n_hidden, n_visible)`` laid out as ``nn.Linear`` lays them out (so a trained layer
copies straight into a classifier), two biases, a momentum ("velocity") buffer per
parameter, so that momentum lands in ``state_dict``, and the precision of its matrix
products.

Devices: a unit lives where its tensors are (``unit.to("cuda")``). Its weights are drawn
on the CPU, so a net starts from the same weights on every device; its generator
follows the weights (``generator`` is a CUDA generator once the unit is on a GPU), so
every random draw of a step is made on the unit's device.

Precision (``precision``): "fp32", or "bf16" for the matrix products of training steps
(operands in bfloat16, results and every accumulator in fp32). Metrics (reconstruction
cross-entropy, free energy) are always computed in fp32. "tf32" is a process setting of
CUDA (``runtime``): for the unit it is fp32.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from layerwise import _devices
from layerwise._checks import check_choice, check_int

PRECISIONS = ("fp32", "tf32", "bf16")


class UnitBase(nn.Module):
    # buffers (register_buffer in _init_parameters), declared for type checkers
    weight_velocity: torch.Tensor
    visible_bias_velocity: torch.Tensor
    hidden_bias_velocity: torch.Tensor

    def __init__(self, n_visible: int, n_hidden: int, *, seed: int = 0) -> None:
        super().__init__()
        name = type(self).__name__
        check_int(name, "n_visible", n_visible, low=1)
        check_int(name, "n_hidden", n_hidden, low=1)
        self.n_visible = n_visible
        self.n_hidden = n_hidden
        self._generator = torch.Generator().manual_seed(seed)
        self.precision = "fp32"
        self._step_dtype = None  # bfloat16 inside a bf16 training step, else None (fp32)
        self._weight_low = None  # the weights in bfloat16, cast once per bf16 step

    @property
    def generator(self) -> torch.Generator:
        """The unit's generator, on the device of its weights."""
        weight = self.__dict__.get("_parameters", {}).get("weight")
        if weight is not None:
            self._generator = _devices.follow(self._generator, weight.device)
        return self._generator

    @generator.setter
    def generator(self, g: torch.Generator) -> None:
        self._generator = g

    def set_precision(self, precision: str) -> UnitBase:
        self.precision = check_choice(type(self).__name__, "precision", precision, PRECISIONS)
        return self

    def _weight_addmm(self, bias: torch.Tensor, a: torch.Tensor, *, transpose: bool) -> torch.Tensor:
        """bias + a @ W^T (``transpose``) or bias + a @ W; in a bf16 step W is cast once
        for all the step's products (the weights change only at its end)."""
        w = self.weight
        if self._step_dtype is None:
            return torch.addmm(bias, a, w.t() if transpose else w)
        if self._weight_low is None:
            self._weight_low = w.to(self._step_dtype)
        low = self._weight_low.t() if transpose else self._weight_low
        return torch.mm(a.to(self._step_dtype), low).float().add_(bias)

    @contextlib.contextmanager
    def _training(self):
        """One training step: the step's precision applies inside it."""
        self._step_dtype = torch.bfloat16 if self.precision == "bf16" else None
        try:
            yield
        finally:
            self._step_dtype = self._weight_low = None

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
