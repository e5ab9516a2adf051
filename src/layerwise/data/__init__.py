"""The data path: sources (MNIST, digits, .npz, .npy, IDX, CSV, image folders) and
their validation (``sources``, ``formats``, ``mnist``), a recipe's splits
(``splits``), memory-mapped shards and the streams the training loop reads
(``shards``, ``streams``), and the memory budget (``budget``)."""

from layerwise.data.sources import Dataset, Splits, load_digits, load_mnist, open_data
from layerwise.data.splits import load_splits

__all__ = ["Dataset", "Splits", "load_digits", "load_mnist", "load_splits", "open_data"]
