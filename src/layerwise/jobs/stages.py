"""``layerwise pretrain``: staged pretraining, as the guide puts it: feed data, pause,
resume when more arrives.

A staged pretraining folder holds config.toml (the recipe), checkpoint/ (where the net
stands: weights, momentum, PCD chains, generators), metrics.jsonl and one immutable
artifact ``stage-K/`` per finished stage, whose manifest lists every stage so far and
names the previous stage as its parent.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from layerwise import checkpointing
from layerwise.artifacts import read_artifact, write_artifact
from layerwise.config import RunConfig
from layerwise.data import Dataset, as_tensors, load_npz, validate
from layerwise.jobs.common import checkpoint_policy, load_pretraining_state, pretrain_metrics, pretraining_state
from layerwise.loop import Checkpointer, LoopPosition
from layerwise.pretrain import PretrainProgress, pretrain
from layerwise.budget import check_fits
from layerwise.runs import METRICS, continue_log, read_config, resolve_config, run_lock, write_config
from layerwise.stack import DeepBeliefNet


@dataclass
class StageResult:
    out_dir: Path
    stage: int
    artifact: Path
    manifest: dict
    seconds: float


def pretrain_stage(out_dir: str | Path, *, cfg: RunConfig | None = None, data: str | Path | None = None,
                   epochs: int | None = None, progress: bool = False, echo=None) -> StageResult:
    """One stage of staged pretraining.

    With ``cfg`` (a recipe), start ``out_dir`` and run stage 1 on ``data``. Without it,
    go on in ``out_dir``: finish an interrupted stage (``data`` may be omitted), or run a
    new stage on new ``data``. Each stage runs the greedy pass over every layer for
    ``epochs`` (default: the recipe's) and continues from the weights, momentum and
    generators where the previous stage left them. Data of the wrong width is refused
    before any change.
    """
    out_dir = Path(out_dir)
    first = None  # a first stage's data, validated before its folder exists
    if cfg is not None:
        if data is None:
            raise ValueError("the first pretraining stage needs --data FILE.npz")
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FileExistsError(f"output folder '{out_dir}' already exists; continue it with --resume {out_dir}")
        first = _stage_data(data, cfg.model.visible, None)  # bad data is refused before the folder exists
        check_fits([first.x.shape[1], *resolve_config(cfg, first.x.shape[1]).model.hidden], 0, len(first))
        out_dir.mkdir(parents=True, exist_ok=True)
        write_config(out_dir, cfg)
    cfg = read_config(out_dir, "staged pretraining folder")
    with run_lock(out_dir):
        ckpt = checkpointing.load_state(out_dir / "checkpoint", "stage") if checkpointing.exists(out_dir / "checkpoint") else None
        new = ckpt is None or ckpt["stage_done"]
        stage, ds = _stage_and_data(out_dir, cfg, ckpt, data, epochs, first)
        resolved = resolve_config(cfg, ds.x.shape[1])
        dbn = DeepBeliefNet(ds.x.shape[1], resolved.model.hidden, unit=cfg.model.unit, visible=cfg.model.visible,
                            seed=cfg.seed, init_std=cfg.model.init_std)
        generator = torch.Generator().manual_seed(cfg.seed)
        prog, records = PretrainProgress(), []
        if ckpt is not None:  # weights, momentum, PCD chains and generators go on
            load_pretraining_state(ckpt, dbn, generator, prog)
            records = [] if new else ckpt["records"]
        before = [] if ckpt is None else ckpt["stages"]
        number = len(before) + 1
        # an interrupted stage replays what it logged after its checkpoint
        reporter = continue_log(out_dir / METRICS, None if new else ckpt["metrics_lines"], progress, echo)
        reporter.log({"phase": "stage", "stage": number, "data": stage["data"], "samples": stage["samples"],
                      "epochs_per_layer": stage["epochs_per_layer"], "resumed": not new})

        def save(pos, done=False):
            tree = {"job": "stage", "phase": "pretrain", "stage_done": done, "stage": stage, "stages": before + ([stage] if done else []),
                    **pretraining_state(dbn, generator, prog), "records": records, "metrics_lines": reporter.lines}
            checkpointing.save_state(out_dir / "checkpoint", tree)

        t0 = time.perf_counter()
        pretrain(dbn, as_tensors(ds)[0], None, dataclasses.replace(cfg.pretrain, epochs=stage["epochs_per_layer"]),
                 seed=cfg.seed, reporter=reporter, progress=prog, generator=generator, records=records,
                 checkpointer=Checkpointer(save, **checkpoint_policy(cfg)), guard=cfg.guard)
        seconds = time.perf_counter() - t0
        parent = read_artifact(out_dir / f"stage-{number - 1}")[1]["weights_sha256"] if number > 1 else None
        artifact = out_dir / f"stage-{number}"
        manifest = write_artifact(
            artifact, dbn.model_state(), kind="pretrained", architecture=dbn.architecture(), config=resolved.to_dict(),
            stages=before + [stage], metrics={**pretrain_metrics(records), "seconds": round(seconds, 2)},
            parent=parent, read_only=True,
        )
        prog.layer, prog.position = 0, LoopPosition()
        save(prog.position, done=True)  # the state the next stage starts from; a new stage starts a new guard
        reporter.log({"phase": "saved", "artifact": artifact.name, "sha256": manifest["weights_sha256"][:16]})
        return StageResult(out_dir, number, artifact, manifest, seconds)


def _stage_data(path: str | Path, visible: str, n_inputs: int | None) -> Dataset:
    return validate(load_npz(path), visible=visible, n_inputs=n_inputs)


def _stage_and_data(out_dir: Path, cfg: RunConfig, ckpt: dict | None, data, epochs: int | None,
                    loaded: Dataset | None = None) -> tuple[dict, Dataset]:
    """(the stage's record, its validated data; ``loaded``: ``data`` already read). An
    interrupted stage goes on with its own data, unchanged; a new stage needs new data of
    the net's input width. Anything else is refused before a weight changes."""
    n_inputs = None if ckpt is None else int(ckpt["dbn"]["layers.0.weight"].shape[1])
    if ckpt is not None and not ckpt["stage_done"]:
        # the stage's own data: where it was (from any working folder), or the same file
        # under another name or path (the fingerprint decides)
        stage = ckpt["stage"]
        ds = _stage_data(data if data is not None else stage["path"], cfg.model.visible, n_inputs)
        if ds.fingerprint != stage["fingerprint"]:
            if data is not None:
                raise ValueError(
                    f"'{out_dir}': stage {len(ckpt['stages']) + 1} on '{stage['data']}' was interrupted, and '{data}' "
                    "holds other data; finish the stage with --resume alone (or --data naming its file) before "
                    "feeding new data"
                )
            raise ValueError(f"'{stage['path']}' changed since its stage started (fingerprint differs)")
        return stage, ds
    if data is None:
        if ckpt is None:
            raise ValueError(f"'{out_dir}': the first pretraining stage needs --data FILE.npz")
        raise ValueError(f"'{out_dir}': stage {len(ckpt['stages'])} is finished; a new stage needs --data FILE.npz")
    # the wrong width is refused here, nothing touched
    ds = loaded if loaded is not None else _stage_data(data, cfg.model.visible, n_inputs)
    stage = {"data": str(data), "path": str(Path(data).resolve()), "fingerprint": ds.fingerprint, "samples": len(ds),
             "epochs_per_layer": cfg.pretrain.epochs if epochs is None else epochs}
    return stage, ds
