"""``layerwise train``: config -> data -> pretrain -> pretrained artifact (written before
fine-tuning, read-only) -> fine-tune -> finetuned artifact -> test accuracy -> plots.

``train`` starts a new run folder (``workers.resume`` goes on from a folder's last
checkpoint); both end in ``train_in``, which every worker of a distributed group runs as
well. Rank 0
alone writes (``distributed.is_writer``, held as ``Run.writer``): checkpoints go through
``Run.checkpoint``, and the artifacts and plots are written only where ``run.writer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from layerwise import config as config_mod
from layerwise._checks import InvalidInput, Refused
from layerwise._devices import device_generator
from layerwise.advice.rules import corrected_lr
from layerwise.config import RunConfig
from layerwise.data.sources import Splits
from layerwise.data.splits import load_splits, loop_data
from layerwise.jobs.common import (
    FINETUNE_LOCAL,
    Stopwatch,
    build_net,
    checkpoint_policy,
    final_metrics,
    finetuning_state,
    load_finetuning_state,
    load_pretraining_state,
    log_resume,
    pretrain_local_keys,
    pretrain_metrics,
    pretraining_state,
    remove_scratch,
    silent,
    write_plots,
)
from layerwise.reporting.reporter import Reporter
from layerwise.runtime import resolve_device
from layerwise.stack import DeepBeliefNet
from layerwise.storage.artifacts import classifier_architecture, read_artifact, write_artifact
from layerwise.storage.checkpointing import flatten, save_checkpoint
from layerwise.storage.runs import METRICS, RunResult, claim_run_dir, continue_log, run_lock
from layerwise.training.distributed import barrier, gather_local_state, is_writer, rank_world
from layerwise.training.finetune import FinetuneState, finetune, make_optimizer
from layerwise.training.loop import Checkpointer, LoopControl
from layerwise.training.pretrain import PretrainProgress, pretrain


def train(
    cfg: RunConfig,
    *,
    runs_dir: str | Path = "runs",
    progress: bool = False,
    echo=None,
    control: LoopControl | None = None,
) -> RunResult:
    """Run a whole recipe in a new run folder; returns where it went and what it reached.
    ``control``: the job's stop request and batch hooks (the command's Ctrl-C sets it)."""
    # validate the data before creating anything on disk
    splits = load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed, report=echo or silent)
    run_dir, resolved = claim_run_dir(cfg, runs_dir, splits)
    with run_lock(run_dir):
        return train_in(run_dir, resolved, splits, None, progress=progress, echo=echo, control=control)  # type: ignore[return-value]  # one process: the writer


def train_in(
    folder: Path,
    cfg: RunConfig,
    splits: Splits,
    ckpt: dict | None,
    *,
    progress: bool = False,
    echo=None,
    control: LoopControl | None = None,
) -> RunResult | None:
    """Train in a claimed and locked run folder from its checkpoint tree (None: from the
    start). Returns what rank 0 wrote; None on the other workers."""
    run = Run.open(folder, cfg, splits, ckpt, progress, echo)
    run.control = control
    dbn = build_net(run.cfg, splits.n_inputs, run.device, splits.n_labels)
    if ckpt is None or ckpt["phase"] == "pretrain":
        pre_manifest = pretrain_phase(run, dbn, ckpt)
    else:
        pre_tensors, pre_manifest = read_artifact(folder / "pretrained")
        dbn.load_state_dict(pre_tensors, strict=False)
    return finetune_phase(run, dbn, pre_manifest, ckpt if ckpt is not None and ckpt["phase"] == "finetune" else None)


@dataclass
class Run:
    """A run folder as one worker sees it: the config it trains with, the config that
    artifacts record, its data, the metrics log, the clock. Only the writer (rank 0)
    writes; on the other workers ``checkpoint`` runs its collective part alone."""

    folder: Path
    cfg: RunConfig
    recorded: dict
    splits: Splits
    writer: bool
    world: int
    reporter: Reporter
    clock: Stopwatch = field(default_factory=Stopwatch)
    data: dict = field(default_factory=dict)  # the training data's identity: checked on resume
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    streamed: bool | None = None  # the training loop's data: streamed from disk (None: not decided yet)
    control: LoopControl | None = None  # the job's stop request and batch hooks

    @classmethod
    def open(cls, folder: Path, cfg: RunConfig, splits: Splits, ckpt: dict | None, progress: bool, echo) -> Run:
        world = rank_world()[1]
        trained, recorded = for_group(cfg, world)
        writer = is_writer()
        # a run that died before its first checkpoint starts its log over
        reporter = (
            continue_log(folder / METRICS, ckpt["metrics_lines"] if ckpt else 0, progress, echo)
            if writer
            else Reporter()
        )
        if writer and cfg.log.tensorboard:  # rank 0 only, as for the metrics log
            from layerwise.reporting.tensorboard import Board

            reporter.board = Board(cfg.log.tensorboard)
        device = resolve_device(cfg.device)
        run = cls(
            folder,
            trained,
            recorded,
            splits,
            writer,
            world,
            reporter,
            Stopwatch(ckpt and ckpt["seconds"]),
            _data_identity(splits),
            device,
            ckpt and ckpt.get("streamed"),  # type: ignore[arg-type]  # a checkpoint tree is never empty
        )  # hashed once, not at every checkpoint
        if ckpt is None:
            run.reporter.log(
                {
                    "phase": "start",
                    "folder": str(folder),
                    "architecture": "-".join(map(str, [splits.n_inputs, *trained.model.hidden, splits.n_labels])),  # type: ignore[misc]  # resolved config
                    "unit": cfg.model.unit,
                    "train": len(splits.train),
                    "validation": len(splits.validation or []),
                    "test": len(splits.test or []),
                    "threads": torch.get_num_threads(),
                    "workers": world,
                    "device": str(device),
                    "precision": cfg.precision,
                    "streamed": splits.streamed,
                }
            )
        else:
            _same_data(folder, ckpt, run.data, splits.train.name)
            log_resume(run.reporter, ckpt, device, folder)
        return run

    @property
    def stages(self) -> list[dict]:
        train = self.splits.train
        return [
            {
                "data": train.name,
                "fingerprint": train.fingerprint,
                "samples": len(train),
                "epochs_per_layer": self.cfg.pretrain.epochs,
            }
        ]

    def checkpoint(self, tree: dict, local) -> None:
        """Save a checkpoint tree. Collective in a group: each worker's own tensors (the
        paths ``local(path)`` accepts) go to rank 0, which writes them beside its own."""
        tensors, meta = flatten(tree)
        others = gather_local_state({k: v for k, v in tensors.items() if local(k)})
        if self.writer:
            meta.update(
                metrics_lines=self.reporter.lines,
                seconds=self.clock.now(),
                world=self.world if others else 1,
                workers=self.world,
                data=self.data,
                device=str(self.device),
                streamed=self.streamed,
            )
            save_checkpoint(self.folder / "checkpoint", {**tensors, **others}, meta)


def _labels_for_the_top(cfg: RunConfig, splits: Splits) -> dict:
    """With [model] top_labels, the labels the top RBM learns beside its features."""
    if not cfg.model.top_labels:
        return {}
    y = lambda ds: None if ds is None or getattr(ds, "y", None) is None else torch.from_numpy(ds.y)  # noqa: E731
    return {"labels": y(splits.train), "heldout_labels": y(splits.validation)}


def _data_identity(splits: Splits) -> dict:
    return {"train": splits.train.fingerprint, "samples": len(splits.train)}


def _same_data(folder: Path, ckpt: dict, now: dict, name: str) -> None:
    """A run goes on only with the data it started on: another net would come out."""
    then = ckpt["data"]
    if then != now:
        raise InvalidInput(
            f"'{folder}': the training data ({name}) is not the data this run started on "
            f"(sha256 {then['train'][:12]}, {then['samples']} samples; now {now['train'][:12]}, {now['samples']} "
            "samples). Put the original data back to resume, or start a new run"
        )


def for_group(cfg: RunConfig, world: int) -> tuple[RunConfig, dict]:
    """(the config the workers train with, the config artifacts record). A group of N
    workers trains at the learning rates corrected for N (``lr_correction``), and
    checkpoints at epoch ends only: mid-epoch, the replicas are apart."""
    recorded = cfg.to_dict()
    if world == 1:
        return cfg, recorded
    trained = config_mod.from_dict(recorded)
    corr = cfg.distributed.lr_correction
    trained.pretrain.learning_rate = corrected_lr(cfg.pretrain.learning_rate, world, corr)
    trained.finetune.learning_rate = corrected_lr(cfg.finetune.learning_rate, world, corr)
    trained.checkpoint.every_batches = trained.checkpoint.every_minutes = None
    recorded["distributed"]["workers"] = world
    recorded["distributed"]["effective_learning_rates"] = {
        "pretrain": trained.pretrain.learning_rate,
        "finetune": trained.finetune.learning_rate,
    }
    return trained, recorded


def pretrain_phase(run: Run, dbn: DeepBeliefNet, ckpt: dict | None) -> dict | None:
    """Greedy pretraining from the checkpoint (or the start), then the pretrained
    artifact, written once and read-only, before any fine-tuning. Its manifest (None on
    the workers that do not write)."""
    cfg = run.cfg
    generator = device_generator(run.device, cfg.seed)
    progress, records = PretrainProgress(), []
    if ckpt is not None:
        load_pretraining_state(ckpt, dbn, generator, progress)
        records = ckpt["records"]

    def save(pos):
        if run.world == 1 or pos.order is None:  # a mid-epoch save in a group (Ctrl-C) keeps the epoch-end one
            tree = {
                "job": "train",
                "phase": "pretrain",
                **pretraining_state(dbn, generator, progress),
                "records": records,
            }
            local = pretrain_local_keys(dbn, progress.layer)
            run.checkpoint(tree, lambda path: path in local)

    run.clock.start("pretrain")
    # a resumed loop goes on over data of the kind its epoch order was drawn for
    x_train = loop_data(run.splits.train, run.device, labels=False, streamed=run.streamed)
    x_held = loop_data(run.splits.validation, run.device, labels=False)
    run.streamed = x_train.streamed
    pretrain(
        dbn,
        x_train,
        x_held,
        cfg.pretrain,
        seed=cfg.seed,
        reporter=run.reporter,
        progress=progress,
        generator=generator,
        records=records,
        checkpointer=Checkpointer(save, **checkpoint_policy(cfg)),
        guard=cfg.guard,
        distributed=cfg.distributed if run.world > 1 else None,
        scratch=run.folder / "activations",
        control=run.control,
        **_labels_for_the_top(cfg, run.splits),
    )
    run.clock.stop()
    remove_scratch(run.folder / "activations")
    run.streamed = None  # fine-tuning decides its own
    manifest = write_pretrained(run, dbn, records) if run.writer else None
    barrier()  # the pretrained net is on disk before anyone fine-tunes
    return manifest


def write_pretrained(run: Run, dbn: DeepBeliefNet, records: list[dict]) -> dict:
    """Write the pretrained artifact (read-only), or check the one already there."""
    folder = run.folder / "pretrained"
    if folder.exists():
        # died after writing it and before the next checkpoint: a single-process replay
        # is exact, so the weights must be the ones on disk (a restarted group goes on
        # from the saved net: its replay is exact only at the checkpoint's group size)
        on_disk, manifest = read_artifact(folder)
        if run.world > 1:
            dbn.load_state_dict(on_disk, strict=False)
        elif any(not torch.equal(on_disk[k], v.cpu()) for k, v in dbn.model_state().items()):
            raise Refused(f"'{folder}' differs from the resumed pretraining; not overwriting it")
    else:
        metrics = {**pretrain_metrics(records), "seconds": round(run.clock.seconds["pretrain"], 2)}
        manifest = write_artifact(
            folder,
            dbn.model_state(),
            kind="pretrained",
            architecture=dbn.architecture(),
            config=run.recorded,
            stages=run.stages,
            metrics=metrics,
            read_only=True,
        )
    run.reporter.log({"phase": "saved", "artifact": "pretrained", "sha256": manifest["weights_sha256"][:16]})
    return manifest


def finetune_phase(run: Run, dbn: DeepBeliefNet, pre_manifest: dict | None, ckpt: dict | None) -> RunResult | None:
    """Fine-tune the unrolled net from the checkpoint (or the start), then write the
    finetuned artifact, evaluate, plot. The result (None on the workers that do not write)."""
    cfg, ft, splits = run.cfg, run.cfg.finetune, run.splits
    clf = dbn.to_classifier(
        splits.n_labels,  # type: ignore[arg-type]  # load_splits sets it
        dropout_input=ft.dropout_input,
        dropout_hidden=ft.dropout_hidden,
        seed=cfg.seed,
    )
    optimizer = make_optimizer(clf, ft)
    fstate = FinetuneState(generator=device_generator(run.device, cfg.seed))
    if ckpt is not None:
        load_finetuning_state(ckpt, clf, optimizer, fstate)

    def save(pos):
        if run.world == 1 or pos.order is None:  # a mid-epoch save in a group (Ctrl-C) keeps the epoch-end one
            run.checkpoint(
                {"job": "train", "phase": "finetune", **finetuning_state(clf, optimizer, fstate)},
                lambda path: path.startswith(FINETUNE_LOCAL),
            )

    run.clock.start("finetune")
    train, val = loop_data(splits.train, run.device, streamed=run.streamed), loop_data(splits.validation, run.device)
    run.streamed = train.streamed
    result = finetune(
        clf,
        train,
        None,
        val,
        None,
        ft,
        seed=cfg.seed,
        reporter=run.reporter,
        optimizer=optimizer,
        state=fstate,
        checkpointer=Checkpointer(save, **checkpoint_policy(cfg)),
        guard=cfg.guard,
        distributed=cfg.distributed if run.world > 1 else None,
        precision=cfg.precision,
        control=run.control,
    )
    run.clock.stop()
    if not run.writer:
        return None
    assert pre_manifest is not None  # the writer's: from pretrain_phase, or read from the run's folder
    seconds = run.clock.seconds
    metrics, val_acc, test_acc = final_metrics(clf, result, ft, seconds["finetune"], splits)
    finetuned = write_artifact(
        run.folder / "finetuned",
        clf.state_dict(),
        kind="finetuned",
        architecture=classifier_architecture(dbn.sizes, splits.n_labels, ft.dropout_input, ft.dropout_hidden),  # type: ignore[arg-type]  # load_splits sets n_labels
        config=run.recorded,
        stages=run.stages,
        metrics=metrics,
        parent=pre_manifest["weights_sha256"],
    )
    run.reporter.log({"phase": "test", **metrics, "seconds_pretrain": round(seconds["pretrain"], 2)})
    write_plots(run.folder / "plots", run.folder / METRICS, dbn, run.reporter.echo or silent, splits.test)
    return RunResult(run.folder, test_acc, val_acc, pre_manifest, finetuned, seconds["pretrain"], seconds["finetune"])
