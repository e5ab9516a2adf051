"""Exact resume: a run SIGKILLed at a random batch and resumed ends bitwise equal to an
uninterrupted run (CPU, one thread, fixed seed)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_patterns
from layerwise.artifacts import load_checkpoint, read_artifact, save_checkpoint

RECIPE = """
seed = 3
threads = 1
[data]
source = "npz"
train = "train.npz"
test = "test.npz"
[model]
hidden = [48, 24]
[pretrain]
epochs = 3
batch_size = 10
learning_rate = 0.05
persistent = true
momentum_switch_epoch = 1
[finetune]
epochs = 8
batch_size = 10
learning_rate = 0.2
dropout_hidden = 0.2
patience = 4
lr_schedule = "cosine"
[checkpoint]
every_epochs = 1
every_batches = 7
"""


@pytest.fixture
def recipe(tmp_path):
    x, y = make_patterns(n=1500, n_features=36, n_classes=4, flip=0.15, seed=5)
    np.savez(tmp_path / "train.npz", x=x[:1200], y=y[:1200])
    np.savez(tmp_path / "test.npz", x=x[1200:], y=y[1200:])
    r = tmp_path / "r.toml"
    r.write_text(RECIPE)
    return r


def _cmd(*args):
    return [sys.executable, "-m", "layerwise", "train", *args, "--quiet"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _phases(run: Path):
    p = run / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(l)["phase"] for l in p.read_text().splitlines() if l.endswith("}")]


def _weights(folder: Path):
    tensors, _ = read_artifact(folder)
    return tensors


def _kill_when(cmd, cwd, run: Path, ready, rng, sig=signal.SIGKILL):
    """Start cmd, wait until ready(phases) holds, sleep a random moment, SIGKILL it."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ready(_phases(run)):
        assert proc.poll() is None, f"finished before it could be killed: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.15))
    proc.send_signal(sig)
    out, err = proc.communicate()
    return proc.returncode, err.decode()


