"""The checkpoint writer killed at chosen moments: in the middle of the bytes (at 16
offsets drawn with a fixed seed), before the old checkpoint is kept, before and after
the new one takes its place. Whatever the moment, the checkpoint folder then loads, with
either the old state or the new, bitwise, and the next save cleans up what was left."""

import random
import signal

import pytest
import torch

from layerwise.storage.checkpointing import CHECKPOINT, PREVIOUS, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.slow


def _save_and_die(path, where: str, at: int) -> None:
    """In a forked child: save a checkpoint and SIGKILL this process at the chosen moment,
    in the middle of the bytes (after ``at`` of them reach the disk) or before or after
    the ``at``-th file-system call of the save (link or replace)."""
    import os

    import layerwise._files as F

    die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    if where == "bytes":
        real_fdopen = F.os.fdopen

        class Cut:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *a):
                return self.f.__exit__(*a)

            def write(self, b):
                self.f.write(b[:at])
                self.f.flush()
                os.fsync(self.f.fileno())
                die()

            def __getattr__(self, k):
                return getattr(self.f, k)

        F.os.fdopen = lambda *a, **k: Cut(real_fdopen(*a, **k))
    else:
        real = {"link": F.os.link, "replace": F.os.replace}
        calls = {"n": 0}

        def hook(name):
            def call(*a):
                calls["n"] += 1
                if calls["n"] == at and where == "before":
                    die()
                real[name](*a)
                if calls["n"] == at and where == "after":
                    die()

            return call

        F.os.link, F.os.replace = hook("link"), hook("replace")
    save_checkpoint(path, {"w": torch.full((4096,), 2.0), "step": torch.tensor(2)}, {"step": 2})


def _killed_while_saving(path, where: str, at: int) -> int:
    """Fork (the child shares this process's imports: no new interpreter to start) and
    let the child die while saving; the signal that ended it, or its exit status."""
    import os

    pid = os.fork()
    if pid == 0:  # the child: it never returns to pytest
        try:
            _save_and_die(path, where, at)
        finally:
            os._exit(3)  # the save went through: no kill happened
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


OLD = {"w": torch.full((4096,), 1.0), "step": torch.tensor(1)}
NEW = {"w": torch.full((4096,), 2.0), "step": torch.tensor(2)}
_rng = random.Random(20261201)
MOMENTS = (
    [("bytes", _rng.randrange(1, 16500)) for _ in range(16)]  # the blob is about 16.5 kB
    # the file-system calls: 1 links the old checkpoint, 2 moves it over the one before, 3 puts the new in place
    + [("before", 1), ("before", 2), ("before", 3), ("after", 3)]
)


@pytest.mark.parametrize("where, at", MOMENTS, ids=[f"{w}-{a}" for w, a in MOMENTS])
def test_a_killed_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path, where, at):
    ck = tmp_path / "checkpoint"
    save_checkpoint(ck, {"w": torch.zeros(4096), "step": torch.tensor(0)}, {"step": 0})
    save_checkpoint(ck, OLD, {"step": 1})
    assert _killed_while_saving(ck, where, at) == -signal.SIGKILL
    tensors, meta = load_checkpoint(ck)
    state = NEW if (where, at) == ("after", 3) else OLD  # only once the new file has its name is it the checkpoint
    assert meta == {"step": int(state["step"])} and all(torch.equal(tensors[k], state[k]) for k in state)
    prev, _ = load_checkpoint_file(ck / PREVIOUS, tmp_path / "one")
    assert int(prev["step"]) in (0, 1)  # the one before stays loadable too
    save_checkpoint(ck, NEW, {"step": 3})  # the next save goes through and leaves no debris
    assert sorted(p.name for p in ck.iterdir()) == [PREVIOUS, CHECKPOINT]


def load_checkpoint_file(path, folder):
    """Load one checkpoint file by giving it the name a checkpoint folder reads."""
    folder.mkdir()
    (folder / CHECKPOINT).write_bytes(path.read_bytes())
    return load_checkpoint(folder)
