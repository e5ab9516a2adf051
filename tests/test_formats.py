"""The common data formats: IDX (gzipped or not), CSV with a label column, folders of
images, .npy pairs. Each reads what the file holds, and each names the file and the
place of what is wrong."""

import gzip

import numpy as np
import pytest

from layerwise.cli import main
from layerwise.config import DataConfig
from layerwise.data.sources import open_data
from layerwise.data.splits import load_splits


def _idx(path, arr, code=0x08, gz=False):
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reads_images_and_their_labels(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 4, 5), dtype=np.uint8)
    labels = rng.integers(0, 3, size=50).astype(np.uint8)
    suffix = ".gz" if gz else ""
    _idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz=gz)
    _idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz=gz)
    ds = open_data(tmp_path / f"train-images-idx3-ubyte{suffix}")
    np.testing.assert_allclose(ds.x, images.reshape(50, 20) / 255.0, atol=1e-7)
    assert ds.x.dtype == np.float32 and (ds.y == labels).all()


def test_idx_faults_are_named(tmp_path):
    images = np.zeros((10, 3, 3), dtype=np.uint8)
    path = _idx(tmp_path / "t-images-idx3-ubyte", images)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(
        ValueError,
        match=r"t-images-idx3-ubyte' is truncated: dimensions 10 x 3 x 3 of uint8 need 106 "
        r"bytes, the file has 101",
    ):
        open_data(path)
    (tmp_path / "bad-images-idx3-ubyte").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match="is not an IDX file: its first bytes are 504b0304"):
        open_data(tmp_path / "bad-images-idx3-ubyte")
    _idx(tmp_path / "u-images-idx3-ubyte", images)
    _idx(tmp_path / "u-labels-idx1-ubyte", np.zeros(9, dtype=np.uint8))
    with pytest.raises(ValueError, match="need 10 labels, one per image"):
        open_data(tmp_path / "u-images-idx3-ubyte")
    (tmp_path / "z-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 40)[:-8])
    with pytest.raises(ValueError, match="the gzip stream is broken"):
        open_data(tmp_path / "z-images-idx3-ubyte.gz")


def test_csv_with_a_label_column_by_name_or_index(tmp_path):
    (tmp_path / "h.csv").write_text("a,digit,b\n0.1,2,0.3\n0.5,0,0.25\n")
    ds = open_data(tmp_path / "h.csv", label_column="digit")
    np.testing.assert_allclose(ds.x, [[0.1, 0.3], [0.5, 0.25]]) and None
    assert list(ds.y) == [2, 0]
    (tmp_path / "n.csv").write_text("1,0.1,0.2\n0,0.3,0.4\n")
    ds = open_data(tmp_path / "n.csv", label_column="0")
    assert list(ds.y) == [1, 0] and ds.x.shape == (2, 2)
    assert open_data(tmp_path / "n.csv").y is None  # no header, no "label" column: inputs only
    (tmp_path / "l.csv").write_text("label,p0,p1\n1,0,1\n0,1,1\n")
    assert list(open_data(tmp_path / "l.csv").y) == [1, 0]  # "label" by default


def test_csv_faults_are_named(tmp_path):
    (tmp_path / "bad.csv").write_text("label,p0,p1\n1,0,1\n0,x,1\n")
    with pytest.raises(ValueError, match=r"bad.csv', line 3, column 2: 'x' is not a number"):
        open_data(tmp_path / "bad.csv")
    (tmp_path / "ragged.csv").write_text("label,p0,p1\n1,0,1\n0,1\n")
    with pytest.raises(ValueError, match=r"ragged.csv', line 3: 2 columns, expected 3"):
        open_data(tmp_path / "ragged.csv")
    (tmp_path / "frac.csv").write_text("label,p0\n1.5,0\n")
    with pytest.raises(ValueError, match=r"line 2, column 1: label 1.5 is not a whole number"):
        open_data(tmp_path / "frac.csv")
    with pytest.raises(ValueError, match=r"has no column 'digit' \(columns: label, p0\)"):
        open_data(tmp_path / "frac.csv", label_column="digit")
    (tmp_path / "nolabel.csv").write_text("p0,p1\n0,1\n")
    cfg = DataConfig(source="csv", train=str(tmp_path / "nolabel.csv"))
    with pytest.raises(ValueError, match="has no labels, which are required here"):
        load_splits(cfg)


def _png(path, arr, mode="L"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def test_image_folders_one_subfolder_per_label(tmp_path):
    pytest.importorskip("PIL")
    rng = np.random.default_rng(1)
    grey = {f"{c}/{i}.png": rng.integers(0, 256, (4, 6), dtype=np.uint8) for c in ("cat", "dog") for i in range(3)}
    for name, arr in grey.items():
        _png(tmp_path / "grey" / name, arr)
    ds = open_data(tmp_path / "grey")
    assert ds.x.shape == (6, 24) and list(ds.y) == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(ds.x[3], grey["dog/0.png"].reshape(-1) / 255.0, atol=1e-6)
    _png(tmp_path / "rgb" / "a" / "0.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), "RGB")
    _png(tmp_path / "rgb" / "b" / "0.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB")
    with pytest.raises(
        ValueError,
        match=r"'.*b/0.png' is 8x8 with 3 channels, but '.*a/0.png' is 4x4 with 3 "
        r"channels; declare one size",
    ):
        open_data(tmp_path / "rgb")
    ds = open_data(tmp_path / "rgb", image_size=[4, 4])
    assert ds.x.shape == (2, 48) and 0 <= ds.x.min() <= ds.x.max() <= 1
    (tmp_path / "rgb" / "b" / "1.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"image '.*b/1.png' cannot be read"):
        open_data(tmp_path / "rgb", image_size=[4, 4])
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="the label subfolder 'a' has no PNG or JPEG images"):
        load_splits(DataConfig(source="images", train=str(tmp_path / "empty")))


def test_npy_pairs_and_a_recipe_that_trains_on_them(tmp_path, capsys):
    from conftest import make_patterns

    x, y = make_patterns(n=400, n_features=16, n_classes=2, seed=3)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "short.npy", y[:-1])
    ds = open_data(f"{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}")
    assert (ds.x == x).all() and (ds.y == y).all()
    with pytest.raises(ValueError, match="need 400 labels, one per row"):
        open_data(f"{tmp_path / 'x.npy'},{tmp_path / 'short.npy'}")
    (tmp_path / "r.toml").write_text(
        '[data]\nsource = "npy"\ntrain = "x.npy,y.npy"\n[model]\nhidden = [8]\n'
        "[pretrain]\nepochs = 1\n[finetune]\nepochs = 1\n"
    )
    assert main(["train", str(tmp_path / "r.toml"), "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 0
    assert (tmp_path / "runs" / "r" / "finetuned" / "manifest.json").is_file()
