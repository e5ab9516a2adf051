"""Data larger than memory: .npy files and folders of shards, opened without loading,
checked shard by shard, streamed in shuffled blocks that a resumed epoch finds again,
with bounded memory; and the jobs that train on them (pretraining writes each layer's
activations as shards; fine-tuning streams; staged pretraining feeds a folder's new
shards)."""

import json
import re
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from conftest import make_patterns, read_metrics, weights, worker_env
from layerwise.config import PretrainConfig
from layerwise.data import shards, streams
from layerwise.stack import DeepBeliefNet
from layerwise.training.pretrain import pretrain


def _rows(n=1000, d=6, seed=0):
    x = np.random.default_rng(seed).random((n, d)).astype(np.float32)
    x[:, 0] = np.arange(n) / n  # row i is recognisable by its first column
    return x


@pytest.fixture
def folder(tmp_path):
    """The same 1000 rows as a .npy, a stored .npz (with labels) and a compressed .npz."""
    x = _rows()
    y = (np.arange(1000) % 3).astype(np.int64)
    d = tmp_path / "shards"
    d.mkdir()
    np.save(d / "a.npy", x[:300])
    np.savez(d / "b.npz", x=x[300:700], y=y[300:700])
    np.savez_compressed(d / "c.npz", x=x[700:], y=y[700:])
    return d, x, y


def test_every_kind_of_shard_reads_back_exactly(folder):
    d, x, y = folder
    src = shards.open_source(d)
    assert [s.path.name for s in src.shards] == ["a.npy", "b.npz", "c.npz"]
    assert [s.x.offset is None for s in src.shards] == [False, False, True]  # the stored ones are memory-mapped
    assert len(src) == 1000 and src.n_features == 6 and not src.has_labels  # a.npy has no labels
    assert np.array_equal(src.read(0, 1000), x)
    assert np.array_equal(src.read(250, 750), x[250:750])  # across shard ends
    assert np.array_equal(src.rows(100, 900, "v").read(0, 800), x[100:900])  # a view reads its own rows
    one = shards.open_source(d / "b.npz", require_labels=True)
    assert np.array_equal(one.read(0, 400, labels=True)[1], y[300:700])


def test_the_fingerprints_match_the_in_memory_ones_and_name_each_shard(folder, tmp_path):
    from layerwise.data.sources import Dataset

    d, x, _ = folder
    src = shards.scan(shards.open_source(d))
    assert src.shards[0].fingerprint == Dataset(x[:300], None, "a").fingerprint
    np.save(d / "a.npy", x[:300] * 0.5)  # another shard: another fingerprint
    assert shards.scan(shards.open_source(d)).shards[0].fingerprint != src.shards[0].fingerprint


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda x: x.__setitem__((150, 2), np.nan), "b.npy: array 'x' contains NaN (first at row 150, column 2)"),
        (
            lambda x: x.__setitem__((7, 4), 3.0),
            "b.npy: array 'x' has values in [{lo:g}, 3] (first outside [0, 1] at row 7, column 4)",
        ),
    ],
)
def test_a_bad_value_is_named_by_shard_and_row(tmp_path, bad, message):
    x = _rows(400)
    np.save(tmp_path / "a.npy", x[:200])
    b = x[200:].copy()
    bad(b)
    np.save(tmp_path / "b.npy", b)
    with pytest.raises(ValueError, match=re.escape(message.format(lo=float(np.nanmin(b))))):
        shards.scan(shards.open_source(tmp_path))


