"""Pretraining on data larger than memory: a 784-500-250 net on a synthetic 1.5 M x 784
float32 ``.npy`` (4.7 GB on disk), one epoch per layer, streamed from disk.

    python benchmarks/stream_scale.py [--rows 1500000] [--dir bench-data] [--threads 2]

Reports, each measured in this one run on this machine:
- the peak resident set (max RSS) of the ``layerwise pretrain`` process (target: under
  1.5 GB);
- the throughput per example of each layer's streamed epoch, against the in-memory loop
  on the first ``--in-memory-rows`` rows of the same file, trained the same way in this
  process (target: within 25%);
- the times of the data check (validation and fingerprint of every shard) and of the
  whole command.

The data is written once into ``--dir`` (kept for a rerun; ``--fresh`` writes it again):
pixels 1 with probability 0.13, else 0, like MNIST's ink. Never time this while tests or
another training run share the cores.
"""

from __future__ import annotations

from layerwise import runtime  # noqa: E402

runtime.set_wait_policy()  # the process policy, before torch loads (OpenMP reads it then)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

RECIPE = """
seed = 0
[model]
hidden = [500, 250]
[pretrain]
epochs = 1
batch_size = 100
learning_rate = 0.01
"""


def make_data(path: Path, rows: int) -> float:
    """Write the synthetic .npy block by block; returns the seconds it took."""
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, 784)})
        for s in range(0, rows, 50000):
            n = min(50000, rows - s)
            f.write((rng.random((n, 784), dtype=np.float32) < 0.13).astype(np.float32).tobytes())
    os.replace(tmp, path)
    return time.perf_counter() - t


def in_memory_rates(path: Path, rows: int) -> dict:
    """Examples per second of one in-memory epoch of each layer, on the file's first rows."""
    from layerwise.config import PretrainConfig
    from layerwise.reporting.reporter import Reporter
    from layerwise.training.loop import run_loop
    from layerwise.training.pretrain import step_options
    from layerwise.units import BernoulliRBM

    x = torch.from_numpy(np.array(np.load(path, mmap_mode="r")[:rows]))
    cfg = PretrainConfig()
    out = {}
    for i, (a, b) in enumerate([(784, 500), (500, 250)]):
        rbm = BernoulliRBM(a, b, seed=i)
        opts = step_options(rbm, cfg)
        t = time.perf_counter()
        run_loop(
            x=x,
            y=None,
            batch_size=100,
            epochs=1,
            generator=torch.Generator().manual_seed(0),
            step=lambda xb, _y, _e, rbm=rbm: rbm.step(xb, lr=0.01, momentum=0.5, **opts),
            end_epoch=lambda e, s: False,
            reporter=Reporter(),
            desc="mem",
        )
        out[f"layer{i + 1}"] = rows / (time.perf_counter() - t)
        x = torch.cat([rbm.transform(x[s : s + 10000]) for s in range(0, len(x), 10000)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_500_000, help="rows of the synthetic data (default 1.5 M)")
    ap.add_argument("--dir", default="bench-data", help="where the data and the pretraining folder go")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--in-memory-rows", type=int, default=200_000, help="rows of the in-memory comparison")
    ap.add_argument("--fresh", action="store_true", help="write the data again")
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    runtime.apply(args.threads, device="cpu")
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    data = d / f"synthetic-{args.rows}.npy"
    need = 4 * 784 * args.rows * 1.7  # the data, and the 500-wide activations of layer 1
    if not data.exists() or args.fresh:
        free = shutil.disk_usage(d).free
        if free < need:
            sys.exit(f"stream_scale: {free / 2**30:.1f} GiB free in {d}; the run needs about {need / 2**30:.1f} GiB")
        print(f"writing {data} ({4 * 784 * args.rows / 1e9:.2f} GB) ...", flush=True)
        print(f"  {make_data(data, args.rows):.0f} s", flush=True)
    out = d / "pretrain"
    shutil.rmtree(out, ignore_errors=True)
    (d / "recipe.toml").write_text(RECIPE)
    cmd = [
        sys.executable,
        "-m",
        "layerwise",
        "pretrain",
        str(d / "recipe.toml"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--threads",
        str(args.threads),
        "--device",
        "cpu",
        "--quiet",
    ]
    print("$ " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"layerwise pretrain failed:\n{proc.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = {r["layer"]: r for r in records if r.get("phase") == "pretrain"}
    streamed = {f"layer{i + 1}": args.rows / epochs[i]["seconds"] for i in (0, 1)}
    print(f"in-memory comparison on {args.in_memory_rows} rows ...", flush=True)
    memory = in_memory_rates(data, args.in_memory_rows)
    fig = {
        "command": " ".join(cmd),
        "rows": args.rows,
        "file_gb": round(data.stat().st_size / 1e9, 2),
        "peak_rss_gb": round(peak / 1e9, 3),
        "wall_seconds": round(wall, 1),
        "epoch_seconds": {f"layer{i + 1}": epochs[i]["seconds"] for i in (0, 1)},
        "streamed_examples_per_s": {k: round(v) for k, v in streamed.items()},
        "in_memory_examples_per_s": {k: round(v) for k, v in memory.items()},
        "streamed_vs_in_memory": {k: round(streamed[k] / memory[k], 3) for k in streamed},
        "threads": args.threads,
    }
    print(json.dumps(fig, indent=2))
    ok_rss, ok_speed = peak < 1.5e9, all(v >= 0.75 for v in fig["streamed_vs_in_memory"].values())
    print(f"peak RSS {fig['peak_rss_gb']} GB: {'under' if ok_rss else 'OVER'} the 1.5 GB target")
    print(f"streamed throughput {fig['streamed_vs_in_memory']} of in-memory: {'within' if ok_speed else 'OUTSIDE'} 25%")
    if args.out:
        Path(args.out).write_text(json.dumps(fig, indent=2))


if __name__ == "__main__":
    main()
