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

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save

from layerwise._files import atomic_write

CHECKPOINT = "state.safetensors"
FORMAT = "2"  # 2: state trees (1, before: flat tensor names, unversioned)
SEP = "/"
_TENSOR = "__tensor__"  # {"__tensor__": path}: a tensor stored under that path
_ITEMS = "__items__"  # {"__items__": [[key, value], ...]}: a dict with integer keys


def flatten(tree: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """(tensors by path, the rest of the tree as JSON-ready data)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node, path: str):
        below = (lambda key: f"{path}{SEP}{key}" if path else str(key))
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
                    raise ValueError(f"the checkpoint lacks the tensor '{node[_TENSOR]}' its header names")
                return tensors[node[_TENSOR]]
            if set(node) == {_ITEMS}:
                return {k: walk(v) for k, v in node[_ITEMS]}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(meta)


def save_checkpoint(folder: str | Path, tensors: dict[str, torch.Tensor], meta: Any) -> Path:
    """Atomically replace ``folder/state.safetensors`` with these tensors and the JSON
    ``meta`` (kept in the safetensors header)."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    blob = save(flat, metadata={"layerwise": json.dumps(meta), "layerwise_format": FORMAT})
    return atomic_write(Path(folder) / CHECKPOINT, lambda f: f.write(blob))


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], Any]:
    """Read (tensors, meta) of a checkpoint folder; a clear error if it is missing, torn,
    or written in another format."""
    from safetensors import safe_open

    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            meta = json.loads(header["layerwise"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"checkpoint '{path}' is unreadable ({type(e).__name__}: {e})") from None
    if header.get("layerwise_format", "1") != FORMAT:
        raise ValueError(
            f"checkpoint '{path}' is in checkpoint format {header.get('layerwise_format', '1')}; this layerwise reads "
            f"format {FORMAT}. Resume it with the layerwise version that wrote it, or delete the checkpoint folder "
            "to start over"
        )
    return tensors, meta


def exists(folder: str | Path) -> bool:
    return (Path(folder) / CHECKPOINT).is_file()


_COMMANDS = {"train": "`layerwise train --resume RUN_FOLDER`", "stage": "`layerwise pretrain --resume FOLDER`",
             "finetune": "the same `layerwise finetune` command"}


def save_state(folder: str | Path, tree: Any) -> Path:
    """Write a state tree as a checkpoint."""
    return save_checkpoint(folder, *flatten(tree))


def load_state(folder: str | Path, job: str | None = None, *, take=None) -> Any:
    """The state tree of a checkpoint folder; ``job`` (when given) must be the kind of job
    that wrote it. ``take(tensors, meta)`` may pick the tensors first (a worker's own)."""
    path = Path(folder) / CHECKPOINT
    tensors, meta = load_checkpoint(folder)
    if job is not None and meta.get("job") != job:
        raise ValueError(f"checkpoint '{path}' belongs to a {meta.get('job')!r} job, not to {job!r}: "
                         f"continue it with {_COMMANDS.get(meta.get('job'), 'the command that started it')}")
    try:
        return unflatten(take(tensors, meta) if take else tensors, meta)
    except ValueError as e:
        raise ValueError(f"checkpoint '{path}' is unreadable ({e})") from None
