"""The pretrained net as a product: staged pretraining, fine-tunes from a saved net,
lineage in the catalog."""

import hashlib
import json
import os
import signal

import numpy as np
import pytest
import torch

from conftest import make_patterns, run_layerwise, worker_env
from layerwise.cli import main
from layerwise.storage.artifacts import read_artifact

RECIPE = """
seed = 2
threads = 1
[data]
source = "npz"
train = "labelled.npz"
test = "test.npz"
[model]
hidden = [40, 20]
[pretrain]
epochs = 2
batch_size = 10
learning_rate = 0.05
[finetune]
epochs = 5
batch_size = 10
learning_rate = 0.3
[checkpoint]
every_batches = 5
"""


@pytest.fixture
def folder(tmp_path, monkeypatch):
    x, y = make_patterns(n=1400, n_features=36, n_classes=3, seed=1)
    np.savez(tmp_path / "part1.npz", x=x[:500])
    np.savez(tmp_path / "part2.npz", x=x[500:900])
    np.savez(tmp_path / "labelled.npz", x=x[900:1200], y=y[900:1200])
    np.savez(tmp_path / "test.npz", x=x[1200:], y=y[1200:])
    np.savez(tmp_path / "narrow.npz", x=x[:100, :30])
    (tmp_path / "r.toml").write_text(RECIPE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_two_stages_are_recorded_and_a_wrong_width_stage_changes_nothing(folder, capsys):
    assert main(["pretrain", "r.toml", "--data", "part1.npz", "--out", "p", "--quiet"]) == 0
    assert "pretrained net: p/stage-1" in capsys.readouterr().out
    before_ckpt, before_stage = _digest(folder / "p/checkpoint"), _digest(folder / "p/stage-1")
    assert main(["pretrain", "--resume", "p", "--data", "narrow.npz", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "narrow.npz: array 'x' has 30 features per sample; the net expects 36" in err
    assert _digest(folder / "p/checkpoint") == before_ckpt and _digest(folder / "p/stage-1") == before_stage
    assert not (folder / "p/stage-2").exists()

    assert main(["pretrain", "--resume", "p", "--data", "part2.npz", "--epochs", "3", "--quiet"]) == 0
    s1, m1 = read_artifact(folder / "p/stage-1")
    s2, m2 = read_artifact(folder / "p/stage-2")
    assert [s["data"] for s in m2["stages"]] == ["part1.npz", "part2.npz"]
    assert [s["samples"] for s in m2["stages"]] == [500, 400]
    assert [s["epochs_per_layer"] for s in m2["stages"]] == [2, 3]
    assert m2["parent"] == m1["weights_sha256"] and m1["parent"] is None
    assert not torch.equal(s1["layers.0.weight"], s2["layers.0.weight"])  # stage 2 trained on
    assert _digest(folder / "p/stage-1") == before_stage  # and stage 1 is untouched
    # a new stage needs new data
    assert main(["pretrain", "--resume", "p", "--quiet"]) == 2
    assert "stage 2 is finished; a new stage needs --data FILE.npz" in capsys.readouterr().err
    # a staged folder is not a train run: the error names the command that goes on with it
    assert main(["train", "--resume", "p", "--quiet"]) == 2
    assert "belongs to a 'stage' job, not to 'train': continue it with `layerwise pretrain --resume FOLDER`" in (
        capsys.readouterr().err
    )


@pytest.mark.slow
def test_staged_pretraining_continues_exactly(folder):
    """Stage 2 continues the stage-1 state (momentum, chains, generators): two stages in
    one folder equal stage 2 resumed after a SIGKILL in the middle of it."""
    for out in ("a", "b"):
        assert main(["pretrain", "r.toml", "--data", "part1.npz", "--out", out, "--quiet"]) == 0
    assert main(["pretrain", "--resume", "a", "--data", "part2.npz", "--epochs", "4", "--quiet"]) == 0
    # 400 samples in batches of 10: 40 batches an epoch, a checkpoint every 5; the
    # process kills itself in the third epoch of stage 2's first layer
    killed = run_layerwise(
        "pretrain",
        "--resume",
        "b",
        "--data",
        "part2.npz",
        "--epochs",
        "4",
        "--quiet",
        env=worker_env(LAYERWISE_TEST_KILL="pretrain layer 1@3.17"),
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (folder / "b/stage-2").exists()
    assert main(["pretrain", "--resume", "b", "--data", "part1.npz", "--quiet"]) == 2  # finish the stage first
    assert main(["pretrain", "--resume", "b", "--quiet"]) == 0
    a, _ = read_artifact(folder / "a/stage-2")
    b, mb = read_artifact(folder / "b/stage-2")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(mb["stages"]) == 2


@pytest.mark.slow
def test_fine_tunes_leave_the_pretrained_net_byte_identical(folder, capsys):
    assert main(["train", "r.toml", "--name", "run", "--quiet"]) == 0
    pre = folder / "runs/run/pretrained"
    before = _digest(pre)
    assert main(["finetune", str(pre), "--recipe", "r.toml", "--out", "ft-a", "--quiet"]) == 0
    (folder / "r2.toml").write_text(RECIPE.replace("learning_rate = 0.3", "learning_rate = 0.1"))
    assert main(["finetune", str(pre), "--recipe", "r2.toml", "--out", "ft-b", "--quiet"]) == 0
    assert _digest(pre) == before
    _, ma = read_artifact(folder / "ft-a")
    _, mb = read_artifact(folder / "ft-b")
    _, mp = read_artifact(pre)
    assert ma["parent"] == mb["parent"] == mp["weights_sha256"]
    assert ma["weights_sha256"] != mb["weights_sha256"]
    assert main(["finetune", str(pre), "--recipe", "r.toml", "--out", "ft-a", "--quiet"]) == 2
    assert "output folder 'ft-a' already exists; it is never overwritten" in capsys.readouterr().err
    assert main(["finetune", "ft-a", "--recipe", "r.toml", "--out", "ft-c", "--quiet"]) == 2
    assert "holds a finetuned net; finetune needs a pretrained one" in capsys.readouterr().err
    # the catalog shows both fine-tunes under their pretrained parent
    capsys.readouterr()
    assert main(["models", "."]) == 0
    lines = capsys.readouterr().out.splitlines()
    i = next(n for n, l in enumerate(lines) if l.startswith("pretrained") and l.endswith("runs/run/pretrained"))
    below = [l.split()[-1] for l in lines[i + 1 : i + 4]]
    assert set(below) == {"runs/run/finetuned", "ft-a", "ft-b"}
    assert all(l.startswith("  finetuned") for l in lines[i + 1 : i + 4])
    assert main(["models", ".", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["kind"] for r in rows} == {"pretrained", "finetuned"} and len(rows) == 4


@pytest.mark.slow
@pytest.mark.parametrize("spelling", [None, "../part2.npz", "copy-of-part2.npz"])
def test_an_interrupted_stage_resumes_from_another_folder(folder, spelling):
    """A stage records where its data was: it goes on from any working folder, with
    --resume alone or with --data naming the same data (the fingerprint decides)."""
    from layerwise.jobs import pretrain_stage

    for out in ("q", "ref"):
        assert main(["pretrain", "r.toml", "--data", "part1.npz", "--out", out, "--quiet"]) == 0
    assert main(["pretrain", "--resume", "ref", "--data", "part2.npz", "--quiet"]) == 0

    def stop(line):
        if line.startswith("phase=pretrain layer=1 epoch=1 "):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain_stage("q", data="part2.npz", echo=stop)
    (folder / "elsewhere").mkdir()
    (folder / "elsewhere" / "copy-of-part2.npz").write_bytes((folder / "part2.npz").read_bytes())
    os.chdir(folder / "elsewhere")
    assert main(["pretrain", "--resume", "../q", "--quiet"] + (["--data", spelling] if spelling else [])) == 0
    a, _ = read_artifact(folder / "ref/stage-2")
    b, mb = read_artifact(folder / "q/stage-2")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert mb["stages"][1]["data"] == "part2.npz" and mb["stages"][1]["path"] == str(folder / "part2.npz")
    # other data is still refused while the stage is unfinished, and says how to go on
    os.chdir(folder)
    with pytest.raises(KeyboardInterrupt):
        pretrain_stage("q", data="part1.npz", echo=stop)
    assert main(["pretrain", "--resume", "q", "--data", "labelled.npz", "--quiet"]) == 2
