"""Does parameter averaging need a lower learning rate? A sweep on an MNIST subset.

    python benchmarks/lr_sweep.py [--samples 10000] [--rates 0.001 0.01 0.1 0.3 1.0]
                                  [--workers 1 2 4] [--frequencies 1 5 20]

Every combination trains the quick recipe's net (784-500-250-10) on the first
``--samples`` training images: 2 CD-1 epochs per layer, 5 fine-tuning epochs, the
same rate for both phases, no lr correction, guard off (to see raw divergence). Reported:
test accuracy on the 10k test images, whether the weights diverged (NaN or Inf in a saved
net) and whether the net learned (above 50%; sigmoid nets at low rates sit on a plateau
at chance for the first epochs).
"""

from __future__ import annotations


from layerwise import runtime  # noqa: E402

runtime.set_wait_policy()  # the process policy, before torch loads (OpenMP reads it then)

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

RECIPE = """
seed = 0
[data]
source = "mnist"
train_limit = {samples}
[model]
hidden = [500, 250]
[pretrain]
epochs = 2
batch_size = 100
learning_rate = {lr}
momentum_switch_epoch = 1
[finetune]
epochs = 5
batch_size = 100
learning_rate = {lr}
momentum = 0.9
patience = "none"
[guard]
enabled = false
[distributed]
averaging_frequency = {freq}
"""


def run(tmp: Path, samples: int, lr: float, workers: int, freq: int) -> dict:
    name = f"lr{lr}-w{workers}-f{freq}"
    recipe = tmp / f"{name}.toml"
    recipe.write_text(RECIPE.format(samples=samples, lr=lr, freq=freq))
    cmd = [sys.executable, "-m", "layerwise", "train", str(recipe), "--quiet", "--runs-dir", str(tmp / "runs")]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"test accuracy: ([0-9.]+)%", proc.stdout)
    acc = float(m.group(1)) if m else None
    run_dir = re.search(r"run folder: (\S+)", proc.stdout)
    finite = False
    if run_dir:  # diverged = NaN/Inf in the pretrained or finetuned weights
        from safetensors.torch import load_file

        finite = all(bool(t.isfinite().all()) for a in ("pretrained", "finetuned")
                     for t in load_file(str(Path(run_dir.group(1)) / a / "weights.safetensors")).values())
    return {"lr": lr, "workers": workers, "frequency": freq, "test_accuracy": acc, "diverged": not finite,
            "learned": acc is not None and acc > 50.0, "exit": proc.returncode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10000, help="training images used (default 10000)")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.001, 0.01, 0.1, 0.3, 1.0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--frequencies", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--out", default="lr_sweep.json", help="where the results go as JSON")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lr, w in itertools.product(args.rates, args.workers):
            for f in (args.frequencies if w > 1 else [args.frequencies[0]]):  # frequency means nothing for 1 worker
                r = run(Path(tmp), args.samples, lr, w, f)
                rows.append(r)
                acc = "n/a" if r["test_accuracy"] is None else f"{r['test_accuracy']:.2f}%"
                state = "diverged (NaN/Inf)" if r["diverged"] else ("learned" if r["learned"] else "finite, did not learn")
                print(f"lr {lr:<6g} workers {w} frequency {f if w > 1 else '-':<3} test {acc:<8} {state}", flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
