"""Speed of one fine-tuning epoch of the Hinton net (784-500-500-2000-10, dropout 0.1 on the
input and 0.25 on the hidden layers, SGD with momentum 0.9, batch 100) on the 60k MNIST
training images, against the torch.mm roofline, and where the time of a batch goes.

    python benchmarks/finetune_speed.py [--threads 2] [--profile-batches 100] [--batch 100] [--bf16]

- epoch: ``layerwise.training.finetune.finetune`` for one epoch (the loop, the real thing);
- roofline: the same matrix products as bare ``torch.mm`` calls into preallocated outputs
  (per layer and batch: the forward product, the weight gradient, and the input gradient
  for every layer but the first), timed for an epoch's batches;
- breakdown: a replica of ``finetune.train_step`` timed stage by stage (forward, loss,
  zero_grad, backward, optimizer step), with the shares of the dropout masks and the
  matrix products from ``torch.profiler``; the loop's overhead is the epoch's time per
  batch less the replica's. Each timing runs in this one process, the roofline and the epoch interleaved;
  the best of the repeats counts;
- with ``--bf16``, also the fused step with ``precision = "bf16"`` (bf16 operands, fp32
  results and weights), against the fp32 roofline and against the same products in bf16.
"""

from __future__ import annotations

from layerwise import runtime  # noqa: E402

runtime.set_wait_policy()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from layerwise.config import FinetuneConfig  # noqa: E402
from layerwise.data.sources import load_mnist  # noqa: E402
from layerwise.stack import build_classifier  # noqa: E402
from layerwise.training.finetune import finetune, make_optimizer  # noqa: E402

SIZES, LABELS, B = [784, 500, 500, 2000], 10, 100
CFG = FinetuneConfig(
    epochs=1, batch_size=B, learning_rate=0.1, momentum=0.9, dropout_input=0.1, dropout_hidden=0.25, patience=None
)


def net():
    return build_classifier(SIZES, LABELS, dropout_input=CFG.dropout_input, dropout_hidden=CFG.dropout_hidden, seed=0)


def flops_per_batch() -> float:
    dims = SIZES + [LABELS]
    total = 0.0
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        total += 2 * B * n_in * n_out * (3 if i > 0 else 2)  # forward, weight gradient, input gradient (not layer 1)
    return total


def time_epoch(x, y, fused: bool = True, precision: str = "fp32") -> float:
    model = net()
    t = time.perf_counter()
    finetune(model, x, y, None, None, dataclasses.replace(CFG, fused=fused, batch_size=B), seed=0, precision=precision)
    return time.perf_counter() - t


