"""Experiment: does parameter averaging speed up learning? Round by round, how far the
averaged weights move and how much they learn, against one worker that took the same
minibatches in turn.

This one runs in the process, on the library's RBM unit: a round of ``--workers N`` with
``averaging_frequency = k`` is N copies of the same weights each taking k CD-1 steps on
their own minibatches, then the mean of their parameters (what the all_reduce computes).
The launcher's communication is not timed here; the ``averaging`` experiment runs the
real thing.
"""

from __future__ import annotations

import copy

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from layerwise.advice.rules import corrected_lr, suggest_layers
from layerwise.lab.core import figure, table
from layerwise.units.rbm import BernoulliRBM

NAME = "rounds"
TITLE = "Does averaging speed up learning"
CLAIM = '"parameter averaging, which speeds up learning"'
SETUP = (
    "The first layer of the advisor's net (a Bernoulli RBM, CD-1, minibatches of the budget's size, no "
    "momentum), followed along the averaged trajectory. Each round starts from the same weights: N workers "
    "each take k steps on their own minibatches and their parameters are averaged (`--workers N`, "
    "`averaging_frequency = k`), against one worker taking the same N x k minibatches in turn. Per round: how "
    "far the weights moved, and how much the held-out reconstruction cross-entropy fell. *Per example* is "
    "averaging's fall over the single worker's; *in wall time* multiplies it by N, the speed-up if the N "
    "workers ran in parallel at no cost of communication."
)


FASTER = 1.25  # a speed-up in wall time below this is counted as none (curves cross within noise)


def _steps(budget) -> int:
    """Minibatch steps that the N workers take in all (N x k per round), the same for every cell."""
    return {"full": 3000, "quick": 400}.get(budget.name, 40)


def cells(budget) -> list[dict]:
    workers: tuple[int, ...]
    freqs: tuple[int, ...]
    rates: tuple[float, ...]
    if budget.name == "full":
        workers, freqs, rates = (2, 4, 8), (1, 5, 20), (0.01, 0.1)
    elif budget.name == "quick":
        workers, freqs, rates = (2, 4), (1, 5), (0.1,)
    else:
        workers, freqs, rates = (2,), (5,), (0.1,)
    grid = [
        {"workers": w, "frequency": f, "lr": r, "correction": "none"} for r in rates for w in workers for f in freqs
    ]
    # the workers' rate scaled by N (`lr_correction = "linear"`), the single worker's not
    return grid + [{"workers": w, "frequency": freqs[-1], "lr": rates[-1], "correction": "linear"} for w in workers]


def _trained(start: BernoulliRBM, xs: list[torch.Tensor], lr: float, seed: int) -> BernoulliRBM:
    u = copy.deepcopy(start)
    u.generator = torch.Generator().manual_seed(seed)
    for x in xs:
        u.step(x, lr=lr, momentum=0.0)
    return u


