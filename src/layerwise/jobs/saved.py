"""``layerwise finetune PRETRAINED --recipe R --out OUT``: fine-tune a copy of a saved
pretrained net into a new artifact whose manifest names the pretrained net as its
parent. The pretrained files are only read: a good pretrained net is a product in
itself, and fine-tuning destroys its blend of features."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, cast

from layerwise._checks import InvalidInput
from layerwise._devices import device_generator
from layerwise.config import RunConfig, resolve_config
from layerwise.data.budget import check_fits
from layerwise.data.splits import load_splits, loop_data
from layerwise.jobs.common import (
    checkpoint_policy,
    final_metrics,
    finetuning_state,
    load_finetuning_state,
    log_resume,
    open_checkpoint,
    silent,
)
from layerwise.reporting.reporter import Reporter
from layerwise.runtime import resolve_device
from layerwise.storage import checkpointing
from layerwise.storage.artifacts import classifier_architecture, load_model, write_artifact
from layerwise.storage.runs import RunResult, partial_dir, run_lock
from layerwise.training.finetune import FinetuneState, finetune, make_optimizer
from layerwise.training.loop import Checkpointer, LoopControl

if TYPE_CHECKING:
    from layerwise.stack import DeepBeliefNet


def finetune_pretrained(
    pretrained_dir: str | Path,
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    progress: bool = False,
    echo=None,
    control: LoopControl | None = None,
) -> RunResult:
    """Fine-tune a saved pretrained net with a recipe's data and [finetune] settings.

    Until ``out_dir`` is written, checkpoints (the recipe's [checkpoint] policy) go to
    ``OUT.partial/``; the same command run again after a crash or Ctrl-C goes on from the
    last one (bitwise equal on CPU with the same threads), and the folder is removed once
    ``out_dir`` is written. A ``.partial`` of another net, recipe or data is refused."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"output folder '{out_dir}' already exists; it is never overwritten")
    dbn, pre_manifest = load_model(pretrained_dir)
    if pre_manifest["kind"] != "pretrained":
        raise InvalidInput(f"'{pretrained_dir}' holds a {pre_manifest['kind']} net; finetune needs a pretrained one")
    dbn = cast("DeepBeliefNet", dbn)  # what a pretrained artifact holds
    splits = load_splits(cfg.data, visible=dbn.visible, seed=cfg.seed, report=echo or silent)
    assert splits.n_labels is not None  # load_splits sets it
    if splits.n_inputs != dbn.n_visible:
        raise InvalidInput(
            f"{splits.train.name}: the data has {splits.n_inputs} features per sample; "
            f"the pretrained net '{pretrained_dir}' expects {dbn.n_visible}"
        )
    # streamed: the training data is a StreamedDataset (a property that mypy does not narrow on)
    check_fits(dbn.sizes, splits.n_labels, splits.train.source.block_rows() if splits.streamed else len(splits.train))  # type: ignore[union-attr]
    device = resolve_device(cfg.device)
    dbn.to(device)
    if cfg.model.hidden is not None and list(cfg.model.hidden) != dbn.hidden:
        warnings.warn(
            f"the recipe's model.hidden {cfg.model.hidden} is not used: the pretrained net "
            f"'{pretrained_dir}' has the hidden layers {dbn.hidden}, and those are fine-tuned",
            UserWarning,
            stacklevel=2,
        )
    recorded = resolve_config(cfg, dbn.n_visible, hidden=dbn.hidden).to_dict()
    # what a checkpoint must match to be continued: the parent, the recipe, the data
    identity = {
        "parent": pre_manifest["weights_sha256"],
        "config": json.loads(json.dumps(recorded)),
        "data": splits.train.fingerprint,
    }
    work = partial_dir(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    with run_lock(work):
        ckpt = open_checkpoint(work, "finetune")
        if ckpt is not None and ckpt.get("identity") != identity:
            raise InvalidInput(
                f"'{work}' holds an interrupted fine-tuning of another pretrained net, recipe or data; "
                f"delete it to start over, or choose another --out"
            )
        reporter = Reporter(None, progress=progress, echo=echo)
        ft = cfg.finetune
        clf = dbn.to_classifier(
            splits.n_labels, dropout_input=ft.dropout_input, dropout_hidden=ft.dropout_hidden, seed=cfg.seed
        )
        optimizer = make_optimizer(clf, ft)
        fstate = FinetuneState(generator=device_generator(device, cfg.seed))
        seconds = 0.0
        if ckpt is not None:
            load_finetuning_state(ckpt, clf, optimizer, fstate)
            seconds = ckpt["seconds"]
            log_resume(reporter, ckpt, device, work)
        t0 = time.perf_counter()

        def save(pos):
            tree = {
                "job": "finetune",
                "phase": "finetune",
                **finetuning_state(clf, optimizer, fstate),
                "identity": identity,
                "seconds": seconds + time.perf_counter() - t0,
                "device": str(device),
                "streamed": train.streamed,
            }
            checkpointing.save_state(work / "checkpoint", tree)

        train = loop_data(splits.train, device, streamed=None if ckpt is None else ckpt.get("streamed"))
        val = loop_data(splits.validation, device)
        result = finetune(
            clf,
            train,
            None,
            val,
            None,
            ft,
            seed=cfg.seed,
            reporter=reporter,
            optimizer=optimizer,
            state=fstate,
            checkpointer=Checkpointer(save, **checkpoint_policy(cfg)),
            guard=cfg.guard,
            precision=cfg.precision,
            control=control,
        )
        seconds += time.perf_counter() - t0
        metrics, val_acc, test_acc = final_metrics(clf, result, ft, seconds, splits)
        manifest = write_artifact(
            out_dir,
            clf.state_dict(),
            kind="finetuned",
            architecture=classifier_architecture(dbn.sizes, splits.n_labels, ft.dropout_input, ft.dropout_hidden),
            config=recorded,
            stages=pre_manifest.get("stages", []),
            metrics=metrics,
            parent=pre_manifest["weights_sha256"],
        )
    shutil.rmtree(work)
    return RunResult(out_dir, test_acc, val_acc, pre_manifest, manifest, 0.0, seconds)
