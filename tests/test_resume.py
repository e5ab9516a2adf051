"""Exact resume: a run killed at a chosen batch (the process kills itself there:
LAYERWISE_TEST_KILL) and resumed ends bitwise equal to an uninterrupted run (CPU, one
thread, fixed seed)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import RESUME_RECIPE as RECIPE
from conftest import assert_same_weights, read_metrics, weights, worker_env, write_patterns
from layerwise.storage.checkpointing import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture
def recipe(tmp_path):
    write_patterns(tmp_path)
    r = tmp_path / "r.toml"
    r.write_text(RECIPE)
    return r


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the recipe, as the command runs it (one thread): the
    result every interrupted run of this module must end at, bitwise. Its folder is
    runs/ref under the returned folder; the returned process holds its output."""
    folder = tmp_path_factory.mktemp("reference")
    write_patterns(folder)
    (folder / "r.toml").write_text(RECIPE)
    ref = subprocess.run(
        _cmd(folder / "r.toml", "--name", "ref"), cwd=folder, env=worker_env(), capture_output=True, text=True
    )
    assert ref.returncode == 0, ref.stderr
    return folder, ref


def _cmd(*args):
    return [sys.executable, "-m", "layerwise", "train", *map(str, args), "--quiet"]


def _phases(run: Path):
    return [r["phase"] for r in read_metrics(run)]


# 1080 training samples in batches of 10: 108 batches an epoch; checkpoints every 7
# batches and at epoch ends, so each kill point falls between two checkpoints
@pytest.mark.parametrize(
    "where, kill",
    [("pretrain", "pretrain layer 2@2.41"), ("finetune", "finetune@2.53"), ("finetune", "finetune@3.20:INT")],
)
def test_a_killed_run_resumes_to_the_uninterrupted_result(recipe, reference, tmp_path, where, kill):
    ref_folder, ref = reference
    run = tmp_path / "runs" / "killed"
    # the process kills itself right after the named batch (SIGKILL, or SIGINT as a Ctrl-C)
    killed = subprocess.run(
        _cmd(recipe, "--name", "killed"),
        cwd=tmp_path,
        env=worker_env(LAYERWISE_TEST_KILL=kill),
        capture_output=True,
        text=True,
    )
    if kill.endswith(":INT"):  # Ctrl-C: the loop checkpoints at the batch boundary and exits with 130
        assert killed.returncode == 130, killed.stderr
        assert "stopping after this batch and saving a checkpoint" in killed.stderr
        assert "continue with `layerwise train --resume RUN_FOLDER`" in killed.stderr
    else:
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (run / "finetuned").exists()
    _, meta = load_checkpoint(run / "checkpoint")
    assert meta["phase"] == where
    res = subprocess.run(_cmd("--resume", run), cwd=tmp_path, env=worker_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    resumed = [r for r in read_metrics(run) if r["phase"] == "resume"]
    assert len(resumed) == 1 and resumed[0]["from"] == where
    ref_dir = ref_folder / "runs" / "ref"
    for artifact in ("pretrained", "finetuned"):
        assert_same_weights(ref_dir / artifact, run / artifact)
    # the metrics log reads as one run: same epochs, no duplicates
    strip = lambda d: [
        (r["phase"], r.get("layer"), r.get("epoch"))
        for r in read_metrics(d)  # noqa: E731
        if r["phase"] in ("pretrain", "finetune")
    ]
    assert strip(run) == strip(ref_dir)
    assert res.stdout.splitlines()[-2] == ref.stdout.splitlines()[-2]  # "test accuracy: NN.NN%"


def test_a_completed_run_is_not_resumed(reference):
    folder, _ = reference
    listing = lambda: sorted(p.name for p in (folder / "runs/ref").iterdir() if p.name != ".lock")  # noqa: E731
    before = listing()
    res = subprocess.run(_cmd("--resume", "runs/ref"), cwd=folder, env=worker_env(), capture_output=True, text=True)
    assert res.returncode == 2
    assert "run 'runs/ref' is complete (finetuned/ exists); nothing to resume" in res.stderr
    assert listing() == before  # refused before anything was written


def test_second_writer_to_a_run_folder_is_refused(recipe, tmp_path):
    run = tmp_path / "runs" / "busy"
    first = subprocess.Popen(
        _cmd(recipe, "--name", "busy"),
        cwd=tmp_path,
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while "pretrain" not in _phases(run):  # training, so it holds the lock
        assert first.poll() is None, first.communicate()
        time.sleep(0.01)  # a poll interval, not a kill: the freeze below is what makes it certain
    first.send_signal(signal.SIGSTOP)  # frozen mid-run, lock held, until SIGCONT
    try:
        second = subprocess.run(_cmd("--resume", run), cwd=tmp_path, env=worker_env(), capture_output=True, text=True)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    assert f"run folder '{run}' is in use by another layerwise process (pid {first.pid})" in second.stderr
    out, err = first.communicate(timeout=1200)
    assert first.returncode == 0, err
    weights(run / "finetuned")  # the first run finished and its artifacts load (hash checked)


KILL_DURING_SAVE = """
import os, sys, time, torch
import layerwise._files as F
from layerwise.storage.checkpointing import save_checkpoint
real_replace = os.replace
def slow_replace(src, dst):
    print("writing", flush=True)
    time.sleep(600)  # killed here: the new file is complete but not yet in place
    real_replace(src, dst)
F.os.replace = slow_replace
save_checkpoint(sys.argv[1], {"w": torch.full((1000,), 2.0)}, {"step": 2})
"""


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path):
    save_checkpoint(tmp_path / "ck", {"w": torch.full((1000,), 1.0)}, {"step": 1})
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_DURING_SAVE, str(tmp_path / "ck")], stdout=subprocess.PIPE, text=True
    )
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


