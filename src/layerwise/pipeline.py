"""``layerwise train``: config -> data -> pretrain -> pretrained artifact (written before
fine-tuning, read-only) -> fine-tune -> finetuned artifact -> test accuracy -> plots.

The run folder ``runs/NAME/`` holds config.toml, pretrained/, finetuned/, metrics.jsonl
and plots/. An existing run folder is never reused: the next free ``NAME-2``, ``NAME-3``
... is taken instead, so nothing already written is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from layerwise import config as config_mod
from layerwise.advice import suggest_layers
from layerwise.artifacts import (
    classifier_architecture,
    load_checkpoint,
    read_artifact,
    save_checkpoint,
    write_artifact,
)
from layerwise.config import DataConfig, RunConfig
from layerwise.data import Dataset, Splits, load_digits, load_mnist, load_npz, split_validation, validate  # noqa: F401
from layerwise.finetune import FinetuneState, evaluate, finetune, make_optimizer
from layerwise.loop import Checkpointer, LoopPosition, Reporter
from layerwise.pretrain import PretrainProgress, pretrain
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


def data_facts(cfg: DataConfig) -> dict | None:
    """What the advisor needs to know of a recipe's data, read without validating it (so
    bad data becomes a finding, not an exception): n_inputs, n_labels, range, whether
    validation data exists. None where the data is not at hand (MNIST not downloaded
    yet, a missing file): nothing is downloaded here."""
    from layerwise.data import MNIST_NPZ, cache_dir

    try:
        if cfg.source == "mnist":
            if not (cache_dir() / MNIST_NPZ).exists():
                return None
            splits = load_mnist(report=lambda m: None)
        elif cfg.source == "digits":
            splits = load_digits()
        else:
            train = load_npz(cfg.train)
            splits = Splits(train, load_npz(cfg.validation) if cfg.validation else None, None, None)
    except (OSError, ValueError, ImportError):
        return None
    x, y = np.asarray(splits.train.x), splits.train.y
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        return None
    finite = x[np.isfinite(x)]
    return {
        "n_inputs": int(x.shape[1]),
        "n_labels": None if y is None or len(y) == 0 else int(np.max(y)) + 1,
        "range": (float(finite.min()), float(finite.max())) if finite.size else None,
        "has_validation": True,  # a split is held out when no validation file is given
    }


def recipe_findings(cfg: RunConfig, *, workers: int = 1) -> tuple[list, bool]:
    """The advisor's findings for a recipe, and whether its data could be inspected."""
    from layerwise.advice import check

    facts = data_facts(cfg.data)
    if facts is None:
        return check(cfg, workers=workers), False
    return check(cfg, n_inputs=facts["n_inputs"], n_labels_in_data=facts["n_labels"], data_range=facts["range"],
                 has_validation=facts["has_validation"], workers=workers), True


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


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive lock on a run folder; a second writer is refused at once."""
    path = run_dir / ".lock"
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RuntimeError(
            f"run folder '{run_dir}' is in use by another layerwise process (pid {holder}); "
            "wait for it to finish or use another run folder"
        ) from None
    try:
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def _optimizer_to_checkpoint(sd: dict, tensors: dict, prefix: str = "opt.") -> dict:
    """Put an optimizer state_dict's tensors into ``tensors`` under ``prefix``; return
    the rest as plain data."""
    scalars = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict, meta: dict, prefix: str = "opt.") -> dict:
    """The optimizer state_dict that _optimizer_to_checkpoint stored under ``prefix``."""
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith(prefix):
            idx, k = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[k] = v
    for idx, kv in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(kv)
    return {"state": state, "param_groups": meta["param_groups"]}


def _guard_to_checkpoint(guard, tensors: dict) -> dict | None:
    """The divergence guard's state (its last good weights and optimizer state under
    ``guard.``, its histories and counters as plain data), so that a resumed run rolls
    back exactly as the uninterrupted one would; None without a guard."""
    if guard is None:
        return None
    good, good_opt, meta = guard.state()
    tensors.update({f"guard.good.{k}": v for k, v in good.items()})
    if good_opt is not None:
        meta["good_opt"] = _optimizer_to_checkpoint(good_opt, tensors, "guard.opt.")
    return meta


def _guard_from_checkpoint(tensors: dict, meta: dict) -> tuple | None:
    """(good weights, good optimizer state or None, plain state) for DivergenceGuard.load_state."""
    g = meta.get("guard")
    if g is None:
        return None
    good = {k[len("guard.good."):]: v for k, v in tensors.items() if k.startswith("guard.good.")}
    good_opt = _optimizer_state(tensors, g["good_opt"], "guard.opt.") if g.get("good_opt") else None
    return good, good_opt, g


def _gather_local_state(local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collective (every rank calls it at the same point): the tensors that differ
    between workers even right after an averaging round (momentum, PCD chains, optimizer
    state) of every rank but 0, sent to rank 0 and keyed ``rank{r}/{name}``; {} on the
    other ranks and outside a distributed run. Values travel as float64, exact for the
    float32 and integer tensors of a checkpoint."""
    import torch.distributed as dist

    rank, world = dist_rank_world()
    if world == 1:
        return {}
    names = sorted(local)
    flat = torch.cat([local[k].detach().reshape(-1).to(torch.float64) for k in names] or [torch.zeros(0, dtype=torch.float64)])
    parts = [torch.empty_like(flat) for _ in range(world)] if rank == 0 else None
    dist.gather(flat, parts, dst=0)
    if rank != 0:
        return {}
    out = {}
    for r in range(1, world):
        offset = 0
        for k in names:
            v = local[k]
            out[f"rank{r}/{k}"] = parts[r][offset : offset + v.numel()].reshape(v.shape).to(v.dtype).clone()
            offset += v.numel()
    return out


