"""Process groups: rank and world, joining and leaving, launching workers as functions
through PyTorch's own launcher (``elastic_launch``, what torchrun runs), reporting failed
workers from their torchelastic error files, and the per-worker state that a checkpoint
carries.

Averaging itself (the all_reduce and its policy) is ``averaging``'s. Every worker runs
the same job; ``is_writer()`` is the one place that decides who writes: rank 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from layerwise._checks import InvalidInput, Refused


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_writer() -> bool:
    """Rank 0 alone writes checkpoints, artifacts, metrics and plots."""
    return rank_world()[0] == 0


def under_torchrun() -> bool:
    """True inside a process started by torchrun / torch.distributed.run."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def backend_for(device) -> str:
    """NCCL when the worker trains on a GPU (one GPU per local rank), gloo otherwise."""
    return "nccl" if device is not None and torch.device(device).type == "cuda" else "gloo"


def join_group(timeout_minutes: float, device=None) -> tuple[int, int]:
    """Join the process group of a torchrun-started worker: NCCL when ``device`` is a GPU
    (each worker's own, from its LOCAL_RANK: ``runtime.resolve_device``), gloo otherwise;
    return (rank, world size)."""
    import datetime

    import torch.distributed as dist

    backend = backend_for(device)
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if backend == "nccl":  # bound to this worker's GPU at once
        dist.init_process_group(backend, timeout=timeout, device_id=torch.device(device))
    else:
        dist.init_process_group(backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def collective_device() -> torch.device:
    """Where the tensors of a collective must be: the worker's GPU under NCCL, else the CPU."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def leave_group() -> None:
    """Leave the process group: barrier, destroy, flush. The caller then ends with
    ``os._exit`` (a plain interpreter exit of a gloo worker sometimes aborted with
    'terminate called without an active exception')."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()


def broadcast_bytes(data: bytes, limit: int = 4096) -> bytes:
    """Rank 0's ``data`` on every rank (a run folder's name); unchanged outside a group."""
    import torch.distributed as dist

    if rank_world()[1] == 1:
        return data
    if len(data) > limit or b"\0" in data:
        raise InvalidInput(f"broadcast_bytes: at most {limit} bytes without NUL; got {len(data)}")
    buf = torch.zeros(limit, dtype=torch.uint8)
    buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else buf[:0]
    buf = buf.to(collective_device())
    dist.broadcast(buf, src=0)
    return bytes(buf.cpu().tolist()).rstrip(b"\0")


def barrier() -> None:
    """Wait for every worker (nothing outside a group)."""
    import torch.distributed as dist

    if rank_world()[1] > 1:
        dist.barrier()


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _worker_environment(workers: int) -> Iterator[None]:
    """The environment the launched workers inherit, restored afterwards: one share of
    the cores each (unless the user set OMP_NUM_THREADS), and a fresh rendezvous store
    for a restarted group (it must not read the dead workers' addresses from a reused one)."""
    saved = {k: os.environ.get(k) for k in ("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "OMP_NUM_THREADS")}
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_launcher() -> Iterator[None]:
    """The launcher's own log at errors only: its warnings (closing a worker on Ctrl-C,
    say) tell a user nothing that the command does not say itself."""
    import torch.distributed.elastic.agent.server.api  # noqa: F401 - its loggers exist from here on

    names = [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed.elastic")]
    logs = [logging.getLogger(n) for n in names]  # each has a level of its own
    before = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(logs, before):
            log.setLevel(level)


def launch(entrypoint: Callable[..., Any], args: tuple, workers: int, *, max_restarts: int = 0) -> dict[int, Any]:
    """Run ``entrypoint(*args)`` as ``workers`` processes on this machine through
    PyTorch's elastic launcher (torchrun's machinery, called as a function:
    ``elastic_launch``), with a c10d rendezvous on loopback at a free port; a failed
    worker restarts the whole group up to ``max_restarts`` times. Returns each rank's
    return value. ``entrypoint`` must be a module-level function (the workers are
    started by spawn) that joins the group itself.

    A Ctrl-C (the launcher stops the workers) raises KeyboardInterrupt. A worker that
    raised raises RuntimeError with its exception and traceback, as the worker's
    torchelastic error file recorded them; a worker killed by a signal or an exit code,
    once no restart is left, raises ``Refused``."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=workers,
        run_id=f"layerwise-{os.getpid()}-{free_port()}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        max_restarts=max_restarts,
        monitor_interval=0.1,
        start_method="spawn",
        shutdown_timeout=10,  # a worker that does not stop on the launcher's signal is killed after 10 s
    )
    with _worker_environment(workers), _quiet_launcher():
        try:
            return elastic_launch(config, entrypoint)(*args)
        except SignalException:
            raise KeyboardInterrupt from None
        except ChildFailedError as e:
            raise _group_failed(e, workers) from None


def _group_failed(error: Any, workers: int) -> Exception:
    """The error for a group whose workers failed, from what each failed worker's
    torchelastic error file recorded (``ProcessFailure.error_file_data``): a worker's
    exception is a bug (RuntimeError, with the worker's traceback); a worker ended by a
    signal or an exit code is not (``Refused``)."""
    raised, ended = [], []
    for rank, failure in sorted(error.failures.items()):
        recorded = failure.error_file_data.get("message")
        if isinstance(recorded, dict):  # the worker raised: @record wrote its exception and traceback
            trace = recorded.get("extraInfo", {}).get("py_callstack", "")
            raised.append(f"worker {rank}: {recorded.get('message', '')}\n{trace}".rstrip())
        else:
            ended.append(f"worker {rank}: {failure.message} (exit code {failure.exitcode})")
    if raised:
        return RuntimeError(f"{len(raised)} of the {workers} workers raised an exception:\n" + "\n".join(raised))
    return Refused(f"the {workers} workers failed: " + "; ".join(ended))


def gather_local_state(local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collective (every rank calls it at the same point): the tensors that differ
    between workers even right after an averaging round (momentum, PCD chains, optimizer
    state) of every rank but 0, sent to rank 0 and keyed ``rank{r}/{name}``; {} on the
    other ranks and outside a distributed run. Values travel as float64, exact for the
    float32 and integer tensors of a checkpoint."""
    import torch.distributed as dist

    rank, world = rank_world()
    if world == 1:
        return {}
    names = sorted(local)
    where = collective_device()
    flat = torch.cat(
        [local[k].detach().reshape(-1).to(where, torch.float64) for k in names]
        or [torch.zeros(0, dtype=torch.float64, device=where)]
    )
    parts = [torch.empty_like(flat) for _ in range(world)] if rank == 0 else None
    dist.gather(flat, parts, dst=0)
    if parts is None:  # not rank 0
        return {}
    out = {}
    for r in range(1, world):
        offset = 0
        for k in names:
            v = local[k]
            out[f"rank{r}/{k}"] = parts[r][offset : offset + v.numel()].reshape(v.shape).to(v.device, v.dtype).clone()
            offset += v.numel()
    return out


def take_local_state(tensors: dict[str, torch.Tensor], saved_world: int) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors as this rank saved them: its own ``rank{r}/`` entries in
    place of rank 0's. Only when the group has the size that wrote the checkpoint;
    otherwise every rank goes on from rank 0's state."""
    rank, world = rank_world()
    if rank == 0 or saved_world != world:
        return tensors
    prefix = f"rank{rank}/"
    return {**tensors, **{k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}}


def run_worker(job, *, timeout_minutes: float, on_result=None, device=None):
    """The life of one torchrun-started worker: join the group, run ``job()``, hand
    rank 0's result to ``on_result``, leave the group and end the process with
    ``os._exit(0)`` (a plain interpreter exit of a gloo worker sometimes aborted with
    'terminate called without an active exception'). An exception in ``job`` propagates
    as usual, and the process exits with its error."""
    join_group(timeout_minutes, device)
    result = job()
    if is_writer() and on_result is not None:
        on_result(result)
    leave_group()
    os._exit(0)
