"""Parameter averaging on torch.distributed (gloo, 2 processes, a FileStore)."""

import os
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch.distributed.algorithms.model_averaging.utils import get_params_to_average

from layerwise.training.averaging import PeriodicAverager, average_tensors, trained_tensors
from layerwise.units import BernoulliRBM

pytestmark = pytest.mark.distributed


def _worker(rank, world, store_path, out_dir, poison):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    code = 1
    try:
        # RBMs with different weights and data on each rank, trained by hand (no .grad)
        rbm = BernoulliRBM(12, 5, seed=10 + rank, init_std=0.3)
        v = torch.rand(8, 12, generator=torch.Generator().manual_seed(rank))
        for _ in range(3):
            rbm.step(v, lr=0.1, momentum=0.5)
        skipped = len(get_params_to_average(rbm.parameters()))
        # an MLP with SGD momentum, trained by autograd
        mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 2))
        torch.manual_seed(rank)
        for p in mlp.parameters():
            torch.nn.init.normal_(p)
        opt = torch.optim.SGD(mlp.parameters(), lr=0.1, momentum=0.9)
        loss = mlp(torch.randn(6, 4)).pow(2).mean()
        loss.backward()
        opt.step()
        if poison and rank == 1:
            with torch.no_grad():
                rbm.weight[0, 0] = float("nan")
        tensors = trained_tensors(rbm, include_optimizer_state=True) + trained_tensors(
            mlp, opt, include_optimizer_state=True
        )
        before = {f"t{i}": t.clone() for i, t in enumerate(tensors)}
        drift = average_tensors(tensors)  # NaN: the average was not finite
        after = {f"t{i}": t.clone() for i, t in enumerate(tensors)}
        save_file(
            {**{f"before.{k}": v for k, v in before.items()}, **{f"after.{k}": v for k, v in after.items()}},
            f"{out_dir}/rank{rank}.safetensors",
            metadata={"skipped": str(skipped), "drift": repr(drift)},
        )
        # the policy: average after steps 3 and 6 of 7
        avg = PeriodicAverager(3, lambda: [torch.ones(1)])
        done = [avg.after_step() for _ in range(7)]  # None: no round, or a round that went well
        assert done == [None] * 7 and avg.rounds == 2 and avg.step == 7
        bad = PeriodicAverager(2, lambda: [torch.full((1,), float("nan"))])
        found = [bad.after_step() for _ in range(4)]
        assert found[0] is None and found[2] is None and bad.rounds == 0, found
        assert found[1] == found[3] and "the average holds NaN or Inf, so at least one worker diverged" in found[1]
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        # leave as a gloo worker must: barrier, destroy, flush, os._exit (a plain
        # interpreter exit sometimes aborts with 'terminate called without an active exception')
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run(tmp_path, poison=False):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path), poison), nprocs=2, join=True)
    from safetensors import safe_open

    out = []
    for r in range(2):
        path = str(tmp_path / f"rank{r}.safetensors")
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
        out.append((load_file(path), meta))
    return out


def test_after_a_round_every_rank_holds_the_exact_mean(tmp_path):
    (r0, m0), (r1, m1) = _run(tmp_path)
    # PyTorch's helper would average nothing of an RBM: its parameters have no .grad
    assert m0["skipped"] == "0" and float(m0["drift"]) >= 0.0
    names = sorted(k[len("after.") :] for k in r0 if k.startswith("after."))
    # RBM: weight, two biases, three velocities; MLP: four parameters, four momentum buffers
    assert len(names) == 14
    for k in names:
        assert torch.equal(r0[f"after.{k}"], r1[f"after.{k}"]), k  # bitwise identical on both ranks
        mean = (r0[f"before.{k}"] + r1[f"before.{k}"]) / 2
        assert torch.equal(r0[f"after.{k}"], mean), k
        assert not torch.equal(r0[f"before.{k}"], r1[f"before.{k}"]), k  # there was something to average


