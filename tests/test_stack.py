import numpy as np
import pytest
import torch
from torch import nn

from conftest import digits_splits
from layerwise.config import FinetuneConfig, PretrainConfig
from layerwise.stack import DeepBeliefNet
from layerwise.training.finetune import evaluate, finetune
from layerwise.training.pretrain import pretrain
from layerwise.units import BernoulliRBM, DenoisingAutoencoder, GaussianBernoulliRBM


@pytest.mark.parametrize("unit, visible", [("rbm", "bernoulli"), ("rbm", "gaussian"), ("autoencoder", "bernoulli")])
def test_to_classifier_matches_the_upward_pass(unit, visible):
    dbn = DeepBeliefNet(20, [12, 8, 6], unit=unit, visible=visible, seed=0, init_std=0.5)
    x = torch.rand(15, 20, generator=torch.Generator().manual_seed(0))
    clf = dbn.to_classifier(4, dropout_input=0.2, dropout_hidden=0.5)
    assert isinstance(clf, nn.Sequential)
    clf.eval()
    features = clf[:-1](x)
    assert torch.allclose(features, dbn.transform(x), atol=1e-6)
    assert clf(x).shape == (15, 4)
    kinds = [type(m).__name__ for m in clf]
    assert kinds == [
        "Dropout",
        "Linear",
        "Sigmoid",
        "Dropout",
        "Linear",
        "Sigmoid",
        "Dropout",
        "Linear",
        "Sigmoid",
        "Dropout",
        "Linear",
    ]


def test_layer_types():
    dbn = DeepBeliefNet(20, [12, 8], visible="gaussian")
    assert [type(l) for l in dbn.layers] == [GaussianBernoulliRBM, BernoulliRBM]
    dae = DeepBeliefNet(20, [12, 8], unit="autoencoder")
    assert [type(l) for l in dae.layers] == [DenoisingAutoencoder, DenoisingAutoencoder]
    with pytest.raises(ValueError, match="'unit' parameter of DeepBeliefNet must be one of"):
        DeepBeliefNet(20, [5], unit="sae")
    with pytest.raises(ValueError, match="'hidden' parameter of DeepBeliefNet must be a non-empty list"):
        DeepBeliefNet(20, [])


def test_greedy_pretraining_trains_each_layer_on_the_mean_activations_below():
    (x, _), (xv, _), _ = digits_splits()
    cfg = PretrainConfig(epochs=2, batch_size=50, learning_rate=0.05)
    dbn = DeepBeliefNet(64, [32, 16], seed=0)
    records = pretrain(dbn, x, xv, cfg, seed=7)
    assert [(r["layer"], r["epoch"]) for r in records] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    # replay layer 2 alone on layer 1's output, with the loop's generator where it stands
    # after layer 1 (two shuffles), and the same initial weights
    ref = DeepBeliefNet(64, [32, 16], seed=0)
    ref.layers[0].load_state_dict(dbn.layers[0].state_dict())
    gen = torch.Generator().manual_seed(7)
    torch.randperm(len(x), generator=gen), torch.randperm(len(x), generator=gen)
    h = dbn.layers[0].transform(x)
    top = ref.layers[1]
    for _epoch in range(2):
        hs = h[torch.randperm(len(h), generator=gen)]
        for s in range(0, len(hs), 50):
            top.step(hs[s : s + 50], lr=0.05, momentum=0.5, weight_decay=cfg.weight_decay)
    assert torch.equal(top.weight, dbn.layers[1].weight)


def test_pretraining_records_falling_cross_entropy_and_free_energy_gap():
    (x, _), (xv, _), _ = digits_splits()
    dbn = DeepBeliefNet(64, [32], seed=0)
    recs = pretrain(dbn, x, xv, PretrainConfig(epochs=5, batch_size=20, learning_rate=0.05), seed=0)
    assert recs[-1]["recon_ce_train"] < recs[0]["recon_ce_train"]
    assert recs[-1]["recon_ce_heldout"] < recs[0]["recon_ce_heldout"]
    assert all(np.isfinite(r["free_energy_gap"]) for r in recs)


@pytest.mark.slow
def test_finetuning_beats_the_pretrained_features_with_a_linear_head():
    (x, y), (xv, yv), (xt, yt) = digits_splits()
    dbn = DeepBeliefNet(64, [32, 16], seed=0)
    pretrain(dbn, x, xv, PretrainConfig(epochs=10, batch_size=20, learning_rate=0.05), seed=0)
    ft = FinetuneConfig(epochs=30, batch_size=20, learning_rate=0.1, momentum=0.9, patience=None)
    # linear head on frozen pretrained features
    frozen = dbn.to_classifier(10, seed=0)
    for m in list(frozen)[:-1]:
        for p in m.parameters():
            p.requires_grad_(False)
    head_only = finetune(frozen, x, y, xv, yv, ft, seed=0).model
    full = finetune(dbn.to_classifier(10, seed=0), x, y, xv, yv, ft, seed=0).model
    _, acc_head = evaluate(head_only, xt, yt)
    _, acc_full = evaluate(full, xt, yt)
    assert acc_full > acc_head + 0.02, f"fine-tuned {acc_full:.3f} vs linear head {acc_head:.3f}"
    assert acc_full > 0.93, acc_full


def test_early_stopping_keeps_the_best_weights():
    (x, y), (xv, yv), _ = digits_splits()
    dbn = DeepBeliefNet(64, [32], seed=0)
    # a large learning rate and no regularisation overfit quickly, so patience triggers
    ft = FinetuneConfig(epochs=60, batch_size=10, learning_rate=0.5, momentum=0.9, patience=3)
    res = finetune(dbn.to_classifier(10), x[:300], y[:300], xv, yv, ft, seed=0)
    assert res.epochs_run < 60
    val_losses = [r["val_loss"] for r in res.records]
    assert res.best_epoch == int(np.argmin(val_losses)) + 1
    assert res.epochs_run == res.best_epoch + 3
    loss, _ = evaluate(res.model, xv, yv)
    assert abs(loss - min(val_losses)) < 1e-6


@pytest.mark.parametrize("unit", ["autoencoder", "rbm"])
def test_every_layer_of_a_stack_learns(unit):
    (x, _), (xv, _), _ = digits_splits()
    dbn = DeepBeliefNet(64, [32, 16], unit=unit, seed=0)
    untrained = DeepBeliefNet(64, [32, 16], unit=unit, seed=0)
    cfg = PretrainConfig(
        epochs=6, batch_size=20, learning_rate=0.05 if unit == "rbm" else 0.01, persistent=unit == "rbm"
    )
    recs = pretrain(dbn, x, xv, cfg, seed=0)
    for layer in (0, 1):
        inputs = dbn.transform(xv, upto=layer)  # what this layer was trained on (held-out part)
        before = float(untrained.layers[layer].reconstruction_cross_entropy(inputs))
        after = [r for r in recs if r["layer"] == layer][-1]["recon_ce_heldout"]
        assert after < 0.9 * before, (layer, before, after)
        assert ("free_energy_gap" in recs[0]) == (unit == "rbm")
