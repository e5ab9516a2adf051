"""DeepBeliefNet: a stack of pretraining units trained greedily, then unrolled into a
plain ``torch.nn.Sequential`` classifier for fine-tuning.

Layer i is trained on the mean activations (hidden probabilities) of the layers below
it (Hinton, Osindero & Teh 2006; Bengio et al. 2007 for autoencoders).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from layerwise._checks import check_choice, check_int, check_range, fail
from layerwise.units import BernoulliRBM, DenoisingAutoencoder, GaussianBernoulliRBM
from layerwise.units.base import UnitBase

UNITS = ("rbm", "autoencoder")
VISIBLE = ("bernoulli", "gaussian")


class DeepBeliefNet(nn.Module):
    """A stack of RBMs or denoising autoencoders, ``n_visible -> hidden[0] -> ...``.

    ``unit``: "rbm" or "autoencoder". ``visible``: "bernoulli" (inputs in [0, 1]) or
    "gaussian" (standardized inputs; RBM only, for the first layer). Layer i draws its
    initial weights from a generator seeded with ``seed + i``: N(0, init_std^2), where
    ``init_std`` None means 0.01 for RBMs and Glorot-uniform for autoencoders.
    """

    def __init__(
        self,
        n_visible: int,
        hidden: list[int],
        *,
        unit: str = "rbm",
        visible: str = "bernoulli",
        seed: int = 0,
        init_std: float | None = None,
        device=None,
        precision: str = "fp32",
        top_labels: int = 0,
    ) -> None:
        super().__init__()
        check_int("DeepBeliefNet", "n_visible", n_visible, low=1)
        check_int("DeepBeliefNet", "top_labels", top_labels, low=0)
        if top_labels and unit != "rbm":
            fail("DeepBeliefNet", "unit", "'rbm' when the top RBM learns the labels (top_labels)", unit)
        if not isinstance(hidden, (list, tuple)) or not hidden:
            fail("DeepBeliefNet", "hidden", "a non-empty list of ints", hidden)
        for i, n in enumerate(hidden):
            check_int("DeepBeliefNet", f"hidden[{i}]", n, low=1)
        check_choice("DeepBeliefNet", "unit", unit, UNITS)
        check_choice("DeepBeliefNet", "visible", visible, VISIBLE)
        if unit == "autoencoder" and visible != "bernoulli":
            fail("DeepBeliefNet", "visible", "'bernoulli' for autoencoder units", visible)
        if init_std is not None:
            check_range("DeepBeliefNet", "init_std", init_std, low=0.0)
        rbm_std = 0.01 if init_std is None else init_std  # Hinton's practical guide
        self.n_visible = n_visible
        self.hidden = list(hidden)
        self.unit = unit
        self.visible = visible
        self.top_labels = top_labels  # label units joined to the top RBM's visible layer (0: none)
        sizes = [n_visible] + self.hidden
        layers: list[BernoulliRBM | GaussianBernoulliRBM | DenoisingAutoencoder] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i == len(sizes) - 2:
                n_in += top_labels
            if unit == "autoencoder":
                layers.append(DenoisingAutoencoder(n_in, n_out, seed=seed + i, init_std=init_std))
            elif i == 0 and visible == "gaussian":
                layers.append(GaussianBernoulliRBM(n_in, n_out, seed=seed + i, init_std=rbm_std))
            else:
                # upper layers see hidden probabilities in [0, 1]: binary visibles
                layers.append(BernoulliRBM(n_in, n_out, seed=seed + i, init_std=rbm_std))
        # an nn.ModuleList, whose stubs type every item as nn.Module: these are the units
        self.layers: Sequence[BernoulliRBM | GaussianBernoulliRBM | DenoisingAutoencoder] = nn.ModuleList(  # type: ignore[assignment]
            layer.set_precision(precision) for layer in layers
        )
        if device is not None:
            # drawn on the CPU, then moved: the same start on every device
            self.to(device)

    @property
    def device(self) -> torch.device:
        return self.layers[0].weight.device

    @property
    def sizes(self) -> list[int]:
        return [self.n_visible] + self.hidden

    def architecture(self) -> dict:
        """Everything needed to rebuild the net (weights aside)."""
        return {
            "type": "DeepBeliefNet",
            "n_visible": self.n_visible,
            "hidden": list(self.hidden),
            "unit": self.unit,
            "visible": self.visible,
            "layers": [type(layer).__name__ for layer in self.layers],
            **({"top_labels": self.top_labels} if self.top_labels else {}),
        }

    @classmethod
    def from_architecture(cls, arch: dict, device=None) -> DeepBeliefNet:
        return cls(
            arch["n_visible"],
            list(arch["hidden"]),
            unit=arch["unit"],
            visible=arch["visible"],
            device=device,
            top_labels=int(arch.get("top_labels", 0)),
        )

    def model_state(self) -> dict[str, torch.Tensor]:
        """The learned parameters only (no momentum, chains or statistics): what a
        pretrained artifact stores."""
        return {k: v.detach().clone().contiguous() for k, v in self.named_parameters()}

    @torch.no_grad()
    def transform(self, x: torch.Tensor, upto: int | None = None, chunk: int = 10000) -> torch.Tensor:
        """Mean activations of layer ``upto`` (default: the top), computed in chunks on
        the net's device (``x`` may be elsewhere: each chunk is moved there). Shape
        (batch, sizes[upto]), on the net's device."""
        upto = len(self.layers) if upto is None else upto
        if upto == 0:
            return x.to(self.device)
        outs = []
        for start in range(0, x.shape[0], chunk):
            h = x[start : start + chunk].to(self.device)
            for j, layer in enumerate(self.layers[:upto]):
                h = layer.transform(self.with_labels(h, None) if j == len(self.layers) - 1 else h)
            outs.append(h)
        return torch.cat(outs)

    def with_labels(self, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The top RBM's visible layer: the features below it and, with ``top_labels``,
        the labels one-hot (``y``: int labels; None: all label units off, as when the
        label is not known)."""
        if not self.top_labels:
            return h
        lab = torch.zeros(h.shape[0], self.top_labels, dtype=h.dtype, device=h.device)
        if y is not None:
            lab[torch.arange(h.shape[0], device=h.device), y.to(h.device)] = 1
        return torch.cat([h, lab], 1)

    def to_classifier(
        self,
        n_labels: int,
        *,
        dropout_input: float = 0.0,
        dropout_hidden: float = 0.0,
        seed: int = 0,
    ) -> nn.Sequential:
        """Unroll into a plain ``nn.Sequential``: ``[Dropout] Linear Sigmoid [Dropout] ...
        Linear(n_labels)``, the Linear layers copying the pretrained weights and hidden
        biases, the head initialised N(0, 0.01^2) from a generator seeded with ``seed``.
        Dropout modules appear only where the rate is above 0. On the net's device."""
        check_int("DeepBeliefNet.to_classifier", "n_labels", n_labels, low=1)
        return build_classifier(
            self.sizes,
            n_labels,
            dropout_input=dropout_input,
            dropout_hidden=dropout_hidden,
            layers=list(self.layers),
            seed=seed,
        ).to(self.device)


def build_classifier(
    sizes: list[int],
    n_labels: int,
    *,
    dropout_input: float = 0.0,
    dropout_hidden: float = 0.0,
    layers: Sequence[UnitBase] | None = None,
    seed: int = 0,
) -> nn.Sequential:
    """The classifier shape shared by ``to_classifier`` and by loading a fine-tuned net.
    Without ``layers`` the hidden Linear layers get PyTorch's default initialisation
    drawn from a generator seeded with ``seed`` (the random-initialisation baseline)."""
    check_range("build_classifier", "dropout_input", dropout_input, low=0.0, high=1.0, high_open=True)
    check_range("build_classifier", "dropout_hidden", dropout_hidden, low=0.0, high=1.0, high_open=True)
    gen = torch.Generator().manual_seed(seed)
    device = layers[0].weight.device if layers else torch.device("cpu")  # built where the units are
    mods: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        p = dropout_input if i == 0 else dropout_hidden
        if p > 0:
            mods.append(nn.Dropout(p))
        linear = nn.Linear(n_in, n_out, device=device)
        with torch.no_grad():
            if layers is not None:  # a top RBM's label columns are not inputs of the classifier
                linear.weight.copy_(layers[i].weight[:, :n_in])
                linear.bias.copy_(layers[i].hidden_bias)
            else:
                bound = 1.0 / n_in**0.5
                linear.weight.copy_(torch.rand(n_out, n_in, generator=gen) * 2 * bound - bound)
                linear.bias.copy_(torch.rand(n_out, generator=gen) * 2 * bound - bound)
        mods += [linear, nn.Sigmoid()]
    if dropout_hidden > 0 and len(sizes) > 1:
        mods.append(nn.Dropout(dropout_hidden))
    head = nn.Linear(sizes[-1], n_labels, device=device)
    with torch.no_grad():
        head.weight.copy_(torch.randn(n_labels, sizes[-1], generator=gen) * 0.01)
        head.bias.zero_()
    mods.append(head)
    return nn.Sequential(*mods)
