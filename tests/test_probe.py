import math

import numpy as np
import pytest
import torch

from conftest import DIGITS_RECIPE
from layerwise import config
from layerwise.cli import main
from layerwise.data.sources import load_digits
from layerwise.training.probe import ProbePoint, geometric_grid, probe_lr, recommend
from layerwise.units import BernoulliRBM

GRID = geometric_grid(1e-3, 10.0, 9)


def _brute_force_stable(epochs: int) -> dict:
    """The oracle: train a 64-48 RBM at every rate of the grid for longer than the probe
    does, on all of the training split, and call a rate stable when the weights stay
    finite, held-out reconstruction falls, and the hidden units still vary."""
    s = load_digits()
    x, xv = torch.from_numpy(s.train.x), torch.from_numpy(s.validation.x)
    out = {}
    for lr in GRID:
        rbm = BernoulliRBM(64, 48, seed=0)
        start = float(rbm.reconstruction_cross_entropy(xv))
        g = torch.Generator().manual_seed(1)
        for epoch in range(epochs):
            xs = x[torch.randperm(len(x), generator=g)]
            for b in range(0, len(xs), 20):
                rbm.step(xs[b : b + 20], lr=lr, momentum=0.5 if epoch < 5 else 0.9, weight_decay=2e-4)
        end = float(rbm.reconstruction_cross_entropy(xv))
        h = rbm.mean_hiddens(xv)
        varying = float((h.std(0) > 0.01).float().mean())
        out[lr] = (
            all(torch.isfinite(p).all() for p in rbm.parameters())
            and math.isfinite(end)
            and end < start
            and varying > 0.5
        )
    return out


@pytest.mark.slow
def test_probe_recommends_a_rate_inside_the_brute_force_stable_region():
    cfg = config.load(DIGITS_RECIPE)
    s = load_digits()
    res = probe_lr(cfg, s, grid=GRID, subset=2000, epochs=2)
    oracle = _brute_force_stable(epochs=8)
    stable = [lr for lr, ok in oracle.items() if ok]
    assert stable and not oracle[10.0], oracle  # the grid spans both regions
    rec = res["pretrain"]["recommended"]
    assert rec in stable, (rec, oracle)
    # and it is not trivially cautious: within a factor 10 of the oracle's largest stable rate
    assert rec >= max(stable) / 10, (rec, oracle)
    # (the probe's own largest stable rate comes from 2 epochs; longer training can still
    # blow up there, which is why the recommendation keeps a factor 2 below it)
    assert res["pretrain"]["largest_stable"] >= max(stable)
    assert not [p for p in res["pretrain"]["points"] if p["lr"] == 10.0][0]["stable"]
    ft = res["finetune"]
    assert ft["recommended"] is not None and ft["recommended"] <= ft["largest_stable"] / 2


def test_recommend_keeps_a_margin_below_the_edge():
    pts = [
        ProbePoint(0.01, 3.0, True, ""),
        ProbePoint(0.1, 2.0, True, ""),
        ProbePoint(1.0, 1.0, True, ""),
        ProbePoint(10.0, math.nan, False, "NaN"),
    ]
    assert recommend(pts) == (1.0, 0.1)
    assert recommend([ProbePoint(1.0, math.nan, False, "NaN")]) == (None, None)
    with pytest.raises(ValueError, match="needs 0 < low < high"):
        geometric_grid(1.0, 0.1, 5)


