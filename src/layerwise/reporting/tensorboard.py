"""TensorBoard for a run (the ``tensorboard`` extra): the metrics log's records as
scalars, guard events as text, weights and biases of every layer as histograms per
epoch, and the first layer's filters as an image. ``metrics.jsonl`` stays the source of
truth; in a distributed run only rank 0 writes (the writer's reporter alone has a board).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from layerwise._checks import MissingExtra
from layerwise.data.formats import image_side

SCALARS = (
    "recon_ce_train",
    "recon_ce_heldout",
    "free_energy_gap",
    "dead_units",
    "lr",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "test_accuracy",
    "test_loss",
    "seconds",
)


class Board:
    """One TensorBoard event folder."""

    def __init__(self, folder) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard itself is missing
            raise MissingExtra("--tensorboard needs TensorBoard: pip install 'layerwise[tensorboard]'") from e
        import atexit

        self.folder = Path(folder)
        self.writer = SummaryWriter(log_dir=str(self.folder))
        atexit.register(self.writer.close)

    def record(self, rec: dict) -> None:
        """A metrics record: numbers as scalars under their phase (and layer); guard
        events and the start record as text."""
        phase = rec.get("phase")
        if phase == "guard":
            self.writer.add_text("guard", json.dumps(rec), global_step=int(rec.get("epoch", 0) or 0))
        elif phase in ("start", "resume"):
            self.writer.add_text(phase, json.dumps(rec))
        # a record without a phase (None) has no prefix
        prefixes: dict[str | None, str] = {
            "pretrain": f"pretrain/layer{rec.get('layer', 0) + 1}",
            "finetune": "finetune",
            "test": "test",
        }
        prefix = prefixes.get(phase)
        if prefix is None:
            return
        step = int(rec.get("epoch", 0))
        for key in SCALARS:
            value = rec.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()

    @torch.no_grad()
    def parameters(self, module: torch.nn.Module, prefix: str, step: int) -> None:
        """Histograms of every parameter; the first 2-D weight's rows as square images."""
        first = None
        for name, p in module.named_parameters():
            self.writer.add_histogram(f"{prefix}/{name}", p.detach().float().cpu(), step)
            if first is None and p.dim() == 2:
                first = p
        side = None if first is None else image_side(first.shape[1])
        if side is not None and prefix.endswith(("layer1", "finetune")):
            assert first is not None  # side is None without a 2-D weight
            w = first[:64].detach().float().cpu()
            w = (w - w.min()) / max(float(w.max() - w.min()), 1e-12)
            self.writer.add_images(f"{prefix}/filters", w.reshape(-1, 1, side, side), step, dataformats="NCHW")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
