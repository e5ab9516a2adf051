"""The public API: what ``import layerwise as lw`` puts one dot away.

Data goes in as a tensor or array, an ``(x, y)`` pair, or a ``layerwise.data.Dataset``;
the settings of a phase go in as keyword arguments, named as in a recipe's
``[pretrain]`` or ``[finetune]`` table (an unknown name is refused, with the closest
valid one). ``train`` and ``resume`` run a whole recipe in a run folder, as the command
line does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch import nn

from layerwise import config as config_mod
from layerwise._checks import InvalidInput
from layerwise.config import RunConfig
from layerwise.data.sources import Dataset, validate
from layerwise.jobs import training as training_job
from layerwise.jobs import workers as workers_job
from layerwise.reporting.reporter import Reporter
from layerwise.stack import DeepBeliefNet
from layerwise.storage.artifacts import load_model
from layerwise.storage.runs import RunResult
from layerwise.training import finetune as finetune_mod
from layerwise.training import pretrain as pretrain_mod

Recipe = RunConfig  # a recipe: the typed config of a run, as a TOML file gives it
ArrayLike = torch.Tensor | np.ndarray
Data = ArrayLike | tuple | Dataset


@overload
def _arrays(data: None, what: str, *, labels: bool) -> tuple[None, None]: ...
@overload
def _arrays(data: Data, what: str, *, labels: bool) -> tuple[torch.Tensor, torch.Tensor | None]: ...
def _arrays(data: Data | None, what: str, *, labels: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(x float32, y int64 or None) tensors from the forms ``data`` may take, validated
    (NaN, shapes, labels) with messages that name ``what``."""
    if data is None:
        return None, None
    x: ArrayLike
    y: ArrayLike | None
    if isinstance(data, Dataset):
        x, y = data.x, data.y
    elif isinstance(data, tuple):
        if len(data) != 2:
            raise InvalidInput(f"{what}: a tuple must be the pair (x, y); got {len(data)} items")
        x, y = data
    else:
        x, y = data, None
    if labels and y is None:
        raise InvalidInput(f"{what}: fine-tuning needs labels; pass the pair (x, y)")
    as_np = lambda a: a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)  # noqa: E731
    ds = validate(Dataset(as_np(x), None if y is None else as_np(y), what))
    return torch.from_numpy(np.ascontiguousarray(ds.x)), None if ds.y is None else torch.from_numpy(ds.y)


def _settings(section: str, options: dict[str, Any]) -> Any:
    """A phase's config from keyword arguments, checked as a recipe's table is."""
    return getattr(config_mod.from_dict({section: dict(options)}), section)


def pretrain(
    dbn: DeepBeliefNet,
    data: Data,
    *,
    validation: Data | None = None,
    seed: int = 0,
    reporter: Reporter | None = None,
    **settings: Any,
) -> list[dict]:
    """Pretrain every layer of ``dbn`` in turn, greedily, on unlabelled data.

    Parameters
    ----------
    dbn : DeepBeliefNet
        The stack to train, in place.
    data : tensor, array, (x, y) or Dataset
        Training inputs, (samples, n_visible); labels, if given, are ignored.
    validation : same forms, optional
        Held-out inputs: each epoch reports the reconstruction cross-entropy on them.
    seed : int
        Seeds the data order.
    reporter : Reporter, optional
        Where per-epoch records go (silent by default).
    **settings
        Keys of a recipe's ``[pretrain]`` table: ``epochs``, ``learning_rate``,
        ``batch_size``, ``cd_k``, ``persistent``, ...

    Returns
    -------
    list of dict
        One metrics record per epoch and layer.
    """
    cfg = _settings("pretrain", settings)
    x, _ = _arrays(data, "training data", labels=False)
    held, _ = _arrays(validation, "validation data", labels=False)
    return pretrain_mod.pretrain(
        dbn, x.to(dbn.device), None if held is None else held.to(dbn.device), cfg, seed=seed, reporter=reporter
    )


