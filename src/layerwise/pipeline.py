"""``layerwise train``: config -> data -> pretrain -> pretrained artifact (written before
fine-tuning, read-only) -> fine-tune -> finetuned artifact -> test accuracy -> plots.

The run folder ``runs/NAME/`` holds config.toml, pretrained/, finetuned/, metrics.jsonl
and plots/. An existing run folder is never reused: the next free ``NAME-2``, ``NAME-3``
... is taken instead, so nothing already written is lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from layerwise import config as config_mod
from layerwise.advice import suggest_layers
from layerwise.artifacts import classifier_architecture, write_artifact
from layerwise.config import DataConfig, RunConfig
from layerwise.data import Dataset, Splits, load_digits, load_mnist, load_npz, split_validation, validate
from layerwise.finetune import evaluate, finetune
from layerwise.loop import Reporter
from layerwise.pretrain import pretrain
from layerwise.stack import DeepBeliefNet


@dataclass
class RunResult:
    run_dir: Path
    test_accuracy: float | None
    validation_accuracy: float | None
    pretrained: dict
    finetuned: dict
    seconds_pretrain: float
    seconds_finetune: float


def load_splits(cfg: DataConfig, *, visible: str = "bernoulli", seed: int = 0, report=print) -> Splits:
    """Load and validate the data a config names. Labels are required for training
    data; ``n_labels`` is taken from the config or inferred from the training labels."""
    if cfg.source == "mnist":
        splits = load_mnist(report=report)
    elif cfg.source == "digits":
        splits = load_digits()
    else:
        train = load_npz(cfg.train, require_labels=True)
        val = load_npz(cfg.validation, require_labels=True) if cfg.validation else None
        test = load_npz(cfg.test, require_labels=True) if cfg.test else None
        splits = Splits(train, val, test, None)
    n_labels = cfg.n_labels or splits.n_labels
    train = validate(splits.train, visible=visible, n_labels=n_labels)
    if n_labels is None:
        if train.y.min() < 0:
            raise ValueError(f"{train.name}: array 'y' must hold labels >= 0; found {int(train.y.min())}")
        n_labels = max(int(train.y.max()) + 1, 2)
    if cfg.train_limit is not None:
        train = Dataset(train.x[: cfg.train_limit], train.y[: cfg.train_limit], f"{train.name}[:{cfg.train_limit}]")
    n_inputs = train.x.shape[1]
    val = splits.validation
    if val is None:
        train, val = split_validation(train, cfg.validation_fraction, seed)
    else:
        val = validate(val, visible=visible, n_inputs=n_inputs, n_labels=n_labels)
    test = splits.test and validate(splits.test, visible=visible, n_inputs=n_inputs, n_labels=n_labels)
    return Splits(train, val, test, n_labels)


def unique_run_dir(runs_dir: Path, name: str) -> Path:
    candidate, i = runs_dir / name, 1
    while candidate.exists():
        i += 1
        candidate = runs_dir / f"{name}-{i}"
    return candidate


def _tensors(ds: Dataset | None):
    if ds is None:
        return None, None
    return torch.from_numpy(np.ascontiguousarray(ds.x)), torch.from_numpy(ds.y)


def train(
    cfg: RunConfig,
    *,
    runs_dir: str | Path = "runs",
    progress: bool = False,
    echo=None,
) -> RunResult:
    """Run a whole recipe; returns where it went and what it reached."""
    say = echo or (lambda s: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    splits = load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed, report=say)
    hidden = cfg.model.hidden or suggest_layers(splits.n_inputs)
    dbn = DeepBeliefNet(
        splits.n_inputs, hidden, unit=cfg.model.unit, visible=cfg.model.visible, seed=cfg.seed,
        init_std=cfg.model.init_std,
    )
    run_dir = unique_run_dir(Path(runs_dir), cfg.name or "run")
    run_dir.mkdir(parents=True)
    resolved = config_mod.from_dict(cfg.to_dict())
    resolved.model.hidden = hidden
    (run_dir / "config.toml").write_text(config_mod.to_toml(resolved))
    config_dict = resolved.to_dict()
    reporter = Reporter(run_dir / "metrics.jsonl", progress=progress, echo=echo)
    reporter.log({
        "phase": "start", "name": run_dir.name, "architecture": "-".join(map(str, dbn.sizes + [splits.n_labels])),
        "unit": cfg.model.unit, "train": len(splits.train), "validation": len(splits.validation or []),
        "test": len(splits.test or []), "threads": torch.get_num_threads(),
    })
    x_tr, y_tr = _tensors(splits.train)
    x_va, y_va = _tensors(splits.validation)
    x_te, y_te = _tensors(splits.test)

    t0 = time.perf_counter()
    pre_records = pretrain(dbn, x_tr, x_va, cfg.pretrain, seed=cfg.seed, reporter=reporter)
    seconds_pretrain = time.perf_counter() - t0
    stages = [{
        "data": splits.train.name, "fingerprint": splits.train.fingerprint,
        "samples": len(splits.train), "epochs_per_layer": cfg.pretrain.epochs,
    }]
    last = {f"layer{r['layer']}_{k}": v for r in pre_records for k, v in r.items() if k.startswith(("recon", "free"))}
    pretrained = write_artifact(
        run_dir / "pretrained", dbn.model_state(), kind="pretrained", architecture=dbn.architecture(),
        config=config_dict, stages=stages, metrics={**last, "seconds": round(seconds_pretrain, 2)}, read_only=True,
    )
    reporter.log({"phase": "saved", "artifact": "pretrained", "sha256": pretrained["weights_sha256"][:16]})

    ft = cfg.finetune
    clf = dbn.to_classifier(splits.n_labels, dropout_input=ft.dropout_input, dropout_hidden=ft.dropout_hidden, seed=cfg.seed)
    t1 = time.perf_counter()
    result = finetune(clf, x_tr, y_tr, x_va, y_va, ft, seed=cfg.seed, reporter=reporter)
    seconds_finetune = time.perf_counter() - t1
    metrics = {"seconds": round(seconds_finetune, 2), "epochs_run": result.epochs_run, "best_epoch": result.best_epoch}
    val_acc = None
    if ft.train_on_validation:
        metrics["validation"] = "joined the training data (train_on_validation)"
    elif x_va is not None:
        metrics["validation_loss"], val_acc = evaluate(clf, x_va, y_va)
        metrics["validation_accuracy"] = val_acc
    test_acc = None
    if x_te is not None:
        metrics["test_loss"], test_acc = evaluate(clf, x_te, y_te)
        metrics["test_accuracy"] = test_acc
    finetuned = write_artifact(
        run_dir / "finetuned", clf.state_dict(), kind="finetuned",
        architecture=classifier_architecture(dbn.sizes, splits.n_labels, ft.dropout_input, ft.dropout_hidden),
        config=config_dict, stages=stages, metrics=metrics, parent=pretrained["weights_sha256"],
    )
    reporter.log({"phase": "test", **metrics, "seconds_pretrain": round(seconds_pretrain, 2)})
    try:
        from layerwise import plots

        plots.write_run_plots(run_dir / "plots", reporter.records, dbn.layers[0].weight)
    except ImportError:
        say("plots skipped: matplotlib is not installed (pip install 'layerwise[plots]')")
    return RunResult(run_dir, test_acc, val_acc, pretrained, finetuned, seconds_pretrain, seconds_finetune)