@torch.no_grad()
def run_cell(settings: dict, data, budget) -> dict:
    d = data.take(budget)
    n, k, lr, b = settings["workers"], settings["frequency"], settings["lr"], budget.batch_size
    worker_lr = corrected_lr(lr, n, settings["correction"])
    held = d.xv[:1000]
    order = torch.randperm(len(d.x), generator=torch.Generator().manual_seed(0))
    per_epoch = len(d.x) // b
    batch = lambda i: d.x[order[(i % per_epoch) * b : (i % per_epoch + 1) * b]]  # noqa: E731  (wraps around)
    rounds = max(1, _steps(budget) // (n * k))
    every = max(1, rounds // 30)  # about 30 points on each curve
    recon = lambda u: float(u.reconstruction_cross_entropy(held))  # noqa: E731
    unit = BernoulliRBM(d.n_inputs, suggest_layers(d.n_inputs)[0], seed=0)
    single = copy.deepcopy(unit)  # one worker taking every minibatch in turn: the reference trajectory
    ratios, examples, averaged_curve, single_curve = [], [0], [recon(unit)], [recon(single)]
    for r in range(rounds):
        shards = [[batch((r * n + i) * k + j) for j in range(k)] for i in range(n)]
        w0 = parameters_to_vector(unit.parameters())
        workers = [_trained(unit, xs, worker_lr, 1000 * r + i) for i, xs in enumerate(shards)]
        avg = torch.stack([parameters_to_vector(u.parameters()) for u in workers]).mean(0)
        alone = _trained(unit, [x for xs in shards for x in xs], lr, 1000 * r)  # same start, same minibatches
        ratios.append(
            float((avg - w0).norm()) / max(float((parameters_to_vector(alone.parameters()) - w0).norm()), 1e-12)
        )
        vector_to_parameters(avg, unit.parameters())
        single.generator = torch.Generator().manual_seed(1000 * r)  # worker 0's seed: one worker is its own reference
        for xs in shards:
            for x in xs:
                single.step(x, lr=lr, momentum=0.0)
        if (r + 1) % every == 0 or r + 1 == rounds:
            examples.append((r + 1) * n * k * b)
            averaged_curve.append(recon(unit))
            single_curve.append(recon(single))
    target, needed = averaged_curve[-1], None
    for i in range(1, len(examples)):  # the examples one worker needed to reach the average's final cross-entropy
        if single_curve[i] <= target:
            lo, hi = single_curve[i - 1], single_curve[i]
            frac = 1.0 if lo <= hi else (lo - target) / (lo - hi)
            needed = examples[i - 1] + frac * (examples[i] - examples[i - 1])
            break
    per_example = (needed if needed is not None else examples[-1]) / examples[-1]
    return {
        "rounds": rounds,
        "movement_ratio": float(torch.tensor(ratios).median()),
        "examples": examples,
        "recon_averaged": averaged_curve,
        "recon_single": single_curve,
        "reached": needed is not None,
        "per_example": per_example,
        "wall_speedup": n * per_example,
    }


def verdict(records: list[dict], budget) -> dict:
    rows = [
        [
            r["settings"]["lr"],
            r["settings"]["correction"],
            r["settings"]["workers"],
            r["settings"]["frequency"],
            r["result"]["movement_ratio"],
            r["result"]["per_example"],
            r["result"]["wall_speedup"],
        ]
        for r in records
    ]
    speed = [r["result"]["wall_speedup"] for r in records]
    faster = sum(s >= FASTER for s in speed)
    v = "holds" if faster == len(speed) else "holds in part" if faster else "does not hold"
    best = max(records, key=lambda r: r["result"]["wall_speedup"])
    s = best["settings"]
    parts = []
    for corr in sorted({r["settings"]["correction"] for r in records}, key=lambda c: c != "none"):
        rs = [r["result"] for r in records if r["settings"]["correction"] == corr]
        parts.append(
            f"with lr_correction {corr}, averaging learned {min(r['per_example'] for r in rs):.2f}x to "
            f"{max(r['per_example'] for r in rs):.2f}x per example what one worker learned from the same "
            f"minibatches, {min(r['wall_speedup'] for r in rs):.2f}x to "
            f"{max(r['wall_speedup'] for r in rs):.2f}x in wall time"
        )
    why = (
        "; ".join(parts) + f" ({faster} of {len(speed)} settings at least {FASTER:g}x faster, before the cost of "
        f"communication). The best: {s['workers']} workers averaging every {s['frequency']} at rate {s['lr']:g}, "
        f"correction {s['correction']} ({best['result']['wall_speedup']:.2f}x)."
    )
    return {
        "table": table(
            [
                "rate",
                "lr_correction",
                "workers",
                "averaging every",
                "movement vs one worker",
                "learning per example",
                "speed-up in wall time",
            ],
            rows,
        ),
        "verdict": v,
        "why": why,
        "recommend": (
            f'with N workers, `lr_correction = "{s["correction"]}"`'
            if s["correction"] != "none"
            else "averaging without a rate correction"
        )
        + " bought the most wall time here; at equal epochs "
        "more workers learn less per example, so give them more epochs or a scaled rate.",
    }


def plot(records: list[dict], path) -> None:
    with figure(path, figsize=(6, 4)) as ax:
        group = lambda r: (r["settings"]["lr"], r["settings"]["correction"], r["settings"]["frequency"])  # noqa: E731
        for lr, corr, f in sorted({group(r) for r in records}):
            pts = sorted(
                (r["settings"]["workers"], r["result"]["wall_speedup"]) for r in records if group(r) == (lr, corr, f)
            )
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                "o-" if corr == "none" else "s--",
                label=f"rate {lr:g}, every {f}" + (f", {corr} correction" if corr != "none" else ""),
            )
        ax.axhline(1, color="grey", ls=":")
        ax.set(
            xscale="log",
            xlabel="workers",
            ylabel="speed-up in wall time over one worker",
            title="does averaging speed up learning",
        )
        ws = sorted({r["settings"]["workers"] for r in records})
        ax.minorticks_off()
        ax.set_xticks(ws, [str(w) for w in ws])
        ax.legend(fontsize=7)