def test_a_nan_on_one_worker_is_caught_at_the_round_and_not_spread(tmp_path):
    (r0, m0), (r1, m1) = _run(tmp_path, poison=True)
    assert m0["drift"] == m1["drift"] == "nan"
    for k in (k for k in r0 if k.startswith("after.")):
        b = "before." + k[len("after.") :]
        assert torch.equal(r0[k], r0[b])  # rank 0 keeps its finite weights
    assert all(torch.isfinite(v).all() for k, v in r0.items())


def _hang_worker(rank, world, store_path, out_dir):
    import datetime

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(store_path, world),
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=2),
    )
    message, code = "", 0
    done = f"{out_dir}/hang.txt"
    if rank == 1:
        # hangs: never joins the round; it wakes only once rank 0 has given up on it, so
        # rank 0 can only have failed on its own timeout
        for _ in range(12000):
            if os.path.exists(done):
                break
            time.sleep(0.05)
    else:
        try:
            average_tensors([torch.ones(10)])
            message = "the round completed without rank 1"
        except RuntimeError as e:
            message = str(e)
        with open(done + ".tmp", "w") as f:
            f.write(message)
        os.replace(done + ".tmp", done)
    sys.stdout.flush()
    os._exit(code)


def test_a_hung_worker_makes_the_others_fail_within_the_timeout(tmp_path):
    mp.spawn(_hang_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    message = (tmp_path / "hang.txt").read_text()
    assert "parameter averaging: no answer from the other workers" in message
    assert "a worker hung or died (the timeout is distributed.timeout_minutes)" in message


# -- the outer optimizer (DiLoCo) ----------------------------------------------------------
def _rounds(outer, anchor, averages):
    """Apply ``outer`` to a sequence of workers' averages; the weights after each round."""
    from layerwise.training.averaging import OuterNesterov  # noqa: F401

    outer.reset([anchor.clone()])
    out = []
    for avg in averages:
        w = [avg.clone()]
        outer.step(w)
        out.append(w[0])
    return out


def test_the_outer_step_at_rate_1_without_momentum_is_plain_averaging_bitwise():
    from layerwise.training.averaging import OuterNesterov

    g = torch.Generator().manual_seed(0)
    anchor = torch.randn(50, 30, generator=g)
    averages = [anchor + 0.1 * k * torch.randn(50, 30, generator=g) for k in range(1, 6)]
    for avg, w in zip(averages, _rounds(OuterNesterov(1.0, 0.0), anchor, averages)):
        assert torch.equal(avg, w)


def test_the_pseudo_gradient_moves_the_weights_toward_the_average():
    from layerwise.training.averaging import OuterNesterov

    anchor, avg = torch.zeros(4), torch.tensor([1.0, -2.0, 0.5, 0.0])
    (w,) = _rounds(OuterNesterov(0.5, 0.0), anchor, [avg])
    assert torch.allclose(w, 0.5 * avg)  # half way from the anchor to the average
    (w,) = _rounds(OuterNesterov(1.5, 0.0), anchor, [avg])
    assert torch.allclose(w, 1.5 * avg)  # past it, in the same direction: never away from it


def test_the_outer_step_is_torch_sgd_with_nesterov_on_the_pseudo_gradient():
    """The oracle: torch.optim.SGD(nesterov=True) stepping on g = anchor - average."""
    from layerwise.training.averaging import OuterNesterov

    g = torch.Generator().manual_seed(1)
    anchor = torch.randn(20, generator=g)
    moves = [0.3 * torch.randn(20, generator=g) for _ in range(6)]
    p = torch.nn.Parameter(anchor.clone())
    sgd = torch.optim.SGD([p], lr=0.7, momentum=0.9, nesterov=True)
    outer = OuterNesterov(0.7, 0.9)
    outer.reset([anchor.clone()])
    w = [anchor.clone()]
    for move in moves:
        avg = p.detach() + move  # the workers moved the weights by ``move`` since the last round
        p.grad = p.detach() - avg
        sgd.step()
        w[0].copy_(avg)
        outer.step(w)
        assert torch.allclose(w[0], p.detach(), atol=1e-6), (w[0] - p.detach()).abs().max()
