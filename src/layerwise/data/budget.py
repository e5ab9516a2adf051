"""What a net and its data need in memory, estimated before any work: a run that cannot
fit is refused at the start (by ``runs`` and the jobs) and found by ``check``, rather
than failing halfway after writing."""

from __future__ import annotations

import os
from pathlib import Path

from layerwise._checks import InvalidInput


def available_memory() -> int:
    """Bytes this machine can still give (MemAvailable), or its physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_needed(sizes: list[int], n_labels: int, n_samples: int) -> int:
    """A rough upper estimate, in bytes, of what training ``sizes`` -> ``n_labels`` on
    ``n_samples`` holds at once (float32): in fine-tuning the weights seven times over
    (current, gradient, momentum, best epoch, the guard's weights and momentum, the
    checkpoint being written), and the activations of every sample at the widest layer,
    twice (a layer's input and its output)."""
    layers = list(zip(sizes, sizes[1:] + [n_labels]))
    params = sum(a * b + b for a, b in layers) + sum(sizes[1:])  # + the visible biases of the units
    return 4 * (7 * params + 2 * n_samples * max(sizes + [n_labels]))


def check_fits(sizes: list[int], n_labels: int, n_samples: int) -> None:
    """Refuse, before any work, a net and data that cannot fit in this machine's memory."""
    need, have = memory_needed(sizes, n_labels, n_samples), available_memory()
    if need > have:
        gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
        net = "-".join(map(str, sizes + ([n_labels] if n_labels else [])))
        labels = f", and check the labels: the output has one unit per label ({n_labels})" if n_labels else ""
        raise InvalidInput(
            f"the net {net} on {n_samples} samples needs about {gib(need)} of memory; this machine has "
            f"{gib(have)} available. Use smaller hidden layers (model.hidden) or fewer samples (data.train_limit){labels}"
        )
