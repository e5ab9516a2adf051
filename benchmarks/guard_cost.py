"""What the divergence guard costs per training step, at its default settings.

    python benchmarks/guard_cost.py [--threads 2] [--repeats 3]

Two loops timed with the guard off and on, each in a fresh process, interleaved, best of
the repeats: one CD-1 pretraining epoch of a 784-500 RBM over 50k MNIST images (batch
100), and one fine-tuning epoch of the 784-500-500-2000-10 classifier (batch 100, SGD).
Two measures: the wall-time difference between the runs (noisy on a shared machine: a
few percent either way) and the time spent inside the guard's hooks as a share of the
epoch (precise). Target: under 2% of step time.
"""

from __future__ import annotations

from layerwise import runtime  # noqa: E402

runtime.set_wait_policy()  # the process policy, before torch loads (OpenMP reads it then)

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from layerwise.config import FinetuneConfig, GuardConfig, PretrainConfig  # noqa: E402
from layerwise.data.sources import load_mnist  # noqa: E402
from layerwise.stack import DeepBeliefNet  # noqa: E402
from layerwise.training.finetune import finetune  # noqa: E402
from layerwise.training.pretrain import pretrain  # noqa: E402


def _time_guard_methods() -> dict:
    """Wrap the guard's hooks to add up the time spent inside them."""
    from layerwise.training.guard import DivergenceGuard

    spent = {"s": 0.0}
    for name in ("after_batch", "after_epoch", "verify", "snapshot"):
        real = getattr(DivergenceGuard, name)

        def timed(self, *a, _real=real, **k):
            t = time.perf_counter()
            try:
                return _real(self, *a, **k)
            finally:
                spent["s"] += time.perf_counter() - t

        setattr(DivergenceGuard, name, timed)
    return spent


def run_one(what: str, guard: bool, threads: int) -> tuple[float, float]:
    runtime.apply(threads)
    spent = _time_guard_methods()
    s = load_mnist()
    x, y = torch.from_numpy(s.train.x), torch.from_numpy(s.train.y)
    g = GuardConfig() if guard else None
    t = time.perf_counter()
    if what == "pretrain":
        dbn = DeepBeliefNet(784, [500])
        pretrain(dbn, x, None, PretrainConfig(epochs=1, learning_rate=0.1, monitor_samples=5000), guard=g)
    else:
        clf = DeepBeliefNet(784, [500, 500, 2000]).to_classifier(10)
        finetune(clf, x, y, None, None, FinetuneConfig(epochs=1, learning_rate=0.1, patience=None), guard=g)
    return time.perf_counter() - t, spent["s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per setting; the best counts")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(*run_one(args.one[0], args.one[1] == "on", args.threads))
        return
    best: dict = {}
    inside: dict = {}
    for _ in range(args.repeats):
        for what in ("pretrain", "finetune"):
            for g in ("off", "on"):
                out = subprocess.run(
                    [sys.executable, __file__, "--one", what, g, "--threads", str(args.threads)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split()
                best[(what, g)] = min(best.get((what, g), float("inf")), float(out[0]))
                if g == "on":
                    inside[what] = min(inside.get(what, float("inf")), float(out[1]) / float(out[0]))
    print(f"guard cost, {args.threads} thread(s), best of {args.repeats}, one epoch over 50k MNIST images")
    for what in ("pretrain", "finetune"):
        off, on = best[(what, "off")], best[(what, "on")]
        print(
            f"{what:<9} guard off {off:7.2f} s   on {on:7.2f} s   difference {100 * (on - off) / off:+.1f}%   "
            f"time inside the guard {100 * inside[what]:.2f}% of the epoch  (target < 2%)"
        )


if __name__ == "__main__":
    main()
