"""PNG plots of a run: learning curves and the first layer's filters. Needs matplotlib
(extra ``plots``)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def learning_curves(records: list[dict], path: Path) -> list[str]:
    """Pretraining cross-entropy per layer, fine-tuning loss, and validation accuracy
    where there was validation (not with train_on_validation). Returns the panel titles."""
    pre = [r for r in records if r.get("phase") == "pretrain"]
    fin = [r for r in records if r.get("phase") == "finetune"]
    has_val = bool(fin) and "val_loss" in fin[0]
    fig, axes = plt.subplots(1, 3 if has_val else 2, figsize=(15 if has_val else 10, 4))
    for layer in sorted({r["layer"] for r in pre}):
        rs = [r for r in pre if r["layer"] == layer]
        axes[0].plot([r["epoch"] for r in rs], [r["recon_ce_train"] for r in rs], label=f"layer {layer + 1} train")
        if "recon_ce_heldout" in rs[0]:
            axes[0].plot(
                [r["epoch"] for r in rs], [r["recon_ce_heldout"] for r in rs], "--", label=f"layer {layer + 1} held-out"
            )
    axes[0].set(title="pretraining: reconstruction cross-entropy", xlabel="epoch", ylabel="nats / example")
    axes[0].legend(fontsize=7)
    if fin:
        ep = [r["epoch"] for r in fin]
        axes[1].plot(ep, [r["train_loss"] for r in fin], label="train")
        if has_val:
            axes[1].plot(ep, [r["val_loss"] for r in fin], label="validation")
            axes[2].plot(ep, [100 * r["val_accuracy"] for r in fin])
            axes[2].set(title="fine-tuning: validation accuracy (%)", xlabel="epoch")
        axes[1].set(title="fine-tuning: cross-entropy", xlabel="epoch", yscale="log")
        axes[1].legend()
    titles = [ax.get_title() for ax in axes]
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return titles


def mosaic(images: np.ndarray, side: int, cols: int, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """Images (n, side*side) tiled into one array, ``cols`` to a row, ``pad`` pixels of
    ``fill`` between them: one ``imshow`` draws them all (an axes per image cost about
    30 ms each in matplotlib, seconds for a grid of 100)."""
    n = len(images)
    rows = max(1, math.ceil(n / cols))
    cell = side + pad
    out = np.full((rows * cell - pad, cols * cell - pad), fill, dtype=np.float32)
    for k, img in enumerate(np.asarray(images, dtype=np.float32).reshape(n, side, side)):
        r, c = divmod(k, cols)
        out[r * cell : r * cell + side, c * cell : c * cell + side] = img
    return out


def filters(weight: torch.Tensor, path: Path, max_filters: int = 100) -> None:
    """First-layer weights (n_hidden, n_visible) as a grid of square images (28x28 for
    MNIST), each scaled to its own range; n_visible must be a perfect square, otherwise
    nothing is drawn."""
    n_vis = weight.shape[1]
    side = int(round(math.sqrt(n_vis)))
    if side * side != n_vis:
        return
    w = weight[:max_filters].detach().float().cpu().numpy()
    low, high = w.min(1, keepdims=True), w.max(1, keepdims=True)
    w = (w - low) / np.maximum(high - low, 1e-12)  # each filter in [0, 1], as imshow scales one alone
    cols = int(math.ceil(math.sqrt(len(w))))
    rows = int(math.ceil(len(w) / cols))
    fig, ax = plt.subplots(figsize=(cols, rows))
    ax.imshow(mosaic(w, side, cols), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    fig.suptitle(f"first-layer filters ({side}x{side})")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_run_plots(folder: Path, records: list[dict], first_weight: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    learning_curves(records, folder / "learning_curves.png")
    filters(first_weight, folder / "filters.png")


def probe_plot(result: dict, path: Path) -> None:
    """Held-out loss against learning rate for both phases; unstable rates marked x."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, phase, label in zip(
        axes, ("pretrain", "finetune"), ("first layer: reconstruction CE", "fine-tuning: validation loss")
    ):
        pts = result[phase]["points"]
        ok = [p for p in pts if p["stable"]]
        bad = [p for p in pts if not p["stable"]]
        ax.plot([p["lr"] for p in ok], [p["loss"] for p in ok], "o-", label="stable")
        top = max([p["loss"] for p in ok] or [1.0])
        ax.plot(
            [p["lr"] for p in bad],
            [p["loss"] if math.isfinite(p["loss"]) else top for p in bad],
            "rx",
            label="unstable",
        )
        if result[phase]["recommended"]:
            ax.axvline(
                result[phase]["recommended"], color="g", ls="--", label=f"recommended {result[phase]['recommended']:g}"
            )
        ax.set(xscale="log", xlabel="learning rate", title=label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def image_rows(rows: list[tuple[str, np.ndarray]], side: int, path: Path, title: str = "") -> None:
    """Rows of square grey images, each row titled (e.g. inputs over their reconstructions);
    pixel values in [0, 1]."""
    cols = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(cols * 0.8, len(rows) * 0.9), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows):
        strip = mosaic(np.asarray(images).reshape(len(images), -1), side, cols, pad=2)
        ax.imshow(strip, cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
        ax.set_title(label, fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def image_grid(images: np.ndarray, side: int, path: Path, title: str = "", cols: int = 8) -> None:
    """Square grey images in a grid (e.g. samples of a DBN)."""
    rows = [(title if i == 0 else "", images[i : i + cols]) for i in range(0, len(images), cols)]
    image_rows(rows, side, path)
