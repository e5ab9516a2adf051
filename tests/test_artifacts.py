import json
import os
import stat

import pytest
import torch

from layerwise.stack import DeepBeliefNet
from layerwise.storage.artifacts import MANIFEST, WEIGHTS, load_model, read_artifact, sha256_file, write_artifact


def _save(path, dbn, **kw):
    return write_artifact(
        path, dbn.model_state(), kind="pretrained", architecture=dbn.architecture(), config={"seed": 0}, **kw
    )


def test_round_trip_is_exact(tmp_path):
    dbn = DeepBeliefNet(12, [8, 4], seed=3, init_std=0.3)
    manifest = _save(tmp_path / "a", dbn, read_only=True)
    model, m2 = load_model(tmp_path / "a")
    assert m2 == manifest and m2["schema_version"] == 1 and m2["parent"] is None
    for (k, v), (k2, v2) in zip(dbn.named_parameters(), model.named_parameters()):
        assert k == k2 and torch.equal(v, v2)
    assert manifest["weights_sha256"] == sha256_file(tmp_path / "a" / WEIGHTS)
    mode = (tmp_path / "a" / WEIGHTS).stat().st_mode
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    # readable with plain safetensors + json
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "a" / WEIGHTS))) == {k for k, _ in dbn.named_parameters()}
    assert json.loads((tmp_path / "a" / MANIFEST).read_text())["architecture"]["hidden"] == [8, 4]


def test_existing_folder_is_never_overwritten(tmp_path):
    dbn = DeepBeliefNet(6, [3])
    _save(tmp_path / "a", dbn)
    before = (tmp_path / "a" / WEIGHTS).read_bytes()
    with pytest.raises(FileExistsError, match="artifact folder '.*a' already exists"):
        _save(tmp_path / "a", DeepBeliefNet(6, [3], seed=9))
    assert (tmp_path / "a" / WEIGHTS).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary folder left behind


def _writable(path):
    os.chmod(path, 0o644)


def test_tampered_weights_are_refused(tmp_path):
    _save(tmp_path / "a", DeepBeliefNet(6, [3]))
    w = tmp_path / "a" / WEIGHTS
    _writable(w)
    raw = bytearray(w.read_bytes())
    raw[-1] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(
        ValueError,
        match=r"weights.safetensors' does not match its manifest: sha256 is [0-9a-f]{64}, the manifest records",
    ):
        read_artifact(tmp_path / "a")


def test_truncated_weights_are_refused(tmp_path):
    _save(tmp_path / "a", DeepBeliefNet(6, [3]))
    w = tmp_path / "a" / WEIGHTS
    _writable(w)
    raw = w.read_bytes()
    w.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=f"size {len(raw) // 2} bytes\\); the file was changed or truncated"):
        load_model(tmp_path / "a")


def test_corrupt_or_missing_manifest(tmp_path):
    _save(tmp_path / "a", DeepBeliefNet(6, [3]))
    m = tmp_path / "a" / MANIFEST
    _writable(m)
    m.write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json' is not valid JSON"):
        load_model(tmp_path / "a")
    m.write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(ValueError, match="lacks the key 'kind'"):
        load_model(tmp_path / "a")
    m.unlink()
    with pytest.raises(FileNotFoundError, match="is not a layerwise model: it has no manifest.json"):
        load_model(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="model folder '.*nowhere' does not exist"):
        load_model(tmp_path / "nowhere")


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    dbn = DeepBeliefNet(6, [3])
    write_artifact(
        tmp_path / "a",
        dbn.model_state(),
        kind="pretrained",
        architecture={**dbn.architecture(), "hidden": [4]},
        config={},
    )
    with pytest.raises(ValueError, match="does not fit the manifest's architecture.*wrong shape"):
        load_model(tmp_path / "a")