def _take_local_state(tensors: dict, meta: dict, local_keys) -> dict:
    """The checkpoint's tensors as this rank saved them: its own ``rank{r}/`` entries in
    place of rank 0's. Only when the group has the size that wrote the checkpoint;
    otherwise every rank goes on from rank 0's state."""
    rank, world = dist_rank_world()
    if rank == 0 or meta.get("world") != world:
        return tensors
    return {**tensors, **{k: tensors[f"rank{rank}/{k}"] for k in local_keys if f"rank{rank}/{k}" in tensors}}


def _pretrain_local_keys(dbn: DeepBeliefNet, layer: int | None = None) -> list[str]:
    """Checkpoint keys of the unit buffers (momentum, PCD chains, sparsity statistics):
    unlike the parameters, averaging leaves them different on every worker; so does the
    guard's copy of them for the layer in progress."""
    keys = [f"dbn.{k}" for k, _ in dbn.named_buffers()]
    if layer is not None and layer < len(dbn.layers):
        keys += [f"guard.good.{k}" for k, _ in dbn.layers[layer].named_buffers()]
    return keys


def _finetune_local_keys(tensors: dict) -> list[str]:
    """Checkpoint keys of the optimizer state (and the guard's copy of it): not averaged
    unless average_optimizer_state, so different on every worker."""
    return [k for k in tensors if k.startswith(("opt.", "guard.opt."))]


def _pretrain_tensors(dbn: DeepBeliefNet, generator: torch.Generator, pos: LoopPosition) -> dict:
    """Everything pretraining needs to go on exactly: every buffer of every unit
    (momentum, PCD chains, sparsity statistics), every generator, the data order."""
    t = {f"dbn.{k}": v for k, v in dbn.state_dict().items()}
    t.update({f"rng.unit{i}": layer.generator.get_state() for i, layer in enumerate(dbn.layers)})
    t["rng.loop"] = generator.get_state()
    if pos.order is not None:
        t["order"] = pos.order
    return t


def _restore_pretrain(dbn: DeepBeliefNet, generator: torch.Generator, tensors: dict, meta: dict) -> PretrainProgress:
    dbn.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("dbn.")})
    for i, layer in enumerate(dbn.layers):
        layer.generator.set_state(tensors[f"rng.unit{i}"])
    generator.set_state(tensors["rng.loop"])
    return PretrainProgress(meta["layer"], LoopPosition(meta["epoch"], meta["batch"], tensors.get("order"), meta["stopped"]),
                            _guard_from_checkpoint(tensors, meta))


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _pretrain_metrics(records: list[dict]) -> dict:
    """A pretrained manifest's metrics: each layer's last reconstruction cross-entropy
    and free-energy gap (where measured), and the guard's rollbacks."""
    last = {f"layer{r['layer']}_{k}": v for r in records if r["phase"] == "pretrain"
            for k, v in r.items() if k.startswith(("recon", "free"))}
    last["guard_events"] = [r for r in records if r["phase"] == "guard"]
    return last


def _finetune_checkpoint(clf: torch.nn.Module, optimizer, fstate: FinetuneState, pos: LoopPosition,
                         guard=None) -> tuple[dict, dict]:
    """(tensors, metadata) of a fine-tuning checkpoint: the weights, the optimizer state,
    the best weights so far, both generators, the data order and position, the
    early-stopping counters and the divergence guard's state."""
    t = {f"clf.{k}": v for k, v in clf.state_dict().items()}
    opt_meta = _optimizer_to_checkpoint(optimizer.state_dict(), t)
    guard_meta = _guard_to_checkpoint(guard, t)
    if fstate.best_state is not None:
        t.update({f"best.{k}": v for k, v in fstate.best_state.items()})
    t["rng.loop"] = fstate.generator.get_state()
    t["rng.global"] = torch.get_rng_state()  # dropout masks: called inside fine-tuning
    if pos.order is not None:
        t["order"] = pos.order
    return t, {
        "phase": "finetune", "epoch": pos.epoch, "batch": pos.batch, "stopped": pos.stopped,
        "loss_sum": fstate.loss_sum, "count": fstate.count,
        "best": None if math.isinf(fstate.best) else fstate.best, "best_epoch": fstate.best_epoch,
        "since_best": fstate.since_best, "records": fstate.records, "optimizer": opt_meta, "guard": guard_meta,
    }


