"""The pretrained net as a product: encode, reconstruct and sample from saved nets."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import make_patterns
from layerwise.cli import main
from layerwise.config import PretrainConfig
from layerwise.stack import DeepBeliefNet
from layerwise.storage.artifacts import classifier_architecture, load_model, write_artifact
from layerwise.training.pretrain import pretrain


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("use")
    x, y = make_patterns(n=600, n_features=36, n_classes=3, flip=0.05, seed=4)
    np.savez(d / "data.npz", x=x, y=y)
    np.save(d / "inputs.npy", x)
    dbn = DeepBeliefNet(36, [24, 12], seed=0)
    untrained = dbn.model_state()
    pretrain(
        dbn,
        torch.from_numpy(x),
        None,
        dataclasses.replace(PretrainConfig(), epochs=15, batch_size=20, learning_rate=0.1, monitor_samples=100),
        seed=0,
    )
    write_artifact(d / "pretrained", dbn.model_state(), kind="pretrained", architecture=dbn.architecture(), config={})
    write_artifact(d / "untrained", untrained, kind="pretrained", architecture=dbn.architecture(), config={})
    clf = dbn.to_classifier(3, seed=1)
    write_artifact(
        d / "finetuned",
        clf.state_dict(),
        kind="finetuned",
        architecture=classifier_architecture([36, 24, 12], 3, 0.0, 0.0),
        config={},
    )
    ae = DeepBeliefNet(36, [20], unit="autoencoder", seed=0)
    write_artifact(d / "autoencoder", ae.model_state(), kind="pretrained", architecture=ae.architecture(), config={})
    return d, x, y


def test_encode_gives_a_layers_mean_activations(saved, tmp_path):
    d, x, y = saved
    dbn, _ = load_model(d / "pretrained")
    assert main(["encode", str(d / "pretrained"), str(d / "data.npz"), "--out", str(tmp_path / "top.npz")]) == 0
    top = np.load(tmp_path / "top.npz")
    np.testing.assert_allclose(top["x"], dbn.transform(torch.from_numpy(x)).numpy(), atol=1e-6)
    assert (top["y"] == y).all()
    assert (
        main(
            ["encode", str(d / "finetuned"), str(d / "inputs.npy"), "--layer", "1", "--out", str(tmp_path / "one.npz")]
        )
        == 0
    )
    one = np.load(tmp_path / "one.npz")
    np.testing.assert_allclose(one["x"], dbn.transform(torch.from_numpy(x), upto=1).numpy(), atol=1e-6)
    assert "y" not in one and one["x"].shape == (600, 24)


def test_encode_refuses_bad_requests(saved, tmp_path, capsys):
    d, x, _ = saved
    assert (
        main(["encode", str(d / "pretrained"), str(d / "data.npz"), "--layer", "3", "--out", str(tmp_path / "f.npz")])
        == 2
    )
    assert "--layer 3: this pretrained net has hidden layers 1 to 2" in capsys.readouterr().err
    np.savez(tmp_path / "narrow.npz", x=x[:, :30])
    assert main(["encode", str(d / "pretrained"), str(tmp_path / "narrow.npz"), "--out", str(tmp_path / "f.npz")]) == 2
    assert "30" in capsys.readouterr().err and not (tmp_path / "f.npz").exists()
    (tmp_path / "f.npz").write_bytes(b"keep")
    assert main(["encode", str(d / "pretrained"), str(d / "data.npz"), "--out", str(tmp_path / "f.npz")]) == 2
    assert "already exists" in capsys.readouterr().err and (tmp_path / "f.npz").read_bytes() == b"keep"


def test_reconstruct_goes_up_and_down_the_stack(saved, tmp_path):
    d, x, _ = saved
    errors = {}
    for name in ("pretrained", "untrained"):
        out = tmp_path / f"{name}.npz"
        assert (
            main(
                [
                    "reconstruct",
                    str(d / name),
                    str(d / "data.npz"),
                    "--out",
                    str(out),
                    "--png",
                    str(tmp_path / f"{name}.png"),
                ]
            )
            == 0
        )
        r = np.load(out)["x"]
        assert r.shape == x.shape and 0 <= r.min() <= r.max() <= 1
        errors[name] = float(((r - x) ** 2).mean())
        assert (tmp_path / f"{name}.png").stat().st_size > 2000
    assert errors["pretrained"] < 0.5 * errors["untrained"], errors  # the trained stack reconstructs


def test_sample_draws_from_the_top_rbm(saved, tmp_path, capsys):
    d, x, _ = saved
    assert (
        main(
            [
                "sample",
                str(d / "pretrained"),
                "-n",
                "16",
                "--steps",
                "200",
                "--out",
                str(tmp_path / "s.npz"),
                "--png",
                str(tmp_path / "s.png"),
            ]
        )
        == 0
    )
    s = np.load(tmp_path / "s.npz")["x"]
    assert s.shape == (16, 36) and 0 <= s.min() <= s.max() <= 1 and (tmp_path / "s.png").stat().st_size > 2000
    # samples look like the data: each lies nearer to some training image than uniform noise does
    near = lambda v: np.abs(v[:, None, :] - x[None, :, :]).mean(2).min(1)  # noqa: E731
    noise = np.random.default_rng(0).random((16, 36)).astype(np.float32)
    assert near(s).mean() < 0.6 * near(noise).mean()
    assert main(["sample", str(d / "pretrained"), "-n", "16", "--steps", "200", "--out", str(tmp_path / "t.npz")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "t.npz")["x"], s)  # the same seed, the same samples
    assert main(["sample", str(d / "pretrained"), "--label", "3", "--png", str(tmp_path / "l.png")]) == 2
    assert "--label needs a top RBM trained with the labels" in capsys.readouterr().err
    assert main(["sample", str(d / "autoencoder"), "--png", str(tmp_path / "a.png")]) == 2
    assert "autoencoders" in capsys.readouterr().err
    assert main(["sample", str(d / "finetuned"), "--png", str(tmp_path / "f.png")]) == 2
    assert "needs a pretrained stack" in capsys.readouterr().err


def test_a_run_draws_reconstructions_and_samples(tmp_path):
    from conftest import write_patterns

    write_patterns(tmp_path)
    (tmp_path / "r.toml").write_text(
        '[data]\nsource = "files"\ntrain = "train.npz"\ntest = "test.npz"\n'
        "[model]\nhidden = [16]\n[pretrain]\nepochs = 1\n[finetune]\nepochs = 1\n"
    )
    assert main(["train", str(tmp_path / "r.toml"), "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 0
    plots = tmp_path / "runs" / "r" / "plots"
    assert sorted(p.name for p in plots.iterdir()) == [
        "filters.png",
        "learning_curves.png",
        "reconstructions.png",
        "samples.png",
    ]
    assert min(p.stat().st_size for p in plots.iterdir()) > 2000


def test_show_draws_any_saved_net(saved, tmp_path, capsys):
    d, x, _ = saved
    assert (
        main(
            [
                "show",
                str(d / "pretrained"),
                "--out",
                str(tmp_path / "p"),
                "--data",
                str(d / "data.npz"),
                "--steps",
                "50",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["filters.png", "reconstructions.png", "samples.png"]
    # a finetuned net beside its run's pretrained stack (its parent) is drawn with it
    run = tmp_path / "run"
    run.mkdir()
    import shutil

    shutil.copytree(d / "pretrained", run / "pretrained")
    _, pre = load_model(run / "pretrained")
    clf, fm = load_model(d / "finetuned")
    write_artifact(
        run / "finetuned",
        clf.state_dict(),
        kind="finetuned",
        architecture=fm["architecture"],
        config={},
        parent=pre["weights_sha256"],
    )
    assert (
        main(
            [
                "show",
                str(run / "finetuned"),
                "--out",
                str(tmp_path / "f"),
                "--data",
                str(d / "data.npz"),
                "--steps",
                "50",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["filters.png", "reconstructions.png", "samples.png"]
    assert main(["show", str(d / "finetuned"), "--out", str(tmp_path / "g")]) == 0  # no parent beside it
    assert "no pretrained stack found" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["filters.png"]


@pytest.mark.slow
def test_samples_clamped_to_a_label_look_like_that_label(tmp_path):
    """[model] top_labels: the top RBM learns the labels beside its features (Hinton,
    Osindero & Teh 2006); samples with a label clamped are classified as that label by
    the run's own finetuned net, far above chance (1/4)."""
    from conftest import write_patterns

    write_patterns(tmp_path)
    (tmp_path / "r.toml").write_text(
        '[data]\nsource = "files"\ntrain = "train.npz"\ntest = "test.npz"\n'
        "[model]\nhidden = [32, 32]\ntop_labels = true\n"
        "[pretrain]\nepochs = 10\nlearning_rate = 0.1\nbatch_size = 20\n"
        "[finetune]\nepochs = 5\nlearning_rate = 0.1\n"
    )
    assert main(["train", str(tmp_path / "r.toml"), "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 0
    run = tmp_path / "runs" / "r"
    dbn, manifest = load_model(run / "pretrained")
    assert manifest["architecture"]["top_labels"] == 4 and dbn.layers[-1].n_visible == 32 + 4
    clf, _ = load_model(run / "finetuned")
    hits = []
    for label in range(4):
        assert (
            main(
                [
                    "sample",
                    str(run / "pretrained"),
                    "-n",
                    "25",
                    "--steps",
                    "300",
                    "--label",
                    str(label),
                    "--out",
                    str(tmp_path / f"s{label}.npz"),
                ]
            )
            == 0
        )
        s = torch.from_numpy(np.load(tmp_path / f"s{label}.npz")["x"])
        with torch.no_grad():
            hits.append(float((clf(s).argmax(1) == label).float().mean()))
    assert min(hits) > 0.6 and sum(hits) / 4 > 0.8, hits
    # the classifier of a top_labels net reads the features only: its test accuracy is a real one
    assert json.loads((run / "finetuned" / "manifest.json").read_text())["metrics"]["test_accuracy"] > 0.9
    assert main(["sample", str(run / "pretrained"), "--label", "4", "--png", str(tmp_path / "x.png")]) == 2


def test_top_labels_is_refused_where_it_cannot_work(tmp_path, capsys):
    from conftest import write_patterns
    from layerwise import config

    with pytest.raises(ValueError, match="model.top_labels"):
        config.from_dict({"model": {"unit": "autoencoder", "top_labels": True}})
    write_patterns(tmp_path)
    base = (
        '[data]\nsource = "files"\ntrain = "train.npz"\n[model]\nhidden = [8]\ntop_labels = true\n'
        "[pretrain]\nepochs = 1\n[finetune]\nepochs = 1\n"
    )
    (tmp_path / "r.toml").write_text(base)
    assert (
        main(["train", str(tmp_path / "r.toml"), "--runs-dir", str(tmp_path / "runs"), "--quiet", "--max-memory", "1K"])
        == 2
    )
    assert "top_labels needs the training data in memory" in capsys.readouterr().err
    assert (
        main(
            ["pretrain", str(tmp_path / "r.toml"), "--data", str(tmp_path / "train.npz"), "--out", str(tmp_path / "p")]
        )
        == 2
    )
    assert "staged pretraining trains on unlabelled data" in capsys.readouterr().err
