"""Hinton & Salakhutdinov's deep belief net on MNIST through the library, timed.

    python benchmarks/hinton_mnist.py [--recipe recipes/hinton-mnist.toml] [--threads 2]

Prints test accuracy (target: at least 99.0%; the paper reports 1.2% error, Srivastava et
al. 2014 0.92% with dropout), the wall time from the start of this process to the end of
the run, split into pretraining and fine-tuning (target: under 10 minutes on 2 quiet
cores), the OpenMP wait policy and peak memory (max RSS). The run folder lands in runs/.
"""

from __future__ import annotations

import time  # noqa: E402

STARTED = time.perf_counter()  # everything counts: imports, data loading, training, saving, plots

import os  # noqa: E402

from layerwise import runtime  # noqa: E402

POLICY = runtime.set_wait_policy()  # the process policy, before torch loads (OpenMP reads it then)

import argparse  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from layerwise import config  # noqa: E402
from layerwise.jobs import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "hinton-mnist.toml"), help="recipe to run")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--runs-dir", default="runs", help="where the run folder goes")
    args = ap.parse_args()
    runtime.apply(args.threads)
    print(f"wait policy: {POLICY}", flush=True)
    cfg = config.load(args.recipe)
    res = train(cfg, runs_dir=args.runs_dir, echo=lambda s: print(s, flush=True))
    wall = time.perf_counter() - STARTED
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("---")
    print(f"recipe: {args.recipe}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, {POLICY}, "
        f"bfloat16 instructions: {'yes' if runtime.cpu_has_bf16() else 'no'}"
    )
    print(f"precision: {cfg.precision}")
    print(f"test accuracy: {100 * res.test_accuracy:.2f}%  (target >= 99.00%)")
    if res.validation_accuracy is not None:
        print(f"validation accuracy: {100 * res.validation_accuracy:.2f}%")
    else:
        print("validation accuracy: n/a (the validation split joined the fine-tuning data)")
    print(
        f"wall time: {wall:.0f} s, target < 600 s (pretraining {res.seconds_pretrain:.0f} s, fine-tuning {res.seconds_finetune:.0f} s; "
        f"rest: imports, data loading, saving, plots)"
    )
    print(f"peak memory (max RSS): {peak_mib:.0f} MiB")
    print(f"run folder: {res.run_dir}")


if __name__ == "__main__":
    main()