def _restore_finetune(clf: torch.nn.Module, optimizer, tensors: dict, meta: dict) -> FinetuneState:
    """Load a fine-tuning checkpoint into ``clf`` and ``optimizer``; the loop's state."""
    clf.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("clf.")})
    optimizer.load_state_dict(_optimizer_state(tensors, meta["optimizer"]))
    return FinetuneState(
        position=LoopPosition(meta["epoch"], meta["batch"], tensors.get("order"), meta["stopped"]),
        generator=_generator(tensors["rng.loop"]), loss_sum=meta["loss_sum"], count=meta["count"],
        best=math.inf if meta["best"] is None else meta["best"], best_epoch=meta["best_epoch"],
        since_best=meta["since_best"], records=meta["records"], rng_state=tensors["rng.global"],
        best_state={k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None,
        guard_state=_guard_from_checkpoint(tensors, meta),
    )


def _checkpoint_policy(cfg: RunConfig) -> dict:
    cc = cfg.checkpoint
    return {"every_epochs": cc.every_epochs, "every_batches": cc.every_batches,
            "every_seconds": None if cc.every_minutes is None else 60 * cc.every_minutes}


def _continue_log(path: Path, keep_lines: int | None, progress: bool, echo) -> Reporter:
    """A reporter appending to ``path`` after its first ``keep_lines`` lines (None: keep
    all). A resumed run drops what was logged after its checkpoint: it is replayed."""
    if keep_lines is not None and path.exists():
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:keep_lines]))
    reporter = Reporter(path, progress=progress, echo=echo)
    reporter.lines = len(path.read_text().splitlines()) if path.exists() else 0
    return reporter


def _final_metrics(clf, result, ft, seconds: float, x_va, y_va, x_te, y_te) -> tuple[dict, float | None, float | None]:
    """The finetuned manifest's metrics: validation (unless it was trained on) and test."""
    metrics = {"seconds": round(seconds, 2), "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
               "guard_events": [r for r in result.records if r["phase"] == "guard"]}
    val_acc = test_acc = None
    if ft.train_on_validation:
        metrics["validation"] = "joined the training data (train_on_validation)"
    elif x_va is not None:
        metrics["validation_loss"], val_acc = evaluate(clf, x_va, y_va)
        metrics["validation_accuracy"] = val_acc
    if x_te is not None:
        metrics["test_loss"], test_acc = evaluate(clf, x_te, y_te)
        metrics["test_accuracy"] = test_acc
    return metrics, val_acc, test_acc


def _generator(state: torch.Tensor) -> torch.Generator:
    g = torch.Generator()
    g.set_state(state)
    return g


def _claim_run_dir(cfg: RunConfig, runs_dir: str | Path, splits: Splits) -> tuple[Path, RunConfig]:
    """Create the next free ``runs_dir/NAME[-k]`` and write the resolved config into it
    (hidden sizes filled in, the name set to the folder's)."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    while True:  # mkdir is the atomic claim: two runs started at once get different folders
        run_dir = unique_run_dir(runs_dir, cfg.name or "run")
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            continue
    resolved = config_mod.from_dict(cfg.to_dict())
    resolved.model.hidden = cfg.model.hidden or suggest_layers(splits.n_inputs)
    resolved.name = run_dir.name
    (run_dir / "config.toml").write_text(config_mod.to_toml(resolved))
    return run_dir, resolved


def _result_from_disk(run_dir: Path) -> RunResult:
    """What a finished run folder reached, read from its manifests."""
    _, pre = read_artifact(run_dir / "pretrained")
    _, fin = read_artifact(run_dir / "finetuned")
    m = fin["metrics"]
    return RunResult(run_dir, m.get("test_accuracy"), m.get("validation_accuracy"), pre, fin,
                     pre["metrics"].get("seconds", 0.0), m.get("seconds", 0.0))


def train(
    cfg: RunConfig,
    *,
    runs_dir: str | Path = "runs",
    progress: bool = False,
    echo=None,
) -> RunResult:
    """Run a whole recipe in a new run folder; returns where it went and what it reached."""
    # validate the data before creating anything on disk
    splits = load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed, report=echo or (lambda s: None))
    run_dir, resolved = _claim_run_dir(cfg, runs_dir, splits)
    with run_lock(run_dir):
        return _run(run_dir, resolved, splits, None, progress=progress, echo=echo)


def resume(run_dir: str | Path, *, progress: bool = False, echo=None) -> RunResult:
    """Continue an interrupted ``train`` run from its last checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise FileNotFoundError(f"'{run_dir}' is not a run folder: it has no config.toml")
    with run_lock(run_dir):
        if (run_dir / "finetuned").exists():
            raise ValueError(f"run '{run_dir}' is complete (finetuned/ exists); nothing to resume")
        cfg = config_mod.load(run_dir / "config.toml")
        cfg.name = run_dir.name
        splits = load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed, report=echo or (lambda s: None))
        ckpt = load_checkpoint(run_dir / "checkpoint") if (run_dir / "checkpoint" / "state.safetensors").exists() else None
        return _run(run_dir, cfg, splits, ckpt, progress=progress, echo=echo)


