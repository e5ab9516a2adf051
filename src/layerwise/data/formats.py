"""Readers of the common data formats, each to (inputs float32, labels int64 or None,
name) for a ``data.Dataset``, each naming the file and the position of what is wrong:

- **IDX** (the MNIST file format), gzipped or not: ``train-images-idx3-ubyte[.gz]``; the
  labels are the file named alike with ``labels-idx1`` (or given as the second of a pair).
  Unsigned bytes are scaled to [0, 1].
- **CSV** with a label column (chosen by name or index; ``label`` by default); a header
  row is allowed (and needed to choose by name). Inputs as written.
- **A folder of images**, one subfolder per label (PNG or JPEG through Pillow, grey or RGB):
  resized to one declared size, or refused when sizes differ. Pixels scaled to [0, 1]; the
  labels are the subfolders in name order.
- **A pair of .npy files**: inputs and labels, as ``"x.npy,y.npy"``.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
from pathlib import Path

import numpy as np

from layerwise._checks import InvalidInput, MissingExtra

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
GREY = ("1", "L", "LA", "I", "I;16", "F")
FORMATS = ("idx", "csv", "images", "npy")


# -- IDX --------------------------------------------------------------------------------
def read_idx_array(path) -> np.ndarray:
    """One IDX file (gzipped or not) as an array of its own shape and type."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file '{path}' does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise InvalidInput(
                f"IDX file '{path}': the gzip stream is broken ({e}); the file is truncated or corrupt"
            ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise InvalidInput(
            f"'{path}' is not an IDX file: its first bytes are {raw[:4].hex() or 'missing'}, not "
            "00 00 <type> <dimensions>"
        )
    ndim = raw[3]
    head = 4 + 4 * ndim
    if ndim == 0 or len(raw) < head:
        raise InvalidInput(
            f"IDX file '{path}': the header promises {ndim} dimensions but the file ends at byte {len(raw)}"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(IDX_TYPES[raw[2]])
    want = head + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != want:
        what = "truncated" if len(raw) < want else "longer than its header says"
        raise InvalidInput(
            f"IDX file '{path}' is {what}: dimensions {' x '.join(map(str, dims))} of {dtype.name} "
            f"need {want} bytes, the file has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(dims).astype(dtype.newbyteorder("="))


def idx_labels_path(images: Path) -> Path | None:
    """The labels file named alike (MNIST's convention: images-idx3 -> labels-idx1)."""
    name = images.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    other = images.with_name(name)
    return other if other != images and other.is_file() else None


def load_idx(images, labels=None) -> tuple:
    images = Path(images)
    arr = read_idx_array(images)
    x = arr.reshape(len(arr), -1)
    x = x.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else x.astype(np.float32)
    labels = Path(labels) if labels else idx_labels_path(images)
    y = None
    if labels is not None:
        y = read_idx_array(labels)
        if y.ndim != 1 or len(y) != len(x):
            raise InvalidInput(
                f"IDX labels '{labels}' hold shape {y.shape}; the images '{images}' need {len(x)} labels, one per image"
            )
        y = y.astype(np.int64)
    return x, y, str(images)


# -- CSV --------------------------------------------------------------------------------
def load_csv(path, label_column: str | int | None = "label") -> tuple:
    """A CSV file of numbers, one sample per row; ``label_column`` names the labels (a
    header name, or a 0-based index; None: no labels)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file '{path}' does not exist")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows = [r for r in rows if r]
    if not rows:
        raise InvalidInput(f"CSV file '{path}' is empty")
    header = None
    if not _numeric(rows[0]):
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    if not rows:
        raise InvalidInput(f"CSV file '{path}' has a header and no rows")
    width = len(header or rows[0])
    col = _label_index(path, header, width, label_column)
    data = np.empty((len(rows), width), dtype=np.float64)
    first = 2 if header else 1
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InvalidInput(f"CSV file '{path}', line {i + first}: {len(row)} columns, expected {width}")
        for j, cell in enumerate(row):
            try:
                data[i, j] = float(cell)
            except ValueError:
                raise InvalidInput(
                    f"CSV file '{path}', line {i + first}, column {j + 1}: {cell.strip()!r} is not a number"
                ) from None
    if col is None:
        return data.astype(np.float32), None, str(path)
    y = data[:, col]
    bad = np.flatnonzero((y != np.round(y)) | (y < 0))
    if len(bad):
        raise InvalidInput(
            f"CSV file '{path}', line {bad[0] + first}, column {col + 1}: label {y[bad[0]]:g} is not a "
            "whole number >= 0"
        )
    x = np.delete(data, col, axis=1).astype(np.float32)
    return x, y.astype(np.int64), str(path)


def _numeric(row) -> bool:
    try:
        [float(c) for c in row]
        return True
    except ValueError:
        return False


def _label_index(path, header, width: int, label_column) -> int | None:
    if label_column is None:
        return None
    if isinstance(label_column, int) or (isinstance(label_column, str) and label_column.lstrip("-").isdigit()):
        i = int(label_column)
        if not -width <= i < width:
            raise InvalidInput(f"CSV file '{path}': label column {i} is out of range for {width} columns")
        return i % width
    if header is None:
        if label_column == "label":  # the default, and no header: unlabelled inputs
            return None
        raise InvalidInput(
            f"CSV file '{path}' has no header row, so the label column {label_column!r} cannot be "
            "found by name; give its index"
        )
    if label_column not in header:
        if label_column == "label":
            return None
        raise InvalidInput(
            f"CSV file '{path}' has no column {label_column!r} (columns: {', '.join(header[:8])}"
            f"{', ...' if len(header) > 8 else ''})"
        )
    return header.index(label_column)


# -- image folders ------------------------------------------------------------------------
def load_images(folder, size: tuple[int, int] | None = None) -> tuple:
    """A folder with one subfolder per label, of PNG or JPEG images; grey images stay
    one channel, RGB ones keep three (height x width x 3 inputs)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise MissingExtra("image folders need Pillow: pip install 'layerwise[images]'") from e
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder '{folder}' does not exist")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise InvalidInput(f"image folder '{folder}' has no subfolders: it needs one subfolder per label")
    xs, ys, shape, mode = [], [], None, None
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InvalidInput(f"image folder '{folder}': the label subfolder '{name}' has no PNG or JPEG images")
        for p in files:
            try:
                with Image.open(p) as im:
                    im.load()
                    mode = mode or ("L" if im.mode in GREY else "RGB")  # the first image decides
                    img = im.convert(mode)
            except (UnidentifiedImageError, OSError) as e:
                raise InvalidInput(f"image '{p}' cannot be read ({e})") from None
            if size is not None:
                # Pillow sets its module-level filter constants with setattr; its typing names Image.Resampling
                img = img.resize((size[1], size[0]), Image.BILINEAR)  # type: ignore[attr-defined]
            arr = np.asarray(img, dtype=np.float32) / 255.0
            if shape is None:
                shape, first = arr.shape, p
            elif arr.shape != shape:
                raise InvalidInput(
                    f"image '{p}' is {_dims(arr.shape)}, but '{first}' is {_dims(shape)}; declare one "
                    "size to resize every image to (data.image_size = [height, width])"
                )
            xs.append(arr.reshape(-1))
            ys.append(label)
    return np.stack(xs), np.asarray(ys, dtype=np.int64), str(folder)


def _dims(shape) -> str:
    return f"{shape[1]}x{shape[0]}" + (f" with {shape[2]} channels" if len(shape) == 3 else "")


def is_image_folder(path) -> bool:
    path = Path(path)
    if not path.is_dir():
        return False
    subs = [p for p in path.iterdir() if p.is_dir()]
    return bool(subs) and not any(p.suffix in (".npy", ".npz") for p in path.iterdir() if p.is_file())


# -- .npy pairs -----------------------------------------------------------------------
def load_npy_pair(x_path, y_path) -> tuple:
    arrays = []
    for p in (Path(x_path), Path(y_path)):
        if not p.is_file():
            raise FileNotFoundError(f"data file '{p}' does not exist")
        try:
            arrays.append(np.load(p, allow_pickle=False))
        except ValueError as e:
            raise InvalidInput(f"data file '{p}' is not a readable .npy file ({e})") from None
    x, y = arrays
    if y.ndim != 1 or len(y) != len(x):
        raise InvalidInput(
            f"labels '{y_path}' hold shape {y.shape}; the inputs '{x_path}' need {len(x)} labels, one per row"
        )
    return x, y, f"{x_path},{y_path}"


def detect(path: str) -> str | None:
    """The format a ``--data`` path is written in (None: .npz, .npy or a folder of shards)."""
    text = os.fspath(path)
    if "," in text and all(part.strip().endswith(".npy") for part in text.split(",")):
        return "npy"
    name = Path(text).name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if "idx" in name and ("ubyte" in name or name.endswith((".idx", ".gz"))):
        return "idx"
    if is_image_folder(text):
        return "images"
    return None


def load(path: str, fmt: str, *, label_column="label", image_size=None) -> tuple:
    """The data set at ``path`` in format ``fmt`` (one of FORMATS)."""
    if fmt == "npy":
        parts = [p.strip() for p in os.fspath(path).split(",")]
        if len(parts) != 2:
            raise InvalidInput(f"a .npy pair is written 'inputs.npy,labels.npy'; got {path!r}")
        return load_npy_pair(*parts)
    if fmt == "idx":
        parts = [p.strip() for p in os.fspath(path).split(",")]
        return load_idx(parts[0], parts[1] if len(parts) > 1 else None)
    if fmt == "csv":
        return load_csv(path, label_column)
    if fmt == "images":
        return load_images(path, None if image_size is None else tuple(image_size))
    raise InvalidInput(f"unknown data format {fmt!r}; one of {', '.join(FORMATS)}")


def image_side(n_inputs: int) -> int | None:
    """The side of square images of ``n_inputs`` pixels (28 for 784); None when not square."""
    side = int(round(math.sqrt(n_inputs)))
    return side if side * side == n_inputs else None
