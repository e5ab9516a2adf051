"""Distributed training by parameter averaging on this machine.

    python benchmarks/distributed_mnist.py [--workers 1 2 4] [--lr-correction none sqrt linear]
                                           [--skip-runs] [--skip-rounds]

1. The quick MNIST recipe with 1, 2 and 4 workers (4 oversubscribes a 2-core machine):
   test accuracy and wall time per worker count, with the recipe's [distributed]
   lr_correction or each one given with --lr-correction.
2. The cost of one averaging round for the 784-500-500-2000-10 net's 1.67M parameters
   between 2 processes (gloo, loopback), and its share of a fine-tuning step (batch 100)
   at the default averaging frequency of 5.
"""

from __future__ import annotations

import os

from layerwise import runtime  # noqa: E402

runtime.set_wait_policy()  # the process policy, before torch loads (OpenMP reads it then)

import argparse  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run_recipe(workers: int, runs: str, correction: str | None = None) -> tuple[float, float]:
    from layerwise import config

    cfg = config.load(ROOT / "recipes" / "quick-mnist.toml")
    if correction is not None:
        cfg.distributed.lr_correction = correction
    correction = cfg.distributed.lr_correction
    recipe = Path(runs) / f"quick-mnist-{correction}.toml"
    recipe.write_text(config.to_toml(cfg))
    cmd = [
        sys.executable,
        "-m",
        "layerwise",
        "train",
        str(recipe),
        "--quiet",
        "--runs-dir",
        runs,
        "--name",
        f"w{workers}-{correction}",
    ]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - t
    acc = float(re.search(r"test accuracy: ([0-9.]+)%", out).group(1))
    return acc, wall


def _round_worker(rank: int, world: int, store: str, queue) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from layerwise.stack import DeepBeliefNet
    from layerwise.training.averaging import average_tensors, trained_tensors

    runtime.apply(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    clf = DeepBeliefNet(784, [500, 500, 2000]).to_classifier(10)
    tensors = trained_tensors(clf)
    n_params = sum(t.numel() for t in tensors)
    for _ in range(3):
        average_tensors(tensors)
    per_round, bare = [], []
    for _ in range(3):  # interleaved, so that both see the same machine
        dist.barrier()
        t = time.perf_counter()
        for _ in range(10):
            average_tensors(tensors)  # as in training with the guard on: NaN check and replica drift
        per_round.append((time.perf_counter() - t) / 10)
        dist.barrier()
        t = time.perf_counter()
        for _ in range(10):
            average_tensors(tensors, drift=False)  # guard off: NaN check only
        bare.append((time.perf_counter() - t) / 10)
    per_round, bare = sorted(per_round)[1], sorted(bare)[1]  # medians
    opt = torch.optim.SGD(clf.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.rand(100, 784), torch.randint(0, 10, (100,))
    t = time.perf_counter()
    for _ in range(30):
        loss = F.cross_entropy(clf(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    per_step = (time.perf_counter() - t) / 30
    if rank == 0:
        queue.put((n_params, per_round, bare, per_step))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # a plain interpreter exit of a gloo worker sometimes aborts


def averaging_round() -> tuple[int, float, float, float]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.get_context("spawn")
        queue = ctx.SimpleQueue()
        mp.spawn(_round_worker, args=(2, os.path.join(tmp, "store"), queue), nprocs=2, join=True)
        return queue.get()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts to run")
    ap.add_argument(
        "--lr-correction",
        nargs="+",
        default=[None],
        choices=["none", "sqrt", "linear"],
        help="learning-rate corrections to run (default: the recipe's)",
    )
    ap.add_argument("--skip-runs", action="store_true", help="skip the MNIST runs")
    ap.add_argument("--skip-rounds", action="store_true", help="skip the averaging-round timing")
    args = ap.parse_args()
    if not args.skip_rounds:
        n, per_round, bare, per_step = averaging_round()
        share = per_round / (5 * per_step + per_round)
        print(
            f"averaging round, {n} parameters, 2 processes: {1000 * per_round:.1f} ms ({1000 * bare:.1f} ms without "
            f"the replica-drift check); one fine-tuning step (batch 100, 1 thread): {1000 * per_step:.1f} ms; "
            f"share of the time at averaging_frequency 5: {100 * share:.1f}%; drift check: "
            f"{100 * (per_round - bare) / (5 * per_step + per_round):.1f}% of it"
        )
    if not args.skip_runs:
        with tempfile.TemporaryDirectory() as runs:
            base = None
            for corr in args.lr_correction:
                for w in args.workers:
                    if w == 1 and corr != args.lr_correction[0]:
                        continue  # a correction changes nothing for one worker
                    acc, wall = run_recipe(w, runs, corr)
                    base = acc if base is None else base
                    print(
                        f"quick-mnist, {w} worker(s), lr_correction {corr or 'as in the recipe'}: test accuracy {acc:.2f}% "
                        f"({acc - base:+.2f} vs the first), wall {wall:.0f} s",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