def _run(run_dir: Path, cfg: RunConfig, splits: Splits, ckpt, *, progress: bool, echo) -> RunResult | None:
    rank, world = dist_rank_world()
    writer = rank == 0  # rank 0 alone writes checkpoints, artifacts, metrics and plots
    if not writer:
        progress, echo = False, None
    say = echo or (lambda s: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    config_dict = cfg.to_dict()
    if world > 1:
        from layerwise.advice import corrected_lr

        corr = cfg.distributed.lr_correction
        cfg = config_mod.from_dict(config_dict)
        cfg.pretrain.learning_rate = corrected_lr(cfg.pretrain.learning_rate, world, corr)
        cfg.finetune.learning_rate = corrected_lr(cfg.finetune.learning_rate, world, corr)
        # mid-epoch checkpoints would catch replicas between averaging rounds: epoch ends only
        cfg.checkpoint.every_batches = cfg.checkpoint.every_minutes = None
        config_dict["distributed"]["workers"] = world
        config_dict["distributed"]["effective_learning_rates"] = {
            "pretrain": cfg.pretrain.learning_rate, "finetune": cfg.finetune.learning_rate}
    hidden = cfg.model.hidden
    dbn = DeepBeliefNet(
        splits.n_inputs, hidden, unit=cfg.model.unit, visible=cfg.model.visible, seed=cfg.seed,
        init_std=cfg.model.init_std,
    )
    tensors, meta = ckpt if ckpt is not None else ({}, {"phase": "pretrain"})
    metrics_path = run_dir / "metrics.jsonl"
    # a run that died before its first checkpoint starts its log over
    if writer:
        reporter = _continue_log(metrics_path, meta["metrics_lines"] if ckpt is not None else 0, progress, echo)
    else:
        reporter = Reporter()
    if ckpt is None:
        reporter.log({
            "phase": "start", "folder": str(run_dir), "architecture": "-".join(map(str, dbn.sizes + [splits.n_labels])),
            "unit": cfg.model.unit, "train": len(splits.train), "validation": len(splits.validation or []),
            "test": len(splits.test or []), "threads": torch.get_num_threads(), "workers": world,
        })
    else:
        reporter.log({"phase": "resume", "from": meta["phase"], "layer": meta.get("layer"),
                      "epoch": meta["epoch"], "batch": meta["batch"]})
    x_tr, y_tr = _tensors(splits.train)
    x_va, y_va = _tensors(splits.validation)
    x_te, y_te = _tensors(splits.test)
    every = _checkpoint_policy(cfg)
    stages = [{
        "data": splits.train.name, "fingerprint": splits.train.fingerprint,
        "samples": len(splits.train), "epochs_per_layer": cfg.pretrain.epochs,
    }]
    seconds = dict(meta.get("seconds", {"pretrain": 0.0, "finetune": 0.0}))

    # -- pretraining ----------------------------------------------------------------
    pretrained_dir = run_dir / "pretrained"
    if meta["phase"] == "pretrain":
        prog = PretrainProgress()
        generator = torch.Generator().manual_seed(cfg.seed)
        records: list[dict] = []
        if ckpt is not None:
            prog = _restore_pretrain(
                dbn, generator, _take_local_state(tensors, meta, _pretrain_local_keys(dbn, meta["layer"])), meta)
            records = meta["records"]
        t_start = time.perf_counter()

        def save_pretrain(pos):
            if world > 1 and pos.order is not None:
                return  # mid-epoch (a Ctrl-C): the replicas are apart; the epoch-end checkpoint stands
            # at epoch ends (every rank is here) the other workers' buffers go to rank 0
            mine = _pretrain_tensors(dbn, generator, pos)
            guard_meta = _guard_to_checkpoint(ck_pretrain.guard, mine)
            others = _gather_local_state({k: mine[k] for k in _pretrain_local_keys(dbn, prog.layer) if k in mine})
            if not writer:
                return
            t = {**mine, **others}
            elapsed = {"pretrain": seconds["pretrain"] + time.perf_counter() - t_start, "finetune": 0.0}
            save_checkpoint(run_dir / "checkpoint", t, {
                "phase": "pretrain", "layer": prog.layer, "epoch": pos.epoch, "batch": pos.batch,
                "stopped": pos.stopped, "records": records, "metrics_lines": reporter.lines, "seconds": elapsed,
                "world": world if others else 1, "guard": guard_meta,
            })

        ck_pretrain = Checkpointer(save_pretrain, **every)
        pretrain(dbn, x_tr, x_va, cfg.pretrain, seed=cfg.seed, reporter=reporter, progress=prog,
                 generator=generator, records=records, checkpointer=ck_pretrain, guard=cfg.guard,
                 distributed=cfg.distributed if world > 1 else None)
        seconds["pretrain"] += time.perf_counter() - t_start
        last = _pretrain_metrics(records)
        if not writer:
            pre_manifest = None
        elif pretrained_dir.exists():
            # died after writing it and before the next checkpoint: a single-process replay
            # is exact, so the weights must be the ones on disk (a restarted group goes on
            # from the saved net: its replay is exact only at the checkpoint's group size)
            on_disk, pre_manifest = read_artifact(pretrained_dir)
            if world > 1:
                dbn.load_state_dict(on_disk, strict=False)
            elif any(not torch.equal(on_disk[k], v) for k, v in dbn.model_state().items()):
                raise RuntimeError(f"'{pretrained_dir}' differs from the resumed pretraining; not overwriting it")
        else:
            pre_manifest = write_artifact(
                pretrained_dir, dbn.model_state(), kind="pretrained", architecture=dbn.architecture(),
                config=config_dict, stages=stages, metrics={**last, "seconds": round(seconds["pretrain"], 2)},
                read_only=True,
            )
        if writer:
            reporter.log({"phase": "saved", "artifact": "pretrained", "sha256": pre_manifest["weights_sha256"][:16]})
        if world > 1:
            import torch.distributed as dist

            dist.barrier()  # the pretrained net is on disk before anyone fine-tunes
    else:
        pre_tensors, pre_manifest = read_artifact(pretrained_dir)
        dbn.load_state_dict(pre_tensors, strict=False)

    # -- fine-tuning ----------------------------------------------------------------
    ft = cfg.finetune
    clf = dbn.to_classifier(splits.n_labels, dropout_input=ft.dropout_input, dropout_hidden=ft.dropout_hidden, seed=cfg.seed)
    optimizer = make_optimizer(clf, ft)
    if meta["phase"] == "finetune":
        fstate = _restore_finetune(clf, optimizer, _take_local_state(tensors, meta, _finetune_local_keys(tensors)), meta)
    else:
        fstate = FinetuneState(generator=torch.Generator().manual_seed(cfg.seed))
    t_start = time.perf_counter()

    def save_finetune(pos):
        if world > 1 and pos.order is not None:
            return  # mid-epoch (a Ctrl-C): the replicas are apart; the epoch-end checkpoint stands
        t, m = _finetune_checkpoint(clf, optimizer, fstate, pos, ck_finetune.guard)
        # the optimizer state (momentum) differs between workers: theirs go to rank 0
        others = _gather_local_state({k: t[k] for k in _finetune_local_keys(t)})
        if not writer:
            return
        elapsed = {"pretrain": seconds["pretrain"], "finetune": seconds["finetune"] + time.perf_counter() - t_start}
        save_checkpoint(run_dir / "checkpoint", {**t, **others}, {
            **m, "metrics_lines": reporter.lines, "seconds": elapsed, "world": world if others else 1})

    ck_finetune = Checkpointer(save_finetune, **every)
    result = finetune(clf, x_tr, y_tr, x_va, y_va, ft, seed=cfg.seed, reporter=reporter, optimizer=optimizer,
                      state=fstate, checkpointer=ck_finetune, guard=cfg.guard,
                      distributed=cfg.distributed if world > 1 else None)
    seconds["finetune"] += time.perf_counter() - t_start
    if not writer:
        return None
    metrics, val_acc, test_acc = _final_metrics(clf, result, ft, seconds["finetune"], x_va, y_va, x_te, y_te)
    finetuned = write_artifact(
        run_dir / "finetuned", clf.state_dict(), kind="finetuned",
        architecture=classifier_architecture(dbn.sizes, splits.n_labels, ft.dropout_input, ft.dropout_hidden),
        config=config_dict, stages=stages, metrics=metrics, parent=pre_manifest["weights_sha256"],
    )
    reporter.log({"phase": "test", **metrics, "seconds_pretrain": round(seconds["pretrain"], 2)})
    try:
        from layerwise import plots

        every_record = [json.loads(line) for line in metrics_path.read_text().splitlines()]  # resumed runs too
        plots.write_run_plots(run_dir / "plots", every_record, dbn.layers[0].weight)
    except ImportError:
        say("plots skipped: matplotlib is not installed (pip install 'layerwise[plots]')")
    return RunResult(run_dir, test_acc, val_acc, pre_manifest, finetuned, seconds["pretrain"], seconds["finetune"])


def partial_dir(out_dir: str | Path) -> Path:
    """Where ``layerwise finetune ... --out OUT`` keeps its checkpoint until OUT is written."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".partial")


def finetune_pretrained(
    pretrained_dir: str | Path, cfg: RunConfig, out_dir: str | Path, *, progress: bool = False, echo=None
) -> RunResult:
    """Fine-tune a copy of a saved pretrained net with a recipe's data and [finetune]
    settings into a new artifact at ``out_dir`` whose manifest names the pretrained net
    as its parent. The pretrained files are only read.

    Until ``out_dir`` is written, checkpoints (the recipe's [checkpoint] policy) go to
    ``OUT.partial/``; the same command run again after a crash or Ctrl-C goes on from the
    last one (bitwise equal on CPU with the same threads), and the folder is removed once
    ``out_dir`` is written. A ``.partial`` of another net or recipe is refused."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"output folder '{out_dir}' already exists; it is never overwritten")
    from layerwise.artifacts import load_model

    dbn, pre_manifest = load_model(pretrained_dir)
    if pre_manifest["kind"] != "pretrained":
        raise ValueError(f"'{pretrained_dir}' holds a {pre_manifest['kind']} net; finetune needs a pretrained one")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    splits = load_splits(cfg.data, visible=dbn.visible, seed=cfg.seed, report=echo or (lambda s: None))
    if splits.n_inputs != dbn.n_visible:
        raise ValueError(
            f"{splits.train.name}: the data has {splits.n_inputs} features per sample; "
            f"the pretrained net '{pretrained_dir}' expects {dbn.n_visible}"
        )
    config_dict = cfg.to_dict()
    config_dict["model"]["hidden"] = dbn.hidden
    # what a checkpoint must match to be continued: the parent, the recipe, the data
    identity = {"parent": pre_manifest["weights_sha256"], "config": json.loads(json.dumps(config_dict)),
                "data": splits.train.fingerprint}
    work = partial_dir(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    with run_lock(work):
        ckpt = load_checkpoint(work / "checkpoint") if (work / "checkpoint" / "state.safetensors").exists() else None
        if ckpt is not None and ckpt[1].get("identity") != identity:
            raise ValueError(
                f"'{work}' holds an interrupted fine-tuning of another pretrained net, recipe or data; "
                f"delete it to start over, or choose another --out"
            )
        reporter = Reporter(None, progress=progress, echo=echo)
        ft = cfg.finetune
        clf = dbn.to_classifier(splits.n_labels, dropout_input=ft.dropout_input, dropout_hidden=ft.dropout_hidden,
                                seed=cfg.seed)
        optimizer = make_optimizer(clf, ft)
        seconds = 0.0
        if ckpt is not None:
            tensors, meta = ckpt
            fstate = _restore_finetune(clf, optimizer, tensors, meta)
            seconds = meta["seconds"]
            reporter.log({"phase": "resume", "from": "finetune", "epoch": meta["epoch"], "batch": meta["batch"]})
        else:
            fstate = FinetuneState(generator=torch.Generator().manual_seed(cfg.seed))
        x_tr, y_tr = _tensors(splits.train)
        x_va, y_va = _tensors(splits.validation)
        x_te, y_te = _tensors(splits.test)
        t0 = time.perf_counter()

        def save(pos):
            t, m = _finetune_checkpoint(clf, optimizer, fstate, pos, ck.guard)
            save_checkpoint(work / "checkpoint", t, {**m, "identity": identity,
                                                     "seconds": seconds + time.perf_counter() - t0})

        ck = Checkpointer(save, **_checkpoint_policy(cfg))
        result = finetune(clf, x_tr, y_tr, x_va, y_va, ft, seed=cfg.seed, reporter=reporter, optimizer=optimizer,
                          state=fstate, checkpointer=ck, guard=cfg.guard)
        seconds += time.perf_counter() - t0
        metrics, val_acc, test_acc = _final_metrics(clf, result, ft, seconds, x_va, y_va, x_te, y_te)
        manifest = write_artifact(
            out_dir, clf.state_dict(), kind="finetuned",
            architecture=classifier_architecture(dbn.sizes, splits.n_labels, ft.dropout_input, ft.dropout_hidden),
            config=config_dict, stages=pre_manifest.get("stages", []), metrics=metrics,
            parent=pre_manifest["weights_sha256"],
        )
    shutil.rmtree(work)
    return RunResult(out_dir, test_acc, val_acc, pre_manifest, manifest, 0.0, seconds)


@dataclass
class StageResult:
    out_dir: Path
    stage: int
    artifact: Path
    manifest: dict
    seconds: float


def _stage_data(path: str | Path, visible: str, n_inputs: int | None) -> Dataset:
    return validate(load_npz(path), visible=visible, n_inputs=n_inputs)


def pretrain_stage(
    out_dir: str | Path,
    *,
    cfg: RunConfig | None = None,
    data: str | Path | None = None,
    epochs: int | None = None,
    progress: bool = False,
    echo=None,
) -> StageResult:
    """One stage of staged pretraining: feed data, pause, resume when more arrives.

    With ``cfg`` (a recipe), start ``out_dir`` and run stage 1 on ``data``. Without it,
    go on in ``out_dir``: finish an interrupted stage (``data`` may be omitted), or run a
    new stage on new ``data``. Each stage runs the greedy pass over every layer for
    ``epochs`` (default: the recipe's) and continues from the weights, momentum and
    generators where the previous stage left them. Each finished stage writes an
    immutable artifact ``stage-K/`` whose manifest lists every stage so far and names the
    previous stage as its parent. Data of the wrong width is refused before any change.
    """
    out_dir = Path(out_dir)
    if cfg is not None:
        if data is None:
            raise ValueError("the first pretraining stage needs --data FILE.npz")
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FileExistsError(f"output folder '{out_dir}' already exists; continue it with --resume {out_dir}")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.toml").write_text(config_mod.to_toml(cfg))
    elif not (out_dir / "config.toml").is_file():
        raise FileNotFoundError(f"'{out_dir}' is not a staged pretraining folder: it has no config.toml")
    with run_lock(out_dir):
        cfg = config_mod.load(out_dir / "config.toml")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        ckpt_dir = out_dir / "checkpoint"
        ckpt = load_checkpoint(ckpt_dir) if (ckpt_dir / "state.safetensors").exists() else None
        meta = ckpt[1] if ckpt else {"stages": [], "stage_done": True}
        if ckpt is None:
            # first stage: the input width comes from the data
            ds = _stage_data(data, cfg.model.visible, None)
            n_inputs = ds.x.shape[1]
        else:
            n_inputs = ckpt[0]["dbn.layers.0.weight"].shape[1]
        hidden = cfg.model.hidden or suggest_layers(n_inputs)
        dbn = DeepBeliefNet(n_inputs, hidden, unit=cfg.model.unit, visible=cfg.model.visible, seed=cfg.seed,
                            init_std=cfg.model.init_std)
        generator = torch.Generator().manual_seed(cfg.seed)
        if meta["stage_done"]:  # a new stage
            if data is None:
                raise ValueError(
                    f"'{out_dir}': stage {len(meta['stages'])} is finished; a new stage needs --data FILE.npz"
                )
            ds = _stage_data(data, cfg.model.visible, n_inputs)  # wrong width: refused here, nothing touched
            stage = {"data": str(data), "fingerprint": ds.fingerprint, "samples": len(ds),
                     "epochs_per_layer": epochs or cfg.pretrain.epochs}
            prog = PretrainProgress()
            records: list[dict] = []
            if ckpt is not None:  # weights, momentum, PCD chains and generators go on
                _restore_pretrain(dbn, generator, ckpt[0], meta)
        else:  # an interrupted stage
            stage = meta["stage"]
            if data is not None and Path(data).resolve() != Path(stage["data"]).resolve():
                raise ValueError(
                    f"'{out_dir}': stage {len(meta['stages']) + 1} on '{stage['data']}' was interrupted; "
                    "finish it with --resume alone before feeding new data"
                )
            ds = _stage_data(stage["data"], cfg.model.visible, n_inputs)
            if ds.fingerprint != stage["fingerprint"]:
                raise ValueError(f"'{stage['data']}' changed since its stage started (fingerprint differs)")
            prog = _restore_pretrain(dbn, generator, ckpt[0], meta)
            records = meta["records"]
        number = len(meta["stages"]) + 1
        pcfg = dataclasses.replace(cfg.pretrain, epochs=stage["epochs_per_layer"])
        metrics_path = out_dir / "metrics.jsonl"
        keep = None if meta["stage_done"] else meta["metrics_lines"]  # an interrupted stage replays
        reporter = _continue_log(metrics_path, keep, progress, echo)
        reporter.log({"phase": "stage", "stage": number, "data": stage["data"], "samples": stage["samples"],
                      "epochs_per_layer": stage["epochs_per_layer"], "resumed": not meta["stage_done"]})
        every = _checkpoint_policy(cfg)

        def save(pos, done=False):
            t = _pretrain_tensors(dbn, generator, pos)
            guard_meta = None if done else _guard_to_checkpoint(ck.guard, t)  # a new stage starts a new guard
            save_checkpoint(ckpt_dir, t, {
                "phase": "pretrain", "stage_done": done, "stage": stage,
                "stages": meta["stages"] + ([stage] if done else []),
                "layer": prog.layer, "epoch": pos.epoch, "batch": pos.batch, "stopped": pos.stopped,
                "records": records, "metrics_lines": reporter.lines, "guard": guard_meta,
            })

        t0 = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(ds.x))
        ck = Checkpointer(save, **every)
        pretrain(dbn, x, None, pcfg, seed=cfg.seed, reporter=reporter, progress=prog, generator=generator,
                 records=records, checkpointer=ck, guard=cfg.guard)
        seconds = time.perf_counter() - t0
        stages = meta["stages"] + [stage]
        parent = None
        if number > 1:
            parent = read_artifact(out_dir / f"stage-{number - 1}")[1]["weights_sha256"]
        last = _pretrain_metrics(records)
        artifact = out_dir / f"stage-{number}"
        config_dict = cfg.to_dict()
        config_dict["model"]["hidden"] = hidden
        manifest = write_artifact(
            artifact, dbn.model_state(), kind="pretrained", architecture=dbn.architecture(), config=config_dict,
            stages=stages, metrics={**last, "seconds": round(seconds, 2)}, parent=parent, read_only=True,
        )
        prog.layer, prog.position = 0, LoopPosition()
        save(LoopPosition(), done=True)  # the state the next stage starts from
        reporter.log({"phase": "saved", "artifact": artifact.name, "sha256": manifest["weights_sha256"][:16]})
        return StageResult(out_dir, number, artifact, manifest, seconds)


# -- distributed runs ----------------------------------------------------------------------
def under_torchrun() -> bool:
    """True inside a process started by torchrun / torch.distributed.run."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_main(cfg: RunConfig, runs_dir: str | Path, *, echo=None) -> RunResult | None:
    """One worker of a distributed run (started by torchrun or by ``--workers``).

    Joins the process group (gloo on CPU, NCCL when every worker has a GPU is for
    later: the units run on CPU here), and trains in ``runs_dir/NAME``: global rank 0
    creates the folder and writes everything, the others only train. A restarted group
    (``--max-restarts``) resumes from the last checkpoint. The worker leaves with a
    barrier, destroy_process_group and ``os._exit`` (a plain interpreter exit of a gloo
    worker sometimes aborted with 'terminate called without an active exception')."""
    import torch.distributed as dist

    rank, world = join_group(cfg)
    run_dir = Path(runs_dir) / (cfg.name or "run")
    splits = load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed, report=lambda s: None)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "config.toml").exists():
            resolved = config_mod.from_dict(cfg.to_dict())
            resolved.model.hidden = cfg.model.hidden or suggest_layers(splits.n_inputs)
            (run_dir / "config.toml").write_text(config_mod.to_toml(resolved))
    dist.barrier()
    if (run_dir / "finetuned").exists():
        # complete: a group restarted after its last worker finished, or a rerun
        dist.destroy_process_group()
        return None if rank else _result_from_disk(run_dir)
    cfg = config_mod.load(run_dir / "config.toml")
    cfg.name = run_dir.name
    ckpt_file = run_dir / "checkpoint" / "state.safetensors"
    ckpt = load_checkpoint(run_dir / "checkpoint") if ckpt_file.exists() else None
    result = _run(run_dir, cfg, splits, ckpt, progress=False, echo=echo if rank == 0 else None)
    leave_group()
    return result


def join_group(cfg: RunConfig) -> tuple[int, int]:
    """Join the process group of a torchrun-started worker (gloo, the recipe's timeout)
    and take a fair share of this machine's cores; return (rank, world size)."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=cfg.distributed.timeout_minutes))
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local))
    return rank, world


def leave_group() -> None:
    """Leave the process group: barrier, destroy, flush. The caller then ends with
    ``os._exit`` (a plain interpreter exit of a gloo worker sometimes aborted with
    'terminate called without an active exception')."""
    import sys

    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()


def launch_workers(args: list[str], workers: int, *, max_restarts: int = 0, on_line=None):
    """Run ``python -m layerwise ARGS`` as ``workers`` processes through PyTorch's
    elastic launcher (torch.distributed.run) on loopback with a free port. Each line the
    workers print goes to ``on_line`` as it comes (progress); returns the finished
    subprocess.CompletedProcess with stdout and stderr."""
    import subprocess
    import sys
    import tempfile

    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(workers),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
        "--max-restarts", str(max_restarts), "-m", "layerwise", *args,
    ]
    env = dict(os.environ)
    # a restarted group must not read the dead workers' addresses from a reused store
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    lines = []
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: a full stderr pipe would stall the workers
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True) as proc:
            for line in proc.stdout:
                lines.append(line)
                if on_line is not None:
                    try:
                        on_line(line.rstrip("\n"))
                    except (BrokenPipeError, OSError):  # our reader left (`| head`): keep training, stop echoing
                        on_line = None
        err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), err.read())


