"""The pretrained net as a product in itself: encode data with it, reconstruct inputs
through it, and sample from it (``layerwise encode``, ``reconstruct``, ``sample``, ``show``).

- **encode**: the mean activations of hidden layer K (the top by default) of a pretrained
  stack or of a finetuned net's hidden layers, computed in chunks;
- **reconstruct**: up through the stack by mean activations, then down again by each
  unit's mean visibles (RBMs) or its tied decoder (autoencoders);
- **sample**: block Gibbs sampling in the top RBM, started from noise, then one
  mean-field pass down the stack (Hinton, Osindero & Teh 2006).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from layerwise._checks import InvalidInput, check_int
from layerwise.data.formats import image_side


def layers_of(model, manifest) -> int:
    """How many hidden layers a saved net has."""
    if manifest["kind"] == "pretrained":
        return len(model.layers)
    return len(manifest["architecture"]["sizes"]) - 1


def activation_fn(model, manifest, layer: int | None = None):
    """A function from inputs (rows, n_inputs) to the mean activations of hidden layer
    ``layer`` (1-based; None: the top) of a pretrained or finetuned net."""
    n = layers_of(model, manifest)
    layer = n if layer is None else layer
    if not isinstance(layer, int) or not 1 <= layer <= n:
        raise InvalidInput(f"--layer {layer}: this {manifest['kind']} net has hidden layers 1 to {n}")
    if manifest["kind"] == "pretrained":
        return lambda x: model.transform(x, upto=layer)
    mods, seen = [], 0
    for m in model:
        if isinstance(m, nn.Dropout):
            continue
        mods.append(m)
        seen += isinstance(m, nn.Sigmoid)
        if seen == layer:
            break
    body = nn.Sequential(*mods).eval()
    return lambda x: body(x)


def _down(unit, h: torch.Tensor) -> torch.Tensor:
    """A unit's mean visibles given hiddens: its generative (RBM) or decoding (autoencoder) direction."""
    if hasattr(unit, "mean_visibles"):
        return unit.mean_visibles(h)
    return torch.sigmoid(torch.addmm(unit.visible_bias, h, unit.weight))


@torch.no_grad()
def reconstruct_batch(dbn, x: torch.Tensor) -> torch.Tensor:
    """Inputs up through every layer and down again (mean-field both ways)."""
    h = dbn.transform(x)
    for j in reversed(range(len(dbn.layers))):
        h = _down(dbn.layers[j], h)[:, : dbn.sizes[j]]  # a top RBM's label units are not passed down
    return h


@torch.no_grad()
def sample(dbn, n: int, *, steps: int = 1000, seed: int = 0, label: int | None = None) -> torch.Tensor:
    """``n`` samples (n, n_visible) of a DBN: ``steps`` Gibbs steps in the top RBM from
    random binary hiddens, then one mean-field pass down the lower layers. ``label``:
    the top RBM's label units clamped to that label (a net pretrained with top_labels)."""
    check_int("sample", "n", n, low=1)
    check_int("sample", "steps", steps, low=1)
    top = dbn.layers[-1]
    if not hasattr(top, "mean_visibles"):
        raise InvalidInput(
            "sampling needs a stack of RBMs; this net's units are autoencoders, which define no "
            "distribution to sample from"
        )
    if label is not None and not dbn.top_labels:
        raise InvalidInput(
            "--label needs a top RBM trained with the labels joined to its visible layer "
            "([model] top_labels = true); this net's top RBM has none"
        )
    if label is not None and not 0 <= label < dbn.top_labels:
        raise InvalidInput(f"--label {label}: the top RBM knows labels 0 to {dbn.top_labels - 1}")
    below = dbn.sizes[-2]
    g = torch.Generator(device=top.weight.device).manual_seed(seed)
    old, top.generator = top.generator, g
    try:
        h = (torch.rand(n, top.n_hidden, generator=g, device=top.weight.device) < 0.5).to(top.weight.dtype)
        clamp = None if label is None else torch.full((n,), label, dtype=torch.long, device=h.device)
        for _ in range(steps):
            v = top.sample_visibles(top.mean_visibles(h))
            if dbn.top_labels:  # the label units: clamped, or free (a softmax group, as one-hot)
                free = (
                    None
                    if clamp is not None
                    else torch.multinomial(torch.softmax(top.visible_logits(h)[:, below:], 1), 1, generator=g).squeeze(
                        1
                    )
                )
                v = dbn.with_labels(v[:, :below], clamp if clamp is not None else free)
            h = top.sample_hiddens(top.mean_hiddens(v))
        v = top.mean_visibles(h)[:, :below]
    finally:
        top.generator = old
    for unit in reversed(dbn.layers[:-1]):
        v = _down(unit, v)
    return v


def save_npz(path: Path, **arrays) -> Path:
    """Write arrays as one .npz, atomically (check the path first: ``_files.check_out``)."""
    from layerwise._files import atomic_write

    atomic_write(Path(path), lambda f: np.savez(f, **arrays))
    return Path(path)


def write_pictures(folder, dbn, x: torch.Tensor | None, *, samples: int = 32, steps: int = 1000) -> list[str]:
    """Pictures of a pretrained stack in ``folder``: test images over their
    reconstructions (``x``: some inputs) and, for RBM stacks, samples. Square Bernoulli
    images only; returns the files written."""
    side = image_side(dbn.n_visible)
    if side is None or dbn.visible != "bernoulli":
        return []
    from layerwise.reporting import plots

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if x is not None and len(x):
        x = x[:16].to(dbn.device)
        r = reconstruct_batch(dbn, x)
        plots.image_rows(
            [("test images", x.cpu().numpy()), ("reconstructions", r.cpu().numpy())],
            side,
            folder / "reconstructions.png",
        )
        written.append("reconstructions.png")
    if dbn.unit == "rbm":
        v = sample(dbn, samples, steps=steps).cpu().numpy()
        plots.image_grid(v, side, folder / "samples.png", title=f"samples ({steps} Gibbs steps in the top RBM)")
        written.append("samples.png")
    return written
