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
import warnings
from dataclasses import dataclass
from pathlib import Path

from layerwise._checks import InvalidInput, parse_size
from layerwise._devices import device_generator
from layerwise.config import RunConfig, resolve_config
from layerwise.data.budget import check_fits
from layerwise.data.shards import StreamedDataset, scan
from layerwise.data.sources import open_data, validate
from layerwise.data.splits import loop_data
from layerwise.jobs.common import (
    build_net,
    checkpoint_policy,
    load_pretraining_state,
    open_checkpoint,
    other_device,
    pretrain_metrics,
    pretraining_state,
    remove_scratch,
)
from layerwise.runtime import resolve_device
from layerwise.storage import checkpointing
from layerwise.storage.artifacts import read_artifact, write_artifact
from layerwise.storage.runs import METRICS, continue_log, read_config, run_lock, write_config
from layerwise.training.loop import Checkpointer, LoopControl, LoopPosition
from layerwise.training.pretrain import PretrainProgress, pretrain


@dataclass
class StageResult:
    out_dir: Path
    stage: int
    artifact: Path
    manifest: dict
    seconds: float


def pretrain_stage(
    out_dir: str | Path,
    *,
    cfg: RunConfig | None = None,
    data: str | Path | None = None,
    epochs: int | None = None,
    device: str | None = None,
    max_memory: str | None = None,
    progress: bool = False,
    echo=None,
    control: LoopControl | None = None,
) -> StageResult | None:
    """One stage of staged pretraining.

    With ``cfg`` (a recipe), start ``out_dir`` and run stage 1 on ``data``. Without it,
    go on in ``out_dir``: finish an interrupted stage (``data`` may be omitted), or run a
    new stage on new ``data``. Each stage runs the greedy pass over every layer for
    ``epochs`` (default: the recipe's) and continues from the weights, momentum and
    generators where the previous stage left them. Data of the wrong width is refused
    before any change.

    ``data`` is a ``.npz`` (in memory unless above ``max_memory``, default the
    recipe's ``data.max_memory``), a ``.npy`` or a folder of shards (streamed). From a
    folder a stage takes the shards that no earlier stage has seen, by fingerprint, in
    name order, and records each one: feeding data is dropping files into the folder and
    running the same command again. Returns None when the folder holds nothing new.
    ``device`` overrides the recipe's.
    """
    out_dir = Path(out_dir)
    first = None  # a first stage's data, validated before its folder exists
    if cfg is not None:
        if data is None:
            raise InvalidInput("the first pretraining stage needs --data FILE.npz (or a .npy, or a folder of shards)")
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FileExistsError(f"output folder '{out_dir}' already exists; continue it with --resume {out_dir}")
        # bad data is refused before the folder exists
        first = _stage_data(data, cfg.model.visible, None, _bytes(max_memory or cfg.data.max_memory))
        n = first[0].n_features
        hidden = resolve_config(cfg, n).model.hidden
        assert hidden is not None  # resolve_config sets it
        check_fits([n, *hidden], 0, _rows_held(first[0]))
        out_dir.mkdir(parents=True, exist_ok=True)
        write_config(out_dir, cfg)
    cfg = read_config(out_dir, "staged pretraining folder")
    cfg.device = device or cfg.device
    with run_lock(out_dir):
        ckpt = open_checkpoint(out_dir, "stage")
        new = ckpt is None or ckpt["stage_done"]
        found = _stage_and_data(out_dir, cfg, ckpt, data, epochs, first, _bytes(max_memory or cfg.data.max_memory))
        if found is None:
            return None
        stage, ds = found
        if cfg.model.top_labels:
            raise InvalidInput(
                "[model] top_labels: staged pretraining trains on unlabelled data, and a top RBM that "
                "learns the labels needs them; use `layerwise train`"
            )
        dev = resolve_device(cfg.device)
        resolved = resolve_config(cfg, ds.n_features)
        dbn = build_net(resolved, ds.n_features, dev)
        generator = device_generator(dev, cfg.seed)
        records: list[dict]
        prog, records = PretrainProgress(), []
        if ckpt is not None:  # weights, momentum, PCD chains and generators go on
            load_pretraining_state(ckpt, dbn, generator, prog)
            other_device(ckpt.get("device", "cpu"), dev, out_dir)
            records = [] if new else ckpt["records"]
        before = [] if ckpt is None else ckpt["stages"]
        number = len(before) + 1
        # an interrupted stage replays what it logged after its checkpoint
        # not new: there is a checkpoint
        reporter = continue_log(out_dir / METRICS, None if new else ckpt["metrics_lines"], progress, echo)  # type: ignore[index]
        reporter.log(
            {
                "phase": "stage",
                "stage": number,
                "data": stage["data"],
                "samples": stage["samples"],
                "epochs_per_layer": stage["epochs_per_layer"],
                "resumed": not new,
            }
        )

        def save(pos, done=False):
            tree = {
                "job": "stage",
                "phase": "pretrain",
                "stage_done": done,
                "stage": stage,
                "stages": before + ([stage] if done else []),
                **pretraining_state(dbn, generator, prog),
                "records": records,
                "metrics_lines": reporter.lines,
                "device": str(dev),
                "streamed": data.streamed,
            }
            checkpointing.save_state(out_dir / "checkpoint", tree)

        t0 = time.perf_counter()
        # an interrupted stage goes on over data of the kind its epoch order was drawn for
        data = loop_data(ds, dev, labels=False, streamed=None if new else ckpt.get("streamed"))  # type: ignore[union-attr]  # not new: a checkpoint
        pretrain(
            dbn,
            data,
            None,
            dataclasses.replace(cfg.pretrain, epochs=stage["epochs_per_layer"]),
            seed=cfg.seed,
            reporter=reporter,
            progress=prog,
            generator=generator,
            records=records,
            checkpointer=Checkpointer(save, **checkpoint_policy(cfg)),
            guard=cfg.guard,
            scratch=out_dir / "activations",
            control=control,
        )
        remove_scratch(out_dir / "activations")
        seconds = time.perf_counter() - t0
        parent = read_artifact(out_dir / f"stage-{number - 1}")[1]["weights_sha256"] if number > 1 else None
        artifact = out_dir / f"stage-{number}"
        manifest = write_artifact(
            artifact,
            dbn.model_state(),
            kind="pretrained",
            architecture=dbn.architecture(),
            config=resolved.to_dict(),
            stages=before + [stage],
            metrics={**pretrain_metrics(records), "seconds": round(seconds, 2)},
            parent=parent,
            read_only=True,
        )
        prog.layer, prog.position = 0, LoopPosition()
        save(prog.position, done=True)  # the state the next stage starts from; a new stage starts a new guard
        reporter.log({"phase": "saved", "artifact": artifact.name, "sha256": manifest["weights_sha256"][:16]})
        return StageResult(out_dir, number, artifact, manifest, seconds)


