"""What the tests share: small data sets, the small recipes, the worker environment,
free ports, and helpers to run the command and read what it wrote.

The test process runs with the library's runtime policy at one thread (the policy a
process applies at entry); each test gets that thread count back afterwards.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layerwise import runtime

runtime.apply(threads=1)


@pytest.fixture(autouse=True)
def _one_thread():
    yield
    import torch

    torch.set_num_threads(1)  # a test that ran `main` may have applied another count


# -- data ------------------------------------------------------------------------------
def make_patterns(n=300, n_features=36, n_classes=3, flip=0.1, seed=0):
    """Noisy copies of random binary prototypes: an easy, separable [0, 1] data set."""
    rng = np.random.default_rng(seed)
    protos = (rng.random((n_classes, n_features)) < 0.5).astype(np.float32)
    y = rng.integers(0, n_classes, size=n)
    x = protos[y].copy()
    flips = rng.random(x.shape) < flip
    x[flips] = 1.0 - x[flips]
    return x.astype(np.float32), y.astype(np.int64)


def write_patterns(folder: Path) -> None:
    """train.npz (1200) and test.npz (300) of four noisy classes of 36 pixels: the data
    of the resume and distributed recipes."""
    x, y = make_patterns(n=1500, n_features=36, n_classes=4, flip=0.15, seed=5)
    np.savez(folder / "train.npz", x=x[:1200], y=y[:1200])
    np.savez(folder / "test.npz", x=x[1200:], y=y[1200:])


def digits_splits():
    """((x, y) train, (x, y) validation, (x, y) test) of the bundled digits, as tensors."""
    import torch

    from layerwise.data.sources import load_digits

    s = load_digits()
    return tuple((torch.from_numpy(d.x), torch.from_numpy(d.y)) for d in (s.train, s.validation, s.test))


def digits_pixels():
    """All 1797 digits, scaled to [0, 1], as one float32 tensor."""
    import torch
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data / 16.0, dtype=torch.float32)


@pytest.fixture
def patterns():
    return make_patterns()


@pytest.fixture
def npz_files(tmp_path):
    """train/test .npz files of the synthetic patterns."""
    x, y = make_patterns(n=400)
    np.savez(tmp_path / "train.npz", x=x[:300], y=y[:300])
    np.savez(tmp_path / "test.npz", x=x[300:], y=y[300:])
    return tmp_path / "train.npz", tmp_path / "test.npz"


# -- the small recipes ---------------------------------------------------------------------
# a net of 36-24-12-3 in a second: the table of bad inputs, the runtime tests
SMALL_RECIPE = """
name = "r"
seed = 1
threads = 1
[data]
source = "npz"
train = "train.npz"
test = "test.npz"
[model]
hidden = [24, 12]
[pretrain]
epochs = 2
batch_size = 20
learning_rate = 0.1
[finetune]
epochs = 4
batch_size = 20
learning_rate = 0.5
"""

# exact resume: PCD, a momentum switch, dropout, a cosine schedule, early stopping and
# mid-epoch checkpoints all have state that a resume must bring back
RESUME_RECIPE = """
seed = 3
threads = 1
[data]
source = "npz"
train = "train.npz"
test = "test.npz"
[model]
hidden = [48, 24]
[pretrain]
epochs = 3
batch_size = 10
learning_rate = 0.05
persistent = true
momentum_switch_epoch = 1
[finetune]
epochs = 8
batch_size = 10
learning_rate = 0.2
dropout_hidden = 0.2
patience = 4
lr_schedule = "cosine"
[checkpoint]
every_epochs = 1
every_batches = 7
"""

# parameter averaging over workers: {unit}, {pre} and {ft} epochs are filled in
WORKERS_RECIPE = """
seed = 3
[data]
source = "npz"
train = "train.npz"
test = "test.npz"
[model]
unit = "{unit}"
hidden = [48, 24]
[pretrain]
epochs = {pre}
batch_size = 10
learning_rate = 0.1
[finetune]
epochs = {ft}
batch_size = 10
learning_rate = 0.1
momentum = 0.9
[distributed]
averaging_frequency = 5
average_optimizer_state = true
"""

DIGITS_RECIPE = Path(__file__).parent.parent / "recipes" / "digits.toml"


# -- processes ---------------------------------------------------------------------------
def worker_env(threads: int = 1, **extra) -> dict:
    """The environment of a layerwise subprocess: one OpenMP thread (two processes on two
    cores must not spin against each other), plus ``extra`` variables. With
    ``LAYERWISE_TEST_KILL``, the loop loads the kill points of ``killpoints.py``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **extra}
    if "LAYERWISE_TEST_KILL" in extra:
        here = str(Path(__file__).parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        env["LAYERWISE_BATCH_HOOK"] = "killpoints:after_batch"
    return env


def run_layerwise(*args, cwd=None, env=None, timeout=1200) -> subprocess.CompletedProcess:
    """``python -m layerwise ARGS`` in a subprocess, as a user runs it (the timeout is a
    safety net against a hang, far above what any run here takes on a loaded machine)."""
    return subprocess.run(
        [sys.executable, "-m", "layerwise", *map(str, args)],
        cwd=cwd,
        env=env or worker_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- what a run wrote --------------------------------------------------------------------
def read_metrics(run: Path) -> list[dict]:
    """The records of a run's metrics.jsonl ([] before the first one)."""
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def weights(folder: Path) -> dict:
    from layerwise.storage.artifacts import read_artifact

    return read_artifact(folder)[0]


def assert_same_weights(a: Path, b: Path) -> None:
    """The two artifacts hold bitwise equal tensors."""
    import torch

    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys(), (a, b)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{b}/{k} differs from {a}"