def workers_failed(proc, workers: int, hint: str = "") -> RuntimeError:
    """The error for a group of workers that exited non-zero: the workers' own error
    lines (each once; the launcher's report that follows them says only which rank
    exited), else the last lines of their output."""
    text = (proc.stderr or "") + (proc.stdout or "")
    errors = list(dict.fromkeys(line.strip() for line in text.splitlines()
                                if line.startswith("layerwise: error:") or re.match(r"\w*(Error|Exception): ", line)))
    if errors:
        body = "the workers reported:\n" + "\n".join(errors[-10:])
    else:
        body = "the last lines:\n" + "\n".join(text.strip().splitlines()[-15:])
    return RuntimeError(f"the {workers} workers failed (exit {proc.returncode}); {body}{hint}")


def train_workers(cfg: RunConfig, workers: int, *, runs_dir: str | Path = "runs", max_restarts: int = 0,
                  echo=None) -> RunResult:
    """``layerwise train RECIPE --workers N`` on one machine: claim a run folder, then
    start N workers through PyTorch's elastic launcher (torch.distributed.run) on
    loopback with a free port; return what rank 0 wrote. ``echo`` gets rank 0's
    progress lines as they come, and its summary at the end."""
    splits = load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed, report=echo or (lambda s: None))
    runs_dir = Path(runs_dir)
    run_dir, _ = _claim_run_dir(cfg, runs_dir, splits)
    with run_lock(run_dir):
        # rank 0 prints its progress (and, at the end, the summary) unless quiet
        quiet = ["--quiet"] if echo is None else []
        proc = launch_workers(["train", str(run_dir / "config.toml"), "--runs-dir", str(runs_dir), *quiet], workers,
                              max_restarts=max_restarts, on_line=echo)
    if proc.returncode != 0:
        raise workers_failed(proc, workers, f"\ncontinue with `layerwise train --resume {run_dir}` once fixed")
    return _result_from_disk(run_dir)