def _bytes(size: str | None) -> int | None:
    return None if size is None else parse_size(size)


def _rows_held(ds) -> int:
    """Rows a stage holds in memory at once: all of them, or one block when streamed."""
    return ds.source.block_rows() if isinstance(ds, StreamedDataset) else len(ds)


def _stage_data(
    path: str | Path,
    visible: str,
    n_inputs: int | None,
    max_memory: int | None,
    seen: tuple | None = None,
    only: list[str] | None = None,
):
    """(the validated data of a stage, its shards' records); None when a folder holds no
    new shard. From a folder: the shards that ``seen`` (``_seen``) does not know, each
    checked and fingerprinted (a shard whose name, size and time match a shard fed before
    is not read again); ``only``: the files to take instead (an interrupted stage's own:
    the others are not even read)."""
    ds = open_data(path, max_memory=max_memory)
    if not isinstance(ds, StreamedDataset):
        ds = validate(ds, visible=visible, n_inputs=n_inputs)
        return ds, [{"file": Path(path).name, "fingerprint": ds.fingerprint, "samples": len(ds)}]
    folder = Path(path).is_dir()
    fingerprints, known = seen if (seen and folder) else (set(), {})
    keep = []
    for s in ds.source.shards:
        if only is not None and s.path.name not in only:
            continue
        if only is None and _stat(s.path) in known:  # fed before, unchanged: not read again
            continue
        scan(ds.source.subset([s], s.path.name), visible=visible, n_inputs=n_inputs)
        if only is not None or s.fingerprint not in fingerprints:
            keep.append(s)
    if not keep:
        return None
    fresh = StreamedDataset(ds.source.subset(keep, ds.name), ds.name)
    fresh.source.scanned = True
    return fresh, [
        {"file": name, "fingerprint": s.fingerprint, "samples": len(s), "bytes": size, "mtime_ns": mtime}
        for s in keep
        for name, size, mtime in [_stat(s.path)]
    ]


