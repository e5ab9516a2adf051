"""Data on disk, larger than memory: ``.npy`` files and folders of ``.npy`` / ``.npz``
shards, read in bounded blocks and never loaded whole.

A *shard* is one file: a ``.npy`` holds inputs ``x`` (samples, features) only; a
``.npz`` holds ``x`` and optionally integer labels ``y`` (samples,). A folder is its
``*.npy`` and ``*.npz`` files in name order. Arrays stored uncompressed (``np.save``,
``np.savez``) are memory-mapped; the members of a compressed ``.npz``
(``np.savez_compressed``) cannot be, and are read one shard at a time.

Reading never lets the process hold a whole file: each block is copied out of a memory
map opened for that block alone and closed right after. (The pages of a map that stays
open count in the resident set once touched, so a map that is only sliced grows to the
file's size on a machine with free memory.)

Validation (``scan``) reads every shard once, block by block, and checks what
``data.validate`` checks in memory (numeric, finite, [0, 1] for Bernoulli visibles,
labels in range), naming the shard and the row of the first violation. The same pass
computes each shard's fingerprint (sha256 of its shapes, dtypes and bytes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from layerwise._checks import InvalidInput

BLOCK_BYTES = 32 * 2**20  # rows per block: about this many bytes of float32 inputs
_MEMBERS: dict = {}  # compressed .npz members in memory: (path, member, mtime, size) -> array; the last two


@dataclass
class Array:
    """One array inside a file: where its bytes start, its dtype and shape."""

    path: Path
    name: str  # for messages: "part-1.npz:x"
    dtype: np.dtype
    shape: tuple
    offset: int | None  # None: a compressed .npz member (read whole, one shard at a time)
    member: str | None = None
    start: int = 0  # a view of rows [start, start + shape[0]) of the array in the file
    array: np.ndarray | None = None  # an array in memory, wrapped as a shard

    def rows(self, a: int, b: int) -> Array:
        """A view of rows [a, b) of this array."""
        return dataclasses.replace(self, shape=(b - a, *self.shape[1:]), start=self.start + a)

    def read(self, a: int, b: int) -> np.ndarray:
        """Rows [a, b) as a new in-memory array (the map is closed afterwards)."""
        a, b = a + self.start, b + self.start
        if self.array is not None:
            return np.array(self.array[a:b])
        if self.offset is None:  # a compressed member: decompressed once, x and y of one shard kept
            st = os.stat(self.path)
            key = (str(self.path), self.member, st.st_mtime_ns, st.st_size)
            if key not in _MEMBERS:
                while len(_MEMBERS) >= 2:
                    _MEMBERS.pop(next(iter(_MEMBERS)))
                with np.load(self.path, allow_pickle=False) as z:
                    _MEMBERS[key] = z[self.member]
            return np.array(_MEMBERS[key][a:b])
        row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        if b <= a:
            return np.empty((0, *self.shape[1:]), self.dtype)
        mm = np.memmap(
            self.path, dtype=self.dtype, mode="r", offset=self.offset + a * row, shape=(b - a, *self.shape[1:])
        )
        try:
            return np.array(mm)
        finally:
            mm._mmap.close()  # type: ignore[attr-defined]  # numpy's private map, absent from its stubs
            del mm


@dataclass
class Shard:
    """One file of a source: its inputs, its labels (or None), its rows."""

    path: Path
    x: Array
    y: Array | None
    fingerprint: str | None = None  # set by scan

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class ShardSet:
    """The shards of one source (a file or a folder), in order."""

    name: str
    shards: list[Shard] = field(default_factory=list)
    scanned: bool = False

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    @property
    def n_features(self) -> int:
        return int(self.shards[0].x.shape[1])

    @property
    def has_labels(self) -> bool:
        return all(s.y is not None for s in self.shards)

    @property
    def nbytes(self) -> int:
        """Bytes of the inputs as float32 (what a load into memory would take)."""
        return 4 * len(self) * self.n_features

    @property
    def fingerprint(self) -> str:
        """sha256 over the shards' fingerprints, in order (after ``scan``)."""
        if not self.scanned:
            raise RuntimeError(f"{self.name}: the shards have not been scanned yet")
        if len(self.shards) == 1:
            return cast(str, self.shards[0].fingerprint)
        return hashlib.sha256("".join(cast(str, s.fingerprint) for s in self.shards).encode()).hexdigest()

    def subset(self, shards: list[Shard], name: str) -> ShardSet:
        return ShardSet(name, list(shards), self.scanned)

    def rows(self, a: int, b: int, name: str) -> ShardSet:
        """Rows [a, b) of the whole set, as views of its shards (nothing is read)."""
        out, start = [], 0
        for s in self.shards:
            lo, hi = max(a - start, 0), min(b - start, len(s))
            if lo < hi:
                view = Shard(s.path, s.x.rows(lo, hi), None if s.y is None else s.y.rows(lo, hi))
                if self.scanned:  # a view of checked rows is checked; its fingerprint names the rows
                    view.fingerprint = hashlib.sha256(f"{s.fingerprint}[{lo}:{hi}]".encode()).hexdigest()
                out.append(view)
            start += len(s)
        return ShardSet(name, out, self.scanned)

    def block_rows(self) -> int:
        return max(256, BLOCK_BYTES // (4 * self.n_features))

    def read(self, a: int, b: int, *, labels: bool = False):
        """Rows [a, b) of the whole set (across shards) as float32 inputs (and int64
        labels): for small heads and tails, such as the monitoring subset."""
        xs, ys, start = [], [], 0
        for s in self.shards:
            lo, hi = max(a - start, 0), min(b - start, len(s))
            if lo < hi:
                xs.append(s.x.read(lo, hi).astype(np.float32, copy=False))
                if labels:  # asked for by the callers of a labelled source only
                    ys.append(s.y.read(lo, hi).astype(np.int64))  # type: ignore[union-attr]
            start += len(s)
        x = np.concatenate(xs) if xs else np.empty((0, self.n_features), np.float32)
        return (x, np.concatenate(ys) if ys else np.empty(0, np.int64)) if labels else x


# -- opening ---------------------------------------------------------------------------
def _npy_header(f, where: str) -> tuple[np.dtype, tuple, bool]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise InvalidInput(f"format version {version} is not supported")
    except (ValueError, OSError, EOFError) as e:
        raise InvalidInput(f"{where} is not a readable .npy array ({e})") from None
    if dtype.hasobject:
        raise InvalidInput(f"{where}: object arrays (pickle) are not accepted")
    return dtype, shape, fortran


def _array(path: Path, name: str, dtype, shape, fortran, offset, member=None) -> Array:
    where = f"{path}:{name}" if member else str(path)
    if fortran and len(shape) > 1:
        raise InvalidInput(f"{where}: the array is in Fortran order; save it C-contiguous (np.ascontiguousarray)")
    return Array(path, where, dtype, tuple(shape), offset, member)


def open_npy(path: Path) -> Shard:
    with open(path, "rb") as f:
        dtype, shape, fortran = _npy_header(f, str(path))
        offset = f.tell()
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if os.path.getsize(path) < need:
        raise InvalidInput(
            f"'{path}' is truncated: its header promises {need} bytes, the file has {os.path.getsize(path)}"
        )
    return Shard(path, _array(path, "x", dtype, shape, fortran, offset), None)


def open_npz(path: Path) -> Shard:
    """The x (and y) members of a .npz: memory-mapped where stored uncompressed."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InvalidInput(f"data file '{path}' is not a readable .npz file ({e})") from None
    with zf, open(path, "rb") as raw:
        names = {n.removesuffix(".npy"): n for n in zf.namelist()}
        if "x" not in names:
            raise InvalidInput(
                f"data file '{path}' has no array 'x' (found: {', '.join(names) or 'none'}); "
                "save inputs as np.savez(path, x=..., y=...)"
            )
        arrays = {}
        for key in ("x", "y"):
            if key not in names:
                continue
            info = zf.getinfo(names[key])
            if info.compress_type == zipfile.ZIP_STORED:
                raw.seek(info.header_offset)
                local = raw.read(30)
                start = (
                    info.header_offset
                    + 30
                    + int.from_bytes(local[26:28], "little")
                    + int.from_bytes(local[28:30], "little")
                )
                raw.seek(start)
                dtype, shape, fortran = _npy_header(raw, f"{path}:{key}")
                offset = raw.tell()
            else:
                with zf.open(names[key]) as member:
                    dtype, shape, fortran = _npy_header(member, f"{path}:{key}")
                offset = None
            arrays[key] = _array(path, key, dtype, shape, fortran, offset, member=names[key])
    return Shard(path, arrays["x"], arrays.get("y"))


def is_sharded(path) -> bool:
    """Whether a data path is streamed from disk: a .npy file or a folder of shards."""
    p = Path(path)
    return p.is_dir() or p.suffix == ".npy"


def open_source(path, *, require_labels: bool = False) -> ShardSet:
    """The shards of a ``.npy`` file, a ``.npz`` file or a folder of them (name order)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".npy", ".npz") and f.is_file())
        if not files:
            raise InvalidInput(f"data folder '{p}' holds no .npy or .npz shards")
    elif p.is_file():
        files = [p]
    else:
        raise FileNotFoundError(f"data file '{p}' does not exist")
    shards = [open_npy(f) if f.suffix == ".npy" else open_npz(f) for f in files]
    first = shards[0]
    for s in shards:
        if len(s.x.shape) != 2:
            raise InvalidInput(f"{s.x.name}: array 'x' must be 2-D (samples, features); got shape {s.x.shape}")
        if s.x.shape[1] == 0:
            raise InvalidInput(f"{s.x.name}: array 'x' has no features (shape {s.x.shape})")
        if s.x.shape[1] != first.x.shape[1]:
            raise InvalidInput(
                f"{s.x.name}: {s.x.shape[1]} features per sample, but {first.x.name} has "
                f"{first.x.shape[1]}; every shard of '{p}' must have the same width"
            )
        if s.y is not None and s.y.shape != (len(s),):
            raise InvalidInput(f"{s.y.name}: array 'y' must have shape ({len(s)},) to match 'x'; got {s.y.shape}")
        if require_labels and s.y is None:
            kind = (
                "a .npy shard holds inputs only; put labels in .npz shards (x and y)" if s.path.suffix == ".npy" else ""
            )
            raise InvalidInput(
                f"{s.x.name}: no array 'y' (labels), which is required here{'; ' + kind if kind else ''}"
            )
    return ShardSet(str(p), shards)


