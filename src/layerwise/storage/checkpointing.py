"""Resumable training state to and from disk.

A checkpoint is a tree: a dict of the ``state_dict()`` of each object that makes up a
training run (the net, the optimizer, the loop position, the guard, the fine-tuning or
pretraining progress) plus plain data (the records so far). ``flatten`` splits a tree
into its tensors, keyed by their path in the tree (``"model/layers.0.weight"``), and the
rest as JSON, where each tensor stands as ``{"__tensor__": path}``; ``unflatten`` puts it
back together. Integer keys (an optimizer state's parameter indices) survive the round
trip.

On disk a checkpoint is one ``state.safetensors`` whose header holds the JSON: readable
with ``safetensors`` + ``json``, no pickle. Writes are atomic (``_files.atomic_write``):
a crash during a save leaves the previous checkpoint, never a torn file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save

from layerwise._checks import InvalidInput
from layerwise._files import atomic_write

CHECKPOINT = "state.safetensors"
PREVIOUS = "state.prev.safetensors"  # the checkpoint before: a corrupt newest one is not the end of a long run
FORMAT = "3"  # 3: state trees with a sha256, the job and the data (2: without them; 1: flat tensor names, unversioned)
SEP = "/"
_TENSOR = "__tensor__"  # {"__tensor__": path}: a tensor stored under that path
_ITEMS = "__items__"  # {"__items__": [[key, value], ...]}: a dict with integer keys


def flatten(tree: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """(tensors by path, the rest of the tree as JSON-ready data)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node, path: str):
        below = lambda key: f"{path}{SEP}{key}" if path else str(key)
        if torch.is_tensor(node):
            tensors[path] = node
            return {_TENSOR: path}
        if isinstance(node, dict):
            if all(isinstance(k, str) for k in node):
                return {k: walk(v, below(k)) for k, v in node.items()}
            return {_ITEMS: [[k, walk(v, below(k))] for k, v in node.items()]}
        if isinstance(node, (list, tuple)):
            return [walk(v, below(i)) for i, v in enumerate(node)]
        return node

    return tensors, walk(tree, "")


def unflatten(tensors: dict[str, torch.Tensor], meta: Any) -> Any:
    """The tree that ``flatten`` split into ``tensors`` and ``meta``."""

    def walk(node):
        if isinstance(node, dict):
            if set(node) == {_TENSOR}:
                if node[_TENSOR] not in tensors:
                    raise InvalidInput(f"the checkpoint lacks the tensor '{node[_TENSOR]}' its header names")
                return tensors[node[_TENSOR]]
            if set(node) == {_ITEMS}:
                return {k: walk(v) for k, v in node[_ITEMS]}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(meta)


def _digest(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    """sha256 over the JSON and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(meta_json.encode())
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        # numpy declares the buffer protocol (__buffer__) to type checkers for Python 3.12+ only
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # type: ignore[arg-type]
    return h.hexdigest()


def save_checkpoint(folder: str | Path, tensors: dict[str, torch.Tensor], meta: Any) -> Path:
    """Atomically replace ``folder/state.safetensors`` with these tensors and the JSON
    ``meta`` (kept in the safetensors header with a sha256 of it all); the checkpoint it
    replaces stays as ``state.prev.safetensors``."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta_json = json.dumps(meta)
    blob = save(
        flat,
        metadata={"layerwise": meta_json, "layerwise_format": FORMAT, "layerwise_sha256": _digest(flat, meta_json)},
    )
    folder = Path(folder)
    for stale in folder.glob(f".{CHECKPOINT}.*.tmp*") if folder.is_dir() else ():
        stale.unlink()  # left by a writer that was killed mid-write (one writer: the folder is locked)
    return atomic_write(folder / CHECKPOINT, lambda f: f.write(blob), keep_previous=folder / PREVIOUS)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], Any]:
    """(tensors, meta) of one checkpoint file, its sha256 checked; ValueError otherwise."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            meta_json = header["layerwise"]
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(meta_json)
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError, ValueError) as e:
        raise InvalidInput(f"checkpoint '{path}' is unreadable ({type(e).__name__}: {e})") from None
    if header.get("layerwise_format", "1") != FORMAT:
        raise InvalidInput(
            f"checkpoint '{path}' is in checkpoint format {header.get('layerwise_format', '1')}; this layerwise reads "
            f"format {FORMAT}. Resume it with the layerwise version that wrote it, or delete the checkpoint folder "
            "to start over"
        )
    if _digest(tensors, meta_json) != header.get("layerwise_sha256"):
        raise InvalidInput(f"checkpoint '{path}' is corrupt: its contents do not match the sha256 in its header")
    return tensors, meta


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], Any]:
    """Read (tensors, meta) of a checkpoint folder; a clear error if it is missing, torn,
    corrupt or written in another format, which says whether the previous checkpoint is
    intact."""
    folder = Path(folder)
    path = folder / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    try:
        return _read(path)
    except ValueError as e:
        if "checkpoint format" in str(e) or not (folder / PREVIOUS).is_file():
            raise InvalidInput(f"{e}; delete '{folder}' to start over") from None
        try:
            _, meta = _read(folder / PREVIOUS)
        except ValueError:
            raise InvalidInput(
                f"{e}, and so is the previous one ('{PREVIOUS}'); delete '{folder}' to start over"
            ) from None
        raise InvalidInput(
            f"{e}. The previous checkpoint is intact ({_where(meta)}): to go on from there, "
            f"move '{folder / PREVIOUS}' to '{path}' and run the same command again; or delete "
            f"'{folder}' to start over"
        ) from None


def _where(meta) -> str:
    """Where a checkpoint stands, in words (for messages)."""
    loop = (meta.get("progress") or meta.get("finetune") or {}).get("loop") if isinstance(meta, dict) else None
    if not loop:
        return "its position unknown"
    layer = meta.get("progress", {}).get("layer") if meta.get("phase") == "pretrain" else None
    at = f"layer {layer + 1}, " if layer is not None else ""
    return f"{meta.get('phase', '?')}, {at}epoch {loop['epoch']}, batch {loop['batch']}"


def exists(folder: str | Path) -> bool:
    return (Path(folder) / CHECKPOINT).is_file()


_COMMANDS = {
    "train": "`layerwise train --resume RUN_FOLDER`",
    "stage": "`layerwise pretrain --resume FOLDER`",
    "finetune": "the same `layerwise finetune` command",
}


def save_state(folder: str | Path, tree: Any) -> Path:
    """Write a state tree as a checkpoint."""
    return save_checkpoint(folder, *flatten(tree))


def load_state(folder: str | Path, job: str | None = None, *, take=None) -> Any:
    """The state tree of a checkpoint folder; ``job`` (when given) must be the kind of job
    that wrote it. ``take(tensors, meta)`` may pick the tensors first (a worker's own)."""
    path = Path(folder) / CHECKPOINT
    tensors, meta = load_checkpoint(folder)
    if job is not None and meta.get("job") != job:
        raise InvalidInput(
            f"checkpoint '{path}' belongs to a {meta.get('job')!r} job, not to {job!r}: "
            f"continue it with {_COMMANDS.get(meta.get('job'), 'the command that started it')}"
        )
    try:
        return unflatten(take(tensors, meta) if take else tensors, meta)
    except ValueError as e:
        raise InvalidInput(f"checkpoint '{path}' is unreadable ({e})") from None