def test_probe_command_writes_plot_and_json(tmp_path, capsys):
    recipe = DIGITS_RECIPE
    assert (
        main(
            [
                "probe-lr",
                str(recipe),
                "--low",
                "0.01",
                "--high",
                "10",
                "--points",
                "4",
                "--epochs",
                "2",
                "--out",
                str(tmp_path / "p"),
                "--quiet",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "pretrain: largest stable rate" in out and "finetune: largest stable rate" in out
    assert (tmp_path / "p.json").is_file() and (tmp_path / "p.png").stat().st_size > 1000


def _brute_force_stable_averaged(grid, epochs: int, workers: int = 2, period: int = 5) -> dict:
    """The oracle for ``--workers``: ``workers`` replicas of a 64-48 RBM trained in this
    process, each on its own share of the shuffled training split, their parameters set
    to the plain mean every ``period`` steps and at each epoch end; stable as above."""
    s = load_digits()
    x, xv = torch.from_numpy(s.train.x), torch.from_numpy(s.validation.x)
    out = {}
    for lr in grid:
        reps = [BernoulliRBM(64, 48, seed=0) for _ in range(workers)]
        start = float(reps[0].reconstruction_cross_entropy(xv))
        g = torch.Generator().manual_seed(1)
        steps = 0

        def average(reps=reps):
            with torch.no_grad():
                for ps in zip(*(r.parameters() for r in reps)):
                    mean = torch.stack(ps).mean(0)
                    for p in ps:
                        p.copy_(mean)

        for epoch in range(epochs):
            order = torch.randperm(len(x), generator=g)
            shards = [x[order[r::workers][: len(x) // workers]] for r in range(workers)]
            for b in range(0, len(shards[0]), 20):
                for r, rbm in enumerate(reps):
                    rbm.step(shards[r][b : b + 20], lr=lr, momentum=0.5 if epoch < 5 else 0.9, weight_decay=2e-4)
                steps += 1
                if steps % period == 0:
                    average()
            average()
        rbm = reps[0]
        with np.errstate(all="ignore"):
            end = float(rbm.reconstruction_cross_entropy(xv))
            varying = float((rbm.mean_hiddens(xv).std(0) > 0.01).float().mean())
        out[lr] = (
            all(torch.isfinite(p).all() for p in rbm.parameters())
            and math.isfinite(end)
            and end < start
            and varying > 0.5
        )
    return out


@pytest.mark.slow
@pytest.mark.distributed
def test_probe_with_two_workers_recommends_a_rate_the_averaged_replicas_survive(tmp_path, capfd):
    """rank 0's progress lines come from its own process, on the command's stdout (captured
    here at the file descriptor, as a terminal shows them)."""
    import json

    recipe = DIGITS_RECIPE
    assert (
        main(
            [
                "probe-lr",
                str(recipe),
                "--low",
                "0.001",
                "--high",
                "1000",
                "--points",
                "7",
                "--epochs",
                "2",
                "--subset",
                "2000",
                "--workers",
                "2",
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 0
    )
    out = capfd.readouterr().out
    assert "2 workers, averaging every 5 batches" in out and "pretrain: largest stable rate" in out
    assert sum(line.startswith(("pretrain lr=", "finetune lr=")) for line in out.splitlines()) == 14  # progress, once
    res = json.loads((tmp_path / "p.json").read_text())
    grid = [0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]
    assert res["workers"] == 2 and res["averaging_frequency"] == 5 and res["grid"] == grid
    assert (tmp_path / "p.png").stat().st_size > 1000
    oracle = _brute_force_stable_averaged(grid, epochs=8)
    stable = [lr for lr in grid if oracle[lr]]
    assert stable and not oracle[10.0], oracle
    pre = {p["lr"]: p for p in res["pretrain"]["points"]}
    rec = res["pretrain"]["recommended"]
    assert rec in stable and rec >= max(stable) / 10, (rec, oracle)
    assert not pre[10.0]["stable"] and not pre[1000.0]["stable"]
    # the trials really were averaged runs on shards: not the single-process numbers
    single = probe_lr(config.load(recipe), load_digits(), grid=[0.1, 1.0], subset=2000, epochs=2)
    for p in single["pretrain"]["points"]:
        assert pre[p["lr"]]["stable"] and abs(pre[p["lr"]]["loss"] - p["loss"]) > 1e-3, (p, pre[p["lr"]])
    # at an absurd rate the replicas fly apart before the first averaging round completes
    ft = {p["lr"]: p for p in res["finetune"]["points"]}
    assert len(ft) == 7 and ft[1000.0]["why"].startswith("replica drift") and "(bound 0.5)" in ft[1000.0]["why"]


def test_probe_refuses_a_worker_count_below_one(capsys):
    with pytest.raises(SystemExit):
        main(["probe-lr", "recipes/digits.toml", "--workers", "0"])
    assert "--workers: must be at least 1, got 0" in capsys.readouterr().err


def test_a_diverging_starting_stack_is_reported_and_the_pretraining_sweep_kept(tmp_path, capsys):
    import json

    recipe = tmp_path / "hot.toml"
    recipe.write_text(DIGITS_RECIPE.read_text().replace("learning_rate = 0.05", "learning_rate = 1000.0"))
    assert (
        main(
            [
                "probe-lr",
                str(recipe),
                "--low",
                "100",
                "--high",
                "1000",
                "--points",
                "2",
                "--epochs",
                "2",
                "--out",
                str(tmp_path / "p"),
                "--quiet",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "finetune: not probed: the stack to fine-tune, pretrained at the recipe's pretraining rate 1000, diverged"
        in out
    )
    res = json.loads((tmp_path / "p.json").read_text())
    assert [p["stable"] for p in res["pretrain"]["points"]] == [False, False]  # the finished sweep is kept
    assert res["finetune"]["points"] == [] and res["finetune"]["recommended"] is None
    assert (tmp_path / "p.png").stat().st_size > 1000
