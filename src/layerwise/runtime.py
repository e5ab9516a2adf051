"""The process policy, applied once at process entry: by the CLI's ``main``, by each
worker of a distributed run (the same ``main``), and by each benchmark script. Nothing
else in layerwise changes torch's thread count or the environment.

- **Threads**: the ``--threads`` flag, else the recipe's ``threads`` (on ``--resume``, the
  run's ``config.toml``), else the default: ``min(2, cores)``, or in a worker of a
  distributed run ``cores // workers on this machine`` (at least 1; all the cores for a
  single worker per node).
- **OpenMP wait policy**: ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it.
  Idle OpenMP threads that spin steal the core from everything else on a busy machine
  (two threads ran 3-20x slower on a shared 2-core box). OpenMP reads it when torch
  loads, so ``set_wait_policy`` runs first thing in ``main`` (and at the top of each
  benchmark script), before anything imports torch; worker processes inherit it.
- **Device**: ``cpu``. This is where the choice of a CUDA device will live.

Library code takes the policy as given; a Python user calls ``runtime.apply()`` (or
``torch.set_num_threads``) themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from layerwise._checks import check_choice, check_int

DEVICES = ("cpu",)


@dataclass(frozen=True)
class Runtime:
    threads: int
    device: str
    wait_policy: str  # OMP_WAIT_POLICY: "PASSIVE", or the user's own


def default_threads(local_workers: int | None = None) -> int:
    """``min(2, cores)`` for a process of its own; a fair share of the cores for a worker
    of a group with ``local_workers`` on this machine."""
    cores = os.cpu_count() or 1
    return min(2, cores) if local_workers is None else max(1, cores // local_workers)


def resolve_threads(flag: int | None = None, recipe: int | None = None, *, local_workers: int | None = None) -> int:
    """flag > recipe > default."""
    for name, value in (("--threads", flag), ("threads", recipe)):
        if value is not None:
            return check_int("the runtime policy", name, value, low=1)
    return default_threads(local_workers)


def set_wait_policy() -> str:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the environment says otherwise; it takes effect
    only in a process that has not imported torch yet. Returns the policy."""
    return os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def apply(threads: int | None = None, recipe_threads: int | None = None, *, local_workers: int | None = None,
          device: str = "cpu") -> Runtime:
    """Apply the process policy (see the module docstring) and return what holds now."""
    check_choice("the runtime policy", "device", device, DEVICES)
    n = resolve_threads(threads, recipe_threads, local_workers=local_workers)
    policy = set_wait_policy()
    import torch

    torch.set_num_threads(n)
    return Runtime(n, device, policy)


def local_workers() -> int:
    """Workers on this machine in a torchrun-started group."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