def test_finetune_of_a_saved_net_resumes_after_sigkill(recipe, reference, tmp_path):
    """`layerwise finetune PRE --out OUT` keeps checkpoints in OUT.partial/; the same
    command after a SIGKILL goes on from there and ends bitwise equal to an
    uninterrupted fine-tune, and OUT.partial/ is gone."""
    pre = reference[0] / "runs" / "ref" / "pretrained"
    ft = lambda out, r=recipe: [
        sys.executable,
        "-m",
        "layerwise",
        "finetune",
        str(pre),
        "--recipe",
        str(r),  # noqa: E731
        "--out",
        out,
        "--quiet",
    ]
    ref = subprocess.run(ft("ref"), cwd=tmp_path, env=worker_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    assert not (tmp_path / "ref.partial").exists()
    killed = subprocess.run(
        ft("killed"), cwd=tmp_path, env=worker_env(LAYERWISE_TEST_KILL="finetune@3.20"), capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "killed").exists()
    _, meta = load_checkpoint(tmp_path / "killed.partial" / "checkpoint")
    assert meta["finetune"]["loop"]["epoch"] == 2  # cut short in its third epoch
    # another recipe may not take over the interrupted fine-tune
    other = tmp_path / "other.toml"
    other.write_text(RECIPE.replace("learning_rate = 0.2", "learning_rate = 0.1"))
    bad = subprocess.run(ft("killed", other), cwd=tmp_path, env=worker_env(), capture_output=True, text=True)
    assert (
        bad.returncode == 2
        and "holds an interrupted fine-tuning of another pretrained net, recipe or data" in bad.stderr
    )
    res = subprocess.run(ft("killed"), cwd=tmp_path, env=worker_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert_same_weights(tmp_path / "ref", tmp_path / "killed")
    assert not (tmp_path / "killed.partial").exists()
    assert res.stdout.splitlines()[-2] == ref.stdout.splitlines()[-2]  # "test accuracy: NN.NN%"


def test_resume_is_exact_across_a_later_guard_rollback(recipe, tmp_path, monkeypatch):
    """The guard's best state, loss history and counters are in the checkpoint: a run
    stopped before a rollback and resumed rolls back exactly as the uninterrupted one."""
    from layerwise import config
    from layerwise.jobs import resume, train

    monkeypatch.chdir(tmp_path)
    recipe.write_text(
        RECIPE.replace("learning_rate = 0.2", "learning_rate = 2.0")
        .replace("patience = 4", "patience = 20")
        .replace("epochs = 8", "epochs = 12")
    )
    cfg = config.load(recipe)
    cfg.name = "ref"
    ref = train(cfg, runs_dir="runs")
    events = read_metrics(tmp_path / "runs/ref")
    late = [e for e in events if e["phase"] == "guard" and e["where"] == "fine-tuning"]
    assert late and late[0]["epoch"] >= 3, late  # a rollback after the stop below

    def stop_in_epoch_2(line):
        if line.startswith("phase=finetune epoch=2 "):
            raise KeyboardInterrupt

    cfg.name = "stopped"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, runs_dir="runs", echo=stop_in_epoch_2)
    _, meta = load_checkpoint(tmp_path / "runs/stopped/checkpoint")
    assert (
        meta["phase"] == "finetune" and meta["finetune"]["loop"]["epoch"] <= 2 and meta["finetune"]["guard"]["history"]
    )
    res = resume(tmp_path / "runs/stopped")
    assert_same_weights(tmp_path / "runs/ref/finetuned", tmp_path / "runs/stopped/finetuned")
    again = read_metrics(tmp_path / "runs/stopped")
    assert [e for e in again if e["phase"] == "guard"] == [e for e in events if e["phase"] == "guard"]
    assert res.test_accuracy == ref.test_accuracy


def test_a_checkpoint_of_another_format_is_refused_with_a_way_out(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "ck").mkdir()
    save_file(
        {"dbn.layers.0.weight": torch.zeros(2, 3)},
        str(tmp_path / "ck" / "state.safetensors"),
        metadata={"layerwise": json.dumps({"phase": "pretrain", "epoch": 1})},
    )  # the unversioned layout
    with pytest.raises(ValueError, match="is in checkpoint format 1; this layerwise reads format 3. Resume it with"):
        load_checkpoint(tmp_path / "ck")
