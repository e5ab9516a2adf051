"""``layerwise models``: find the artifacts under a folder and show their lineage."""

from __future__ import annotations

import json
from pathlib import Path

from layerwise.storage.artifacts import MANIFEST


def find_artifacts(root: str | Path) -> list[dict]:
    """Every readable manifest under ``root``, with its folder under the key ``path``.
    Unreadable manifests are listed with ``kind`` = "unreadable"."""
    rows = []
    for m in sorted(Path(root).rglob(MANIFEST)):
        if any(part.startswith(".") for part in m.parent.relative_to(root).parts):
            continue  # temporary folders of writes in progress
        try:
            manifest = json.loads(m.read_text())
            why = None if isinstance(manifest, dict) else f"it holds {json.dumps(manifest)[:30]}, not a JSON object"
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            why = f"{type(e).__name__}: {e}"
        if why is None:
            try:
                _arch(manifest), _metric(manifest)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
                why = f"its {type(e).__name__.lower()} {e}: a key is missing or of the wrong kind"
        if why is not None:
            manifest = {"kind": "unreadable", "reason": why}
        manifest["path"] = str(m.parent)
        rows.append(manifest)
    return rows


def _arch(m: dict) -> str:
    if m.get("kind") == "unreadable":
        return "unreadable"
    a = m.get("architecture", {})
    if a.get("type") == "DeepBeliefNet":
        return f"{a['unit']} " + "-".join(map(str, [a["n_visible"], *a["hidden"]]))
    if a.get("type") == "Classifier":
        return "mlp " + "-".join(map(str, [*a["sizes"], a["n_labels"]]))
    if a.get("type") == "Estimator":  # a scikit-learn estimator saved by layerwise.sklearn
        return f"sklearn {a.get('class', '?')}"
    return "?"


def _metric(m: dict) -> str:
    if m.get("kind") == "unreadable":
        return m["reason"][:40]
    metrics = m.get("metrics", {})
    if "test_accuracy" in metrics:
        return f"test {100 * metrics['test_accuracy']:.2f}%"
    ce = [v for k, v in metrics.items() if k.endswith("recon_ce_train")]
    return f"recon CE {ce[-1]:.2f}" if ce else ""


def table(rows: list[dict]) -> str:
    """A text table in lineage order: each net indented under the net it came from (a
    fine-tune under its pretrained net, a pretraining stage under the stage before)."""
    sha = lambda r, key="weights_sha256": r.get(key) if isinstance(r.get(key), str) else None  # noqa: E731
    hashes = {sha(r) for r in rows} - {None}
    children: dict = {}
    for r in rows:
        if sha(r, "parent") in hashes:
            children.setdefault(sha(r, "parent"), []).append(r)
    entries: list = []  # (depth, row), in lineage order
    seen: set = set()

    def emit(r, depth):
        if id(r) in seen:
            return
        seen.add(id(r))
        entries.append((depth, r))
        for c in children.get(sha(r), []):
            emit(c, depth + 1)

    for r in rows:
        if sha(r, "parent") not in hashes:
            emit(r, 0)
    for r in rows:  # anything left (a cycle would be a corrupt manifest) still shows
        emit(r, 0)
    stages = lambda r: str(len(r["stages"]) if isinstance(r.get("stages"), list) else 0)  # noqa: E731
    cells = [
        ("  " * d + str(r.get("kind", "?")), _arch(r), stages(r), _metric(r), (sha(r) or "")[:12], r["path"])
        for d, r in entries
    ]
    names = ("kind", "architecture", "stages", "metric", "sha256", "path")
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]  # columns never run together

    def line(c) -> str:
        return "  ".join(v.rjust(w) if i == 2 else v.ljust(w) for i, (v, w) in enumerate(zip(c, widths))).rstrip()

    header = line(names)
    return "\n".join([header, "-" * len(header)] + [line(c) for c in cells])
