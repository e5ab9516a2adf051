"""``layerwise models``: find the artifacts under a folder and show their lineage."""

from __future__ import annotations

import json
from pathlib import Path

from layerwise.artifacts import MANIFEST


def find_artifacts(root: str | Path) -> list[dict]:
    """Every readable manifest under ``root``, with its folder under the key ``path``.
    Unreadable manifests are listed with ``kind`` = "unreadable"."""
    rows = []
    for m in sorted(Path(root).rglob(MANIFEST)):
        if any(part.startswith(".") for part in m.parent.relative_to(root).parts):
            continue  # temporary folders of writes in progress
        try:
            manifest = json.loads(m.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            manifest = {"kind": "unreadable"}
        manifest["path"] = str(m.parent)
        rows.append(manifest)
    return rows


def _arch(m: dict) -> str:
    a = m.get("architecture", {})
    if a.get("type") == "DeepBeliefNet":
        return f"{a['unit']} " + "-".join(map(str, [a["n_visible"], *a["hidden"]]))
    if a.get("type") == "Classifier":
        return "mlp " + "-".join(map(str, [*a["sizes"], a["n_labels"]]))
    return "?"


def _metric(m: dict) -> str:
    metrics = m.get("metrics", {})
    if "test_accuracy" in metrics:
        return f"test {100 * metrics['test_accuracy']:.2f}%"
    ce = [v for k, v in metrics.items() if k.endswith("recon_ce_train")]
    return f"recon CE {ce[-1]:.2f}" if ce else ""


def table(rows: list[dict]) -> str:
    """A text table in lineage order: each net indented under the net it came from (a
    fine-tune under its pretrained net, a pretraining stage under the stage before)."""
    hashes = {r.get("weights_sha256") for r in rows}
    children: dict = {}
    for r in rows:
        if r.get("parent") in hashes:
            children.setdefault(r["parent"], []).append(r)
    header = f"{'kind':<14}{'architecture':<26}{'stages':>7}  {'metric':<18}{'sha256':<14}path"
    lines = [header, "-" * len(header)]
    seen: set = set()

    def emit(r, depth):
        if id(r) in seen:
            return
        seen.add(id(r))
        stages = len(r.get("stages", []))
        sha = (r.get("weights_sha256") or "")[:12]
        kind = "  " * depth + r.get("kind", "?")
        lines.append(f"{kind:<14}{_arch(r):<26}{stages:>7}  {_metric(r):<18}{sha:<14}{r['path']}")
        for c in children.get(r.get("weights_sha256"), []) if r.get("weights_sha256") else []:
            emit(c, depth + 1)

    for r in rows:
        if r.get("parent") not in hashes:
            emit(r, 0)
    for r in rows:  # anything left (a cycle would be a corrupt manifest) still shows
        emit(r, 0)
    return "\n".join(lines)
