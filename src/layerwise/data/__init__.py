"""The data path: sources (MNIST, digits, .npz, .npy, IDX, CSV, image folders), their
validation and splits (``sources``), memory-mapped shards and the streams the training
loop reads (``shards``, ``streams``), and the memory budget (``budget``)."""

from layerwise.data.sources import Dataset, Splits, load_digits, load_mnist, load_splits, open_data

__all__ = ["Dataset", "Splits", "load_digits", "load_mnist", "load_splits", "open_data"]
