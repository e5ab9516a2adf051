"""The shared training loop acts on what its collaborators return: the guard's verdicts,
the averager's rounds, the job's LoopControl (stop request and batch hooks)."""

import pytest
import torch

from layerwise.reporting.reporter import Reporter
from layerwise.training.guard import DivergenceError, DivergenceGuard
from layerwise.training.loop import Checkpointer, LoopControl, LoopPosition, hooks_from_env, run_loop


def _linear_run(epochs=3, **kw):
    """A least-squares fit by SGD through run_loop: 40 rows, batches of 10."""
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    model = torch.nn.Linear(3, 1)
    torch.nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = []

    def step(xb, yb, epoch):
        loss = (model(xb).squeeze(1) - yb).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(epoch)
        return float(loss.detach())

    ends = kw.pop("end_epoch", lambda e, s: False)
    n = run_loop(
        x=x,
        y=y,
        batch_size=10,
        epochs=epochs,
        generator=torch.Generator().manual_seed(1),
        step=step,
        end_epoch=ends,
        reporter=Reporter(),
        desc="fit",
        **kw,
    )
    return n, model, seen


def test_hooks_see_every_batch_and_a_stop_request_checkpoints_between_two_batches():
    calls, saved = [], []
    control = LoopControl(hooks=[lambda desc, rank, epoch, batch: calls.append((desc, rank, epoch, batch))])

    def hook(desc, rank, epoch, batch):
        if (epoch, batch) == (2, 3):
            control.request_stop()

    control.hooks.append(hook)
    pos = LoopPosition()
    with pytest.raises(KeyboardInterrupt):
        _linear_run(
            control=control,
            position=pos,
            checkpointer=Checkpointer(lambda p: saved.append((p.epoch, p.batch)), every_epochs=None),
        )
    assert calls == [("fit", 0, e, b) for e in (1, 2) for b in range(1, 5)][:7], calls
    assert saved == [(1, 3)] and (pos.epoch, pos.batch) == (1, 3)  # epoch 2 counted from 0 in the position


def test_a_guard_rollback_reruns_the_epoch_and_a_stop_raises_the_diagnosis():
    model_holder = {}

    def poisoned(epoch, seconds):
        model = model_holder["m"]
        with torch.no_grad():
            model.weight.fill_(float("nan"))
        return model_holder["g"].after_epoch(epoch, -1, 1.0)

    x = torch.ones(20, 2)
    model = torch.nn.Linear(2, 1)
    events = []
    g = DivergenceGuard(model, "the fit", 0.1, max_rollbacks=2, log=events.append)
    model_holder.update(m=model, g=g)
    steps = []
    with pytest.raises(
        DivergenceError,
        match=r"the fit diverged at the end of epoch 1: NaN or Inf in weight, at "
        r"learning rate 0.025 after 2 rollbacks",
    ):
        run_loop(
            x=x,
            batch_size=10,
            epochs=2,
            generator=torch.Generator().manual_seed(0),
            step=lambda xb, yb, e: steps.append(e),
            end_epoch=poisoned,
            reporter=Reporter(),
            desc="fit",
            guard=g,
        )
    assert steps == [0, 0] * 3 and [e["lr_after"] for e in events] == [0.05, 0.025]  # the epoch ran three times


def test_a_non_finite_averaging_round_is_a_value_the_guard_rolls_back_on():
    class Averager:  # the PeriodicAverager interface, on one rank
        rank, world, step, restarts = 0, 1, 0, 0

        def __init__(self):
            self.bad = iter([None, "parameter averaging: the average holds NaN or Inf"] + [None] * 100)

        def after_step(self):
            return next(self.bad)

        def average_now(self):
            return None

        def restart(self):
            self.restarts += 1

    avg = Averager()
    events = []
    model = torch.nn.Linear(3, 1)
    g = DivergenceGuard(model, "the fit", 0.05, log=events.append)
    n, _, seen = _linear_run(epochs=2, averager=avg, guard=g)
    assert n == 2 and avg.restarts == 1 and events[0]["what"].startswith("parameter averaging")
    assert seen == [0, 0] + [0] * 4 + [1] * 4  # two batches, a rollback, the epoch again, the next
    with pytest.raises(DivergenceError, match="the average holds NaN"):  # no guard: the run stops
        _linear_run(epochs=1, averager=Averager())


def test_the_batch_hook_of_the_environment_is_loaded_by_name(monkeypatch):
    monkeypatch.setenv("LAYERWISE_BATCH_HOOK", "killpoints:after_batch")
    import killpoints

    assert hooks_from_env() == [killpoints.after_batch] and LoopControl().hooks == [killpoints.after_batch]
    monkeypatch.setenv("LAYERWISE_BATCH_HOOK", "killpoints:nothing")
    with pytest.raises(
        ValueError,
        match=r"LAYERWISE_BATCH_HOOK='killpoints:nothing': cannot load it .* "
        r"expected module:function",
    ):
        hooks_from_env()
    monkeypatch.delenv("LAYERWISE_BATCH_HOOK")
    assert LoopControl().hooks == []
