"""Deterministic kill points for the tests that kill a run at a chosen batch: a batch
hook that the library's loop loads in a worker process from ``LAYERWISE_BATCH_HOOK``
(``conftest.worker_env`` sets it, with this folder on ``PYTHONPATH``, whenever a test
passes ``LAYERWISE_TEST_KILL``).

``LAYERWISE_TEST_KILL`` lists, comma-separated, one kill point per life of the process
(its restart count under torchrun, else 0), each
``[RANK/]LOOP@EPOCH.BATCH[:INT|:GROUPINT]``: in the loop whose description starts with
LOOP ("pretrain layer 2", "finetune"), right after batch BATCH of epoch EPOCH (both
counted from 1), the process sends itself SIGKILL; SIGINT with ``:INT``, as a Ctrl-C
does; with ``:GROUPINT``, SIGINT to its parent's process group, as a Ctrl-C in a
terminal reaches a --workers run (the command and PyTorch's launcher, which stops the
workers: they run in sessions of their own).
"""

from __future__ import annotations

import os
import re
import signal


def kill_point(desc: str, rank: int = 0) -> tuple[int, int, str] | None:
    """The kill point of this life of the process in the loop ``desc`` on ``rank``:
    (epoch, batch, how), or None."""
    spec = os.environ.get("LAYERWISE_TEST_KILL")
    if not spec:
        return None
    lives = spec.split(",")
    life = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if life >= len(lives) or not lives[life].strip():
        return None
    m = re.fullmatch(r"(?:(\d+)/)?(.+)@(\d+)\.(\d+)(?::(INT|GROUPINT))?", lives[life].strip())
    if m is None:
        raise ValueError(
            f"LAYERWISE_TEST_KILL: cannot read {lives[life]!r}; expected [RANK/]LOOP@EPOCH.BATCH[:INT|:GROUPINT]"
        )
    who, loop, epoch, batch, how = m.groups()
    if (who is not None and int(who) != rank) or not desc.startswith(loop):
        return None
    return int(epoch), int(batch), how or "KILL"


def after_batch(desc: str, rank: int, epoch: int, batch: int) -> None:
    """The batch hook: kill this process at its kill point."""
    kill = kill_point(desc, rank)
    if kill is None or kill[:2] != (epoch, batch):
        return
    if kill[2] == "GROUPINT":
        os.killpg(os.getpgid(os.getppid()), signal.SIGINT)
    else:
        os.kill(os.getpid(), signal.SIGINT if kill[2] == "INT" else signal.SIGKILL)
