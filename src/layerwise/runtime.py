"""The process policy, applied once at process entry: by the CLI's ``main``, by each
worker of a distributed run (the same ``main``), and by each benchmark script. Nothing
else in layerwise changes torch's thread count or the environment.

- **Threads**: the ``--threads`` flag, else the recipe's ``threads`` (on ``--resume``, the
  run's ``config.toml``), else the default: ``min(2, cores)``, or in a worker of a
  distributed run ``cores // workers on this machine`` (at least 1; all the cores for a
  single worker per node).
- **OpenMP wait policy**, unless the environment sets ``OMP_WAIT_POLICY`` or
  ``GOMP_SPINCOUNT`` itself: a short spin, ``GOMP_SPINCOUNT=10000``, when the cores are
  idle as the command starts (other processes used less than half a core over 0.1 s),
  else ``OMP_WAIT_POLICY=PASSIVE``. With the short spin a thread that finishes its part of
  one operation waits well under a millisecond for the next, then sleeps; PASSIVE wakes
  the threads for every operation. A fine-tuning batch of the Hinton net took 10 ms with
  the spin and 16 ms with PASSIVE on 2 quiet cores, but a CD-1 epoch took 1.8x longer
  with the spin than with PASSIVE while a busy loop held one of the cores, and longer
  spins (the libgomp default, ``ACTIVE``) collapsed by 3-20x there (benchmarks/RESULTS.md).
  OpenMP reads it when torch loads, so ``set_wait_policy`` runs first thing in ``main``
  (and at the top of each benchmark script), before anything imports torch; worker
  processes inherit it.
- **Device**: ``--device`` flag, else the recipe's ``device``, else ``auto``: CUDA when
  torch sees a GPU, else the CPU. ``cuda`` in a worker of a distributed run means the GPU
  of its ``LOCAL_RANK``. The jobs resolve the same spec with ``resolve_device``.
- **Precision** of the matrix products (``precision``): ``fp32`` (the default), ``tf32``
  (CUDA only: TensorFloat-32 matrix products; on a CPU it is fp32, with a warning) or
  ``bf16`` (the products take bfloat16 operands, and their results, rounded to bfloat16,
  are added in fp32; parameters, momentum, the CD statistics, the reconstruction
  cross-entropy and the free energy stay fp32). On a CPU without bfloat16 instructions
  (AVX512-BF16 or AMX) bf16 is emulated and slower than fp32, and ``apply`` warns.

Library code takes the policy as given; a Python user calls ``runtime.apply()`` (or
``torch.set_num_threads``) themselves.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from layerwise._checks import InvalidInput, check_choice, check_device, check_int

if TYPE_CHECKING:
    import torch  # for the annotation: the functions below import torch where they use it

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class Runtime:
    threads: int
    device: torch.device
    precision: str
    wait_policy: str  # "GOMP_SPINCOUNT=10000" or "OMP_WAIT_POLICY=PASSIVE", or the user's own


def resolve_device(spec: str = "auto"):
    """The ``torch.device`` a spec names on this machine. ``auto``: CUDA when available,
    else the CPU. ``cuda``: in a torchrun-started worker the GPU of its ``LOCAL_RANK``,
    else the current GPU. Raises ValueError when the spec asks for a GPU this machine
    does not have."""
    import torch

    check_device(spec)
    if spec == "cpu":
        return torch.device("cpu")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    local = int(os.environ.get("LOCAL_RANK", "-1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if local >= 0 else 1
    if spec == "auto":
        if n == 0 or local_world > n:  # every worker has a GPU of its own, or none trains on one
            return torch.device("cpu")
        return torch.device("cuda", local if local >= 0 else torch.cuda.current_device())
    if n == 0:
        raise InvalidInput(
            f"device {spec!r}: this machine has no CUDA device that torch can use "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); use --device cpu or auto"
        )
    if ":" in spec and local_world > 1:
        raise InvalidInput(
            f"device {spec!r} names one GPU, but {local_world} workers run on this machine, one GPU "
            "each (NCCL): use --device cuda (each worker takes the GPU of its LOCAL_RANK) or auto"
        )
    index = int(spec.split(":")[1]) if ":" in spec else (local if local >= 0 else torch.cuda.current_device())
    if index >= n:
        what = f"LOCAL_RANK {local} of a distributed run" if ":" not in spec else f"device {spec!r}"
        raise InvalidInput(
            f"{what} needs GPU {index}, but this machine has {n} (cuda:0 to cuda:{n - 1}); "
            "start fewer workers per machine, or use --device cpu"
        )
    return torch.device("cuda", index)


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


SPIN_COUNT = "10000"


def busy_cores(seconds: float = 0.1) -> float | None:
    """Cores that other processes kept busy over ``seconds`` (this one sleeps meanwhile),
    from /proc/stat; None where there is no /proc/stat."""

    def sample():  # jiffies since boot: all, and idle + iowait
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total1 - total0
    return 0.0 if elapsed <= 0 else (os.cpu_count() or 1) * (elapsed - (idle1 - idle0)) / elapsed


def set_wait_policy() -> str:
    """The OpenMP wait policy (see the module docstring) unless the environment sets
    ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``; it takes effect only in a process that has
    not imported torch yet. Returns the policy as ``NAME=value``."""
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if name in os.environ:
            return f"{name}={os.environ[name]}"
    busy = busy_cores()
    if busy is not None and busy < 0.5:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
        return f"GOMP_SPINCOUNT={SPIN_COUNT}"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "OMP_WAIT_POLICY=PASSIVE"


def apply(
    threads: int | None = None,
    recipe_threads: int | None = None,
    *,
    local_workers: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
) -> Runtime:
    """Apply the process policy (see the module docstring) and return what holds now."""
    check_choice("the runtime policy", "precision", precision, PRECISIONS)
    n = resolve_threads(threads, recipe_threads, local_workers=local_workers)
    policy = set_wait_policy()
    import torch

    torch.set_num_threads(n)
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # NCCL and the default CUDA generator follow it
        # TensorFloat-32 matrix products only when asked: fp32 is the default everywhere
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    elif precision == "tf32":
        warnings.warn(
            "precision 'tf32' applies to CUDA matrix products only; on the CPU they run in fp32",
            UserWarning,
            stacklevel=2,
        )
    elif precision == "bf16" and dev.type == "cpu" and not cpu_has_bf16():
        warnings.warn(
            "precision 'bf16': this CPU has no bfloat16 instructions (AVX512-BF16 or AMX), so its bf16 "
            'products are emulated and slower than fp32; precision = "fp32" is faster here',
            UserWarning,
            stacklevel=2,
        )
    return Runtime(n, dev, precision, policy)


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (oneDNN's check: AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch build without oneDNN
        return False


def local_workers() -> int:
    """Workers on this machine in a torchrun-started group."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run a block at ``n`` intra-op threads and give the count back afterwards (the
    lab trains a one-worker cell as each worker of a group trains: at one thread)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