# -- validation -------------------------------------------------------------------------
def scan(
    src: ShardSet, *, visible: str = "bernoulli", n_inputs: int | None = None, n_labels: int | None = None
) -> ShardSet:
    """Validate every shard block by block and fingerprint it; returns ``src`` (scanned).
    A violation raises ValueError naming the shard, the array and the row."""
    for s in src.shards:
        if not (np.issubdtype(s.x.dtype, np.floating) or np.issubdtype(s.x.dtype, np.integer) or s.x.dtype == bool):
            raise InvalidInput(f"{s.x.name}: array 'x' must be numeric; got dtype {s.x.dtype}")
        if n_inputs is not None and s.x.shape[1] != n_inputs:
            raise InvalidInput(
                f"{s.x.name}: array 'x' has {s.x.shape[1]} features per sample; the net expects {n_inputs}"
            )
        if len(s) == 0:
            raise InvalidInput(f"{s.x.name}: array 'x' holds no samples (shape {s.x.shape})")
        h = hashlib.sha256()
        h.update(f"{s.x.dtype.str}{s.x.shape}".encode())
        step = src.block_rows()
        for a in range(0, len(s), step):
            block = s.x.read(a, min(a + step, len(s)))
            h.update(block.tobytes())
            _check_x(block.astype(np.float32, copy=False), s.x.name, s.x.start + a, visible)  # rows of the file
        if s.y is not None:
            y = s.y.read(0, len(s))  # labels are small beside the inputs
            h.update(f"{y.dtype.str}{y.shape}".encode())
            h.update(np.ascontiguousarray(y).tobytes())
            _check_y(y, s.y.name, n_labels, s.y.start)
        else:
            h.update(b"none")
        s.fingerprint = h.hexdigest()
    src.scanned = True
    return src