def finetune(
    model: nn.Module,
    data: Data,
    *,
    validation: Data | None = None,
    seed: int = 0,
    reporter: Reporter | None = None,
    precision: str = "fp32",
    **settings: Any,
) -> nn.Module:
    """Fine-tune a classifier by backpropagation (in place), and return it.

    Parameters
    ----------
    model : nn.Module
        A classifier, such as ``dbn.to_classifier(n_labels)``.
    data : (x, y) or Dataset
        Training inputs and integer labels.
    validation : (x, y) or Dataset, optional
        With ``patience`` set, training stops after that many epochs without a lower
        validation loss, and the best weights are restored.
    seed : int
        Seeds the data order and the dropout masks.
    reporter : Reporter, optional
        Where per-epoch records go (silent by default).
    precision : {"fp32", "bf16"}
        bf16 runs the matrix products in bfloat16 (weights and updates stay fp32).
    **settings
        Keys of a recipe's ``[finetune]`` table: ``epochs``, ``learning_rate``,
        ``batch_size``, ``optimizer``, ``dropout_hidden``, ``patience``, ...

    Returns
    -------
    nn.Module
        ``model``, trained.
    """
    cfg = _settings("finetune", settings)
    x, y = _arrays(data, "training data", labels=True)
    xv, yv = _arrays(validation, "validation data", labels=True)
    finetune_mod.finetune(model, x, y, xv, yv, cfg, seed=seed, reporter=reporter, precision=precision)
    return model


def evaluate(model: nn.Module, data: Data) -> dict[str, float]:
    """The mean cross-entropy (``loss``) and the ``accuracy`` (a fraction) of a
    classifier on labelled data (an ``(x, y)`` pair or a Dataset)."""
    x, y = _arrays(data, "evaluation data", labels=True)
    loss, accuracy = finetune_mod.evaluate(model, x, y)
    return {"loss": loss, "accuracy": accuracy}


def load(folder: str | Path) -> tuple[nn.Module, dict]:
    """A saved net (a run's ``pretrained/`` or ``finetuned/`` folder, a stage of staged
    pretraining, a ``layerwise finetune --out`` folder) and its manifest: a DeepBeliefNet
    for a pretrained net, an ``nn.Sequential`` classifier for a fine-tuned one. The
    weights are checked against the manifest's sha256 first. (A saved scikit-learn
    estimator loads with its class: ``lw.DBNClassifier.load(path)``.)"""
    return load_model(folder)


def _recipe(recipe: str | Path | dict | RunConfig) -> RunConfig:
    if isinstance(recipe, RunConfig):
        return recipe
    if isinstance(recipe, dict):
        return config_mod.from_dict(recipe)
    if isinstance(recipe, (str, Path)):
        return config_mod.load(recipe)
    raise InvalidInput(f"a recipe is a path to a TOML file, a dict or a layerwise.Recipe; got {type(recipe).__name__}")


def train(
    recipe: str | Path | dict | RunConfig, *, runs_dir: str | Path = "runs", workers: int = 1, progress: bool = False
) -> RunResult:
    """Run a whole recipe as ``layerwise train`` does: pretrain, save the pretrained net,
    fine-tune, save the fine-tuned net, evaluate, in a new folder under ``runs_dir``.

    ``recipe`` is a TOML path, a dict of its tables, or a ``Recipe``. ``workers`` > 1
    trains that many processes with parameter averaging. Returns the run folder and what
    it reached (``test_accuracy``, the two manifests, the timings).
    """
    cfg = _recipe(recipe)
    if workers > 1:
        return workers_job.train_workers(cfg, workers, runs_dir=runs_dir)
    return training_job.train(cfg, runs_dir=runs_dir, progress=progress)


def resume(run_dir: str | Path, *, progress: bool = False) -> RunResult:
    """Continue an interrupted ``train`` run from its last checkpoint, on the number of
    workers that wrote it; on the CPU the result is bitwise the uninterrupted run's."""
    return workers_job.resume(run_dir, progress=progress)
