import pytest
import torch

from conftest import digits_splits
from layerwise import config
from layerwise.config import FinetuneConfig, GuardConfig, PretrainConfig
from layerwise.jobs import train
from layerwise.stack import DeepBeliefNet
from layerwise.training.finetune import finetune
from layerwise.training.guard import (
    DivergenceError,
    DivergenceGuard,
    Verdict,
    dead_fraction,
    first_non_finite,
    grew_past,
    worse_than_best_for,
)
from layerwise.training.pretrain import pretrain


def test_pure_checks():
    ok, bad = torch.ones(3), torch.tensor([1.0, float("nan")])
    assert first_non_finite([("a", ok), ("b", bad), ("c", bad)]) == "b"
    assert first_non_finite([("a", ok), ("inf", torch.tensor([float("inf")]))]) == "inf"
    assert first_non_finite([("a", ok)]) is None
    assert grew_past(1001.0, 1.0, 1000.0) and not grew_past(999.0, 1.0, 1000.0)
    assert grew_past(2.0, 0.001, 1.5) and not grew_past(1.4, 0.001, 1.5)  # floor of 1 on the start
    assert worse_than_best_for([5, 4, 4.5, 4.6, 4.7], 3)
    assert not worse_than_best_for([5, 4, 4.5, 4.1, 4.7], 3)  # 4.1 is within 5% of the best
    assert not worse_than_best_for([5, 4, 4.5], 3)
    h = torch.rand(100, 4, generator=torch.Generator().manual_seed(0))
    h[:, 0] = 1.0
    h[:, 1] = 0.0
    assert dead_fraction(h) == 0.5
    h[:, 2] = 0.5  # constant but not saturated: not yet differentiated, not dead
    assert dead_fraction(h) == 0.5


def test_guard_rolls_back_to_the_best_state_and_lowers_the_rate():
    model = torch.nn.Linear(3, 2)
    events = []
    g = DivergenceGuard(model, "test", 0.1, lr_factor=0.5, log=events.append, max_rollbacks=2)
    g.after_epoch(0, -1, 1.0)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    assert g.verify(1, 7) == Verdict("rollback", "NaN or Inf in weight")
    assert all(torch.equal(good[k], v) for k, v in model.state_dict().items())
    assert g.current_lr == 0.05 and events[0]["what"] == "NaN or Inf in weight" and events[0]["batch"] == 7
    assert g.after_batch(1, 3, loss=float("inf")).action == "rollback"
    assert g.after_batch(1, 4, loss=1.0).ok and g.verify(1, 4).ok
    verdict = g.after_batch(1, 3, loss=float("nan"))
    assert verdict.action == "stop" and verdict.what == "loss is nan" and len(events) == 2
    error = verdict.error()
    assert isinstance(error, DivergenceError) and error.what == "loss is nan"
    msg = str(error)
    assert "test diverged at epoch 2, batch 3: loss is nan, at learning rate 0.025 after 2 rollbacks" in msg
    assert "rates tried: 0.1 -> 0.05 -> 0.025" in msg and "Fix: set the learning rate below 0.025" in msg


def test_injected_nan_mid_epoch_is_caught_and_training_finishes_finite():
    (x, _), (xv, _), _ = digits_splits()
    dbn = DeepBeliefNet(64, [32], seed=0)
    unit = dbn.layers[0]
    real_step, calls = unit.step, {"n": 0}

    def poisoned_step(v, **kw):
        real_step(v, **kw)
        calls["n"] += 1
        if calls["n"] == 73:  # epoch 2, batch 13 (60 batches an epoch)
            with torch.no_grad():
                unit.weight[3, 5] = float("nan")

    unit.step = poisoned_step
    records = pretrain(
        dbn,
        x,
        xv,
        PretrainConfig(epochs=4, batch_size=20, learning_rate=0.05),
        seed=0,
        guard=GuardConfig(check_every=5),
    )
    events = [r for r in records if r["phase"] == "guard"]
    assert len(events) == 1 and events[0]["what"] == "NaN or Inf in weight" and events[0]["epoch"] == 2
    assert events[0]["batch"] == 15  # found by the next check (every 5 batches: the 75th)
    assert events[0]["lr_after"] == 0.025
    epochs = [r["epoch"] for r in records if r["phase"] == "pretrain"]
    assert epochs == [1, 2, 3, 4]  # epoch 2 ran again, and was logged once
    assert all(torch.isfinite(p).all() for p in dbn.parameters())
    assert [r["lr"] for r in records if r["phase"] == "pretrain"] == [0.05, 0.025, 0.025, 0.025]


