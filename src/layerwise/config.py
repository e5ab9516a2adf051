"""Typed run configuration: TOML in, validated dataclasses, TOML out.

A recipe has the sections ``[data]``, ``[model]``, ``[pretrain]``, ``[finetune]``,
``[checkpoint]``, ``[guard]``, ``[distributed]`` and the top-level keys ``name``, ``seed``
and ``threads``. Unknown keys raise ``ValueError`` naming the key
(``pretrain.learning_rat``) and, for typos, the nearest valid key; wrong types and values
raise ``ValueError`` in the one message form of ``_checks``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from layerwise._checks import (
    InvalidInput,
    check_bool,
    check_choice,
    check_device,
    check_int,
    check_range,
    check_str,
    describe,
    fail,
    parse_size,
)
from layerwise.recipe_rules import CHOICES, FILE_SOURCES, NONE_MEANS_OFF, limits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class DataConfig:
    source: str = "mnist"  # "mnist" | "digits" | "files" ("npz" is the same) | "idx" | "csv" | "images" | "npy"
    train: str | None = None  # .npz with x and y, .npy, or a folder of shards, when source = "files"; see formats
    validation: str | None = None  # optional .npz; else validation_fraction of train is held out
    test: str | None = None  # optional .npz
    validation_fraction: float = 0.1
    n_labels: int | None = None  # default: inferred from the training labels (max + 1)
    train_limit: int | None = None  # use only the first N training samples (quick trials)
    max_memory: str | None = None  # e.g. "600M": training inputs above this are streamed from disk
    label_column: str = "label"  # CSV: the labels' column, by header name or 0-based index ("0")
    image_size: list[int] | None = None  # image folders: [height, width] to resize every image to


@dataclass
class ModelConfig:
    unit: str = "rbm"  # "rbm" | "autoencoder"
    visible: str = "bernoulli"  # "bernoulli" (inputs in [0, 1]) | "gaussian" (standardized)
    hidden: list[int] | None = None  # default: the guide's rule, 784 -> [500, 250]
    init_std: float | None = None  # weights ~ N(0, init_std^2); default: 0.01 for RBMs, Glorot-uniform for autoencoders
    top_labels: bool = False  # the top RBM learns the labels joined to its visible layer (Hinton et al. 2006)


@dataclass
class PretrainConfig:
    epochs: int = 30  # per layer (Hinton & Salakhutdinov 2006)
    batch_size: int = 100
    learning_rate: float = 0.01
    momentum: float = 0.5  # for the first momentum_switch_epoch epochs ...
    final_momentum: float = 0.9  # ... then this (Hinton's practical guide)
    momentum_switch_epoch: int = 5
    weight_decay: float = 2e-4
    cd_k: int = 1
    persistent: bool = False
    sparsity_target: float | None = None
    sparsity_cost: float = 0.0
    noise: float = 0.25  # masking noise of denoising autoencoders
    monitor_samples: int = 5000  # samples used for the per-epoch metrics


@dataclass
class FinetuneConfig:
    epochs: int = 50
    batch_size: int = 100
    optimizer: str = "sgd"  # "sgd" | "adam"
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # "constant" | "exponential" | "cosine"
    lr_decay: float = 0.98  # per-epoch factor of the exponential schedule
    dropout_input: float = 0.0
    dropout_hidden: float = 0.0
    patience: int | None = 10  # early stopping on validation loss; none = run all epochs
    train_on_validation: bool = False  # fit on train + validation for a fixed epoch count
    max_norm: float | None = None  # cap on each unit's incoming weight norm after every step; none = off
    fused: bool = True  # the hand-written fp32 step of the sigmoid classifier (fused.py); false: autograd


@dataclass
class DistributedConfig:
    averaging_frequency: int = 5  # average parameters every N minibatches (deeplearning4j's default)
    average_optimizer_state: bool = False  # also average momentum / Adam state
    lr_correction: str = "none"  # "none" | "sqrt" | "linear": scale the learning rate for N workers
    timeout_minutes: float = 10.0  # a worker that hangs this long fails the others
    outer_optimizer: str = "none"  # "none" | "nesterov": DiLoCo's outer step on the averaged change
    outer_lr: float = 0.7  # outer learning rate (DiLoCo: 0.7); 1 with momentum 0 is plain averaging
    outer_momentum: float = 0.9  # outer Nesterov momentum (DiLoCo: 0.9)


@dataclass
class GuardConfig:
    enabled: bool = True
    lr_factor: float = 0.5  # learning rate multiplier after each rollback
    max_rollbacks: int = 3  # then stop with a diagnosis
    max_growth: float = 1000.0  # weight norm past this multiple of its start is divergence
    rising_epochs: int = 3  # the monitored loss > 5% above its best this many epochs running is divergence
    check_every: int = 10  # batches between NaN/Inf checks of the weights
    max_dead: float = 0.5  # more saturated hidden units than this fraction is divergence
    max_drift: float = 0.5  # distributed: replicas farther apart than this (relative) is divergence
    drift_floor: float = 0.1  # ... relative to the average, or to this RMS per entry if the weights are smaller


@dataclass
class CheckpointConfig:
    every_epochs: int | None = 1  # a resumable checkpoint after every N epochs
    every_minutes: float | None = 5.0  # and whenever this much time has passed (checked per batch)
    every_batches: int | None = None  # and every N batches (fine-grained; mostly for tests)


@dataclass
class LogConfig:
    tensorboard: str | None = None  # a folder for TensorBoard event files (the metrics log stays the record)


@dataclass
class RunConfig:
    name: str | None = None
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # "auto" (CUDA when available, else CPU) | "cpu" | "cuda" | "cuda:N"
    precision: str = "fp32"  # of the matrix products: "fp32" | "tf32" (CUDA) | "bf16"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


OWNER = "the recipe"  # config errors read "The 'pretrain.epochs' parameter of the recipe must be ..."


def _coerce(key: str, value, tp):
    """Check ``value`` against the annotation ``tp`` and the key's bounds and choices;
    return it converted. Raises TypeError or ValueError in the _checks form."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        if value is None or (key in NONE_MEANS_OFF and isinstance(value, str) and value.lower() == "none"):
            return None
        return _coerce(key, value, inner)
    if origin is list:
        (inner,) = args
        if not isinstance(value, list) or not value:
            fail(OWNER, key, "a non-empty list of ints", value, TypeError, show_type=True)
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if tp is bool:
        return check_bool(OWNER, key, value)
    if tp is int:
        bounds = limits(key)
        assert not bounds.get("low_open") and not bounds.get("high_open"), key  # integer bounds are closed
        return check_int(OWNER, key, value, low=bounds.get("low"), high=bounds.get("high"))
    if tp is float:
        return check_range(OWNER, key, value, **limits(key))
    if tp is str:
        check_str(OWNER, key, value)
        return check_choice(OWNER, key, value, CHOICES[key]) if key in CHOICES else value
    raise TypeError(f"unsupported config type {tp} for '{key}'")  # pragma: no cover