@pytest.mark.parametrize("where, sig", [("pretrain", signal.SIGKILL), ("finetune", signal.SIGKILL), ("finetune", signal.SIGINT)])
def test_sigkill_then_resume_matches_uninterrupted_run(recipe, tmp_path, where, sig):
    ref = subprocess.run(_cmd(str(recipe), "--name", "ref"), cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    rng = random.Random(f"{where}-resume")
    run = tmp_path / "runs" / "killed"
    if where == "pretrain":  # somewhere in the second layer's pretraining
        ready = lambda ph: ph.count("pretrain") >= 3 + rng.randrange(0, 2)  # noqa: E731
    else:  # somewhere in fine-tuning, after at least one fine-tuning epoch
        ready = lambda ph: ph.count("finetune") >= 1  # noqa: E731
    rc, err = _kill_when(_cmd(str(recipe), "--name", "killed"), tmp_path, run, ready, rng, sig)
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    else:  # Ctrl-C: the loop checkpoints at the next batch boundary and exits with 130
        assert rc == 130, err
        assert "stopping after this batch and saving a checkpoint" in err
        assert "continue with `layerwise train --resume RUN_FOLDER`" in err
    assert not (run / "finetuned").exists(), "the run finished before the kill; the test proves nothing"
    _, meta = load_checkpoint(run / "checkpoint")
    assert meta["phase"] == where
    res = subprocess.run(_cmd("--resume", str(run)), cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    ref_dir = tmp_path / "runs" / "ref"
    for artifact in ("pretrained", "finetuned"):
        a, b = _weights(ref_dir / artifact), _weights(run / artifact)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{artifact}/{k} differs after resume"
    # the metrics log reads as one run: same epochs, no duplicates
    strip = lambda p: [(r["phase"], r.get("layer"), r.get("epoch")) for r in map(json.loads, p.read_text().splitlines())  # noqa: E731
                       if r["phase"] in ("pretrain", "finetune")]
    assert strip(run / "metrics.jsonl") == strip(ref_dir / "metrics.jsonl")
    assert res.stdout.splitlines()[-2] == ref.stdout.splitlines()[-2]  # "test accuracy: NN.NN%"


def test_a_completed_run_is_not_resumed(recipe, tmp_path):
    subprocess.run(_cmd(str(recipe), "--name", "done"), cwd=tmp_path, env=_env(), check=True, capture_output=True)
    res = subprocess.run(_cmd("--resume", "runs/done"), cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert res.returncode == 2
    assert "run 'runs/done' is complete (finetuned/ exists); nothing to resume" in res.stderr


def test_second_writer_to_a_run_folder_is_refused(recipe, tmp_path):
    # a long first run, so that it is surely still training when the second one starts
    recipe.write_text(RECIPE.replace("epochs = 3", "epochs = 20"))
    run = tmp_path / "runs" / "busy"
    first = subprocess.Popen(_cmd(str(recipe), "--name", "busy"), cwd=tmp_path, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while "pretrain" not in _phases(run):
        assert first.poll() is None
        time.sleep(0.005)
    second = subprocess.run(_cmd("--resume", str(run)), cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert second.returncode == 2
    assert f"run folder '{run}' is in use by another layerwise process (pid {first.pid})" in second.stderr
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    _weights(run / "finetuned")  # the first run finished and its artifacts load


KILL_DURING_SAVE = """
import os, sys, time, torch
import layerwise.artifacts as A
real_replace = os.replace
def slow_replace(src, dst):
    print("writing", flush=True)
    time.sleep(30)  # killed here: the new file is complete but not yet in place
    real_replace(src, dst)
A.os.replace = slow_replace
A.save_checkpoint(sys.argv[1], {"w": torch.full((1000,), 2.0)}, {"step": 2})
"""


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path):
    save_checkpoint(tmp_path / "ck", {"w": torch.full((1000,), 1.0)}, {"step": 1})
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE, str(tmp_path / "ck")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    tensors, meta = load_checkpoint(tmp_path / "ck")
    assert meta == {"step": 1} and torch.equal(tensors["w"], torch.full((1000,), 1.0))


def test_torn_checkpoint_is_reported(tmp_path):
    path = save_checkpoint(tmp_path / "ck", {"w": torch.zeros(100)}, {"step": 1})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="checkpoint '.*state.safetensors' is unreadable"):
        load_checkpoint(tmp_path / "ck")


def test_finetune_of_a_saved_net_resumes_after_sigkill(recipe, tmp_path):
    """`layerwise finetune PRE --out OUT` keeps checkpoints in OUT.partial/; the same
    command after a SIGKILL goes on from there and ends bitwise equal to an
    uninterrupted fine-tune, and OUT.partial/ is gone."""
    subprocess.run(_cmd(str(recipe), "--name", "base"), cwd=tmp_path, env=_env(), check=True, capture_output=True)
    pre = tmp_path / "runs" / "base" / "pretrained"
    ft = lambda out, r=recipe: [sys.executable, "-m", "layerwise", "finetune", str(pre), "--recipe", str(r),  # noqa: E731
                                "--out", out, "--quiet"]
    ref = subprocess.run(ft("ref"), cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    assert not (tmp_path / "ref.partial").exists()
    ckpt = tmp_path / "killed.partial" / "checkpoint" / "state.safetensors"
    proc = subprocess.Popen(ft("killed"), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ckpt.exists():
        assert proc.poll() is None, f"finished before it could be killed: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(random.Random("finetune-saved").uniform(0.0, 0.3))
    proc.kill()
    proc.communicate()
    assert not (tmp_path / "killed").exists(), "finished before the kill; the test proves nothing"
    _, meta = load_checkpoint(ckpt.parent)
    # another recipe may not take over the interrupted fine-tune
    other = tmp_path / "other.toml"
    other.write_text(RECIPE.replace("learning_rate = 0.2", "learning_rate = 0.1"))
    bad = subprocess.run(ft("killed", other), cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert bad.returncode == 2 and "holds an interrupted fine-tuning of another pretrained net, recipe or data" in bad.stderr
    res = subprocess.run(ft("killed"), cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "killed.partial").exists()
    assert res.stdout.splitlines()[-2] == ref.stdout.splitlines()[-2]  # "test accuracy: NN.NN%"
    assert meta["epoch"] < 8  # it was really cut short


def test_resume_is_exact_across_a_later_guard_rollback(recipe, tmp_path, monkeypatch):
    """The guard's best state, loss history and counters are in the checkpoint: a run
    stopped before a rollback and resumed rolls back exactly as the uninterrupted one."""
    from layerwise import config
    from layerwise.pipeline import resume, train

    monkeypatch.chdir(tmp_path)
    recipe.write_text(RECIPE.replace("learning_rate = 0.2", "learning_rate = 2.0").replace("patience = 4", "patience = 20")
                      .replace("epochs = 8", "epochs = 12"))
    cfg = config.load(recipe)
    cfg.name = "ref"
    ref = train(cfg, runs_dir="runs")
    events = [json.loads(l) for l in (tmp_path / "runs/ref/metrics.jsonl").read_text().splitlines()]
    late = [e for e in events if e["phase"] == "guard" and e["where"] == "fine-tuning"]
    assert late and late[0]["epoch"] >= 3, late  # a rollback after the stop below

    def stop_in_epoch_2(line):
        if line.startswith("phase=finetune epoch=2 "):
            raise KeyboardInterrupt

    cfg.name = "stopped"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, runs_dir="runs", echo=stop_in_epoch_2)
    _, meta = load_checkpoint(tmp_path / "runs/stopped/checkpoint")
    assert meta["phase"] == "finetune" and meta["epoch"] <= 2 and meta["guard"]["history"]
    res = resume(tmp_path / "runs/stopped")
    a, b = _weights(tmp_path / "runs/ref/finetuned"), _weights(tmp_path / "runs/stopped/finetuned")
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = [json.loads(l) for l in (tmp_path / "runs/stopped/metrics.jsonl").read_text().splitlines()]
    assert [e for e in again if e["phase"] == "guard"] == [e for e in events if e["phase"] == "guard"]
    assert res.test_accuracy == ref.test_accuracy