def test_nan_loss_in_finetuning_is_rolled_back():
    (x, y), (xv, yv), _ = digits_splits()
    clf = DeepBeliefNet(64, [32], seed=0).to_classifier(10)
    real_forward, calls = clf.forward, {"n": 0}

    def forward(inp):
        out = real_forward(inp)
        calls["n"] += 1
        return out * float("nan") if calls["n"] == 40 else out

    clf.forward = forward
    res = finetune(
        clf,
        x,
        y,
        xv,
        yv,
        FinetuneConfig(epochs=3, batch_size=50, learning_rate=0.1, patience=None),
        guard=GuardConfig(),
    )
    events = [r for r in res.records if r["phase"] == "guard"]
    assert len(events) == 1 and events[0]["what"] == "loss is nan" and events[0]["where"] == "fine-tuning"
    assert all(torch.isfinite(p).all() for p in clf.parameters())
    assert [r["epoch"] for r in res.records if r["phase"] == "finetune"] == [1, 2, 3]


def test_rbm_at_learning_rate_10_stops_with_a_diagnosis_and_never_saves_nan(tmp_path):
    """Seeded, lr 10 saturates the first layer at every rate the guard tries (measured on
    1 and 2 threads: 88% of the hidden units at 1.25): the run stops with a diagnosis."""
    cfg = config.from_dict(
        {
            "name": "lr10",
            "threads": 1,
            "data": {"source": "digits"},
            "model": {"hidden": [48, 32]},
            "pretrain": {"epochs": 10, "batch_size": 20, "learning_rate": 10.0},
            "finetune": {"epochs": 5, "batch_size": 20, "learning_rate": 0.1},
        }
    )
    run = tmp_path / "runs" / "lr10"
    with pytest.raises(DivergenceError) as e:
        train(cfg, runs_dir=tmp_path / "runs")
    assert "pretraining of layer 1 diverged" in str(e.value) and "rates tried: 10 -> 5 -> 2.5 -> 1.25" in str(e.value)
    assert "% of the hidden units are saturated" in e.value.what
    # it diverged at the end of epoch 1, before the first checkpoint: the epoch-end save
    # saw the guard's verdict first, so no diverged state reached the disk at all
    assert not (run / "pretrained").exists()
    assert not list(run.rglob("*.safetensors"))


def test_guard_is_silent_on_a_healthy_run():
    (x, y), (xv, yv), _ = digits_splits()
    dbn = DeepBeliefNet(64, [32, 16], seed=0)
    recs = pretrain(
        dbn, x, xv, PretrainConfig(epochs=10, batch_size=20, learning_rate=0.05), seed=0, guard=GuardConfig()
    )
    assert not [r for r in recs if r["phase"] == "guard"]
    assert max(r["dead_units"] for r in recs if r["phase"] == "pretrain") == 0.0


def test_training_after_a_rollback_leaves_the_good_state_alone():
    """The optimizer takes the good state's tensors on a rollback; training on must not
    change that state in place, or a second rollback would return somewhere else."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step():
        loss = model(torch.randn(4, 3)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    g = DivergenceGuard(model, "test", 0.1, opt, max_rollbacks=3)
    good_momentum = [v["momentum_buffer"].clone() for v in opt.state_dict()["state"].values()]
    step()
    assert g.diverge("test", 0, 1).action == "rollback"
    for _ in range(3):
        step()
    kept = [v["momentum_buffer"] for v in g.state_dict()["good_optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(good_momentum, kept))