def _build(cls, section: dict, prefix: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in section.items():
        full = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise InvalidInput(f"unknown config key '{full}'{hint} (valid keys: {', '.join(fields)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                fail(OWNER, full, f"a table [{full}]", value)
            kwargs[key] = _build(tp, value, f"{full}.")
            continue
        try:
            kwargs[key] = _coerce(full, value, tp)
        except TypeError as e:  # a recipe's every mistake is a ValueError
            raise InvalidInput(str(e)) from None
    return cls(**kwargs)


def check_name(name: str | None) -> str | None:
    """A run name names one folder: one path component, not '.' or '..'."""
    if name is not None and (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name):
        fail(OWNER, "name", "one path component (a folder name: no '/', not '.' or '..')", name)
    return name


# what a run adds to the config it records (manifests): not a recipe's to set
RECORDED = {"distributed": ("workers", "effective_learning_rates")}


def from_recorded(d: dict) -> RunConfig:
    """The RunConfig of a config that a run recorded in a manifest."""
    d = {
        k: ({kk: vv for kk, vv in v.items() if kk not in RECORDED.get(k, ())} if isinstance(v, dict) else v)
        for k, v in d.items()
    }
    return from_dict(d)


def from_dict(d: dict) -> RunConfig:
    """Validate a nested dict (as TOML gives) into a RunConfig."""
    cfg = _build(RunConfig, d, "")
    check_name(cfg.name)
    p = cfg.pretrain
    if p.sparsity_cost and p.sparsity_target is None:
        raise InvalidInput(f"{describe(OWNER, 'pretrain.sparsity_cost')} is set but 'pretrain.sparsity_target' is not.")
    check_device(cfg.device, OWNER)
    if cfg.data.max_memory is not None:
        try:
            parse_size(cfg.data.max_memory)
        except ValueError:
            fail(OWNER, "data.max_memory", "a size such as '600M' or '2G'", cfg.data.max_memory)
    files = cfg.data.source in FILE_SOURCES
    if files and not cfg.data.train:
        fail(
            OWNER, "data.train", f"the path of the training data when data.source = {cfg.data.source!r}", cfg.data.train
        )
    if not files:
        for key in ("train", "validation", "test"):
            if getattr(cfg.data, key):
                raise InvalidInput(
                    f"{describe(OWNER, 'data.' + key)} is only used with data.source = 'files'; "
                    f"data.source is {cfg.data.source!r}."
                )
    size = cfg.data.image_size
    if size is not None and (len(size) != 2 or min(size) < 1):
        fail(OWNER, "data.image_size", "[height, width], two whole numbers of at least 1", size)
    if cfg.model.top_labels and cfg.model.unit != "rbm":
        fail(
            OWNER,
            "model.top_labels",
            "false for model.unit = 'autoencoder' (only an RBM learns the labels)",
            cfg.model.top_labels,
        )
    if cfg.model.unit == "autoencoder" and cfg.model.visible != "bernoulli":
        fail(OWNER, "model.visible", "'bernoulli' for model.unit = 'autoencoder'", cfg.model.visible)
    return cfg


def load(path: str | Path, *, require_data: bool = True) -> RunConfig:
    """Read and validate a TOML recipe. The run name defaults to the file stem. A recipe
    must say which data it trains on (``[data]``), unless ``require_data`` is False (a
    staged pretraining gets its data from the command line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe '{path}' does not exist")
    try:
        d = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidInput(
            f"recipe '{path}' is not UTF-8 text (byte {e.object[e.start]:#04x} at position {e.start}); save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"recipe '{path}' is not valid TOML: {e}") from None
    try:
        cfg = from_dict(d)
    except ValueError as e:
        raise InvalidInput(f"recipe '{path}': {e}") from None
    if require_data and "data" not in d:
        raise InvalidInput(
            f"recipe '{path}' has no [data] section; say which data to train on, for example "
            '[data] source = "digits", or source = "npz" with train = "train.npz"'
        )
    if cfg.name is None:
        cfg.name = path.stem
    if cfg.data.source in FILE_SOURCES:  # file paths in a recipe are relative to the recipe
        for key in ("train", "validation", "test"):
            value = getattr(cfg.data, key)
            if value:  # a pair ("x.npy,y.npy") names two files
                setattr(
                    cfg.data,
                    key,
                    ",".join(
                        p.strip() if Path(p.strip()).is_absolute() else str((path.parent / p.strip()).resolve())
                        for p in value.split(",")
                    ),
                )
    return cfg


def to_toml(cfg: RunConfig) -> str:
    """The resolved config as TOML. TOML has no null: a None whose default is None is
    left out, any other None is written as "none" (which the reader takes as None)."""
    d, defaults = cfg.to_dict(), RunConfig().to_dict()

    def entries(values: dict, dflt: dict) -> dict:
        return {
            k: "none" if v is None else v
            for k, v in values.items()
            if not isinstance(v, dict) and (v is not None or dflt[k] is not None)
        }

    out = entries(d, defaults)
    out.update(
        {section: entries(values, defaults[section]) for section, values in d.items() if isinstance(values, dict)}
    )
    return tomli_w.dumps(out)


def suggest_layers(n_inputs: int) -> list[int]:
    """Hidden sizes for ``n_inputs`` inputs: two layers, the first about 64% of the input
    (rounded to a multiple of 50 for inputs of 200 or more), the second half of the first,
    both at least a quarter of the input and below the input. 784 -> [500, 250]."""
    check_int("suggest_layers", "n_inputs", n_inputs, low=2)
    floor = math.ceil(n_inputs / 4)
    step = 50 if n_inputs >= 200 else 1
    first = max(floor, min(n_inputs - 1, int(round(n_inputs * 0.64 / step)) * step))
    second = max(floor, first // 2)
    return [first, second]


def resolve_config(
    cfg: RunConfig, n_inputs: int, *, name: str | None = None, hidden: list[int] | None = None
) -> RunConfig:
    """A copy of ``cfg`` as a run records it: the hidden sizes given (a saved net's), else
    the recipe's, else the guide's rule for ``n_inputs``; and the run's name."""
    resolved = from_dict(cfg.to_dict())
    resolved.model.hidden = list(hidden or cfg.model.hidden or suggest_layers(n_inputs))
    if name is not None:
        resolved.name = name
    return resolved
