"""Speed of one CD-1 epoch of a 784-500 RBM over the 50k MNIST training images, batch 100.

    python benchmarks/rbm_speed.py [--threads 1] [--repeats 3] [--wait-policy spin|PASSIVE|ACTIVE]
                                   [--visible 784 --hidden 500] [--bf16]

With ``--visible 500 --hidden 2000`` it times the Hinton net's top layer instead, on 50k
rows of uniform [0, 1) values standing for the activations of the layer below (the work
of an epoch does not depend on the values).

Contenders, all in this one process and on the same data:
- layerwise: BernoulliRBM.step driven by the shared training loop (shuffle + batches);
- scikit-learn: BernoulliRBM.fit with n_iter=1 (same batch size, learning rate), its BLAS
  limited to the same thread count with threadpoolctl;
- learnergy (if installed: pip install learnergy --no-deps): its BernoulliRBM.fit, one
  epoch, which builds the CD update by autograd of an energy difference;
- roofline: the same five matmuls per batch as bare torch.mm calls into preallocated
  outputs (2*B*V*H flops each: v->h, h->v, v'->h', and the two gradient products).
With ``--bf16``, also layerwise with ``precision = "bf16"`` (bf16 operands, the CD
statistics subtracted in fp32), against the same fp32 roofline.
Each timing runs in a fresh process, the contenders interleaved; the best of the repeats
is reported, with ratios. Ratios are what to compare: the machine is shared and absolute
times move.
"""

from __future__ import annotations

import os

from layerwise import runtime  # noqa: E402

runtime.set_wait_policy()  # the process policy, before torch loads (OpenMP reads it then)

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from layerwise.data.sources import load_mnist  # noqa: E402
from layerwise.reporting.reporter import Reporter
from layerwise.training.loop import run_loop  # noqa: E402
from layerwise.units import BernoulliRBM  # noqa: E402

B, V, H = 100, 784, 500  # V and H are set from --visible and --hidden


def time_layerwise(x: torch.Tensor, precision: str = "fp32") -> float:
    rbm = BernoulliRBM(V, H, seed=0).set_precision(precision)
    gen = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    run_loop(
        x=x,
        y=None,
        batch_size=B,
        epochs=1,
        generator=gen,
        step=lambda xb, _y, _e: rbm.step(xb, lr=0.1, momentum=0.5, weight_decay=2e-4),
        end_epoch=lambda e, s: False,
        reporter=Reporter(),
        desc="cd1",
    )
    return time.perf_counter() - t


def time_sklearn(x: np.ndarray, threads: int) -> float | None:
    try:
        from sklearn.neural_network import BernoulliRBM as SkRBM
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    with threadpool_limits(threads):
        rbm = SkRBM(n_components=H, batch_size=B, learning_rate=0.1, n_iter=1, random_state=0)
        t = time.perf_counter()
        rbm.fit(x)
        return time.perf_counter() - t


def time_learnergy(x: torch.Tensor) -> float | None:
    try:
        from learnergy.models.bernoulli import RBM
    except ImportError:
        return None
    rbm = RBM(n_visible=V, n_hidden=H, steps=1, learning_rate=0.1, momentum=0.5, decay=2e-4)
    data = torch.utils.data.TensorDataset(x, torch.zeros(len(x)))
    t = time.perf_counter()
    rbm.fit(data, batch_size=B, epochs=1)
    return time.perf_counter() - t


