"""The guide's rules of thumb as code: a suggested net and hyperparameters, and checks
that a recipe meets the rules, each with its reason.

Layer sizes (the guide, and Hinton & Salakhutdinov 2006): every hidden layer smaller than
the input (else the net can learn the identity function), none below a quarter of the
input, 3-4 layers counting the output, and the output as wide as the number of labels:
784 -> 500 -> 250 -> 10.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from layerwise._checks import check_int
from layerwise.advice import evidence
from layerwise.config import RunConfig, suggest_layers  # noqa: F401 - the guide's rule, re-exported beside the advice

SEVERITIES = ("error", "warning", "note")


def corrected_lr(lr: float, workers: int, correction: str) -> float:
    """The single-worker learning rate scaled for ``workers`` averaged replicas."""
    if correction == "sqrt":
        return lr * math.sqrt(workers)
    if correction == "linear":
        return lr * workers
    return lr


def _findings(findings):
    return evidence.load() if findings is PUBLISHED else findings


PUBLISHED = "published"  # findings: the lab published with the package (layerwise.advice.evidence)


def suggest(n_inputs: int, n_labels: int, *, workers: int = 1, samples: int | None = None, findings=PUBLISHED) -> dict:
    """A net and hyperparameters for the data's shape, each value with its reason (the
    guide's rule, and where a lab's ``findings`` disagree with it, what was measured).
    Returns plain data: {"layers": [...], "hyperparameters": {name: {"value", "why"}}}."""
    check_int("suggest", "n_inputs", n_inputs, low=2)
    check_int("suggest", "n_labels", n_labels, low=2)
    check_int("suggest", "workers", workers, low=1)
    hidden = suggest_layers(n_inputs)
    batch = 100 if samples is None else max(10, min(100, samples // 100))
    hp: dict[str, dict[str, Any]] = {
        "hidden": {
            "value": hidden,
            "why": (
                f"every hidden layer smaller than the {n_inputs} inputs (a layer as wide as its input can learn "
                f"the identity function), none below a quarter of them ({math.ceil(n_inputs / 4)}), 3 layers of "
                f"weights in all"
            ),
        },
        "output": {"value": n_labels, "why": "one output unit per label"},
        "learning_rate": {
            "value": 0.01,
            "why": (
                "0.01, as parameter averaging over workers diverges at higher rates (run `layerwise probe-lr` for "
                "your data)"
            ),
        },
        "batch_size": {"value": batch, "why": "minibatches of 10-100 examples (Hinton's practical guide, section 3)"},
        "pretrain_epochs": {"value": 30, "why": "Hinton & Salakhutdinov pretrained each layer for 30 passes"},
        "momentum": {"value": [0.5, 0.9], "why": "0.5 for the first 5 epochs, then 0.9 (Hinton's practical guide)"},
        "weight_decay": {
            "value": 2e-4,
            "why": (
                "Hinton & Salakhutdinov used 2e-4; the practical guide suggests 1e-5 to 1e-2 to keep RBM weights small"
            ),
        },
    }
    if workers > 1:
        hp["averaging_frequency"] = {
            "value": 5,
            "why": (
                "average parameters every 5 minibatches: every batch costs traffic, more than about 20 lets "
                "the replicas drift apart"
            ),
        }
        hp["lr_by_correction"] = {
            "value": {c: corrected_lr(0.01, workers, c) for c in ("none", "sqrt", "linear")},
            "why": f"the single-worker rate scaled for {workers} workers; the guide keeps it at 0.01",
        }
    findings = _findings(findings)
    for name, item in hp.items():
        found = evidence.measured(name, findings)
        if found:
            item["why"] = f"the guide: {item['why']}. {found}"
    return {"layers": [n_inputs, *hidden, n_labels], "hyperparameters": hp}


@dataclass
class Finding:
    rule: str
    severity: str  # "error" | "warning" | "note"
    found: str
    why: str
    fix: str

    def to_dict(self) -> dict:
        return asdict(self)


def check(
    cfg: RunConfig,
    *,
    n_inputs: int | None = None,
    n_labels_in_data: int | None = None,
    data_range: tuple[float, float] | None = None,
    has_validation: bool | None = None,
    workers: int = 1,
    findings=PUBLISHED,
) -> list[Finding]:
    """The guide's rules against a recipe (and what is known of its data). Errors stop a
    run before any work; warnings and notes are shown. Where a lab's ``findings``
    disagree with a rule, its reason gives what was measured too."""
    out: list[Finding] = []
    add = lambda *a: out.append(Finding(*a))  # noqa: E731
    m, p, f = cfg.model, cfg.pretrain, cfg.finetune
    hidden = m.hidden or (suggest_layers(n_inputs) if n_inputs else None)
    if hidden and n_inputs:
        for i, h in enumerate(hidden):
            if h >= n_inputs:
                if m.unit == "autoencoder":
                    add(
                        "hidden-not-smaller",
                        "warning",
                        f"hidden layer {i + 1} has {h} units for {n_inputs} inputs",
                        "an autoencoder layer at least as wide as the input can learn the identity function and "
                        "no useful features",
                        f"use fewer than {n_inputs} units, or more masking noise",
                    )
                else:
                    add(
                        "hidden-not-smaller",
                        "note",
                        f"hidden layer {i + 1} has {h} units for {n_inputs} inputs",
                        "the guide keeps hidden layers smaller than the input against the identity function; "
                        "stochastic binary RBM units cannot copy their input, and Hinton's net has a "
                        "2000-unit top layer",
                        "none needed for RBMs; keep it below the input for autoencoders",
                    )
            if h < n_inputs / 4:
                add(
                    "hidden-below-quarter",
                    "warning",
                    f"hidden layer {i + 1} has {h} units, below a quarter of the {n_inputs} inputs",
                    "the guide keeps every layer at a quarter of the input or more: a narrower layer loses "
                    "information the classifier needs",
                    f"use at least {math.ceil(n_inputs / 4)} units",
                )
    if hidden:
        if len(hidden) > 4:
            add(
                "too-many-layers",
                "warning",
                f"{len(hidden)} hidden layers",
                "the guide suggests 3-4 layers; deeper stacks of sigmoid layers cost time for little gain here",
                "use 2-3 hidden layers",
            )
        if len(hidden) == 1:
            add(
                "single-hidden-layer",
                "note",
                "one hidden layer",
                "with one hidden layer this is a perceptron with one pretrained layer, not a deep net",
                "add a second hidden layer, e.g. "
                + "-".join(map(str, suggest_layers(n_inputs) if n_inputs else [500, 250])),
            )
    if cfg.data.n_labels is not None and n_labels_in_data is not None and cfg.data.n_labels != n_labels_in_data:
        add(
            "output-not-labels",
            "error",
            f"the output has {cfg.data.n_labels} units (data.n_labels) but the training data has {n_labels_in_data} labels",
            "the output layer needs one unit per label",
            f"set data.n_labels = {n_labels_in_data} or remove it",
        )
    corr = cfg.distributed.lr_correction
    effective = max(corrected_lr(p.learning_rate, workers, corr), corrected_lr(f.learning_rate, workers, corr))
    if workers > 1 and effective > 0.01:
        add(
            "lr-with-workers",
            "warning",
            f"learning rate {effective:g} with {workers} workers"
            + (f" (after lr_correction = {corr!r})" if corr != "none" else ""),
            "averaged replicas diverge at high learning rates, so the guide keeps 0.01 for distributed training",
            f"measure the stable rate with `layerwise probe-lr RECIPE --workers {workers}`, "
            "or use learning_rate = 0.01 or lower",
        )
    freq = cfg.distributed.averaging_frequency
    if workers > 1 and freq == 1:
        add(
            "averaging-frequency",
            "warning",
            "distributed.averaging_frequency is 1 (every minibatch)",
            "averaging after every minibatch spends most of the time on traffic for little gain "
            "(measured: one round of the 1.67M-parameter net costs about half a fine-tuning step)",
            "set distributed.averaging_frequency to 5",
        )
    elif workers > 1 and freq > 20:
        add(
            "averaging-frequency",
            "warning",
            f"distributed.averaging_frequency is {freq}",
            "replicas that train alone for more than about 20 minibatches drift apart, and their average "
            "converges more slowly",
            "set distributed.averaging_frequency to 5-20",
        )
    for phase, b in (("pretrain", p.batch_size), ("finetune", f.batch_size)):
        if not 10 <= b <= 100:
            add(
                "batch-size",
                "warning",
                f"{phase}.batch_size is {b}",
                "minibatches of 10-100 examples balance gradient noise against speed (Hinton's practical guide)",
                f"set {phase}.batch_size between 10 and 100",
            )
    if p.epochs < 10:
        add(
            "few-pretrain-epochs",
            "warning",
            f"pretrain.epochs is {p.epochs}",
            "Hinton & Salakhutdinov pretrained each layer for 30 passes; fewer than 10 leave the features unfinished",
            "set pretrain.epochs to 30, or accept weaker pretraining for speed",
        )
    no_val = f.train_on_validation or has_validation is False
    if no_val:
        sev = "note" if f.patience is None else "warning"
        add(
            "no-validation",
            sev,
            "fine-tuning has no held-out validation data"
            + (" (train_on_validation joins it to the training data)" if f.train_on_validation else ""),
            "early stopping needs held-out data to pick the epoch; without it the epoch count must be chosen "
            "beforehand on a validation split",
            "keep a validation split, or fix finetune.epochs from a validation run",
        )
    if m.visible == "bernoulli" and data_range is not None and (data_range[0] < 0 or data_range[1] > 1):
        add(
            "bernoulli-range",
            "error",
            f"inputs span [{data_range[0]:g}, {data_range[1]:g}] for Bernoulli visible units",
            "Bernoulli visible units model probabilities in [0, 1]",
            'rescale to [0, 1], or standardize and set model.visible = "gaussian"',
        )
    findings = _findings(findings)
    for fd in out:
        found = evidence.measured(fd.rule, findings)
        if found:
            fd.why = f"the guide: {fd.why}. {found}"
    return out


def format_findings(findings: list[Finding]) -> str:
    if not findings:
        return "no findings: the recipe follows the guide's rules"
    lines = []
    for fd in findings:
        lines.append(f"{fd.severity.upper():<8}{fd.rule}: {fd.found}")
        lines.append(f"        why: {fd.why}")
        lines.append(f"        fix: {fd.fix}")
    return "\n".join(lines)


def data_facts(cfg) -> tuple[dict | None, str | None]:
    """What the rules need to know of a ``[data]`` config's data, read without validating
    it (so bad data becomes a finding, not an exception): n_inputs, n_labels, range,
    whether validation data exists. (None, why) where the data is not at hand or cannot
    be read: nothing is downloaded here."""
    import numpy as np

    from layerwise.data.sources import MNIST_NPZ, Dataset, Splits, cache_dir, load_digits, load_mnist, open_data

    total = held = None  # rows of data streamed from disk (the first are inspected), rows it holds at once
    try:
        if cfg.source == "mnist":
            if not (cache_dir() / MNIST_NPZ).exists():
                return None, "MNIST is not downloaded yet: `layerwise data fetch mnist`, or train, fetches it"
            splits = load_mnist()
        elif cfg.source == "digits":
            splits = load_digits()
        else:
            from layerwise._checks import parse_size

            train = open_data(cfg.train, max_memory=None if cfg.max_memory is None else parse_size(cfg.max_memory))
            if not isinstance(train, Dataset):  # streamed from disk: its first rows speak for it
                x, y = train.head(20000)
                total, held, train = len(train), train.source.block_rows(), Dataset(x, y, train.name)
            splits = Splits(train, open_data(cfg.validation) if cfg.validation else None, None, None)
    except (OSError, ValueError, ImportError) as e:
        return None, str(e)
    # in memory: MNIST and digits are, and streamed data was read into a Dataset above
    x, y = np.asarray(splits.train.x), splits.train.y  # type: ignore[union-attr]
    if x.ndim != 2 or x.shape[1] == 0 or not np.issubdtype(x.dtype, np.number):
        return None, f"{splits.train.name}: array 'x' is not a 2-D numeric array with features (shape {x.shape})"
    if y is not None and not (np.issubdtype(np.asarray(y).dtype, np.number) and np.isfinite(y).all()):
        y = None  # not labels: the data check says so, with the file
    finite = x[np.isfinite(x)]
    return {
        "n_inputs": int(x.shape[1]),
        "n_labels": None if y is None or len(y) == 0 else int(np.max(y)) + 1,
        "range": (float(finite.min()), float(finite.max())) if finite.size else None,
        "has_validation": True,  # a split is held out when no validation file is given
        "samples": int(x.shape[0] if total is None else total),
        "rows_in_memory": int(x.shape[0] if held is None else held),
    }, None


def recipe_findings(cfg: RunConfig, *, workers: int = 1, evidence=PUBLISHED) -> tuple[list[Finding], str | None]:
    """The findings for a recipe, with its data inspected where it can be read; and, when
    it could not, why (the data rules were then skipped). ``evidence``: a lab's findings
    (see ``check``)."""
    facts, why = data_facts(cfg.data)
    if facts is None:
        return check(cfg, workers=workers, findings=evidence), why
    findings = check(
        cfg,
        n_inputs=facts["n_inputs"],
        n_labels_in_data=facts["n_labels"],
        data_range=facts["range"],
        has_validation=facts["has_validation"],
        workers=workers,
        findings=evidence,
    )
    return findings + _memory_findings(cfg, facts), None


def _memory_findings(cfg: RunConfig, facts: dict) -> list[Finding]:
    """The memory rule: a net and data that cannot fit are an error before any work."""
    from layerwise.data.budget import check_fits

    hidden = cfg.model.hidden or suggest_layers(max(facts["n_inputs"], 2))
    try:
        # streamed data holds one block at a time
        samples = min(facts["rows_in_memory"], cfg.data.train_limit or facts["samples"])
        check_fits([facts["n_inputs"], *hidden], cfg.data.n_labels or facts["n_labels"] or 2, samples)
    except ValueError as e:
        return [
            Finding(
                "memory",
                "error",
                str(e),
                "a run that cannot fit fails halfway, after writing",
                "see above: smaller hidden layers, fewer samples, or the right labels",
            )
        ]
    return []