def _stat(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return path.name, st.st_size, st.st_mtime_ns


def _seen(ckpt: dict | None) -> tuple[set[str], set]:
    """(the fingerprints of every shard and data set an earlier stage was fed, the
    (name, bytes, time) of each such shard)."""
    stages = [] if ckpt is None else ckpt["stages"]
    shards = [sh for st in stages for sh in st.get("shards", [])]
    fingerprints = {st["fingerprint"] for st in stages} | {sh["fingerprint"] for sh in shards}
    return fingerprints, {(sh["file"], sh["bytes"], sh["mtime_ns"]) for sh in shards if "bytes" in sh}


def _stage_and_data(
    out_dir: Path,
    cfg: RunConfig,
    ckpt: dict | None,
    data,
    epochs: int | None,
    loaded=None,
    max_memory: int | None = None,
):
    """(the stage's record, its validated data; ``loaded``: ``data`` already read), or
    None when a folder holds nothing new. An interrupted stage goes on with its own
    data, unchanged; a new stage needs new data of the net's input width. Anything else
    is refused before a weight changes."""
    n_inputs = None if ckpt is None else int(ckpt["dbn"]["layers.0.weight"].shape[1])
    visible = cfg.model.visible
    if ckpt is not None and not ckpt["stage_done"]:
        # the stage's own data: where it was (from any working folder), or the same file
        # under another name or path (the fingerprint decides)
        stage = ckpt["stage"]
        only = [sh["file"] for sh in stage.get("shards", [])] if Path(stage["path"]).is_dir() else None
        found = _stage_data(data if data is not None else stage["path"], visible, n_inputs, max_memory, None, only)
        ds = None if found is None else found[0]
        if ds is None or ds.fingerprint != stage["fingerprint"]:
            if data is not None:
                raise InvalidInput(
                    f"'{out_dir}': stage {len(ckpt['stages']) + 1} on '{stage['data']}' was interrupted, and '{data}' "
                    "holds other data; finish the stage with --resume alone (or --data naming its file) before "
                    "feeding new data"
                )
            raise InvalidInput(f"'{stage['path']}' changed since its stage started (fingerprint differs)")
        return stage, ds
    if data is None:
        if ckpt is None:
            raise InvalidInput(f"'{out_dir}': the first pretraining stage needs --data FILE.npz")
        raise InvalidInput(
            f"'{out_dir}': stage {len(ckpt['stages'])} is finished; a new stage needs --data FILE.npz "
            "(or a folder of shards)"
        )
    # the wrong width is refused here, nothing touched
    found = loaded if loaded is not None else _stage_data(data, visible, n_inputs, max_memory, _seen(ckpt))
    if found is None:
        return None
    ds, taken = found
    if ckpt is not None and not Path(data).is_dir() and ds.fingerprint in _seen(ckpt)[0]:
        warnings.warn(
            f"'{data}' was fed to an earlier stage already; it is fed again, as asked", UserWarning, stacklevel=3
        )
    stage = {
        "data": str(data),
        "path": str(Path(data).resolve()),
        "fingerprint": ds.fingerprint,
        "samples": len(ds),
        "epochs_per_layer": cfg.pretrain.epochs if epochs is None else epochs,
        "shards": taken,
    }
    return stage, ds
