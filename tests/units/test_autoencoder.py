import copy

import pytest
import torch

from conftest import digits_pixels
from layerwise.units import DenoisingAutoencoder


def test_step_is_sgd_with_momentum_on_autograd_gradient():
    dae = DenoisingAutoencoder(10, 4, seed=0, dtype=torch.float64)
    twin = copy.deepcopy(dae)
    v = torch.rand(7, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lr, wd = 0.05, 0.01
    dae.step(v, lr=lr, momentum=0.0, weight_decay=wd, noise=0.0)
    params = (twin.weight, twin.visible_bias, twin.hidden_bias)
    grads = torch.autograd.grad(twin.loss(v, 0.0), params)
    expected_w = twin.weight - lr * (grads[0] + wd * twin.weight)
    assert torch.allclose(dae.weight, expected_w, atol=1e-12)
    assert torch.allclose(dae.visible_bias, twin.visible_bias - lr * grads[1], atol=1e-12)
    assert torch.allclose(dae.hidden_bias, twin.hidden_bias - lr * grads[2], atol=1e-12)


def test_loss_is_cross_entropy_of_tied_reconstruction():
    dae = DenoisingAutoencoder(6, 3, seed=1, dtype=torch.float64)
    v = torch.rand(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = torch.sigmoid(v @ dae.weight.t() + dae.hidden_bias)
    p = torch.sigmoid(h @ dae.weight + dae.visible_bias)
    naive = -(v * p.log() + (1 - v) * (1 - p).log()).sum(1).mean()
    assert torch.allclose(dae.reconstruction_cross_entropy(v), naive, atol=1e-10)


def test_masking_noise_zeroes_the_given_fraction():
    dae = DenoisingAutoencoder(100, 10, seed=0)
    v = torch.ones(200, 100)
    frac = float((dae.corrupt(v, 0.3) == 0).float().mean())
    assert abs(frac - 0.3) < 0.01, frac
    assert torch.equal(v, torch.ones(200, 100))


def test_reconstruction_falls_on_digits_and_input_untouched():
    x = digits_pixels()
    before = x.clone()
    dae = DenoisingAutoencoder(64, 32, seed=0)
    start = float(dae.reconstruction_cross_entropy(x).detach())
    for _epoch in range(10):
        for s in range(0, len(x), 20):
            dae.step(x[s : s + 20], lr=0.01, momentum=0.9, noise=0.2)
    end = float(dae.reconstruction_cross_entropy(x))
    assert end < 0.7 * start, (start, end)
    assert torch.equal(x, before)


def test_extreme_weights_keep_the_loss_finite():
    dae = DenoisingAutoencoder(10, 5, seed=0, init_std=300.0)
    v = (torch.rand(8, 10, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    assert torch.isfinite(dae.reconstruction_cross_entropy(v))


def test_bad_noise_argument_message():
    with pytest.raises(ValueError, match="The 'n_hidden' parameter of DenoisingAutoencoder"):
        DenoisingAutoencoder(4, 0)
