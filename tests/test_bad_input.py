"""What layerwise refuses, as a table: each row is an input (a file, a recipe, an edit of
an artifact), the command, the exit status, a fragment of the message, and what must
stay on disk untouched (hashes before and after) or never appear.

The rows run in-process on copies of one small trained run folder (`world`)."""

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import SMALL_RECIPE as RECIPE
from conftest import make_patterns
from layerwise.cli import main

GAUSSIAN = (
    RECIPE.replace('name = "r"', 'name = "g"')
    .replace("[model]", '[model]\nvisible = "gaussian"')
    .replace('train = "train.npz"', 'train = "std-train.npz"')
    .replace('test = "test.npz"', 'test = "std-test.npz"')
    .replace("learning_rate = 0.1", "learning_rate = 0.01")
)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Data, recipes and two finished runs: `r` (Bernoulli) and `g` (Gaussian visibles)."""
    root = tmp_path_factory.mktemp("world")
    x, y = make_patterns(n=400)
    np.savez(root / "train.npz", x=x[:300], y=y[:300])
    np.savez(root / "test.npz", x=x[300:], y=y[300:])
    std = (x - x.mean(0)) / (x.std(0) + 1e-6)
    np.savez(root / "std-train.npz", x=std[:300], y=y[:300])
    np.savez(root / "std-test.npz", x=std[300:], y=y[300:])
    (root / "r.toml").write_text(RECIPE)
    (root / "g.toml").write_text(GAUSSIAN)
    import os

    here = os.getcwd()
    os.chdir(root)
    try:
        assert main(["train", "r.toml", "--quiet"]) == 0
        assert main(["train", "g.toml", "--quiet"]) == 0
    finally:
        os.chdir(here)
    return root


@pytest.fixture
def world(template, tmp_path, monkeypatch):
    folder = tmp_path / "w"
    shutil.copytree(template, folder)
    monkeypatch.chdir(folder)
    return folder


def _write(path: str, text: str | bytes):
    def setup(w: Path):
        (w / path).write_bytes(text if isinstance(text, bytes) else text.encode())

    return setup


def _npz(path: str, **arrays):
    return lambda w: np.savez(w / path, **arrays)


def _edit_manifest(folder: str, edit):
    def setup(w: Path):
        p = w / folder / "manifest.json"
        p.chmod(0o644)
        m = json.loads(p.read_text())
        p.write_text(json.dumps(edit(m)))

    return setup


def _workers_config(m):
    m["config"]["distributed"]["workers"] = 2
    m["config"]["distributed"]["effective_learning_rates"] = {"pretrain": 0.1, "finetune": 0.5}
    return m


def _huge_npz(path: Path) -> None:
    """An .npz whose x.npy header claims 10**12 rows (131 TiB) and holds 1 kB."""
    import io
    import zipfile

    from numpy.lib import format as npformat

    buf = io.BytesIO()
    npformat.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 36)})
    buf.write(b"\0" * 1000)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", buf.getvalue())


@dataclass
class Case:
    id: str
    argv: list
    status: int
    message: str
    setup: Callable = lambda w: None
    untouched: tuple = ()
    absent: tuple = ()
    stream: str = "err"


def _shards(w: Path, nan_at: int | None = None, npy: bool = False) -> None:
    x, y = make_patterns(n=200)
    (w / "sh").mkdir()
    if npy:
        np.save(w / "sh" / "a.npy", x[:100])
    else:
        np.savez(w / "sh" / "a.npz", x=x[:100], y=y[:100])
    bad = x[100:].copy()
    if nan_at is not None:
        bad[nan_at, 0] = np.nan
    np.savez(w / "sh" / "b.npz", x=bad, y=y[100:])
    (w / "sh.toml").write_text(RECIPE.replace('"train.npz"', '"sh"').replace('name = "r"', 'name = "sh"'))


def _truncated_npy(w: Path) -> None:
    np.save(w / "t.npy", np.zeros((50, 36), np.float32))
    (w / "t.npy").write_bytes((w / "t.npy").read_bytes()[:-100])


CASES = [
    # 1: a net trained on standardized inputs is used on standardized inputs
    Case(
        "gaussian-evaluate",
        ["evaluate", "runs/g/finetuned", "--data", "std-test.npz"],
        0,
        "test accuracy:",
        stream="out",
    ),
    Case("gaussian-evaluate-own-test", ["evaluate", "runs/g/finetuned"], 0, "test accuracy:", stream="out"),
    Case(
        "gaussian-predict", ["predict", "runs/g/finetuned", "std-test.npz"], 0, "index,label,probability", stream="out"
    ),
    Case(
        "bernoulli-net-on-standardized-data",
        ["evaluate", "runs/r/finetuned", "--data", "std-test.npz"],
        2,
        "Bernoulli visible units need inputs in [0, 1]",
    ),
    # 2: the config a --workers run records is read back
    Case(
        "evaluate-after-workers",
        ["evaluate", "runs/r/finetuned"],
        0,
        "test accuracy:",
        stream="out",
        setup=_edit_manifest("runs/r/finetuned", _workers_config),
    ),
    # 8: a run name is one path component
    Case(
        "name-escapes-runs-dir",
        ["train", "r.toml", "--name", "../escape", "--quiet"],
        2,
        "The 'name' parameter of the recipe must be one path component",
        absent=("../escape", "escape"),
    ),
    Case(
        "absolute-name",
        ["train", "r.toml", "--name", "/tmp/layerwise-escape", "--quiet"],
        2,
        "must be one path component",
        absent=("/tmp/layerwise-escape",),
    ),
    Case(
        "recipe-name-with-slash",
        ["train", "slash.toml", "--quiet"],
        2,
        "must be one path component",
        setup=_write("slash.toml", RECIPE.replace('name = "r"', 'name = "a/b"')),
        absent=("runs/a",),
    ),
    # 11: predict never overwrites, and a folder is not a file
    Case(
        "predict-out-exists",
        ["predict", "runs/r/finetuned", "test.npz", "--out", "old.npz"],
        2,
        "'old.npz' already exists; pass --force to replace it",
        setup=_write("old.npz", b"keep me"),
        untouched=("old.npz",),
    ),
    Case(
        "predict-out-exists-force",
        ["predict", "runs/r/finetuned", "test.npz", "--out", "old.npz", "--force"],
        0,
        "wrote labels and probabilities of 100 samples",
        setup=_write("old.npz", b"replace me"),
        stream="out",
    ),
    Case(
        "predict-out-folder",
        ["predict", "runs/r/finetuned", "test.npz", "--out", "runs"],
        2,
        "--out 'runs' is a folder; name a .npz file",
    ),
    # 13: counts from the command line are checked like the recipe's
    Case(
        "pretrain-negative-epochs",
        ["pretrain", "r.toml", "--data", "train.npz", "--out", "p", "--epochs", "-2"],
        2,
        "--epochs: must be at least 0, got -2",
        absent=("p",),
    ),
    Case("probe-zero-epochs", ["probe-lr", "r.toml", "--epochs", "0"], 2, "--epochs: must be at least 1, got 0"),
    Case("probe-zero-subset", ["probe-lr", "r.toml", "--subset", "0"], 2, "--subset: must be at least 1, got 0"),
    Case("probe-one-point", ["probe-lr", "r.toml", "--points", "1"], 2, "--points: must be at least 2, got 1"),
    Case(
        "negative-threads",
        ["train", "r.toml", "--threads", "0"],
        2,
        "--threads: must be at least 1, got 0",
        absent=("runs/r-2",),
    ),
    # 14: a recipe says where its data is
    Case(
        "empty-recipe",
        ["train", "empty.toml", "--quiet"],
        2,
        "recipe 'empty.toml' has no [data] section",
        setup=_write("empty.toml", ""),
        absent=("runs/empty",),
    ),
    Case("empty-recipe-check", ["check", "empty.toml"], 2, "has no [data] section", setup=_write("empty.toml", "")),
    # 17: messages that name the file and the problem
    Case(
        "string-labels",
        ["train", "s.toml", "--quiet"],
        2,
        "s.npz: array 'y' must hold integer class labels; got dtype <U1",
        setup=lambda w: (
            np.savez(w / "s.npz", x=np.zeros((20, 36), np.float32), y=np.array(list("ab") * 10)),
            (w / "s.toml").write_text(RECIPE.replace("train.npz", "s.npz")),
        ),
        absent=("runs/r-2",),
    ),
    Case(
        "no-features",
        ["train", "z.toml", "--quiet"],
        2,
        "z.npz: array 'x' has no features (shape (20, 0))",
        setup=lambda w: (
            np.savez(w / "z.npz", x=np.zeros((20, 0), np.float32), y=np.zeros(20, np.int64)),
            (w / "z.toml").write_text(RECIPE.replace("train.npz", "z.npz")),
        ),
        absent=("runs/r-2",),
    ),
    Case(
        "recipe-not-utf8",
        ["train", "latin.toml", "--quiet"],
        2,
        "recipe 'latin.toml' is not UTF-8 text",
        setup=_write("latin.toml", RECIPE.replace('"r"', '"caf\xe9"').encode("latin-1")),
    ),
    Case(
        "manifest-a-number",
        ["evaluate", "runs/r/finetuned"],
        2,
        "manifest.json' is corrupt: it holds 3, not a JSON object",
        setup=_write("runs/r/finetuned/manifest.json", "3"),
    ),
    Case(
        "manifest-without-sizes",
        ["evaluate", "runs/r/finetuned"],
        2,
        "manifest.json' is corrupt: its architecture lacks 'sizes'",
        setup=_edit_manifest("runs/r/finetuned", lambda m: {**m, "architecture": {"type": "Classifier"}}),
    ),
    # 12: what cannot work is refused before anything is written
    Case(
        "hidden-too-wide",
        ["train", "wide.toml", "--quiet"],
        2,
        "memory: the net 36-100000000-3 on 300 samples needs about",
        setup=_write("wide.toml", RECIPE.replace("hidden = [24, 12]", "hidden = [100000000]").replace('"r"', '"wide"')),
        absent=("runs/wide",),
    ),
    Case(
        "label-2-to-the-40",
        ["train", "big.toml", "--quiet"],
        2,
        "check the labels: the output has one unit per label (1099511627777)",
        setup=lambda w: (
            np.savez(w / "big.npz", x=np.zeros((20, 36), np.float32), y=np.array([2**40] + [0] * 19)),
            (w / "big.toml").write_text(
                RECIPE.replace("train.npz", "big.npz").replace('test = "test.npz"\n', "").replace('"r"', '"big"')
            ),
        ),
        absent=("runs/big",),
    ),
    Case(
        "label-2-to-the-40-check",
        ["check", "big.toml"],
        2,
        "memory: the net 36-24-12-1099511627777 on 20 samples",
        stream="out",
        setup=lambda w: (
            np.savez(w / "big.npz", x=np.zeros((20, 36), np.float32), y=np.array([2**40] + [0] * 19)),
            (w / "big.toml").write_text(RECIPE.replace("train.npz", "big.npz")),
        ),
    ),
    Case(
        "zero-threads",
        ["check", "t0.toml"],
        2,
        "The 'threads' parameter of the recipe must be an int in the range [1, inf). Got 0 instead.",
        setup=_write("t0.toml", RECIPE.replace("threads = 1", "threads = 0")),
    ),
    Case(
        "seed-beyond-64-bits",
        ["check", "seed.toml"],
        2,
        "The 'seed' parameter of the recipe must be an int in the range [0, 9223372036854775807]. Got 18446744073709551616",
        setup=_write("seed.toml", RECIPE.replace("seed = 1", f"seed = {2**64}")),
    ),
    *(
        [
            Case(
                "cuda-on-a-machine-without",
                ["train", "r.toml", "--device", "cuda", "--quiet"],
                2,
                "device 'cuda': this machine has no CUDA device that torch can use",
                absent=("runs/r-2",),
            )
        ]
        if not __import__("torch").cuda.is_available()
        else []
    ),
    Case(
        "first-stage-missing-data",
        ["pretrain", "r.toml", "--data", "nope.npz", "--out", "p"],
        2,
        "data file 'nope.npz' does not exist",
        absent=("p",),
    ),
    Case(
        "first-stage-bad-data",
        ["pretrain", "r.toml", "--data", "nan.npz", "--out", "p"],
        2,
        "nan.npz: array 'x' contains NaN",
        setup=_npz("nan.npz", x=np.full((10, 36), np.nan, np.float32)),
        absent=("p",),
    ),
    # 15: what the system refuses, or a file that lies about its size, is a message too
    Case(
        "runs-dir-under-a-file",
        ["train", "r.toml", "--runs-dir", "old.npz/runs", "--quiet"],
        2,
        "cannot write or read 'old.npz/runs': Not a directory",
        setup=_write("old.npz", b"a file"),
        untouched=("old.npz",),
    ),
    Case(
        "npz-header-claims-terabytes",
        ["train", "huge.toml", "--quiet"],
        2,
        "huge.npz': an array's header claims more data than fits in memory",
        setup=lambda w: (
            _huge_npz(w / "huge.npz"),
            (w / "huge.toml").write_text(RECIPE.replace("train.npz", "huge.npz")),
        ),
        absent=("runs/r-2",),
    ),
    Case(
        "npz-header-claims-terabytes-check",
        ["check", "huge.toml"],
        0,
        "data was not inspected",
        stream="out",
        setup=lambda w: (
            _huge_npz(w / "huge.npz"),
            (w / "huge.toml").write_text(RECIPE.replace("train.npz", "huge.npz")),
        ),
    ),
    # 23: data rules skipped are said to be skipped, and why
    Case(
        "check-without-the-data",
        ["check", "gone.toml"],
        0,
        "the data was not inspected, so the rules on data (input range, labels, widths) were skipped: data file",
        setup=_write("gone.toml", RECIPE.replace("train.npz", "gone.npz")),
        stream="out",
    ),
    Case(
        "check-json-says-why",
        ["check", "gone.toml", "--format", "json"],
        0,
        '"data_not_inspected": "data file',
        setup=_write("gone.toml", RECIPE.replace("train.npz", "gone.npz")),
        stream="out",
    ),
    # data on disk, devices
    Case(
        "shard-with-nan",
        ["train", "sh.toml", "--quiet"],
        2,
        "b.npz:x: array 'x' contains NaN (first at row 5, column 0)",
        setup=lambda w: _shards(w, nan_at=5),
        absent=("runs/sh",),
    ),
    Case(
        "shard-without-labels",
        ["train", "sh.toml", "--quiet"],
        2,
        "a.npy: no array 'y' (labels), which is required here; a .npy shard holds inputs only",
        setup=lambda w: _shards(w, npy=True),
        absent=("runs/sh",),
    ),
    Case(
        "truncated-npy",
        ["pretrain", "r.toml", "--data", "t.npy", "--out", "p"],
        2,
        "'t.npy' is truncated: its header promises",
        setup=_truncated_npy,
        absent=("p",),
    ),
    Case(
        "unknown-device",
        ["train", "r.toml", "--device", "gpu"],
        2,
        "--device: must be auto, cpu, cuda or cuda:N, got 'gpu'",
    ),
    Case(
        "max-memory-on-resume",
        ["train", "--resume", "runs/r", "--max-memory", "1M"],
        2,
        "--max-memory applies to a new run",
    ),
    Case("bad-max-memory", ["train", "r.toml", "--max-memory", "much"], 2, "cannot read the size 'much'"),
    # 22: "none" only where it means something
    Case(
        "none-where-it-means-nothing",
        ["check", "n.toml"],
        2,
        "The 'data.n_labels' parameter of the recipe must be an int in the range [2, inf). Got 'none' (str) instead.",
        setup=_write(
            "n.toml",
            RECIPE.replace("[model]", "[model]").replace('test = "test.npz"', 'test = "test.npz"\nn_labels = "none"'),
        ),
    ),
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_refused_with_a_clear_message(case, world, capsys):
    case.setup(world)
    before = {p: _digest(world / p) for p in case.untouched}
    try:
        status = main([str(a) for a in case.argv])
    except SystemExit as e:  # argparse refuses a bad flag value with status 2
        status = e.code
    out, err = capsys.readouterr()
    assert status == case.status, (out, err)
    assert case.message in (err if case.stream == "err" else out), (out, err)
    if case.status == 2:
        assert "Traceback" not in err
    assert {p: _digest(world / p) for p in case.untouched} == before
    for p in case.absent:
        assert not (world / p).exists(), p


def test_every_artifact_file_has_a_deliberate_mode(world):
    """Pretrained files are read-only for all (0444); finetuned ones readable by all who
    share the runs folder (0644), whatever the umask."""
    modes = {
        str(p.relative_to(world / "runs/r")): oct(p.stat().st_mode & 0o777)
        for p in sorted((world / "runs/r").glob("*ed/*"))
    }
    assert modes == {
        "finetuned/manifest.json": "0o644",
        "finetuned/weights.safetensors": "0o644",
        "pretrained/manifest.json": "0o444",
        "pretrained/weights.safetensors": "0o444",
    }


def test_pretrain_epochs_0_is_honoured_not_replaced_by_the_recipe(world, capsys):
    from layerwise.storage.artifacts import read_artifact

    assert main(["pretrain", "r.toml", "--data", "train.npz", "--out", "p", "--epochs", "0", "--quiet"]) == 0
    _, manifest = read_artifact(world / "p/stage-1")
    assert manifest["stages"][0]["epochs_per_layer"] == 0
    assert not [
        r for r in map(json.loads, (world / "p/metrics.jsonl").read_text().splitlines()) if r["phase"] == "pretrain"
    ]


def test_init_std_applies_to_autoencoders_too():
    import torch

    from layerwise.stack import DeepBeliefNet

    glorot = DeepBeliefNet(36, [24], unit="autoencoder").layers[0].weight.detach()
    given = DeepBeliefNet(36, [24], unit="autoencoder", init_std=0.5).layers[0].weight.detach()
    assert abs(float(given.std()) - 0.5) < 0.05, float(given.std())
    bound = 4.0 * (6.0 / 60) ** 0.5  # the Glorot-uniform range for sigmoid units
    assert float(glorot.abs().max()) <= bound and abs(float(glorot.std()) - bound / 3**0.5) < 0.1
    assert abs(float(DeepBeliefNet(36, [24]).layers[0].weight.std()) - 0.01) < 0.002  # RBMs: 0.01 as before
    assert not torch.equal(glorot, given)


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def test_a_corrupt_checkpoint_is_refused_and_the_previous_one_offered(tmp_path):
    import torch

    from layerwise.storage.checkpointing import PREVIOUS, load_checkpoint, save_checkpoint

    ck = tmp_path / "checkpoint"
    save_checkpoint(
        ck, {"w": torch.arange(1000.0)}, {"phase": "finetune", "finetune": {"loop": {"epoch": 3, "batch": 0}}}
    )
    save_checkpoint(
        ck, {"w": torch.arange(1000.0) * 2}, {"phase": "finetune", "finetune": {"loop": {"epoch": 4, "batch": 0}}}
    )
    tensors, meta = load_checkpoint(ck)
    assert torch.equal(tensors["w"], torch.arange(1000.0) * 2)  # the newest
    _flip(ck / "state.safetensors", -100)  # a flipped byte in the tensor data: still parses
    with pytest.raises(ValueError) as e:
        load_checkpoint(ck)
    msg = str(e.value)
    assert "state.safetensors' is corrupt: its contents do not match the sha256 in its header" in msg
    assert "The previous checkpoint is intact (finetune, epoch 3, batch 0): to go on from there, move" in msg
    (ck / PREVIOUS).replace(ck / "state.safetensors")
    tensors, meta = load_checkpoint(ck)
    assert torch.equal(tensors["w"], torch.arange(1000.0)) and meta["finetune"]["loop"]["epoch"] == 3
    _flip(ck / "state.safetensors", 60)  # in the header's JSON now, and no previous one is left
    with pytest.raises(
        ValueError,
        match=r"checkpoint '.*state.safetensors' is (corrupt|unreadable).*; delete '.*checkpoint' to start over",
    ):
        load_checkpoint(ck)


@pytest.mark.parametrize("change", ["reversed", "500 rows"])
def test_resume_refuses_data_that_changed_since_the_run_started(world, capsys, change):
    from layerwise import config
    from layerwise.jobs import train

    cfg = config.load(world / "r.toml")
    cfg.name = "cut"

    def stop_in_finetuning(line):
        if line.startswith("phase=finetune epoch=2 "):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, runs_dir=world / "runs", echo=stop_in_finetuning)
    ckpt = world / "runs/cut/checkpoint/state.safetensors"
    before = _digest(ckpt)
    with np.load(world / "train.npz") as z:
        x, y = z["x"], z["y"]
    if change == "reversed":
        np.savez(world / "train.npz", x=x[::-1], y=y[::-1])
    else:
        x2, y2 = make_patterns(n=500, seed=7)
        np.savez(world / "train.npz", x=x2, y=y2)
    assert main(["train", "--resume", "runs/cut", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'runs/cut': the training data" in err and "is not the data this run started on" in err, err
    assert "Put the original data back to resume, or start a new run" in err
    assert _digest(ckpt) == before and not (world / "runs/cut/finetuned").exists()
    np.savez(world / "train.npz", x=x, y=y)  # the original data back: it goes on
    assert main(["train", "--resume", "runs/cut", "--quiet"]) == 0


def test_models_lists_an_unreadable_manifest_with_its_reason_and_goes_on(world, capsys):
    for name, text in (
        ("a-list", "[1, 2]"),
        ("no-keys", '{"kind": "pretrained", "architecture": {"type": "DeepBeliefNet"}}'),
        ("not-json", "{"),
    ):
        (world / "runs" / name).mkdir()
        (world / "runs" / name / "manifest.json").write_text(text)
    assert main(["models", "runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[-1]: line for line in lines[2:]}
    assert "it holds [1, 2], not a JSON object" in rows["runs/a-list"]
    assert "unreadable" in rows["runs/no-keys"] and "keyerror" in rows["runs/no-keys"]
    assert "JSONDecodeError" in rows["runs/not-json"]
    # the good nets are still there, and nested kinds keep their column apart
    nested = [line for line in lines if line.startswith("  finetuned ")]
    assert nested and all(line.split()[1].startswith("mlp") for line in nested), lines
    assert "runs/r/pretrained" in rows and "runs/g/finetuned" in rows


def test_learning_curves_leave_out_the_validation_panel_without_validation(tmp_path):
    from layerwise.reporting.plots import learning_curves

    pre = [{"phase": "pretrain", "layer": 0, "epoch": e, "recon_ce_train": 10.0 - e} for e in (1, 2)]
    fin = [{"phase": "finetune", "epoch": e, "train_loss": 1.0 / e} for e in (1, 2, 3)]  # train_on_validation
    titles = learning_curves(pre + fin, tmp_path / "a.png")
    assert titles == ["pretraining: reconstruction cross-entropy", "fine-tuning: cross-entropy"]
    with_val = [{**r, "val_loss": 0.5, "val_accuracy": 0.9} for r in fin]
    assert learning_curves(pre + with_val, tmp_path / "b.png")[-1] == "fine-tuning: validation accuracy (%)"
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_doubtful_inputs_are_warned_about_in_one_line(world, capsys):
    np.savez(world / "one.npz", x=make_patterns(n=60)[0], y=np.zeros(60, np.int64))
    (world / "one.toml").write_text(
        RECIPE.replace("train.npz", "one.npz").replace('test = "test.npz"\n', "").replace('"r"', '"one"')
    )
    assert main(["train", "one.toml", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "layerwise: warning: " in err and "one.npz: every training label is 0; a classifier of one class" in err, err
    (world / "wide.toml").write_text(RECIPE.replace("hidden = [24, 12]", "hidden = [30, 20, 10]"))
    assert main(["finetune", "runs/r/pretrained", "--recipe", "wide.toml", "--out", "ft", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "layerwise: warning: the recipe's model.hidden [30, 20, 10] is not used: the pretrained net" in err, err
    assert "has the hidden layers [24, 12], and those are fine-tuned" in err


def test_a_staged_pretraining_recipe_needs_no_data_section(world, capsys):
    (world / "stage.toml").write_text("seed = 1\n[model]\nhidden = [12]\n[pretrain]\nepochs = 1\nbatch_size = 20\n")
    assert main(["pretrain", "stage.toml", "--data", "train.npz", "--out", "p", "--quiet"]) == 0
    assert (world / "p/stage-1/manifest.json").is_file()


def test_the_previous_checkpoint_is_kept_without_hard_links(tmp_path, monkeypatch):
    """On a file system without hard links (vfat, SMB), the writer copies instead."""
    import os

    import torch

    from layerwise import _files
    from layerwise.storage.checkpointing import PREVIOUS, load_checkpoint, save_checkpoint

    def no_links(*a):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(_files.os, "link", no_links)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path / "ck", {"w": torch.full((10,), float(step))}, {"step": step})
    assert load_checkpoint(tmp_path / "ck")[1] == {"step": 3}
    (tmp_path / "ck" / PREVIOUS).replace(tmp_path / "ck" / "state.safetensors")
    assert load_checkpoint(tmp_path / "ck")[1] == {"step": 2}
    assert sorted(os.listdir(tmp_path / "ck")) == ["state.safetensors"]


def test_the_memory_rule_counts_the_samples_a_recipe_keeps(world, monkeypatch):
    from layerwise import config
    from layerwise.advice.rules import recipe_findings
    from layerwise.data import budget

    need = budget.memory_needed([36, 24, 12], 3, 300)
    monkeypatch.setattr(budget, "available_memory", lambda: need - 1)  # all 300 samples do not fit
    cfg = config.load(world / "r.toml")
    assert [f.rule for f in recipe_findings(cfg)[0] if f.severity == "error"] == ["memory"]
    cfg.data.train_limit = 100  # data.train_limit, as the message advises: then it fits
    assert not [f for f in recipe_findings(cfg)[0] if f.severity == "error"]