def fused_shares(x, y, batches: int = 30) -> dict[str, float]:
    """Shares of the fused step's time by kind of operation, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    from layerwise.training.fused import FusedClassifierStep

    model = net().train()
    opt = make_optimizer(model, CFG)
    step = FusedClassifierStep.make(model)
    for k in range(5):
        step(x[k * B : (k + 1) * B], y[k * B : (k + 1) * B], opt)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for k in range(batches):
            step(x[k * B : (k + 1) * B], y[k * B : (k + 1) * B], opt)
    ev = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(ev.values())
    kinds = {
        "matrix products (addmm, addmv)": ("aten::addmm", "aten::addmm_", "aten::addmv_", "aten::mm"),
        "dropout masks (random_, ge)": ("aten::random_", "aten::ge"),
        "sigmoid and its derivative": ("aten::sigmoid_", "aten::sigmoid_backward"),
        "mask products and parameter updates": ("aten::mul_", "aten::mul", "aten::add_"),
        "loss (log_softmax, nll, exp)": ("aten::_log_softmax", "aten::nll_loss_forward", "aten::exp_"),
    }
    out = {k: sum(ev.get(n, 0) for n in names) / total for k, names in kinds.items()}
    out["everything else"] = 1 - sum(out.values())
    return out


def time_roofline(n_batches: int, dtype: torch.dtype = torch.float32) -> float:
    dims = SIZES + [LABELS]
    g = torch.Generator().manual_seed(0)
    mats = []
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        a, w, d = (torch.rand(*shape, generator=g).to(dtype) for shape in ((B, n_in), (n_out, n_in), (B, n_out)))
        mats.append(
            (i, a, w, d, *(torch.empty(*shape, dtype=dtype) for shape in ((B, n_out), (n_out, n_in), (B, n_in))))
        )
    t = time.perf_counter()
    for _ in range(n_batches):
        for i, a, w, d, out, gw, gi in mats:
            torch.mm(a, w.t(), out=out)
            torch.mm(d.t(), a, out=gw)
            if i > 0:
                torch.mm(d, w, out=gi)
    return time.perf_counter() - t


def breakdown(x, y, batches: int) -> dict[str, float]:
    """Seconds per batch of each stage of a replica of train_step, timed with perf_counter
    (the CPU runs each stage to its end before the next starts); the shares of the dropout
    masks and of the matrix products, from torch.profiler, as fractions of the profiled
    forward and backward time applied to the timed one (the profiler's own overhead
    would inflate absolute times)."""
    from torch.profiler import ProfilerActivity, profile

    model = net().train()
    opt = make_optimizer(model, dataclasses.replace(CFG))
    for k in range(5):  # warm up
        F.cross_entropy(model(x[k * B : (k + 1) * B]), y[k * B : (k + 1) * B]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    stages = {"forward": 0.0, "loss": 0.0, "zero_grad": 0.0, "backward": 0.0, "optimizer": 0.0}
    clock = time.perf_counter
    for k in range(batches):
        xb, yb = x[k * B : (k + 1) * B], y[k * B : (k + 1) * B]
        t0 = clock()
        logits = model(xb)
        t1 = clock()
        loss = F.cross_entropy(logits, yb)
        t2 = clock()
        opt.zero_grad(set_to_none=True)
        t3 = clock()
        loss.backward()
        t4 = clock()
        opt.step()
        t5 = clock()
        for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            stages[name] += dt
    out = {k: v / batches for k, v in stages.items()}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for k in range(min(batches, 30)):
            F.cross_entropy(model(x[k * B : (k + 1) * B]), y[k * B : (k + 1) * B]).backward()
            opt.zero_grad(set_to_none=True)
    ev = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(ev.values())
    fwd_bwd = out["forward"] + out["loss"] + out["backward"]
    out["of which dropout masks"] = (
        fwd_bwd * sum(ev.get(k, 0) for k in ("aten::bernoulli_", "aten::uniform_", "aten::native_dropout")) / total
    )
    out["of which matrix products"] = fwd_bwd * sum(ev.get(k, 0) for k in ("aten::addmm", "aten::mm")) / total
    return out


def main() -> None:
    global B
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--repeats", type=int, default=2, help="epochs (and rooflines) timed; the best counts")
    ap.add_argument("--profile-batches", type=int, default=100, help="batches profiled for the breakdown")
    ap.add_argument("--samples", type=int, default=60000, help="training images (default 60000: train + validation)")
    ap.add_argument("--batch", type=int, default=B, help="minibatch size (default 100)")
    ap.add_argument("--bf16", action="store_true", help="also time the fused step with bf16 products")
    args = ap.parse_args()
    if args.batch < 1:
        ap.error(f"--batch must be a positive number of images, got {args.batch}")
    B = args.batch
    runtime.apply(args.threads)
    s = load_mnist()
    x = torch.cat([torch.from_numpy(s.train.x), torch.from_numpy(s.validation.x)])[: args.samples]
    y = torch.cat([torch.from_numpy(s.train.y), torch.from_numpy(s.validation.y)])[: args.samples]
    n_batches = len(x) // B
    epoch, roof, fused = float("inf"), float("inf"), float("inf")
    roof16, fused16 = float("inf"), float("inf")
    for _ in range(args.repeats):
        roof = min(roof, time_roofline(n_batches))
        fused = min(fused, time_epoch(x, y, fused=True))
        epoch = min(epoch, time_epoch(x, y, fused=False))
        if args.bf16:
            roof16 = min(roof16, time_roofline(n_batches, torch.bfloat16))
            fused16 = min(fused16, time_epoch(x, y, fused=True, precision="bf16"))
    gflop = flops_per_batch() * n_batches / 1e9
    print(
        f"fine-tuning epoch: {'-'.join(map(str, SIZES + [LABELS]))}, {len(x)} MNIST images, batch {B}, dropout "
        f"{CFG.dropout_input}/{CFG.dropout_hidden}, SGD momentum {CFG.momentum}, {args.threads} threads, torch "
        f"{torch.__version__}, {runtime.set_wait_policy()}, best of {args.repeats}"
    )
    print(f"roofline {roof:.2f} s ({gflop / roof:.1f} GFLOP/s)")
    for name, t in (("fused step (the default)", fused), ("autograd step (fused = false)", epoch)):
        print(
            f"epoch, {name}: {t:.2f} s ({gflop / t:.1f} GFLOP/s), {100 * roof / t:.0f}% of the roofline (target >= 70%)"
        )
    if args.bf16:
        print(f"bf16 roofline {roof16:.2f} s ({gflop / roof16:.1f} GFLOP/s)")
        print(
            f"epoch, fused step in bf16: {fused16:.2f} s ({gflop / fused16:.1f} GFLOP/s), {100 * roof / fused16:.0f}% "
            f"of the fp32 roofline, {100 * roof16 / fused16:.0f}% of the bf16 roofline, "
            f"{fused / fused16:.2f}x the fp32 fused step"
        )
    print("fused step, shares of its operations (torch.profiler):")
    for k, v in fused_shares(x, y).items():
        print(f"  {k:<40}{100 * v:5.1f}%")
    print("autograd step, stage by stage:")
    parts = breakdown(x, y, args.profile_batches)
    per_batch = epoch / n_batches
    staged = sum(v for k, v in parts.items() if not k.startswith("of which"))
    print(f"per batch: {1e3 * per_batch:.2f} ms in the epoch")
    for k, v in parts.items():
        print(f"  {k:<40}{1e3 * v:8.3f} ms  {100 * v / per_batch:5.1f}%")
    print(
        f"  {'loop overhead (epoch less the stages)':<40}{1e3 * (per_batch - staged):8.3f} ms  "
        f"{100 * (per_batch - staged) / per_batch:5.1f}%"
    )


if __name__ == "__main__":
    main()
