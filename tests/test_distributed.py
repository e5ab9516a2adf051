"""Distributed training by parameter averaging: workers on loopback (gloo)."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import WORKERS_RECIPE as RECIPE
from conftest import assert_same_weights, free_port, read_metrics, run_layerwise, worker_env, write_patterns
from layerwise.storage.artifacts import load_model, read_artifact

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _write_recipes(folder: Path) -> None:
    write_patterns(folder)
    (folder / "r.toml").write_text(RECIPE.format(pre=3, ft=6, unit="rbm"))
    (folder / "dae.toml").write_text(RECIPE.format(pre=3, ft=6, unit="autoencoder"))
    # workers keep their own momentum (not averaged): a restart must bring back each one's
    (folder / "long.toml").write_text(
        RECIPE.format(pre=40, ft=30, unit="rbm").replace(
            "average_optimizer_state = true", "average_optimizer_state = false"
        )
    )


@pytest.fixture
def folder(tmp_path, monkeypatch):
    _write_recipes(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The data and recipes of this module in a folder of their own, where the group runs
    that several tests look at or compare against are trained once each."""
    folder = tmp_path_factory.mktemp("groups")
    _write_recipes(folder)
    return folder


@pytest.fixture(scope="module")
def r_run(shared):
    """r.toml on two workers through the command, not quiet: runs/r in the shared folder."""
    res = run_layerwise("train", "r.toml", "--workers", "2", cwd=shared)
    assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def long_run(shared):
    """long.toml (40 pretraining epochs, momentum not averaged) on two workers: runs/ref."""
    res = run_layerwise("train", "long.toml", "--workers", "2", "--name", "ref", "--quiet", cwd=shared)
    assert res.returncode == 0, res.stderr
    return shared / "runs" / "ref"


def _files(run: Path):
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


@pytest.mark.parametrize("recipe", ["r", "dae"])
def test_two_workers_train_and_rank_0_alone_writes(folder, request, recipe):
    if recipe == "r":  # the shared run
        res, run = request.getfixturevalue("r_run"), request.getfixturevalue("shared") / "runs" / "r"
    else:
        res, run = run_layerwise("train", f"{recipe}.toml", "--workers", "2"), folder / "runs" / recipe
    assert res.returncode == 0, res.stderr  # not quiet: rank 0's progress comes through
    pictures = ["plots/reconstructions.png"] + (["plots/samples.png"] if recipe == "r" else [])  # 6x6 images
    assert _files(run) == sorted(
        [
            ".lock",
            "checkpoint/state.prev.safetensors",
            "checkpoint/state.safetensors",
            "config.toml",
            "finetuned/manifest.json",
            "finetuned/weights.safetensors",
            "metrics.jsonl",
            "plots/filters.png",
            "plots/learning_curves.png",
            "pretrained/manifest.json",
            "pretrained/weights.safetensors",
            *pictures,
        ]
    )
    records = read_metrics(run)
    epochs = [(r["phase"], r.get("layer"), r["epoch"]) for r in records if r["phase"] in ("pretrain", "finetune")]
    assert len(epochs) == len(set(epochs)) == 3 + 3 + 6  # one writer: every epoch logged once
    assert records[0]["workers"] == 2
    for layer in (0, 1):  # each layer's pretraining (RBM or autoencoder) learned on the averaged replicas
        ce = [r["recon_ce_train"] for r in records if r["phase"] == "pretrain" and r["layer"] == layer]
        assert all(a > b for a, b in zip(ce, ce[1:])), (layer, ce)  # falls every epoch
    _, fin = read_artifact(run / "finetuned")
    assert fin["config"]["distributed"]["workers"] == 2
    assert fin["metrics"]["test_accuracy"] > 0.9, fin["metrics"]
    model, _ = load_model(run / "finetuned")
    lines = res.stdout.splitlines()
    assert sum(line.startswith("test accuracy:") for line in lines) == 1, res.stdout
    shown = [line for line in lines if line.startswith(("phase=pretrain ", "phase=finetune "))]
    assert len(shown) == len(epochs), res.stdout  # each epoch once: from rank 0 alone


def test_one_worker_under_torchrun_equals_the_single_process_run(folder):
    single = run_layerwise("train", "r.toml", "--name", "single", "--quiet")
    assert single.returncode == 0, single.stderr
    (folder / "one.toml").write_text((folder / "r.toml").read_text().replace("seed = 3", 'seed = 3\nname = "one"'))
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc-per-node",
            "1",
            "--standalone",
            "-m",
            "layerwise",
            "train",
            "one.toml",
            "--quiet",
        ],
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert one.returncode == 0, one.stderr
    for artifact in ("pretrained", "finetuned"):
        assert_same_weights(folder / "runs" / "single" / artifact, folder / "runs" / "one" / artifact)