def time_roofline(n: int) -> float:
    g = torch.Generator().manual_seed(0)
    v = torch.rand(B, V, generator=g)
    w = torch.rand(H, V, generator=g)
    h = torch.rand(B, H, generator=g)
    out_h, out_v, out_w = torch.empty(B, H), torch.empty(B, V), torch.empty(H, V)
    t = time.perf_counter()
    for _ in range(n // B):
        torch.mm(v, w.t(), out=out_h)
        torch.mm(h, w, out=out_v)
        torch.mm(out_v, w.t(), out=out_h)
        torch.mm(h.t(), v, out=out_w)
        torch.mm(h.t(), out_v, out=out_w)
    return time.perf_counter() - t


CONTENDERS = ("layerwise", "scikit-learn", "learnergy", "torch.mm roofline", "layerwise bf16")


def run_one(name: str, threads: int) -> float | None:
    runtime.apply(threads)
    if V == 784:
        xs = load_mnist().train.x
    else:
        xs = np.random.default_rng(0).random((50000, V), dtype=np.float32)
    x = torch.from_numpy(xs)
    if name == "layerwise":
        return time_layerwise(x)
    if name == "layerwise bf16":
        return time_layerwise(x, "bf16")
    if name == "scikit-learn":
        return time_sklearn(xs, threads)
    if name == "learnergy":
        return time_learnergy(x)
    return time_roofline(len(x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="threads for every contender (default 1)")
    ap.add_argument("--repeats", type=int, default=3, help="epochs timed per contender; the best counts")
    ap.add_argument(
        "--wait-policy",
        default="spin",
        choices=("spin", "PASSIVE", "ACTIVE"),
        help="OpenMP wait policy of the torch contenders: spin (layerwise's default, GOMP_SPINCOUNT=10000) "
        "or OMP_WAIT_POLICY=PASSIVE|ACTIVE",
    )
    ap.add_argument("--visible", type=int, default=784, help="visible units (784: MNIST; else uniform rows)")
    ap.add_argument("--hidden", type=int, default=500, help="hidden units")
    ap.add_argument("--bf16", action="store_true", help="also time layerwise with precision bf16")
    ap.add_argument("--one", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global V, H
    V, H = args.visible, args.hidden
    if args.one:
        t = run_one(args.one, args.threads)
        print("none" if t is None else repr(t))
        return
    # every timing in a fresh process (so one library's idle threads cannot slow another's),
    # interleaved over the repeats (so a noisy moment hits every contender)
    results: dict[str, float] = {}
    for _ in range(args.repeats):
        for name in CONTENDERS if args.bf16 else CONTENDERS[:-1]:
            env = dict(os.environ)
            env.pop("GOMP_SPINCOUNT", None)
            torch_made = name in ("layerwise", "torch.mm roofline", "layerwise bf16")
            if torch_made and args.wait_policy != "spin":
                env["OMP_WAIT_POLICY"] = args.wait_policy
            else:
                env.pop("OMP_WAIT_POLICY", None)
            if torch_made and args.wait_policy == "spin":
                env.pop("OMP_WAIT_POLICY", None)
                env["GOMP_SPINCOUNT"] = runtime.SPIN_COUNT
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    name,
                    "--threads",
                    str(args.threads),
                    "--visible",
                    str(V),
                    "--hidden",
                    str(H),
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[-1]
            if out != "none":
                results[name] = min(results.get(name, float("inf")), float(out))
    n = 50000
    print("(rows of uniform values standing for a layer's activations)" if V != 784 else "(MNIST pixels)")
    gflop = 5 * 2 * B * V * H * (n // B) / 1e9
    print(
        f"one CD-1 epoch, {V}-{H} RBM, {n} MNIST images, batch {B}, {args.threads} thread(s), "
        f"torch {torch.__version__}, wait policy {args.wait_policy} for torch, best of {args.repeats}"
    )
    print(f"{'contender':<20}{'seconds':>9}{'GFLOP/s':>9}")
    for name, t in results.items():
        print(f"{name:<20}{t:>9.2f}{gflop / t:>9.1f}")
    ours = results["layerwise"]
    if "learnergy" in results:
        print(f"layerwise is {results['learnergy'] / ours:.2f}x faster than learnergy")
    if "scikit-learn" in results:
        print(f"layerwise is {results['scikit-learn'] / ours:.2f}x faster than scikit-learn (target >= 1.2x)")
    print(
        f"layerwise reaches {100 * results['torch.mm roofline'] / ours:.0f}% of the roofline's GFLOP/s (target >= 65%)"
    )
    if "layerwise bf16" in results:
        low = results["layerwise bf16"]
        print(
            f"layerwise bf16 is {ours / low:.2f}x faster than layerwise fp32, "
            f"{results.get('scikit-learn', float('nan')) / low:.2f}x faster than scikit-learn"
        )


if __name__ == "__main__":
    main()
