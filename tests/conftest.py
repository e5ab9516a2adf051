import numpy as np
import pytest


def make_patterns(n=300, n_features=36, n_classes=3, flip=0.1, seed=0):
    """Noisy copies of random binary prototypes: an easy, separable [0, 1] data set."""
    rng = np.random.default_rng(seed)
    protos = (rng.random((n_classes, n_features)) < 0.5).astype(np.float32)
    y = rng.integers(0, n_classes, size=n)
    x = protos[y].copy()
    flips = rng.random(x.shape) < flip
    x[flips] = 1.0 - x[flips]
    return x.astype(np.float32), y.astype(np.int64)


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
