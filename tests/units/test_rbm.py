import copy
import itertools
import math

import pytest
import torch

from conftest import digits_pixels
from layerwise.units import BernoulliRBM, GaussianBernoulliRBM


def update_from_samples(rbm, v_pos, v_neg, *, lr, momentum=0.0, weight_decay=0.0):
    """The CD update of ``rbm.step`` for given positive and negative visible samples: its
    own ``_apply_update``, fed the hidden means of both."""
    with torch.no_grad():
        rbm._apply_update(
            v_pos, rbm.mean_hiddens(v_pos), v_neg, rbm.mean_hiddens(v_neg), lr, momentum, weight_decay, None, 0.0
        )


def _all_binary(n, dtype=torch.float64):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=dtype)


def _random_rbm(n_vis=4, n_hid=3, seed=0, std=1.0, cls=BernoulliRBM, dtype=torch.float64):
    rbm = cls(n_vis, n_hid, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        rbm.weight.copy_(torch.randn(n_hid, n_vis, generator=g, dtype=dtype) * std)
        rbm.visible_bias.copy_(torch.randn(n_vis, generator=g, dtype=dtype) * 0.5)
        rbm.hidden_bias.copy_(torch.randn(n_hid, generator=g, dtype=dtype) * 0.5)
    return rbm


def _energy(rbm, v, h):
    # E(v, h) = -b.v - c.h - h W v, for every pair: v (nv, V), h (nh, H) -> (nv, nh)
    return -(v @ rbm.visible_bias)[:, None] - (h @ rbm.hidden_bias)[None, :] - v @ rbm.weight.t() @ h.t()


def test_free_energy_and_log_partition_match_enumeration():
    rbm = _random_rbm()
    V, H = _all_binary(4), _all_binary(3)
    E = _energy(rbm, V, H)  # (16, 8)
    brute_F = -torch.logsumexp(-E, dim=1)
    assert torch.allclose(rbm.free_energy(V), brute_F, atol=1e-10), (rbm.free_energy(V), brute_F)
    log_z_brute = torch.logsumexp(-E.flatten(), 0)
    log_z_from_f = torch.logsumexp(-rbm.free_energy(V), 0)
    assert abs(float(log_z_brute - log_z_from_f)) < 1e-10


def _exact_gradient(rbm, data):
    """d/dW of the mean log-likelihood of ``data`` by enumeration: <h v>_data - <h v>_model."""
    V = _all_binary(rbm.n_visible)
    p_v = torch.softmax(-rbm.free_energy(V), 0)  # (16,)
    h_model = rbm.mean_hiddens(V)
    model_hv = (p_v[:, None, None] * h_model[:, :, None] * V[:, None, :]).sum(0)
    data_hv = (rbm.mean_hiddens(data)[:, :, None] * data[:, None, :]).mean(0)
    return data_hv - model_hv


def test_log_likelihood_gradient_matches_autograd_of_exact_likelihood():
    rbm = _random_rbm()
    data = _all_binary(4)[[1, 6, 9, 15]]
    w = rbm.weight.detach().clone().requires_grad_(True)
    V = _all_binary(4)

    def loglik(weight):
        f = lambda v: -(v @ rbm.visible_bias) - torch.nn.functional.softplus(v @ weight.t() + rbm.hidden_bias).sum(1)  # noqa: E731
        return (-f(data)).mean() - torch.logsumexp(-f(V), 0)

    (g,) = torch.autograd.grad(loglik(w), w)
    assert torch.allclose(g, _exact_gradient(rbm, data), atol=1e-10)


def test_cd_k_with_large_k_approaches_exact_gradient():
    rbm = _random_rbm(std=0.7)
    data = _all_binary(4)[[1, 6, 9, 15]]
    exact = _exact_gradient(rbm, data)
    n_chains = 20000
    v0 = data.repeat(n_chains // 4, 1)
    v_neg = rbm.gibbs(v0, k=50)
    cd = (rbm.mean_hiddens(v0).t() @ v0 - rbm.mean_hiddens(v_neg).t() @ v_neg) / n_chains
    err = float((cd - exact).abs().max())
    assert err < 0.02, f"CD-50 gradient differs from the exact one by {err}\n{cd}\n{exact}"
    # CD-1 is visibly biased on the same RBM: the long chain is what closes the gap
    v_neg1 = rbm.gibbs(v0, k=1)
    cd1 = (rbm.mean_hiddens(v0).t() @ v0 - rbm.mean_hiddens(v_neg1).t() @ v_neg1) / n_chains
    assert float((cd1 - exact).abs().max()) > 2 * err


@pytest.mark.parametrize("cls", [BernoulliRBM, GaussianBernoulliRBM])
def test_cd_update_equals_autograd_of_free_energy_difference(cls):
    rbm = _random_rbm(n_vis=6, n_hid=5, cls=cls, std=0.3)
    g = torch.Generator().manual_seed(1)
    v_pos = torch.rand(8, 6, generator=g, dtype=torch.float64)
    v_neg = torch.rand(8, 6, generator=g, dtype=torch.float64)
    probe = copy.deepcopy(rbm)
    params = [p.requires_grad_(True) for p in (probe.weight, probe.visible_bias, probe.hidden_bias)]
    loss = probe.free_energy(v_pos).mean() - probe.free_energy(v_neg).mean()
    grads = torch.autograd.grad(loss, params)
    before = [p.detach().clone() for p in (rbm.weight, rbm.visible_bias, rbm.hidden_bias)]
    lr = 0.3
    update_from_samples(rbm, v_pos, v_neg, lr=lr)
    after = (rbm.weight, rbm.visible_bias, rbm.hidden_bias)
    for name, b, a, gr in zip(("weight", "visible_bias", "hidden_bias"), before, after, grads):
        assert torch.allclose(a - b, -lr * gr, atol=1e-12), f"{name}: update {a - b} vs autograd {-lr * gr}"


def test_step_is_negative_phase_plus_update():
    rbm = _random_rbm(n_vis=6, n_hid=5, std=0.3)
    twin = copy.deepcopy(rbm)
    twin.generator = torch.Generator()
    twin.generator.set_state(rbm.generator.get_state())
    v = (torch.rand(10, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64) < 0.5).double()
    rbm.step(v, lr=0.1)
    h_sample = twin.sample_hiddens(twin.mean_hiddens(v))
    v_neg = twin.negative_phase(h_sample, 1, sample_last_visible=False)
    update_from_samples(twin, v, v_neg, lr=0.1)
    assert torch.equal(rbm.weight, twin.weight)
    assert torch.equal(rbm.hidden_bias, twin.hidden_bias)


def test_momentum_and_weight_decay_follow_the_formula():
    rbm = _random_rbm(n_vis=5, n_hid=4, std=0.3)
    v_pos = torch.rand(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v_neg = torch.rand(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lr, m, wd = 0.2, 0.9, 0.01
    w0 = rbm.weight.clone()
    grad = (rbm.mean_hiddens(v_pos).t() @ v_pos - rbm.mean_hiddens(v_neg).t() @ v_neg) / 6
    update_from_samples(rbm, v_pos, v_neg, lr=lr, momentum=m, weight_decay=wd)
    vel1 = lr * (grad - wd * w0)
    assert torch.allclose(rbm.weight, w0 + vel1, atol=1e-12)
    w1 = rbm.weight.clone()
    grad2 = (rbm.mean_hiddens(v_pos).t() @ v_pos - rbm.mean_hiddens(v_neg).t() @ v_neg) / 6
    update_from_samples(rbm, v_pos, v_neg, lr=lr, momentum=m, weight_decay=wd)
    assert torch.allclose(rbm.weight, w1 + m * vel1 + lr * (grad2 - wd * w1), atol=1e-12)


@pytest.mark.parametrize("cls", [BernoulliRBM, GaussianBernoulliRBM])
def test_float32_and_float64_agree(cls):
    r64 = _random_rbm(n_vis=20, n_hid=10, cls=cls, std=0.2)
    r32 = cls(20, 10)
    r32.load_state_dict({k: v.float() for k, v in r64.state_dict().items()})
    g = torch.Generator().manual_seed(0)
    v = torch.rand(16, 20, generator=g, dtype=torch.float64)
    v_neg = torch.rand(16, 20, generator=g, dtype=torch.float64)
    for fn in ("free_energy", "mean_hiddens", "reconstruction_cross_entropy"):
        a, b = getattr(r64, fn)(v), getattr(r32, fn)(v.float())
        assert torch.allclose(a, b.double(), rtol=1e-4, atol=1e-4), (fn, a, b)
    update_from_samples(r64, v, v_neg, lr=0.1, momentum=0.5, weight_decay=1e-3)
    update_from_samples(r32, v.float(), v_neg.float(), lr=0.1, momentum=0.5, weight_decay=1e-3)
    assert torch.allclose(r64.weight, r32.weight.double(), atol=1e-5)


@pytest.mark.parametrize("cls", [BernoulliRBM, GaussianBernoulliRBM])
def test_no_nan_after_long_gibbs_chains(cls):
    rbm = _random_rbm(n_vis=30, n_hid=20, cls=cls, std=3.0 if cls is BernoulliRBM else 0.05, dtype=torch.float32)
    v = torch.rand(50, 30, generator=torch.Generator().manual_seed(0))
    out = rbm.gibbs(v, k=2000)
    assert torch.isfinite(out).all()
    if cls is BernoulliRBM:
        assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert torch.isfinite(rbm.reconstruction_cross_entropy(v))


def test_extreme_logits_give_finite_cross_entropy():
    rbm = _random_rbm(n_vis=10, n_hid=5, std=200.0, dtype=torch.float32)
    v = (torch.rand(8, 10, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    ce = rbm.reconstruction_cross_entropy(v)
    assert torch.isfinite(ce) and ce > 0, ce
    assert torch.isfinite(rbm.free_energy(v)).all()


@pytest.mark.parametrize("persistent", [False, True])
def test_step_does_not_mutate_input(persistent):
    rbm = BernoulliRBM(12, 6, seed=0)
    v = torch.rand(9, 12, generator=torch.Generator().manual_seed(0))
    before = v.clone()
    for _ in range(3):
        rbm.step(v, lr=0.1, momentum=0.5, persistent=persistent, k=2, sparsity_target=0.1, sparsity_cost=0.1)
    rbm.reconstruction_cross_entropy(v)
    rbm.free_energy(v)
    assert torch.equal(v, before)


def test_persistent_chains_are_state():
    rbm = BernoulliRBM(12, 6, seed=0)
    v = torch.rand(9, 12, generator=torch.Generator().manual_seed(0))
    rbm.step(v, lr=0.1, persistent=True)
    sd = rbm.state_dict()
    assert sd["persistent_chains"].shape == (9, 12)
    assert set(sd["persistent_chains"].unique().tolist()) <= {0.0, 1.0}
    assert "weight_velocity" in sd and "hidden_activity" in sd
    chains = rbm.persistent_chains.clone()
    rbm.step(v, lr=0.1, persistent=True)
    assert not torch.equal(chains, rbm.persistent_chains)


def test_same_seed_same_result_and_generator_is_private():
    v = torch.rand(20, 16, generator=torch.Generator().manual_seed(0))
    a, b = BernoulliRBM(16, 8, seed=5), BernoulliRBM(16, 8, seed=5)
    torch.manual_seed(0)
    a.step(v, lr=0.1)
    torch.manual_seed(123)  # the global generator must not matter
    b.step(v, lr=0.1)
    assert torch.equal(a.weight, b.weight)


@pytest.mark.parametrize("persistent", [False, True])
def test_reconstruction_cross_entropy_falls_on_digits(persistent):
    x = digits_pixels()
    rbm = BernoulliRBM(64, 32, seed=0)
    start = float(rbm.reconstruction_cross_entropy(x))
    gen = torch.Generator().manual_seed(0)
    for epoch in range(10):
        order = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), 20):
            rbm.step(
                x[order[s : s + 20]],
                lr=0.05,
                momentum=0.5 if epoch < 5 else 0.9,
                weight_decay=2e-4,
                persistent=persistent,
            )
    end = float(rbm.reconstruction_cross_entropy(x))
    assert end < 0.7 * start, f"reconstruction cross-entropy {start:.2f} -> {end:.2f}"
    # 64 pixels at the start cost about 64 * log 2 nats; a trained RBM reconstructs far better
    assert abs(start - 64 * math.log(2)) < 3


def test_sparsity_target_lowers_hidden_activity():
    x = digits_pixels()[:600]
    acts = {}
    for target in (None, 0.05):
        rbm = BernoulliRBM(64, 32, seed=0)
        for _ in range(5):
            for s in range(0, len(x), 20):
                rbm.step(x[s : s + 20], lr=0.05, sparsity_target=target, sparsity_cost=1.0 if target else 0.0)
        acts[target] = float(rbm.mean_hiddens(x).mean())
    assert acts[0.05] < 0.6 * acts[None], acts


def test_gaussian_rbm_learns_standardized_data():
    x = digits_pixels()
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    rbm = GaussianBernoulliRBM(64, 32, seed=0)
    start = float(rbm.reconstruction_cross_entropy(x))
    for _ in range(5):
        for s in range(0, len(x), 20):
            rbm.step(x[s : s + 20], lr=0.005, momentum=0.5)
    end = float(rbm.reconstruction_cross_entropy(x))
    assert end < start - 5, (start, end)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"n_visible": 0, "n_hidden": 3},
            "The 'n_visible' parameter of BernoulliRBM must be an int in the range [1, inf). Got 0 instead.",
        ),
        ({"n_visible": 4, "n_hidden": 2.5}, "The 'n_hidden' parameter of BernoulliRBM must be an int"),
        (
            {"n_visible": 4, "n_hidden": 3, "init_std": -1.0},
            "The 'init_std' parameter of BernoulliRBM must be a float in the range [0.0, inf)",
        ),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises((ValueError, TypeError)) as e:
        BernoulliRBM(**kwargs)
    assert message in str(e.value)
