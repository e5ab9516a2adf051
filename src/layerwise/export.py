"""Saved nets out to other runtimes: ONNX (the ``export`` extra: onnx, onnxruntime,
onnxscript) and TorchScript.

A finetuned net exports as it predicts: inputs (batch, n_inputs) to logits (batch,
n_labels), dropout off. A pretrained net exports as an encoder: inputs to the top
layer's mean activations (``layerwise encode`` computes the same). The batch dimension is
dynamic. An ONNX file carries the artifact's weights hash, kind and architecture in its
metadata (``layerwise.weights_sha256``, ``layerwise.kind``, ``layerwise.architecture``); a
TorchScript file carries the manifest as the extra file ``layerwise_manifest.json``.
The file is written atomically: a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from layerwise._checks import InvalidInput, MissingExtra
from layerwise._files import atomic_write, check_out

if TYPE_CHECKING:
    from layerwise.stack import DeepBeliefNet

FORMATS = ("onnx", "torchscript")


def encoder(dbn) -> nn.Sequential:
    """A pretrained stack as a plain net: Linear + Sigmoid per layer (the units' upward
    mean-field pass, ``DeepBeliefNet.transform``)."""
    mods: list[nn.Module] = []
    for i, layer in enumerate(dbn.layers):
        linear = nn.Linear(dbn.sizes[i], layer.n_hidden)  # a top RBM's label units stay off, as in transform
        with torch.no_grad():
            linear.weight.copy_(layer.weight[:, : dbn.sizes[i]])
            linear.bias.copy_(layer.hidden_bias)
        mods += [linear, nn.Sigmoid()]
    return nn.Sequential(*mods).eval()


def exportable(folder) -> tuple[nn.Module, dict, int]:
    """The net of a saved model as it exports (on the CPU, eval mode), its manifest, and
    its number of inputs."""
    from layerwise.storage.artifacts import load_model

    model, manifest = load_model(folder)
    if manifest["kind"] == "pretrained":
        model = cast("DeepBeliefNet", model)  # what a pretrained artifact holds
        return encoder(model.cpu()), manifest, model.n_visible
    model = model.cpu().eval()
    return model, manifest, manifest["architecture"]["sizes"][0]


def export(folder, fmt: str, out, *, force: bool = False) -> Path:
    """Write the model saved in ``folder`` to ``out`` as ``fmt`` (onnx or torchscript); an
    existing ``out`` is kept unless ``force``."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    out = check_out(out, force, name_it=f"give a file name (e.g. model.{'onnx' if fmt == 'onnx' else 'pt'})")
    net, manifest, n_in = exportable(folder)
    example = torch.rand(2, n_in, generator=torch.Generator().manual_seed(0))
    if fmt == "onnx":
        data = _onnx_bytes(net, example, manifest)
    else:
        data = _torchscript_bytes(net, example, manifest)
    atomic_write(out, lambda f: f.write(data))
    return out


def _onnx_bytes(net: nn.Module, example: torch.Tensor, manifest: dict) -> bytes:
    try:
        import onnx
    except ImportError as e:
        raise MissingExtra("ONNX export needs the export extra: pip install 'layerwise[export]'") from e
    import io
    import logging

    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter's notes on its own internals (a missing torchvision, ...)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                net,
                (example,),
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    # dynamo=True: an ONNXProgram, never None (torch's annotation covers the legacy exporter too)
    model = program.model_proto  # type: ignore[union-attr]
    for key, value in (
        ("layerwise.weights_sha256", manifest["weights_sha256"]),
        ("layerwise.kind", manifest["kind"]),
        ("layerwise.architecture", json.dumps(manifest["architecture"])),
        ("layerwise.layerwise_version", str(manifest.get("layerwise_version", ""))),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    buf = io.BytesIO()
    onnx.save(model, buf)
    return buf.getvalue()


def _torchscript_bytes(net: nn.Module, example: torch.Tensor, manifest: dict) -> bytes:
    import io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in favour of torch.export
        scripted = torch.jit.script(net)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf, _extra_files={"layerwise_manifest.json": json.dumps(manifest)})
    return buf.getvalue()