def _check_x(x: np.ndarray, where: str, row0: int, visible: str) -> None:
    finite = np.isfinite(x)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        kind = "NaN" if np.isnan(x[row, col]) else "Inf"
        raise InvalidInput(f"{where}: array 'x' contains {kind} (first at row {row0 + row}, column {col})")
    if visible == "bernoulli" and x.size:
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            bad = np.argwhere((x < 0) | (x > 1))[0]
            raise InvalidInput(
                f"{where}: array 'x' has values in [{lo:g}, {hi:g}] (first outside [0, 1] at row {row0 + bad[0]}, "
                f"column {bad[1]}), but Bernoulli visible units need inputs in [0, 1]; rescale the data, or use "
                'visible = "gaussian" for standardized real-valued inputs'
            )


def _check_y(y: np.ndarray, where: str, n_labels: int | None, row0: int = 0) -> None:
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or not np.all(y == np.round(y)):
            raise InvalidInput(f"{where}: array 'y' must hold integer class labels; got non-integer values")
    elif not np.issubdtype(y.dtype, np.integer):
        raise InvalidInput(f"{where}: array 'y' must hold integer class labels; got dtype {y.dtype}")
    bad = (y < 0) if n_labels is None else (y < 0) | (y >= n_labels)
    if bad.any():
        i = int(np.argmax(bad))
        span = f"[0, {n_labels})" if n_labels is not None else ">= 0"
        raise InvalidInput(f"{where}: array 'y' must hold labels in {span}; found {int(y[i])} at row {row0 + i}")


