"""What the tricks lab measured, beside the guide's rules: the advisor's evidence.

A lab run writes ``findings.json`` (each experiment's verdict, the numbers behind it and
the setting layerwise recommends). The advisor (``advise``, ``check``) reads one: by
default the published MNIST lab, shipped with the package (``lab/findings.json``, a copy
of ``docs/lab/findings.json``), or a user's own with ``--findings``. Where a verdict is
not "holds", the rule's reason gains the measured finding and a link to its section.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from layerwise._checks import InvalidInput

PACKAGED = Path(__file__).parent.parent / "lab" / "findings.json"

# the advisor's rules (suggest's hyperparameter names and check's rule names) and the
# experiment of the lab that measured each
RULES = {
    "learning_rate": "averaging",
    "lr-with-workers": "averaging",
    "lr_by_correction": "rounds",
    "hidden": "widths",
    "hidden-not-smaller": "widths",
    "hidden-below-quarter": "bottleneck",
    "too-many-layers": "depth",
    "single-hidden-layer": "depth",
    "batch_size": "batch",
    "batch-size": "batch",
    "pretrain_epochs": "passes",
    "few-pretrain-epochs": "passes",
}
FIELDS = ("title", "anchor", "verdict", "why", "recommend")


def anchor(title: str) -> str:
    """The markdown anchor of a section titled ``title`` (as GitHub makes it)."""
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def load(path: str | Path | None = None) -> dict | None:
    """A lab's findings: ``path``, or the packaged ones when ``path`` is None (None when
    the package has none). A file given that is missing or malformed is an error that
    says what is wrong."""
    if path is None:
        if not PACKAGED.is_file():
            return None
        path = PACKAGED
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise InvalidInput(f"findings '{path}': cannot be read ({e.strerror or e})") from None
    except ValueError as e:
        raise InvalidInput(f"findings '{path}': not JSON ({e}); a lab run writes OUT/findings.json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("experiments"), dict):
        raise InvalidInput(f"findings '{path}': no 'experiments' object; a lab run writes OUT/findings.json")
    for name, exp in doc["experiments"].items():
        missing = [f for f in FIELDS if not isinstance(exp, dict) or not isinstance(exp.get(f), str)]
        if missing:
            raise InvalidInput(f"findings '{path}': experiment {name!r} lacks {', '.join(missing)}")
    return doc


def measured(rule: str, findings: dict | None) -> str | None:
    """The measured finding for an advisor's rule, where the lab's verdict is not "holds"
    (None where it holds, was not measured, or there are no findings)."""
    if not findings or rule not in RULES:
        return None
    exp = findings["experiments"].get(RULES[rule])
    if exp is None or exp["verdict"] == "holds":
        return None
    where = f"{findings.get('page', 'TRICKS.md')}#{exp['anchor']}"
    return (
        f"Measured on {findings.get('data', 'the data')} ({where}): the guide's rule {exp['verdict']}. "
        f"{exp['why']} layerwise recommends: {exp['recommend']}"
    )


def write(
    path: Path,
    experiments: list[tuple[ModuleType, dict]],
    *,
    data: str,
    budget: str,
    commit: str,
    date: str,
    page: str = "TRICKS.md",
) -> Path:
    """Write a lab's findings: ``experiments`` are (module, verdict) pairs."""
    from layerwise._files import atomic_write

    doc = {
        "data": data,
        "budget": budget,
        "commit": commit,
        "date": date,
        "page": page,
        "experiments": {
            m.NAME: {
                "title": m.TITLE,
                "anchor": anchor(m.TITLE),
                "verdict": v["verdict"],
                "why": v["why"],
                "recommend": v["recommend"],
            }
            for m, v in experiments
        },
    }
    atomic_write(Path(path), lambda f: f.write(json.dumps(doc, indent=1).encode()))
    return Path(path)
