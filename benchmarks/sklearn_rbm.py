"""layerwise.sklearn.BernoulliRBM against scikit-learn's BernoulliRBM on MNIST, at the same
settings: fit time and pseudo-likelihood on the test images.

    python benchmarks/sklearn_rbm.py [--threads 1] [--repeats 2] [--iters 2] [--samples 50000]

Both get the same float32 training images and parameters (n_components 256, learning rate
0.1, PCD, scikit-learn's default batch of 10, and batch 100), the same random_state (so the
same initial weights and the same pseudo-likelihood flips). Each fit runs in a fresh
process, the contenders interleaved over the repeats; the best time counts. The BLAS of
scikit-learn is limited to the same thread count as torch (threadpoolctl).
"""

from __future__ import annotations

import os

from layerwise import runtime  # noqa: E402

runtime.set_wait_policy()

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

CONTENDERS = ("layerwise", "scikit-learn")


def run_one(name: str, threads: int, batch: int, iters: int, samples: int) -> dict:
    from threadpoolctl import threadpool_limits

    from layerwise.data.sources import load_mnist

    runtime.apply(threads)
    s = load_mnist()
    x, xt = s.train.x[:samples], s.test.x
    if name == "layerwise":
        from layerwise.sklearn import BernoulliRBM
    else:
        from sklearn.neural_network import BernoulliRBM
    rbm = BernoulliRBM(n_components=256, learning_rate=0.1, batch_size=batch, n_iter=iters, random_state=0)
    with threadpool_limits(threads):
        t = time.perf_counter()
        rbm.fit(x)
        seconds = time.perf_counter() - t
        pl = float(rbm.score_samples(xt).mean())
    return {"seconds": seconds, "pseudo_likelihood": pl}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="threads for both (default 1)")
    ap.add_argument("--repeats", type=int, default=2, help="fits per contender and batch size; the best time counts")
    ap.add_argument("--iters", type=int, default=2, help="n_iter (passes over the data, default 2)")
    ap.add_argument("--samples", type=int, default=50000, help="training images (default 50000)")
    ap.add_argument("--batches", type=int, nargs="+", default=[10, 100], help="batch sizes (default 10 100)")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.threads, int(args.one[1]), args.iters, args.samples)))
        return
    import torch

    print(
        f"BernoulliRBM fit: 784-256, {args.samples} MNIST images (float32), {args.iters} iterations, PCD, lr 0.1, "
        f"{args.threads} thread(s), torch {torch.__version__}, best of {args.repeats}"
    )
    print(f"{'batch':>6}{'contender':>14}{'fit s':>9}{'pseudo-LL (test)':>18}")
    for batch in args.batches:
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for name in CONTENDERS:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        name,
                        str(batch),
                        "--threads",
                        str(args.threads),
                        "--iters",
                        str(args.iters),
                        "--samples",
                        str(args.samples),
                    ],
                    env=dict(os.environ),
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(out.stdout.splitlines()[-1])
                if name not in best or r["seconds"] < best[name]["seconds"]:
                    best[name] = r
        for name in CONTENDERS:
            print(f"{batch:>6}{name:>14}{best[name]['seconds']:>9.2f}{best[name]['pseudo_likelihood']:>18.2f}")
        ours, theirs = best["layerwise"], best["scikit-learn"]
        gap = (ours["pseudo_likelihood"] - theirs["pseudo_likelihood"]) / abs(theirs["pseudo_likelihood"])
        print(
            f"{'':>6}layerwise is {theirs['seconds'] / ours['seconds']:.2f}x as fast as scikit-learn (target >= 1.3x); "
            f"pseudo-likelihood {100 * gap:+.1f}% against scikit-learn's (higher is better)"
        )


if __name__ == "__main__":
    main()
