"""On-disk format of trained nets: a folder with ``weights.safetensors`` and
``manifest.json``. No pickle anywhere; anyone can read it with ``safetensors`` + ``json``.

manifest.json (schema_version 1)::

    schema_version     1
    layerwise_version  "0.1.0"
    kind               "pretrained" | "finetuned"
    architecture       pretrained: {"type": "DeepBeliefNet", n_visible, hidden, unit, visible, layers}
                       finetuned:  {"type": "Classifier", sizes, n_labels, activation: "sigmoid",
                                    dropout_input, dropout_hidden}
    config             the resolved run config (as in config.toml)
    stages             [{data, fingerprint, samples, epochs_per_layer}]  pretraining data
    metrics            final metrics (e.g. test_accuracy)
    weights_sha256     sha256 of weights.safetensors
    parent             weights_sha256 of the artifact this one was made from, or null
    created            UTC time, ISO 8601

Writes are atomic (``_files.atomic_folder``): the folder is assembled under a temporary
name, every file fsynced, then renamed into place and the parent folder fsynced. A
pretrained artifact's files are made read-only. Loading checks the weights hash first.
Resumable training state is not an artifact: ``checkpointing`` writes it.
"""

from __future__ import annotations

import datetime as _dt
import json
import stat
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from layerwise._checks import InvalidInput
from layerwise._files import atomic_folder, sha256_file
from layerwise._version import __version__

SCHEMA_VERSION = 1
READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH  # 0444; writable artifacts are 0644
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"


def write_artifact(
    folder: str | Path,
    tensors: dict[str, torch.Tensor],
    *,
    kind: str,
    architecture: dict,
    config: dict,
    stages: list[dict] | None = None,
    metrics: dict | None = None,
    parent: str | None = None,
    read_only: bool = False,
) -> dict:
    """Write an artifact folder atomically; refuse to replace an existing one.
    Returns the manifest."""
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"artifact folder '{folder}' already exists; it is never overwritten")
    manifest: dict = {}

    def fill(tmp: Path) -> None:
        weights = tmp / WEIGHTS
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(weights))
        manifest.update(
            {
                "schema_version": SCHEMA_VERSION,
                "layerwise_version": __version__,
                "kind": kind,
                "architecture": architecture,
                "config": config,
                "stages": stages or [],
                "metrics": metrics or {},
                "weights_sha256": sha256_file(weights),
                "parent": parent,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
        )
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for p in (weights, tmp / MANIFEST):  # readable by all who share the folder; read-only: 0444
            p.chmod(READ_ONLY if read_only else READ_ONLY | stat.S_IWUSR)

    atomic_folder(folder, fill)
    return manifest


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder '{folder}' does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"'{folder}' is not a layerwise model: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"'{path}' is not valid JSON ({e}); the manifest is corrupt") from None
    if not isinstance(manifest, dict):
        raise InvalidInput(f"'{path}' is corrupt: it holds {json.dumps(manifest)[:40]}, not a JSON object")
    for key in ("schema_version", "kind", "architecture", "weights_sha256"):
        if key not in manifest:
            raise InvalidInput(f"'{path}' lacks the key '{key}'; the manifest is corrupt")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise InvalidInput(
            f"'{path}' has schema_version {manifest['schema_version']}; this layerwise reads {SCHEMA_VERSION}"
        )
    return manifest


def read_artifact(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load (tensors, manifest), refusing weights whose sha256 differs from the manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"'{weights}' is missing")
    digest = sha256_file(weights)
    if digest != manifest["weights_sha256"]:
        raise InvalidInput(
            f"'{weights}' does not match its manifest: sha256 is {digest}, the manifest records "
            f"{manifest['weights_sha256']} (size {weights.stat().st_size} bytes); the file was changed or truncated"
        )
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as e:  # pragma: no cover - the hash catches this first
        raise InvalidInput(f"'{weights}' is not a readable safetensors file ({e})") from None
    return tensors, manifest


def classifier_architecture(sizes: list[int], n_labels: int, dropout_input: float, dropout_hidden: float) -> dict:
    return {
        "type": "Classifier",
        "sizes": list(sizes),
        "n_labels": n_labels,
        "activation": "sigmoid",
        "dropout_input": dropout_input,
        "dropout_hidden": dropout_hidden,
    }


# looked up with None, too: a manifest whose architecture is not a table
ARCHITECTURE_KEYS: dict[str | None, tuple[str, ...]] = {
    "DeepBeliefNet": ("n_visible", "hidden", "unit", "visible"),
    "Classifier": ("sizes", "n_labels", "dropout_input", "dropout_hidden"),
}


def load_model(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the net an artifact holds: a DeepBeliefNet (pretrained) or an
    ``nn.Sequential`` classifier (finetuned). Returns (model, manifest)."""
    from layerwise.stack import DeepBeliefNet, build_classifier

    tensors, manifest = read_artifact(folder)
    arch = manifest["architecture"]
    needs = ARCHITECTURE_KEYS.get(arch.get("type") if isinstance(arch, dict) else None)
    if needs is None:
        raise InvalidInput(f"'{Path(folder) / MANIFEST}' is corrupt: unknown architecture {arch!r:.60}")
    missing = [k for k in needs if k not in arch]
    if missing:
        raise InvalidInput(
            f"'{Path(folder) / MANIFEST}' is corrupt: its architecture lacks {', '.join(map(repr, missing))}"
        )
    model: torch.nn.Module
    if arch["type"] == "DeepBeliefNet":
        model = DeepBeliefNet.from_architecture(arch)
    else:
        model = build_classifier(
            arch["sizes"], arch["n_labels"], dropout_input=arch["dropout_input"], dropout_hidden=arch["dropout_hidden"]
        )
    # a pretrained artifact holds parameters only (no momentum or chains): every
    # parameter must be there, and nothing else
    expected = dict(model.named_parameters()) if arch["type"] == "DeepBeliefNet" else model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise InvalidInput(
            f"'{Path(folder) / WEIGHTS}' does not fit the manifest's architecture: missing {missing}, "
            f"unexpected {unexpected}, wrong shape {wrong}"
        )
    model.load_state_dict(tensors, strict=False)
    model.eval()
    return model, manifest