def test_bad_shards_are_refused_before_any_work(tmp_path):
    np.save(tmp_path / "a.npy", _rows(10, 6))
    np.save(tmp_path / "b.npy", _rows(10, 5))
    with pytest.raises(ValueError, match="b.npy: 5 features per sample, but .*a.npy has 6"):
        shards.open_source(tmp_path)
    t = tmp_path / "t.npy"
    np.save(t, _rows(100, 6))
    t.write_bytes(t.read_bytes()[:-40])
    with pytest.raises(ValueError, match="is truncated: its header promises"):
        shards.open_source(t)
    np.savez(tmp_path / "l.npz", x=_rows(10, 6), y=np.arange(10) * 2)
    with pytest.raises(ValueError, match=r"l.npz:y: array 'y' must hold labels in \[0, 4\); found 4 at row 2"):
        shards.scan(shards.open_source(tmp_path / "l.npz"), n_labels=4)
    with pytest.raises(ValueError, match="a .npy shard holds inputs only; put labels in .npz shards"):
        shards.open_source(tmp_path / "a.npy", require_labels=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .npy or .npz shards"):
        shards.open_source(tmp_path / "empty")


def _epoch(data, order, bs, start=0, rank=0, world=1):
    return list(data.batches(order, bs, start, rank, world))


def test_an_epoch_streams_every_row_once_in_full_batches(folder, monkeypatch):
    monkeypatch.setattr(shards, "BLOCK_BYTES", 4 * 6 * 256)  # 256-row blocks: several per shard
    d, x, _ = folder
    data = streams.ShardedData(shards.open_source(d))
    assert len(data.blocks) == 6  # 300 -> 256 + 44, 400 -> 256 + 144, 300 -> 256 + 44
    gen = torch.Generator().manual_seed(0)
    order = data.epoch_order(gen, 0, 1)
    batches = _epoch(data, order, 64)
    assert [len(b) for b, _ in batches] == [64] * 15 + [40]  # every batch full but the last
    ids = torch.cat([b[:, 0] for b, _ in batches])
    assert torch.equal(ids.sort().values, torch.from_numpy(x[:, 0]))  # each row exactly once
    assert not torch.equal(ids, torch.from_numpy(x[:, 0]))  # shuffled
    assert not torch.equal(ids, torch.cat([b[:, 0] for b, _ in _epoch(data, data.epoch_order(gen, 0, 1), 64)]))
    # a resumed epoch: from batch 7 on, the very same batches, without reading the blocks before
    again = _epoch(data, order, 64, start=7)
    assert len(again) == 9 and all(torch.equal(a, b) for (a, _), (b, _) in zip(again, batches[7:]))
    # two workers: disjoint shares of equal length, from the same order
    r0, r1 = (torch.cat([b[:, 0] for b, _ in _epoch(data, order, 64, 0, r, 2)]) for r in (0, 1))
    assert len(r0) == len(r1) == data.share(2) and not set(r0.tolist()) & set(r1.tolist())


@pytest.mark.slow
def test_streaming_reads_in_bounded_blocks_and_lets_them_go(tmp_path):
    """A pass over a 256 MB .npy raises the peak resident set by about one block (32 MB
    of it, plus its tensor copies), not by the file's size, as slicing one map would."""
    path = tmp_path / "big.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(65536, 1024))
    for s in range(0, 65536, 8192):
        mm[s : s + 8192] = 0.5
    mm.flush()
    del mm
    code = f"""
import resource, torch
from layerwise.data import shards
from layerwise.data import streams
data = streams.ShardedData(shards.open_source({str(path)!r}))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
order = data.epoch_order(torch.Generator().manual_seed(0), 0, 1)
total = sum(float(b.sum()) for b, _ in data.batches(order, 1000, 0))
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, total)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=worker_env(), check=True)
    before, after, total = out.stdout.split()
    assert float(total) == 0.5 * 65536 * 1024
    grown_mb = (int(after) - int(before)) / 1024
    assert grown_mb < 160, f"peak RSS grew by {grown_mb:.0f} MB over a 256 MB file"


def test_streamed_pretraining_learns_and_writes_each_layers_activations_once(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "BLOCK_BYTES", 4 * 36 * 128)
    x, _ = make_patterns(n=600)
    d = tmp_path / "shards"
    d.mkdir()
    for i in range(3):
        np.save(d / f"p{i}.npy", x[200 * i : 200 * (i + 1)])
    dbn = DeepBeliefNet(36, [24, 12, 8], seed=0)
    made = []
    real_map = streams.ShardedData.map

    def spy(self, fn, folder=None, key=""):
        out = real_map(self, fn, folder, key)
        made.append((folder.name, sorted(p.name for p in folder.iterdir())))
        return out

    monkeypatch.setattr(streams.ShardedData, "map", spy)
    data = streams.ShardedData(shards.scan(shards.open_source(d)))
    records = pretrain(
        dbn, data, None, PretrainConfig(epochs=3, batch_size=20, learning_rate=0.1), scratch=tmp_path / "act"
    )
    # layers 2 and 3 trained on the shards of the layer below, written once each
    assert made == [
        ("train-layer-1", ["meta.json", "shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]),
        ("train-layer-2", ["meta.json", "shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]),
    ]
    assert not any((tmp_path / "act").iterdir())  # removed once the next layer had its own
    for layer in range(3):
        ce = [r["recon_ce_train"] for r in records if r["layer"] == layer]
        assert ce[-1] < ce[0], (layer, ce)


STREAM_RECIPE = """
seed = 2
threads = 1
[data]
source = "files"
train = "train"
test = "test.npz"
[model]
hidden = [24, 12]
[pretrain]
epochs = 3
batch_size = 10
learning_rate = 0.1
[finetune]
epochs = 3
batch_size = 10
learning_rate = 0.5
dropout_hidden = 0.2
[checkpoint]
every_batches = 7
"""


def _stream_files(tmp_path):
    x, y = make_patterns(n=900, n_features=36, n_classes=3, seed=4)
    (tmp_path / "train").mkdir()
    for i in range(3):
        np.savez(tmp_path / "train" / f"part-{i}.npz", x=x[250 * i : 250 * (i + 1)], y=y[250 * i : 250 * (i + 1)])
    np.savez(tmp_path / "test.npz", x=x[750:], y=y[750:])
    (tmp_path / "r.toml").write_text(STREAM_RECIPE)


def _train(tmp_path, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "layerwise", "train", *args, "--quiet"],
        cwd=tmp_path,
        env=env or worker_env(),
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def streamed_reference(tmp_path_factory):
    """One uninterrupted streamed run (runs/ref under the returned folder), the result each
    killed and resumed run of this module must end at, bitwise."""
    folder = tmp_path_factory.mktemp("streamed")
    _stream_files(folder)
    ref = _train(folder, "r.toml", "--name", "ref")
    assert ref.returncode == 0, ref.stderr
    return folder / "runs" / "ref"


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["pretrain layer 2@2.31", "finetune@2.40"])
def test_a_streamed_run_killed_and_resumed_is_bitwise_the_uninterrupted_one(tmp_path, streamed_reference, kill):
    _stream_files(tmp_path)  # the same files, in a folder of this test's own
    start = read_metrics(streamed_reference)[0]
    assert start["streamed"] is True and start["device"] == "cpu" and start["train"] == 675  # 10% held out
    assert not (streamed_reference / "activations").exists()  # the layers' shards are gone at the end
    killed = _train(tmp_path, "r.toml", "--name", "k", env=worker_env(LAYERWISE_TEST_KILL=kill))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    res = _train(tmp_path, "--resume", "runs/k")
    assert res.returncode == 0, res.stderr
    for artifact in ("pretrained", "finetuned"):
        a, b = weights(streamed_reference / artifact), weights(tmp_path / "runs" / "k" / artifact)
        assert all(torch.equal(a[k], b[k]) for k in a), artifact


@pytest.mark.slow
def test_inputs_above_max_memory_are_streamed(tmp_path, capsys):
    x, y = make_patterns(n=400)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    (tmp_path / "r.toml").write_text(
        STREAM_RECIPE.replace('"train"', '"train.npz"')
        .replace('test = "test.npz"\n', "")
        .replace("epochs = 3", "epochs = 1")
    )
    small = _train(tmp_path, "r.toml", "--name", "mem")
    big = _train(tmp_path, "r.toml", "--name", "disk", "--max-memory", "20k")  # 400 x 36 x 4 = 56 kB
    assert small.returncode == 0 and big.returncode == 0, small.stderr + big.stderr
    assert read_metrics(tmp_path / "runs" / "mem")[0]["streamed"] is False
    assert read_metrics(tmp_path / "runs" / "disk")[0]["streamed"] is True
    assert 'max_memory = "20k"' in (tmp_path / "runs" / "disk" / "config.toml").read_text()  # a resume streams too
    # a saved net evaluates and predicts on shards streamed from disk as on a file in memory
    from layerwise.cli import main

    with pytest.raises(SystemExit) as bad:  # refused while the arguments are read
        main(["train", str(tmp_path / "r.toml"), "--max-memory", "lots"])
    assert bad.value.code == 2 and "cannot read the size 'lots'" in capsys.readouterr().err

    (tmp_path / "sh").mkdir()
    np.savez(tmp_path / "sh" / "a.npz", x=x[:150], y=y[:150])
    np.savez(tmp_path / "sh" / "b.npz", x=x[150:], y=y[150:])
    np.save(tmp_path / "x.npy", x)
    outs = []
    for data in ("train.npz", "sh"):
        assert main(["evaluate", str(tmp_path / "runs" / "mem" / "finetuned"), "--data", str(tmp_path / data)]) == 0
    for data in ("train.npz", "x.npy"):
        out = tmp_path / f"p-{data}.npz"
        assert (
            main(["predict", str(tmp_path / "runs" / "mem" / "finetuned"), str(tmp_path / data), "--out", str(out)])
            == 0
        )
        outs.append(np.load(out)["probabilities"])
    assert np.allclose(outs[0], outs[1], atol=1e-6)


def _pretrain(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "layerwise", "pretrain", *args, "--quiet"],
        cwd=tmp_path,
        env=worker_env(),
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_staged_pretraining_feeds_a_folders_new_shards_once(tmp_path):
    """Three shards arrive one at a time: three stages, each on the one new shard; run
    again with nothing new, nothing is fed twice."""
    x, _ = make_patterns(n=600)
    (tmp_path / "incoming").mkdir()
    (tmp_path / "r.toml").write_text("seed = 1\n[model]\nhidden = [16, 8]\n[pretrain]\nepochs = 1\nbatch_size = 20\n")
    for i in range(3):
        np.save(tmp_path / "incoming" / f"day-{i}.npy", x[200 * i : 200 * (i + 1)])
        args = ["r.toml", "--out", "p"] if i == 0 else ["--resume", "p"]
        res = _pretrain(tmp_path, *args, "--data", "incoming")
        assert res.returncode == 0, res.stderr
        assert f"stage {i + 1}:" in res.stdout
    manifest = json.loads((tmp_path / "p" / "stage-3" / "manifest.json").read_text())
    fed = [[s["file"] for s in st["shards"]] for st in manifest["stages"]]
    assert fed == [["day-0.npy"], ["day-1.npy"], ["day-2.npy"]]
    assert [st["samples"] for st in manifest["stages"]] == [200, 200, 200]
    again = _pretrain(tmp_path, "--resume", "p", "--data", "incoming")
    assert again.returncode == 0, again.stderr
    assert "nothing new to pretrain on" in again.stdout
    assert not (tmp_path / "p" / "stage-4").exists()
    # two new shards at once (one of them a copy of a shard already fed): one stage, on the new one
    np.save(tmp_path / "incoming" / "day-3.npy", x[:100])
    np.save(tmp_path / "incoming" / "day-4.npy", x[:200])  # the bytes of day-0
    res = _pretrain(tmp_path, "--resume", "p", "--data", "incoming")
    assert res.returncode == 0, res.stderr
    last = json.loads((tmp_path / "p" / "stage-4" / "manifest.json").read_text())["stages"][-1]
    assert [s["file"] for s in last["shards"]] == ["day-3.npy"]


def test_a_stored_npz_member_is_mapped_at_its_offset(tmp_path):
    """The offset of a stored member comes from the zip's local header (its name and
    extra field vary in length): the bytes read are the array's."""
    x = _rows(50, 4)
    path = tmp_path / "s.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("comment.txt", "x" * 17)
        with z.open("x.npy", "w") as f:
            np.lib.format.write_array(f, x)
    shard = shards.open_npz(path)
    assert shard.x.offset is not None and np.array_equal(shard.x.read(0, 50), x)