def max_label(src: ShardSet) -> int:
    return max(int(s.y.read(0, len(s)).max()) for s in src.shards)  # type: ignore[union-attr]  # a labelled source's


# -- writing ------------------------------------------------------------------------------
def write_npy(path: Path, blocks, rows: int, width: int) -> None:
    """Write float32 blocks (rows, width) as one .npy, streamed: the header first, then
    each block as it comes; the file appears under its name only when complete."""
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, width)})
        n = 0
        for block in blocks:
            b = np.ascontiguousarray(block, dtype=np.float32)
            f.write(b.tobytes())
            n += len(b)
        f.flush()
        os.fsync(f.fileno())
    if n != rows:
        tmp.unlink()
        raise RuntimeError(f"{path}: wrote {n} rows, expected {rows}")
    os.replace(tmp, path)


def in_memory(x: np.ndarray, y: np.ndarray | None, name: str) -> ShardSet:
    """Arrays already in memory as a one-shard set (streamed when they are above the
    memory bound: their layer activations then go to disk)."""
    arr = lambda a, key: Array(Path(name), f"{name}:{key}", a.dtype, a.shape, None, array=a)  # noqa: E731
    return ShardSet(name, [Shard(Path(name), arr(x, "x"), None if y is None else arr(y, "y"))])


@dataclass
class StreamedDataset:
    """A data set read from disk block by block: what ``data.Dataset`` is in memory."""

    source: ShardSet
    name: str

    def __len__(self) -> int:
        return len(self.source)

    @property
    def n_features(self) -> int:
        return self.source.n_features

    @property
    def fingerprint(self) -> str:
        return self.source.fingerprint

    @property
    def has_labels(self) -> bool:
        return self.source.has_labels

    def head(self, n: int):
        """The first ``n`` rows in memory: (x float32, y int64 or None)."""
        n = min(n, len(self))
        if self.has_labels:
            return self.source.read(0, n, labels=True)
        return self.source.read(0, n), None
