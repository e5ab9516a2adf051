"""What the training loop iterates over: data in memory (``TensorData``, on any device)
or streamed from shards on disk (``ShardedData``). Both give the loop the same four
things: an epoch's order (a tensor, saved in checkpoints), the number of batches, the
batches from any batch index on (a resumed epoch), and a head for monitoring; and both
``map`` a layer over themselves for the next layer of greedy pretraining.

**In memory**: the epoch's order is a permutation of the rows drawn from the loop's
generator; each batch gathers its own rows of the data (one ``index_select`` per batch:
an epoch-wide gather cost more in page faults than all the batches' gathers). A worker of a group of N takes every N-th row of the
shared permutation.

**Streamed**: the rows are cut into blocks of about ``shards.BLOCK_BYTES`` (blocks never
span shards). An epoch draws one seed from the loop's generator; the seed orders the
blocks (over all shards) and the rows inside each block, which is all a resumed epoch
needs to find its place again. Each block is read from disk once per epoch, shuffled,
moved to the device in one copy, and cut into batches; a batch that straddles two
blocks takes the end of one and the start of the next, so every batch but the epoch's
last is full. A worker of a group of N takes every N-th row of each block's shuffle.
Layer activations are written as float32 ``.npy`` shards (one per input shard) in a
folder the caller names, and read back the same way.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch

from layerwise import _devices
from layerwise._checks import InvalidInput
from layerwise.data import shards as sh

CHUNK = 10000  # rows per forward pass when mapping a layer over data in memory

Batch = tuple[torch.Tensor, torch.Tensor | None]  # inputs, and labels (None: without labels)
_D = TypeVar("_D", bound="LoopData")


class LoopData(Protocol):
    """What ``training.loop.run_loop`` (and greedy pretraining over its layers) needs of
    its data: ``TensorData`` and ``ShardedData`` both provide it. ``map`` and ``concat``
    give data of the same kind."""

    def __len__(self) -> int: ...

    def share(self, world: int) -> int: ...

    def epoch_order(self, generator: torch.Generator, rank: int, world: int) -> torch.Tensor: ...

    def batches(
        self, order: torch.Tensor, batch_size: int, start: int, rank: int = 0, world: int = 1
    ) -> Iterator[Batch]: ...

    def head(self, n: int) -> torch.Tensor: ...

    def chunks(self, chunk: int = CHUNK) -> Iterator[Batch]: ...

    def map(self: _D, fn: Callable[[torch.Tensor], torch.Tensor], folder: Path | None = None, key: str = "") -> _D: ...

    def concat(self: _D, other: _D) -> _D: ...

    def discard(self) -> None: ...


class TensorData:
    """Inputs ``x`` (rows, features) and optional labels ``y`` held as tensors."""

    streamed = False

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None = None):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def share(self, world: int) -> int:
        return len(self) // world if world > 1 else len(self)

    def epoch_order(self, generator: torch.Generator, rank: int, world: int) -> torch.Tensor:
        # on the data's device when the generator can draw there (the meta device draws
        # from a CPU generator), else on the generator's
        same = generator.device == _devices.generator_device(self.x.device)
        order = torch.randperm(len(self), generator=generator, device=self.x.device if same else generator.device)
        # every worker draws the same permutation (same seed) and takes its own share:
        # disjoint shards, reshuffled every epoch, of equal length so rounds line up
        return order[rank::world][: self.share(world)] if world > 1 else order

    def batches(
        self, order: torch.Tensor, batch_size: int, start: int, rank: int = 0, world: int = 1
    ) -> Iterator[Batch]:
        order = order.to(self.x.device)
        # one gather per batch: an epoch-wide gather (188 MB for MNIST) took 86-346 ms here,
        # mostly page faults on its fresh memory; a batch's rows cost 20 ms an epoch in all
        for s in range(start * batch_size, len(order), batch_size):
            rows = order[s : s + batch_size]
            yield self.x.index_select(0, rows), None if self.y is None else self.y.index_select(0, rows)

    def head(self, n: int) -> torch.Tensor:
        return self.x[:n]

    def chunks(self, chunk: int = CHUNK) -> Iterator[Batch]:
        for s in range(0, len(self), chunk):
            yield self.x[s : s + chunk], None if self.y is None else self.y[s : s + chunk]

    @torch.no_grad()
    def map(self, fn, folder: Path | None = None, key: str = "") -> TensorData:
        return TensorData(torch.cat([fn(x) for x, _ in self.chunks()]), self.y)

    def concat(self, other: TensorData) -> TensorData:
        y = None if self.y is None or other.y is None else torch.cat([self.y, other.y])
        return TensorData(torch.cat([self.x, other.x]), y)

    def discard(self) -> None:
        pass


class ShardedData:
    """Rows streamed from the shards of a ``shards.ShardSet`` onto ``device``."""

    streamed = True

    def __init__(self, source: sh.ShardSet, device=None, *, labels: bool = False, folder: Path | None = None):
        self.source, self.labels, self.folder = source, labels and source.has_labels, folder
        self.device = torch.device("cpu") if device is None else torch.device(device)
        step = source.block_rows()
        # (shard index, first row, last row + 1) of each block: a shard in blocks of
        # nearly equal size, at most ``step`` rows (no tiny tail block)
        self.blocks = []
        for i, s in enumerate(source.shards):
            k = max(1, -(-len(s) // step))
            edges = [len(s) * j // k for j in range(k + 1)]
            self.blocks += [(i, a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]

    def __len__(self) -> int:
        return len(self.source)

    def share(self, world: int) -> int:
        return sum((b - a) // world for _, a, b in self.blocks) if world > 1 else len(self)

    def epoch_order(self, generator: torch.Generator, rank: int, world: int) -> torch.Tensor:
        # one draw per epoch: the seed of the block order and of every block's shuffle
        return torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).cpu()

    def _plan(self, order: torch.Tensor) -> list[int]:
        seed = int(order[0])
        return torch.randperm(len(self.blocks), generator=torch.Generator().manual_seed(seed)).tolist()

    def _read(self, i: int, a: int, b: int, labels: bool):
        """Rows [a, b) of shard i on the CPU: float32 inputs, int64 labels (or None)."""
        s = self.source.shards[i]
        x = torch.from_numpy(s.x.read(a, b).astype(np.float32, copy=False))
        # labels: self.labels, which only a source whose every shard has labels gives
        return x, torch.from_numpy(s.y.read(a, b).astype(np.int64)) if labels else None  # type: ignore[union-attr]

    def _block(self, j: int, order: torch.Tensor, rank: int, world: int):
        i, a, b = self.blocks[j]
        seed = int(hashlib.sha256(f"{int(order[0])}/{j}".encode()).hexdigest()[:15], 16)
        perm = torch.randperm(b - a, generator=torch.Generator().manual_seed(seed))
        if world > 1:
            perm = perm[rank::world][: (b - a) // world]
        x, y = self._read(i, a, b, self.labels)
        x, y = x.index_select(0, perm), None if y is None else y.index_select(0, perm)
        return x.to(self.device), None if y is None else y.to(self.device)

    def batches(
        self, order: torch.Tensor, batch_size: int, start: int, rank: int = 0, world: int = 1
    ) -> Iterator[Batch]:
        """Batches of ``batch_size`` rows (every one full but the epoch's last) from batch
        ``start`` on; the blocks before it are not read."""
        skip = start * batch_size
        carry_x = carry_y = None
        for j in self._plan(order):
            _, a, b = self.blocks[j]
            rows = (b - a) // world if world > 1 else b - a
            if skip >= rows:  # a resumed epoch: blocks already done are not read
                skip -= rows
                continue
            x, y = self._block(j, order, rank, world)
            x, y, skip = x[skip:], None if y is None else y[skip:], 0
            if carry_x is not None:  # the rows left over from the blocks before: the next batch starts with them
                need = batch_size - len(carry_x)
                carry_x = torch.cat([carry_x, x[:need]])
                # every block has labels or none has: with y, carry_y holds the carried rows' labels
                carry_y = None if y is None else torch.cat([carry_y, y[:need]])  # type: ignore[list-item]
                x, y = x[need:], None if y is None else y[need:]
                if len(carry_x) < batch_size:  # a block smaller than the batch: keep gathering
                    continue
                yield carry_x, carry_y
                carry_x = carry_y = None
            full = len(x) // batch_size * batch_size
            for s in range(0, full, batch_size):
                yield x[s : s + batch_size], None if y is None else y[s : s + batch_size]
            if full < len(x):
                carry_x, carry_y = x[full:], None if y is None else y[full:]
        if carry_x is not None:
            yield carry_x, carry_y

    def head(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self.source.read(0, min(n, len(self)))).to(self.device)

    def chunks(self, chunk: int = CHUNK) -> Iterator[Batch]:
        """The rows in order, block by block, on the device."""
        for i, a, b in self.blocks:
            x, y = self._read(i, a, b, self.labels)
            yield x.to(self.device), None if y is None else y.to(self.device)

    @torch.no_grad()
    def map(self, fn, folder: Path | None = None, key: str = "") -> ShardedData:
        """``fn`` over every row, written as float32 .npy shards (one per input shard) in
        ``folder``; a folder already made for the same ``key`` (the source and the
        layers below) is read back, not made again."""
        if folder is None:
            raise InvalidInput(f"{self.source.name}: streamed data needs a folder for the activations of each layer")
        folder = Path(folder)
        meta = {"key": key, "source": self.source.name, "rows": [len(s) for s in self.source.shards]}
        if (folder / "meta.json").is_file() and json.loads((folder / "meta.json").read_text()) == meta:
            return ShardedData(_opened(folder, len(self.source.shards)), self.device, folder=folder)
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        width = None
        for i, s in enumerate(self.source.shards):
            blocks = [(a, b) for k, a, b in self.blocks if k == i]

            def out(blocks=blocks, i=i):
                for a, b in blocks:
                    yield fn(self._read(i, a, b, False)[0].to(self.device)).float().cpu().numpy()

            if width is None:
                width = int(fn(self._read(i, 0, 1, False)[0].to(self.device)).shape[1])
            sh.write_npy(tmp / f"shard-{i:05d}.npy", out(), len(s), width)
        (tmp / "meta.json").write_text(json.dumps(meta))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        return ShardedData(_opened(folder, len(self.source.shards)), self.device, folder=folder)

    def concat(self, other: ShardedData) -> ShardedData:
        both = sh.ShardSet(
            f"{self.source.name}+{other.source.name}",
            self.source.shards + other.source.shards,
            self.source.scanned and other.source.scanned,
        )
        return ShardedData(both, self.device, labels=self.labels and other.labels)

    def discard(self) -> None:
        """Remove the activations folder this data was written to (nothing for a source)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def wait_for_activations(folder: Path, key: str, poll: float = 0.2) -> None:
    """Wait until another process has written the activations ``key`` into ``folder``."""
    meta = Path(folder) / "meta.json"
    while True:
        try:
            if json.loads(meta.read_text())["key"] == key:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(poll)


def concat(a, b):
    """``a`` then ``b`` as one data set; streamed if either is (the other joins it as an
    in-memory shard)."""
    if a.streamed != b.streamed:
        a, b = (x if x.streamed else _as_sharded(x, (b if b.streamed else a).device) for x in (a, b))
    return a.concat(b)


def _as_sharded(data: TensorData, device) -> ShardedData:
    y = None if data.y is None else data.y.cpu().numpy()
    return ShardedData(sh.in_memory(data.x.cpu().numpy(), y, "memory"), device, labels=y is not None)


def _opened(folder: Path, n: int) -> sh.ShardSet:
    return sh.ShardSet(str(folder), [sh.open_npy(folder / f"shard-{i:05d}.npy") for i in range(n)], True)


def as_data(x, y=None, device=None):
    """Loop data from tensors (moved to ``device`` once) or from loop data as is."""
    if isinstance(x, (TensorData, ShardedData)):
        return x
    if device is not None:
        x, y = x.to(device), None if y is None else y.to(device)
    return TensorData(x, y)