def test_two_nodes_on_loopback(folder):
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
                "-m",
                "layerwise",
                "train",
                "r.toml",
                "--quiet",
            ],
            env=worker_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [n.communicate(timeout=1200) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], [o[1][-2000:] for o in outs]
    assert "test accuracy:" in outs[0][0]
    records = read_metrics(folder / "runs/r")
    assert records[0]["workers"] == 2
    for layer in (0, 1):  # each layer's pretraining (RBM or autoencoder) learned on the averaged replicas
        ce = [r["recon_ce_train"] for r in records if r["phase"] == "pretrain" and r["layer"] == layer]
        assert all(a > b for a, b in zip(ce, ce[1:])), (layer, ce)  # falls every epoch
    load_model(folder / "runs/r/finetuned")


def test_a_killed_worker_is_restarted_and_the_run_finishes_as_if_uninterrupted(folder, long_run):
    ref_log = read_metrics(long_run)
    # the guard rolls back late in the first layer (rising loss: 3 epochs above the best);
    # the first kill falls between that best epoch and the rollback, so the restarted
    # workers must roll back to the good state (each its own momentum) from the checkpoint
    rollbacks = [e["epoch"] for e in ref_log if e["phase"] == "guard" and e["where"] == "pretraining of layer 1"]
    assert rollbacks and rollbacks[0] >= 12, rollbacks
    # worker 1 kills itself halfway through an epoch (60 batches each) of the first layer,
    # then, restarted, halfway through the third epoch of fine-tuning
    kills = f"1/pretrain layer 1@{rollbacks[0] - 1}.30,1/finetune@3.30"
    res = run_layerwise(
        "train",
        "long.toml",
        "--workers",
        "2",
        "--max-restarts",
        "3",
        "--quiet",
        env=worker_env(LAYERWISE_TEST_KILL=kills),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    records = read_metrics(folder / "runs/long")
    resumed = [r for r in records if r["phase"] == "resume"]
    assert [(r["from"], r["layer"], r["epoch"]) for r in resumed] == [
        ("pretrain", 0, rollbacks[0] - 2),
        ("finetune", None, 2),
    ], resumed
    assert records[-1]["phase"] == "test"
    model, manifest = load_model(folder / "runs/long/finetuned")
    assert manifest["metrics"]["test_accuracy"] > 0.9
    # every worker came back with its own momentum, optimizer state and guard state: the
    # result is bitwise the uninterrupted run's, rollback included
    assert [e for e in records if e["phase"] == "guard"] == [e for e in ref_log if e["phase"] == "guard"]
    for artifact in ("pretrained", "finetuned"):
        assert_same_weights(long_run / artifact, folder / "runs/long" / artifact)


def test_replica_drift_fires_at_an_absurd_learning_rate(folder, request):
    # an absurd fine-tuning rate: the replicas fly apart between averaging rounds (at
    # absurd pretraining rates RBM replicas blow up together, and the growth check fires)
    recipe = RECIPE.format(pre=3, ft=2, unit="rbm")
    at = recipe.index("[finetune]")
    (folder / "absurd.toml").write_text(
        recipe[:at] + recipe[at:].replace("learning_rate = 0.1", "learning_rate = 1000.0", 1)
    )
    res = run_layerwise("train", "absurd.toml", "--workers", "2", "--quiet")
    events = read_metrics(folder / "runs/absurd")
    drift = [e for e in events if e["phase"] == "guard" and e["what"].startswith("replica drift")]
    assert len(drift) == 3, [e.get("what") for e in events if e["phase"] == "guard"]
    assert all("(bound 0.5)" in e["what"] and e["where"] == "fine-tuning" for e in drift)
    assert [(e["lr_before"], e["lr_after"]) for e in drift] == [(1000.0, 500.0), (500.0, 250.0), (250.0, 125.0)]
    # the rollbacks do not save it: the workers stop, and their diagnosis reaches the user
    assert res.returncode == 2, res.stderr
    assert "the workers reported:\nlayerwise: error: fine-tuning diverged at epoch 1" in res.stderr, res.stderr
    assert "rates tried: 1000 -> 500 -> 250 -> 125" in res.stderr and not (folder / "runs/absurd/finetuned").exists()
    # a healthy run at a sane rate never trips it, not even at the start of its second
    # layer, where the fresh weights (~0.01) are small next to a few updates (measured
    # relative to the bare weights, the drift there was 0.56)
    healthy = read_metrics(request.getfixturevalue("long_run"))  # 40 epochs a layer, momentum not averaged
    assert not [e for e in healthy if e["phase"] == "guard" and "drift" in e["what"]]


def test_ctrl_c_stops_a_group_and_resume_goes_on_in_the_same_group_size(folder, shared, r_run):
    """A Ctrl-C in a terminal reaches every process of a --workers run: they stop, the
    last epoch-end checkpoint stands, the command says how to go on and exits 130.
    `train --resume` then resumes with the checkpoint's group size, bitwise."""
    # rank 0 sends SIGINT to the whole process group mid-epoch, as a terminal does
    cut = subprocess.run(
        [sys.executable, "-m", "layerwise", "train", "r.toml", "--workers", "2", "--name", "cut", "--quiet"],
        env=worker_env(LAYERWISE_TEST_KILL="0/finetune@3.30:GROUPINT"),
        capture_output=True,
        text=True,
        timeout=1200,
        start_new_session=True,
    )
    assert cut.returncode == 130, cut.stderr[-3000:]
    assert "layerwise: interrupted; continue with `layerwise train --resume runs/cut`" in cut.stderr, cut.stderr
    assert "workers failed" not in cut.stderr and not (folder / "runs/cut/finetuned").exists()
    from layerwise.storage.checkpointing import load_checkpoint

    _, meta = load_checkpoint(folder / "runs/cut/checkpoint")
    assert meta["phase"] == "finetune" and meta["workers"] == 2 and meta["finetune"]["loop"]["epoch"] == 2
    other = run_layerwise("train", "--resume", "runs/cut", "--workers", "1", "--quiet")
    assert (
        other.returncode == 2 and "'runs/cut' was checkpointed by 2 workers; resume it with --workers 2" in other.stderr
    )
    res = run_layerwise("train", "--resume", "runs/cut", "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    for artifact in ("pretrained", "finetuned"):
        assert_same_weights(shared / "runs/r" / artifact, folder / "runs/cut" / artifact)
    _, fin = read_artifact(folder / "runs/cut/finetuned")
    assert fin["config"]["distributed"]["workers"] == 2


def test_torchrun_by_hand_twice_makes_two_runs(folder):
    """A group started by hand claims a new folder each time, as --workers does: a second
    launch trains again instead of returning the first one's result."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--standalone",
        "-m",
        "layerwise",
        "train",
        "r.toml",
        "--quiet",
    ]
    first = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    (folder / "r.toml").write_text((folder / "r.toml").read_text().replace("seed = 3", "seed = 4"))
    second = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=1200)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "run folder: runs/r\n" in first.stdout and "run folder: runs/r-2\n" in second.stdout, (
        first.stdout,
        second.stdout,
    )
    assert read_metrics(folder / "runs/r-2")[0]["workers"] == 2
    _, a = read_artifact(folder / "runs/r/finetuned")
    _, b = read_artifact(folder / "runs/r-2/finetuned")
    assert (a["config"]["seed"], b["config"]["seed"]) == (3, 4)  # the second trained its own recipe


def test_the_outer_optimizer_at_rate_1_without_momentum_is_plain_averaging(folder, shared, r_run):
    (folder / "outer.toml").write_text(
        (folder / "r.toml").read_text() + 'outer_optimizer = "nesterov"\nouter_lr = 1.0\nouter_momentum = 0.0\n'
    )
    res = run_layerwise("train", "outer.toml", "--workers", "2", "--quiet")
    assert res.returncode == 0, res.stderr
    for artifact in ("pretrained", "finetuned"):  # plain averaging: the shared run of r.toml
        assert_same_weights(shared / "runs/r" / artifact, folder / "runs/outer" / artifact)


def test_a_group_with_the_outer_optimizer_restarts_to_the_uninterrupted_result(folder):
    """DiLoCo's momentum (the same on every worker) is in the checkpoint: a worker killed in
    each phase, the group restarted, ends bitwise where the uninterrupted group does."""
    recipe = RECIPE.format(pre=3, ft=4, unit="rbm") + 'outer_optimizer = "nesterov"\n'
    (folder / "dl.toml").write_text(recipe)
    ref = run_layerwise("train", "dl.toml", "--workers", "2", "--name", "ref", "--quiet")
    assert ref.returncode == 0, ref.stderr
    res = run_layerwise(
        "train",
        "dl.toml",
        "--workers",
        "2",
        "--max-restarts",
        "2",
        "--quiet",
        env=worker_env(LAYERWISE_TEST_KILL="1/pretrain layer 2@2.30,1/finetune@3.30"),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["from"] for r in read_metrics(folder / "runs/dl") if r["phase"] == "resume"] == ["pretrain", "finetune"]
    for artifact in ("pretrained", "finetuned"):
        assert_same_weights(folder / "runs/ref" / artifact, folder / "runs/dl" / artifact)
