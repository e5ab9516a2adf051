"""TensorBoard events of a run, read back with TensorBoard's own reader: the numbers are
the metrics log's."""

import json

import pytest

pytest.importorskip("tensorboard")

from conftest import write_patterns  # noqa: E402
from layerwise.cli import main  # noqa: E402


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of an event folder as TensorBoard's own reader sees it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_a_run_writes_what_its_metrics_log_says(tmp_path):
    write_patterns(tmp_path)
    (tmp_path / "r.toml").write_text(
        '[data]\nsource = "files"\ntrain = "train.npz"\ntest = "test.npz"\n'
        "[model]\nhidden = [16, 8]\n[pretrain]\nepochs = 2\n[finetune]\nepochs = 3\n"
        'patience = "none"\n'
    )
    board = tmp_path / "tb"
    assert (
        main(
            [
                "train",
                str(tmp_path / "r.toml"),
                "--runs-dir",
                str(tmp_path / "runs"),
                "--quiet",
                "--tensorboard",
                str(board),
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]
    scalars = read_scalars(board)
    for layer in (1, 2):
        logged = [
            (r["epoch"], r["recon_ce_train"]) for r in records if r["phase"] == "pretrain" and r["layer"] == layer - 1
        ]
        got = scalars[f"pretrain/layer{layer}/recon_ce_train"]
        assert [s for s, _ in got] == [e for e, _ in logged] == [1, 2]
        assert [v for _, v in got] == pytest.approx([v for _, v in logged], rel=1e-6)
    fin = [r for r in records if r["phase"] == "finetune"]
    assert [v for _, v in scalars["finetune/val_accuracy"]] == pytest.approx([r["val_accuracy"] for r in fin], rel=1e-6)
    assert [s for s, _ in scalars["finetune/train_loss"]] == [1, 2, 3]
    test = [r for r in records if r["phase"] == "test"][0]
    assert scalars["test/test_accuracy"][0][1] == pytest.approx(test["test_accuracy"], rel=1e-6)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(board), size_guidance={"histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    hists = set(acc.Tags()["histograms"])
    assert {"pretrain/layer1/weight", "pretrain/layer2/hidden_bias", "finetune/0.weight"} <= hists
    assert len(acc.Histograms("finetune/0.weight")) == 3  # one per epoch
    assert "start" in {t.split("/")[0] for t in acc.Tags()["tensors"]}  # the start record, as text


def test_a_recipe_can_ask_for_it_and_a_bad_folder_is_an_error(tmp_path, capsys):
    write_patterns(tmp_path)
    (tmp_path / "file").write_text("")
    (tmp_path / "r.toml").write_text(
        '[data]\nsource = "files"\ntrain = "train.npz"\n[model]\nhidden = [8]\n'
        "[pretrain]\nepochs = 1\n[finetune]\nepochs = 1\n[log]\n"
        f'tensorboard = "{tmp_path / "file" / "tb"}"\n'
    )
    assert main(["train", str(tmp_path / "r.toml"), "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 2
    assert "cannot write or read" in capsys.readouterr().err and not (tmp_path / "runs" / "r").exists()