@pytest.mark.distributed
def test_two_workers_stream_their_shares_and_share_one_copy_of_the_activations(tmp_path, monkeypatch):
    """Two workers on a folder of shards: each streams its half of every block, rank 0
    writes each layer's activations once for both, and a kill and restart of the group
    ends as the uninterrupted group does."""
    _stream_files(tmp_path)
    (tmp_path / "r.toml").write_text(STREAM_RECIPE.replace("[checkpoint]\nevery_batches = 7\n", ""))
    env = worker_env(LAYERWISE_TEST_KILL="1/pretrain layer 2@2.5")
    ref = _train(tmp_path, "r.toml", "--name", "ref", "--workers", "2")
    assert ref.returncode == 0, ref.stderr
    kill = _train(tmp_path, "r.toml", "--name", "k", "--workers", "2", "--max-restarts", "1", env=env)
    assert kill.returncode == 0, kill.stderr
    assert [r["phase"] for r in read_metrics(tmp_path / "runs" / "k")].count("resume") == 1
    start = read_metrics(tmp_path / "runs" / "ref")[0]
    assert start["workers"] == 2 and start["streamed"] is True
    assert not (tmp_path / "runs" / "ref" / "activations").exists()
    for artifact in ("pretrained", "finetuned"):
        a, b = weights(tmp_path / "runs" / "ref" / artifact), weights(tmp_path / "runs" / "k" / artifact)
        assert all(torch.equal(a[k], b[k]) for k in a), artifact


