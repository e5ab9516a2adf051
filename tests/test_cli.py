import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DIGITS_RECIPE, worker_env
from layerwise.cli import main

RECIPE = """
name = "smoke"
seed = 1
[data]
source = "npz"
train = "{train}"
test = "{test}"
validation_fraction = 0.2
[model]
hidden = [24, 12]
[pretrain]
epochs = 3
batch_size = 20
learning_rate = 0.1
[finetune]
epochs = 15
batch_size = 20
learning_rate = 0.5
"""


def _recipe(tmp_path, npz_files, extra=""):
    train, test = npz_files
    r = tmp_path / "smoke.toml"
    r.write_text(RECIPE.format(train=train, test=test) + extra)
    return r


def test_train_writes_the_run_folder(tmp_path, npz_files, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, npz_files)
    assert main(["train", str(recipe), "--quiet"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "smoke"
    assert f"run folder: {Path('runs') / 'smoke'}" in out
    acc_line = [l for l in out.splitlines() if l.startswith("test accuracy: ")][0]
    acc = float(acc_line.split(": ")[1].rstrip("%"))
    assert acc > 90.0, out  # three well separated classes
    for f in (
        "config.toml",
        "metrics.jsonl",
        "pretrained/weights.safetensors",
        "pretrained/manifest.json",
        "finetuned/weights.safetensors",
        "finetuned/manifest.json",
    ):
        assert (run / f).is_file(), f
    pre = json.loads((run / "pretrained/manifest.json").read_text())
    fin = json.loads((run / "finetuned/manifest.json").read_text())
    assert pre["kind"] == "pretrained" and fin["kind"] == "finetuned"
    assert fin["parent"] == pre["weights_sha256"]
    assert pre["architecture"]["hidden"] == [24, 12] and fin["architecture"]["sizes"] == [36, 24, 12]
    assert pre["stages"][0]["samples"] == 240 and len(pre["stages"][0]["fingerprint"]) == 64
    assert abs(fin["metrics"]["test_accuracy"] * 100 - acc) < 0.006
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    phases = [r["phase"] for r in records]
    assert phases.count("pretrain") == 6 and phases.count("finetune") >= 1 and phases[-1] == "test"
    # pretrained created before fine-tuning started
    assert phases.index("saved") < phases.index("finetune")
    # a second run never touches the first
    before = (run / "pretrained/weights.safetensors").read_bytes()
    assert main(["train", str(recipe), "--quiet"]) == 0
    assert "run folder: runs/smoke-2" in capsys.readouterr().out
    assert (run / "pretrained/weights.safetensors").read_bytes() == before

    # evaluate and predict on the saved classifier
    assert main(["evaluate", str(run / "finetuned")]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy: {acc:.2f}%" in out
    assert main(["predict", str(run / "finetuned"), str(npz_files[1]), "--out", str(tmp_path / "p.npz")]) == 0
    assert "wrote labels and probabilities of 100 samples" in capsys.readouterr().out
    with np.load(tmp_path / "p.npz") as p:
        labels, proba = p["labels"], p["probabilities"]
    y = np.load(npz_files[1])["y"]
    assert abs(100 * (labels == y).mean() - acc) < 0.006
    assert np.allclose(proba.sum(1), 1.0, atol=1e-5)
    assert main(["predict", str(run / "finetuned"), str(npz_files[1])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "index,label,probability" and len(lines) == 101
    # a pretrained net is not a classifier
    assert main(["evaluate", str(run / "pretrained")]) == 2
    assert "holds a pretrained net; evaluate and predict need a finetuned one" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        ("[loop]\nx = 1\n", "unknown config key 'loop'"),
        ("", None),
    ],
)
def test_bad_recipe_stops_before_any_work(tmp_path, npz_files, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    if message is None:  # labels out of range in the test file
        train, test = npz_files
        x = np.load(test)["x"]
        np.savez(test, x=x, y=np.full(len(x), 7))
        message = "test.npz: array 'y' must hold labels in [0, 3); found 7 at index 0"
    assert main(["train", str(_recipe(tmp_path, npz_files, extra)), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_nan_in_training_data_is_refused(tmp_path, npz_files, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train, _ = npz_files
    with np.load(train) as z:
        x, y = z["x"].copy(), z["y"]
    x[5, 3] = np.nan
    np.savez(train, x=x, y=y)
    assert main(["train", str(_recipe(tmp_path, npz_files)), "--quiet"]) == 2
    assert (
        "train.npz: array 'x' contains NaN (1 non-finite values; first at row 5, column 3)" in capsys.readouterr().err
    )


def _columns_of(stream: str, marker: str) -> list[int]:
    """The terminal column at which each ``marker`` starts, playing the stream as a
    terminal does: carriage return and newline go to column 0, escape sequences move
    nothing sideways, every other character takes one column."""
    import re

    cols, col, i = [], 0, 0
    while i < len(stream):
        esc = re.match(r"\x1b\[[0-9;?]*[A-Za-z]", stream[i:])
        if esc:
            i += len(esc.group())
            continue
        if stream.startswith(marker, i):
            cols.append(col)
        ch = stream[i]
        col = 0 if ch in "\r\n" else col + 1
        i += 1
    return cols


@pytest.mark.slow
def test_the_digits_recipe_in_a_terminal_learns_and_every_log_line_starts_at_column_0(tmp_path):
    """The smoke recipe end to end, as a user runs it in a terminal (a subprocess of
    `layerwise` on a pseudo-terminal): it learns the digits, and progress bars and
    per-epoch lines share the terminal: each line is printed through the bars
    (tqdm.write), so none is cut into a bar, and no bar is left behind."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen(
        [sys.executable, "-m", "layerwise", "train", str(DIGITS_RECIPE), "--threads", "1"],
        cwd=tmp_path,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=worker_env(),
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the other side closed: the process is done
            break
        if not data:
            break
        chunks.append(data)
    proc.wait()
    os.close(master)
    stream = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, stream[-2000:]
    assert "batch/s" in stream or "it/s" in stream, "no progress bar was drawn"  # the test saw bars at all
    starts = _columns_of(stream, "phase=")
    assert len(starts) > 10 and set(starts) == {0}, starts
    assert _columns_of(stream, "test accuracy:") == [0]
    acc = float(stream.split("test accuracy:")[1].split("%")[0])
    assert acc >= 95.0, stream[-2000:]
    assert (tmp_path / "runs/digits/plots/learning_curves.png").is_file()


def _models_command_raising(monkeypatch, error):
    """`layerwise models` with its function replaced by one that raises ``error``."""
    import layerwise.cli as cli

    def broken(args):
        raise error

    real = cli.build_parser

    def parser():
        p = real()
        p._subparsers._group_actions[0].choices["models"].set_defaults(func=broken)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)


@pytest.mark.parametrize(
    "error",
    [
        TypeError("unsupported operand"),
        RuntimeError("CUDA went away"),
        KeyError("weights"),
        AttributeError("no attribute 'x'"),
    ],
)
def test_a_bug_is_an_internal_error_with_its_traceback(monkeypatch, capsys, error):
    _models_command_raising(monkeypatch, error)
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and type(error).__name__ in err, err
    assert "layerwise: internal error: this is a bug in layerwise" in err and "please report it" in err, err
    assert "layerwise: error:" not in err  # never dressed as bad input


@pytest.mark.parametrize("debug", [False, True])
def test_a_user_error_is_one_line_with_exit_2_and_a_traceback_with_debug(monkeypatch, capsys, debug):
    from layerwise._checks import Refused

    _models_command_raising(monkeypatch, Refused("run folder 'runs/x' is in use by another layerwise process"))
    if debug:
        with pytest.raises(Refused):
            main(["--debug", "models"])
        return
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err == "layerwise: error: run folder 'runs/x' is in use by another layerwise process\n", err
