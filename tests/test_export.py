"""ONNX and TorchScript exports match the native net within 1e-5, with a dynamic batch
dimension, for finetuned nets (logits) and pretrained nets (encoders)."""

import json

import numpy as np
import pytest
import torch

from layerwise.cli import main
from layerwise.stack import DeepBeliefNet
from layerwise.storage.artifacts import load_model, write_artifact


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    dbn = DeepBeliefNet(20, [12, 8], seed=0)
    with torch.no_grad():
        for layer in dbn.layers:  # weights of a trained size, not 0.01
            layer.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
            layer.hidden_bias.uniform_(-1, 1, generator=torch.Generator().manual_seed(2))
    write_artifact(d / "pretrained", dbn.model_state(), kind="pretrained", architecture=dbn.architecture(), config={})
    clf = dbn.to_classifier(4, dropout_hidden=0.3, seed=3)
    from layerwise.storage.artifacts import classifier_architecture

    write_artifact(
        d / "finetuned",
        clf.state_dict(),
        kind="finetuned",
        architecture=classifier_architecture([20, 12, 8], 4, 0.0, 0.3),
        config={},
    )
    return d


def _native(folder, x):
    model, manifest = load_model(folder)
    with torch.no_grad():
        return (model.transform(x) if manifest["kind"] == "pretrained" else model(x)).numpy(), manifest


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["finetuned", "pretrained"])
def test_onnx_matches_the_native_net(models, kind, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert main(["export", str(models / kind), "--format", "onnx", "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for rows in (1, 1000):
        x = torch.rand(rows, 20, generator=torch.Generator().manual_seed(rows))
        want, manifest = _native(models / kind, x)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == want.shape == (rows, 4 if kind == "finetuned" else 8)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    meta = {p.key: p.value for p in pytest.importorskip("onnx").load(str(out)).metadata_props}
    assert meta["layerwise.weights_sha256"] == manifest["weights_sha256"] and meta["layerwise.kind"] == kind
    assert json.loads(meta["layerwise.architecture"]) == manifest["architecture"]


@pytest.mark.parametrize("kind", ["finetuned", "pretrained"])
def test_torchscript_matches_the_native_net(models, kind, tmp_path):
    out = tmp_path / "m.pt"
    assert main(["export", str(models / kind), "--format", "torchscript", "--out", str(out)]) == 0
    extra = {"layerwise_manifest.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    for rows in (1, 1000):
        x = torch.rand(rows, 20, generator=torch.Generator().manual_seed(rows))
        want, manifest = _native(models / kind, x)
        with torch.no_grad():
            np.testing.assert_allclose(scripted(x).numpy(), want, atol=1e-5, rtol=0)
    assert json.loads(extra["layerwise_manifest.json"])["weights_sha256"] == manifest["weights_sha256"]


def test_export_refuses_what_it_cannot_do(models, tmp_path, capsys):
    out = tmp_path / "m.pt"
    out.write_text("keep me")
    assert main(["export", str(models / "finetuned"), "--format", "torchscript", "--out", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["export", str(tmp_path / "nope"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
    assert main(["export", str(models / "finetuned"), "--format", "torchscript", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