@pytest.mark.parametrize("bs", [100, 70, 7])
def test_blocks_smaller_than_a_batch_still_make_full_batches(tmp_path, bs):
    """Three shards of 30 rows: every batch but the last is full, every row is used, and
    an epoch resumed at any batch gives the same batches as the uninterrupted one."""
    for i in range(3):
        np.save(tmp_path / f"s{i}.npy", _rows(30, 2, seed=i) + i)
    data = streams.ShardedData(shards.open_source(tmp_path))
    order = data.epoch_order(torch.Generator().manual_seed(0), 0, 1)
    full = _epoch(data, order, bs)
    assert [len(b) for b, _ in full][:-1] == [bs] * (len(full) - 1) and sum(len(b) for b, _ in full) == 90
    assert len(full) == -(-data.share(1) // bs)  # what the loop counts
    for start in range(len(full)):
        again = _epoch(data, order, bs, start)
        assert len(again) == len(full) - start and all(torch.equal(a, b) for (a, _), (b, _) in zip(again, full[start:]))


def test_blocks_are_of_nearly_equal_size(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "BLOCK_BYTES", 4 * 6 * 256)  # at most 256 rows a block
    np.save(tmp_path / "a.npy", _rows(1025, 6))
    data = streams.ShardedData(shards.open_source(tmp_path))
    assert [b - a for _, a, b in data.blocks] == [205] * 5  # not 256, 256, 256, 256, 1


def test_streamed_labels_and_rows_are_checked_with_file_positions(tmp_path):
    from layerwise.config import DataConfig
    from layerwise.data.splits import load_splits

    x, y = make_patterns(n=1000)
    d = tmp_path / "sh"
    d.mkdir()
    xb = x.copy()
    xb[950, 3] = np.nan
    np.savez(d / "part.npz", x=xb, y=y)
    # the NaN sits in the held-out rows (the last 10%): the message gives its row in the file
    with pytest.raises(ValueError, match=r"part.npz:x: array 'x' contains NaN \(first at row 950, column 3\)"):
        load_splits(DataConfig(source="files", train=str(d)))
    yn = y.astype(np.float64)
    yn[10] = np.nan
    np.savez(d / "part.npz", x=x, y=yn)
    with pytest.raises(ValueError, match="part.npz:y: array 'y' must hold integer class labels"):
        load_splits(DataConfig(source="files", train=str(d)))
    # the largest label only in the held-out rows: the labels are counted over all of them
    y2 = y % 3
    y2[-1] = 7
    np.savez(d / "part.npz", x=x, y=y2)
    splits = load_splits(DataConfig(source="files", train=str(d)))
    assert splits.n_labels == 8 and len(splits.train) == 900 and len(splits.validation) == 100
    assert splits.train.fingerprint != splits.validation.fingerprint
    np.save(tmp_path / "w.npy", np.zeros((10, 0), np.float32))
    with pytest.raises(ValueError, match=r"w.npy: array 'x' has no features \(shape \(10, 0\)\)"):
        shards.open_source(tmp_path / "w.npy")


def test_a_loop_resumes_over_data_of_the_kind_its_order_was_drawn_for(tmp_path):
    from layerwise.data.sources import Dataset
    from layerwise.data.splits import loop_data

    x, y = make_patterns(n=100)
    mem = Dataset(x, y, "m")
    assert not loop_data(mem).streamed and loop_data(mem, streamed=True).streamed  # in memory, streamed as it was
    np.save(tmp_path / "a.npy", x)
    disk = shards.StreamedDataset(shards.open_source(tmp_path / "a.npy"), "a.npy")
    with pytest.raises(ValueError, match="the checkpoint was written by a loop over this data in memory"):
        loop_data(disk, streamed=False)


def test_train_on_validation_joins_streamed_and_in_memory_data(tmp_path):
    from layerwise.config import FinetuneConfig
    from layerwise.training.finetune import finetune

    x, y = make_patterns(n=300)
    np.savez(tmp_path / "a.npz", x=x[:200], y=y[:200])
    train = streams.ShardedData(shards.open_source(tmp_path / "a.npz"), labels=True)
    val = streams.TensorData(torch.from_numpy(x[200:]), torch.from_numpy(y[200:]))
    clf = DeepBeliefNet(36, [16], seed=0).to_classifier(3)
    res = finetune(
        clf,
        train,
        None,
        val,
        None,
        FinetuneConfig(epochs=2, batch_size=20, learning_rate=0.5, train_on_validation=True),
    )
    assert res.epochs_run == 2


def test_a_later_stage_reads_only_the_new_shards(tmp_path, monkeypatch):
    from layerwise.config import from_dict
    from layerwise.jobs import stages

    x, _ = make_patterns(n=600)
    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):
        np.save(d / f"p{i}.npy", x[200 * i : 200 * (i + 1)])
    cfg = from_dict({"model": {"hidden": [8]}, "pretrain": {"epochs": 1, "batch_size": 20}})
    scanned = []
    real = stages.scan
    monkeypatch.setattr(
        stages, "scan", lambda src, **kw: (scanned.append([s.path.name for s in src.shards]), real(src, **kw))[1]
    )
    assert stages.pretrain_stage(tmp_path / "p", cfg=cfg, data=d).stage == 1
    assert scanned == [["p0.npy"], ["p1.npy"]]
    np.save(d / "p2.npy", x[400:])
    scanned.clear()
    res = stages.pretrain_stage(tmp_path / "p", data=d)
    assert res.stage == 2 and scanned == [["p2.npy"]]  # the shards fed before were not read again
    np.save(tmp_path / "one.npy", x[:100])
    assert stages.pretrain_stage(tmp_path / "p", data=tmp_path / "one.npy").stage == 3
    with pytest.warns(UserWarning, match="was fed to an earlier stage already; it is fed again"):
        assert stages.pretrain_stage(tmp_path / "p", data=tmp_path / "one.npy").stage == 4  # a file is fed as asked
