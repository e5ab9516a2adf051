"""Supervised fine-tuning by backpropagation, on the shared loop.

Cross-entropy on the labels, SGD with momentum or Adam, optional dropout (already in the
classifier), a learning-rate schedule, and early stopping on validation loss that keeps
the best weights. With ``train_on_validation`` the validation data joins the training
data and the net trains for the fixed epoch count (as Hinton & Salakhutdinov did on all
60k MNIST images); no early stopping is possible then.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.config import FinetuneConfig
from layerwise.loop import Reporter, run_loop


@dataclass
class FinetuneResult:
    model: nn.Module
    records: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_validation_loss: float | None = None
    epochs_run: int = 0


def lr_at(cfg: FinetuneConfig, epoch: int) -> float:
    if cfg.lr_schedule == "exponential":
        return cfg.learning_rate * cfg.lr_decay**epoch
    if cfg.lr_schedule == "cosine":
        return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / max(cfg.epochs, 1)))
    return cfg.learning_rate


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 10000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (a fraction) of ``model`` on (x, y), in eval mode."""
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    for s in range(0, len(x), chunk):
        logits = model(x[s : s + chunk])
        loss += float(F.cross_entropy(logits, y[s : s + chunk], reduction="sum"))
        correct += int((logits.argmax(1) == y[s : s + chunk]).sum())
    model.train(was_training)
    return loss / len(x), correct / len(x)


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, chunk: int = 10000) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = torch.cat([torch.softmax(model(x[s : s + chunk]), 1) for s in range(0, len(x), chunk)])
    model.train(was_training)
    return out


def make_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def finetune(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor | None,
    y_val: torch.Tensor | None,
    cfg: FinetuneConfig,
    *,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` (modified in place) and return it with its history.

    With validation data and ``cfg.patience`` set, training stops after ``patience``
    epochs without a lower validation loss, and the best weights are restored.
    """
    reporter = reporter or Reporter()
    has_val = x_val is not None and y_val is not None
    if cfg.train_on_validation and has_val:
        x_train, y_train = torch.cat([x_train, x_val]), torch.cat([y_train, y_val])
        has_val = False  # the validation data is training data now
    result = FinetuneResult(model)
    optimizer = make_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(seed)
    state = {"loss_sum": 0.0, "count": 0, "best": math.inf, "best_state": None, "since_best": 0}

    def step(xb, yb, epoch):
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["loss_sum"] += float(loss.detach()) * len(xb)
        state["count"] += len(xb)

    def end_epoch(epoch, seconds):
        rec = {
            "phase": "finetune", "epoch": epoch + 1, "lr": lr_at(cfg, epoch),
            "train_loss": state["loss_sum"] / max(state["count"], 1), "seconds": round(seconds, 3),
        }
        state["loss_sum"], state["count"] = 0.0, 0
        stop = False
        if has_val:
            val_loss, val_acc = evaluate(model, x_val, y_val)
            rec.update(val_loss=val_loss, val_accuracy=val_acc)
            if val_loss < state["best"]:
                state.update(best=val_loss, best_state=copy.deepcopy(model.state_dict()), since_best=0)
                result.best_epoch, result.best_validation_loss = epoch + 1, val_loss
            else:
                state["since_best"] += 1
                stop = cfg.patience is not None and state["since_best"] >= cfg.patience
        result.records.append(rec)
        reporter.log(rec)
        for group in optimizer.param_groups:  # schedule for the next epoch
            group["lr"] = lr_at(cfg, epoch + 1)
        return stop

    for group in optimizer.param_groups:
        group["lr"] = lr_at(cfg, 0)
    model.train()
    # nn.Dropout draws from the global generator: seed it here and restore it afterwards
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        result.epochs_run = run_loop(
            x=x_train, y=y_train, batch_size=cfg.batch_size, epochs=cfg.epochs, generator=generator,
            step=step, end_epoch=end_epoch, reporter=reporter, desc="finetune",
        )
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    model.eval()
    return result
