"""A recipe's data as the training loop takes it: the train / validation / test splits
of ``[data]`` (in memory or streamed), and loop data on a device."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from layerwise._checks import InvalidInput, parse_size
from layerwise.data import shards
from layerwise.data.shards import StreamedDataset
from layerwise.data.sources import Dataset, Splits, check, load_digits, load_mnist, open_data, validate


def split_validation(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out ``fraction`` of ``ds`` (shuffled with ``seed``) as validation data."""
    n = len(ds)
    n_val = int(round(n * fraction))
    if n_val < 1 or n_val >= n:
        raise InvalidInput(
            f"{ds.name}: validation_fraction={fraction} leaves {n - n_val} training and {n_val} "
            "validation samples; both must be at least 1"
        )
    order = np.random.default_rng(seed).permutation(n)
    tr, va = order[n_val:], order[:n_val]
    pick = lambda idx, suffix: Dataset(  # noqa: E731
        ds.x[idx], None if ds.y is None else ds.y[idx], f"{ds.name}[{suffix}]"
    )
    return pick(tr, "train"), pick(va, "validation")


def _rows(ds, a: int, b: int, suffix: str):
    if isinstance(ds, StreamedDataset):
        name = f"{ds.name}{suffix}"
        return StreamedDataset(ds.source.rows(a, b, name), name)
    return Dataset(ds.x[a:b], None if ds.y is None else ds.y[a:b], f"{ds.name}{suffix}")


def load_splits(
    cfg, *, visible: str = "bernoulli", seed: int = 0, report: Callable[[str], None] | None = None
) -> Splits:
    """Load and validate the data a ``[data]`` config names. Labels are required for
    training data; ``n_labels`` is taken from the config or inferred from the training
    labels; without a validation source, ``validation_fraction`` of train is held out
    (for streamed data: the last rows, in shard order). Files and folders of shards
    (``.npy``, or inputs above ``max_memory``) are streamed from disk."""
    max_memory = None if cfg.max_memory is None else parse_size(cfg.max_memory)
    if cfg.source == "mnist":
        splits = load_mnist(report=report)
    elif cfg.source == "digits":
        splits = load_digits()
    else:  # "files" (or its first name, "npz")
        opened = lambda path, limit=None: open_data(
            path,
            require_labels=True,
            max_memory=limit,  # noqa: E731
            fmt=cfg.source,
            label_column=cfg.label_column,
            image_size=cfg.image_size,
        )
        train = opened(cfg.train, max_memory)  # the bound is the training data's
        val = opened(cfg.validation) if cfg.validation else None
        test = opened(cfg.test) if cfg.test else None
        splits = Splits(train, val, test, None)
    n_labels = cfg.n_labels or splits.n_labels
    train = splits.train
    if isinstance(train, Dataset) and max_memory is not None and 4 * train.x.size > max_memory:
        train = StreamedDataset(shards.in_memory(train.x, train.y, train.name), train.name)
    if isinstance(train, StreamedDataset):
        return _streamed_splits(cfg, train, splits, n_labels, visible)
    train = validate(train, visible=visible, n_labels=n_labels)
    assert train.y is not None  # every source above is read with its labels (require_labels)
    if n_labels is None:
        if train.y.min() < 0:
            raise InvalidInput(f"{train.name}: array 'y' must hold labels >= 0; found {int(train.y.min())}")
        n_labels = max(int(train.y.max()) + 1, 2)
    if len(np.unique(train.y)) == 1:
        warnings.warn(
            f"{train.name}: every training label is {int(train.y[0])}; a classifier of one class learns "
            f"nothing (it will score 100% on such data), so check the labels",
            UserWarning,
            stacklevel=2,
        )
    if cfg.train_limit is not None:
        train = Dataset(train.x[: cfg.train_limit], train.y[: cfg.train_limit], f"{train.name}[:{cfg.train_limit}]")
    n_inputs = train.x.shape[1]
    val = splits.validation
    if val is None:
        train, val = split_validation(train, cfg.validation_fraction, seed)
    else:
        val = check(val, visible=visible, n_inputs=n_inputs, n_labels=n_labels)
    test = splits.test and check(splits.test, visible=visible, n_inputs=n_inputs, n_labels=n_labels)
    return Splits(train, val, test, n_labels)


def _streamed_splits(cfg, train: StreamedDataset, splits: Splits, n_labels: int | None, visible: str) -> Splits:
    """load_splits for training data streamed from disk: limited (a view), checked and
    fingerprinted once over every row it trains on, then split by rows into views whose
    fingerprints name their rows; a validation or test file is checked on its own."""
    if cfg.train_limit is not None and cfg.train_limit < len(train):
        train = _rows(train, 0, cfg.train_limit, f"[:{cfg.train_limit}]")
    check(train, visible=visible, n_labels=n_labels)  # every row it trains on, once
    if n_labels is None:  # labels are small: read them whole to find the largest
        n_labels = max(shards.max_label(train.source) + 1, 2)
    val = splits.validation
    if val is None:
        n = len(train)
        n_val = int(round(n * cfg.validation_fraction))
        if n_val < 1 or n_val >= n:
            raise InvalidInput(
                f"{train.name}: validation_fraction={cfg.validation_fraction} leaves {n - n_val} training "
                f"and {n_val} validation samples; both must be at least 1"
            )
        train, val = _rows(train, 0, n - n_val, "[train]"), _rows(train, n - n_val, n, "[validation]")
    else:
        val = check(val, visible=visible, n_inputs=train.n_features, n_labels=n_labels)
    test = splits.test and check(splits.test, visible=visible, n_inputs=train.n_features, n_labels=n_labels)
    return Splits(train, val, test, n_labels)


def loop_data(ds, device=None, *, labels: bool = True, streamed: bool | None = None):
    """A data set as the training loop takes it: tensors moved to ``device`` once
    (``streams.TensorData``), or streamed from disk (``streams.ShardedData``); None for
    None. ``labels``: False to leave the labels on disk (pretraining). ``streamed``:
    what a checkpoint's loop was (its epoch order is of that kind), None to decide."""
    from layerwise.data.streams import ShardedData, as_data

    if ds is None:
        return None
    if isinstance(ds, StreamedDataset):
        if streamed is False:
            raise InvalidInput(
                f"{ds.name}: the checkpoint was written by a loop over this data in memory, and it is "
                "streamed from disk now (another --max-memory?); resume with the run's own setting"
            )
        return ShardedData(ds.source, device, labels=labels)
    x, y = as_tensors(ds)
    if streamed or (streamed is None and device is not None and _too_big_for(device, 4 * x.numel())):
        # in host memory, moved to the GPU block by block
        return ShardedData(shards.in_memory(ds.x, ds.y, ds.name), device, labels=labels and ds.y is not None)
    return as_data(x, y, device)


def _too_big_for(device, nbytes: int) -> bool:
    """Whether data would take more than half of a GPU's free memory."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes > free // 2


def as_tensors(ds: Dataset | None):
    """(x, y) of a dataset as torch tensors sharing its memory; (None, None) for None."""
    import torch

    if ds is None:
        return None, None
    return torch.from_numpy(np.ascontiguousarray(ds.x)), None if ds.y is None else torch.from_numpy(ds.y)
