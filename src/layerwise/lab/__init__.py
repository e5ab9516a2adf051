"""The tricks lab: every claim of the guide as an experiment that anyone can rerun, on
MNIST or on their own data, each ending in a verdict with a plot (``layerwise lab``).

Each experiment is a module of this package (see ``core`` for what it declares); cells
are cached, so a rerun skips finished cells and a killed lab resumes where it was. The
page (``TRICKS.md``) collects the sections under a table of verdicts.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from layerwise._checks import InvalidInput
from layerwise.advice import evidence
from layerwise.lab import averaging, batch, blend, bottleneck, core, depth, passes, pretraining, rounds, stages, widths
from layerwise.lab.core import BUDGETS, Cache, load, run_experiment, section

EXPERIMENTS = {
    m.NAME: m for m in (averaging, rounds, widths, bottleneck, depth, pretraining, blend, stages, passes, batch)
}


def run_lab(
    names: list[str] | None = None,
    *,
    budget: str = "quick",
    data: str | None = None,
    test: str | None = None,
    out: str | Path = "lab",
    say=None,
    command: str = "",
) -> Path:
    """Run the experiments (all by default) and write, under ``out``: ``cells/`` (the
    cache), ``NAME.json`` and ``NAME.png`` per experiment, and ``TRICKS.md``. Returns the
    page's path."""
    names = list(names or EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise InvalidInput(f"unknown experiment {', '.join(map(repr, unknown))}; the lab has {', '.join(EXPERIMENTS)}")
    if budget not in BUDGETS:
        raise InvalidInput(f"unknown budget {budget!r}; one of {', '.join(BUDGETS)}")
    b = BUDGETS[budget]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lab_data = load(data, test)
    cache = Cache(out / "cells")
    t0 = time.perf_counter()
    sections, verdicts, compute, every = [], [], 0.0, []
    for name in names:
        module = EXPERIMENTS[name]
        records = run_experiment(module, lab_data, b, cache, say)
        v = module.verdict(records, b)
        compute += sum(r["seconds"] for r in records)
        every += records
        png: Path | None = out / f"{name}.png"
        try:
            module.plot(records, png)
        except ImportError:
            png = None
        (out / f"{name}.json").write_text(
            json.dumps(
                {
                    "experiment": name,
                    "budget": b.__dict__,
                    "data": lab_data.name,
                    "fingerprint": lab_data.fingerprint,
                    "records": records,
                    "verdict": v,
                },
                indent=1,
            )
        )
        sections.append(section(module, v, png.name if png else None))
        verdicts.append((module, v))
    page = out / "TRICKS.md"
    page.write_text(
        _page(verdicts, sections, b, lab_data, command, time.perf_counter() - t0, compute, core.provenance(every))
    )
    evidence.write(
        out / "findings.json",
        verdicts,
        data=lab_data.name,
        budget=b.name,
        commit=core.commit(),
        date=time.strftime("%Y-%m-%d"),
    )
    return page


def _page(verdicts, sections, budget, data, command: str, seconds: float, compute: float, ran: str) -> str:
    import os

    import torch

    head = [
        "# The guide's tricks, measured",
        "",
        f"Data: {data.name} ({len(data.x)} training, {len(data.xt)} test images; fingerprint "
        f"{data.fingerprint[:12]}). Budget: `{budget.name}` (up to {budget.train} training samples, "
        f"{budget.pretrain_epochs} pretraining and {budget.finetune_epochs} fine-tuning epochs unless an "
        f"experiment says otherwise).",
        f"Command: `{command or 'layerwise lab'}`; commit {core.commit()}; {time.strftime('%Y-%m-%d')}; "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}. The cells took "
        f"{compute / 3600:.1f} hours of training in all (each cell's time when it ran, cached cells included; "
        f"this command: {seconds / 60:.1f} minutes). The page was built at that commit; {ran}.",
        "",
        "Each verdict holds on this data and budget only; rerun `layerwise lab --data TRAIN.npz --test TEST.npz` "
        "for yours.",
        "",
        "| trick | verdict | layerwise recommends |",
        "|---|---|---|",
    ]
    head += [f"| [{m.TITLE}](#{evidence.anchor(m.TITLE)}) | {v['verdict']} | {v['recommend']} |" for m, v in verdicts]
    return "\n".join(head + [""] + sections)


def publish(out: str | Path, docs: str | Path = "docs") -> Path:
    """Copy a lab's page into ``docs/TRICKS.md``, with its JSON, plots and findings under
    ``docs/lab/`` (the page's image links rewritten to point there). Published into this
    repository's own ``docs``, the findings also become the advisor's (the package's
    ``lab/findings.json``)."""
    import re
    import shutil

    out, docs = Path(out), Path(docs)
    page = (out / "TRICKS.md").read_text()
    (docs / "lab").mkdir(parents=True, exist_ok=True)
    names = re.findall(r"!\[([\w-]+)\]\(\1\.png\)", page)
    for name in {*names, *(p.stem for p in out.glob("*.json") if p.stem != "findings")}:
        for suffix in (".json", ".png"):
            if (out / f"{name}{suffix}").is_file():
                shutil.copy2(out / f"{name}{suffix}", docs / "lab" / f"{name}{suffix}")
    page = re.sub(r"!\[([\w-]+)\]\(\1\.png\)", lambda m: f"![{m.group(1)}](lab/{m.group(1)}.png)", page)
    (docs / "TRICKS.md").write_text(page)
    if (out / "findings.json").is_file():
        found = json.loads((out / "findings.json").read_text())
        found["page"] = f"{docs.name}/TRICKS.md"
        text = json.dumps(found, indent=1)
        (docs / "lab" / "findings.json").write_text(text)
        if docs.resolve() == REPOSITORY_DOCS.resolve():
            evidence.PACKAGED.write_text(text)
    return docs / "TRICKS.md"


REPOSITORY_DOCS = Path(__file__).parents[3] / "docs"  # src/layerwise/lab -> the repository's docs
