"""Restricted Boltzmann machines trained by contrastive divergence.

An RBM with visible units ``v`` (n_visible,) and hidden units ``h`` (n_hidden,) has the
energy (binary visibles)::

    E(v, h) = -b.v - c.h - h.W.v                      W: (n_hidden, n_visible)

and the free energy, which sums the hiddens out::

    F(v) = -log sum_h exp(-E(v, h)) = -b.v - sum_j softplus(c_j + W_j.v)

With Gaussian visibles of unit variance (inputs standardised to mean 0, variance 1)::

    E(v, h) = 0.5 ||v - b||^2 - c.h - h.W.v
    F(v)    = 0.5 ||v - b||^2 - sum_j softplus(c_j + W_j.v)

The log-likelihood gradient is ``<v h>_data - <v h>_model``. Contrastive divergence
(CD-k, Hinton 2002) replaces the model expectation by k steps of block Gibbs sampling
started at the data; persistent CD (PCD, Tieleman 2008) keeps the Gibbs chains between
updates. Both use the hidden *probabilities* in the statistics, which equals
``-d/dW [F(v_pos) - F(v_neg)]`` on the same samples (tested against autograd).

Training follows Hinton's "A Practical Guide to Training Restricted Boltzmann Machines"
(2010): momentum (0.5 then 0.9), L2 weight decay, an optional sparsity target on the
hidden activities, the reconstruction drawn from probabilities rather than samples.

Weights are laid out as ``nn.Linear`` lays them out, ``(n_hidden, n_visible)``, so a
trained layer copies straight into a classifier. Parameters are updated by hand under
``no_grad``; they keep ``requires_grad=False`` so nothing builds a graph by accident.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from layerwise._checks import check_int, check_range
from layerwise.units.base import UnitBase


def _bernoulli(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A Bernoulli(p) sample in p's dtype: 1.0 where u < p for u ~ U[0, 1).
    (torch.bernoulli converts p to double on CPU; this was 1.8x faster at (100, 500).)"""
    return torch.rand(p.shape, generator=generator, dtype=p.dtype, device=p.device).lt_(p)


class _RBM(UnitBase):
    """Shared mechanics of the RBMs: parameters, hidden side, CD/PCD updates."""

    visible_kind = "abstract"
    # buffers (register_buffer in __init__), declared for type checkers
    hidden_activity: torch.Tensor
    persistent_chains: torch.Tensor

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        *,
        seed: int = 0,
        init_std: float = 0.01,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(n_visible, n_hidden, seed=seed)
        check_range(type(self).__name__, "init_std", init_std, low=0.0)
        weight = torch.randn(n_hidden, n_visible, generator=self.generator, dtype=dtype)
        # updated by hand under no_grad: no graph is ever built by accident
        self._init_parameters(weight * init_std, requires_grad=False)
        # Running mean of hidden probabilities q, for the sparsity target (Lee et al. 2008).
        self.register_buffer("hidden_activity", torch.zeros(n_hidden, dtype=dtype))
        # Persistent-CD fantasy particles (n_chains, n_visible); empty until the first PCD step.
        self.register_buffer("persistent_chains", torch.zeros(0, n_visible, dtype=dtype))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the number of persistent chains is the batch size they were started with
        chains = state_dict.get(prefix + "persistent_chains")
        if chains is not None:
            # where the unit is: a checkpoint holds CPU tensors, the unit may be on a GPU
            self.persistent_chains = torch.empty_like(chains, device=self.weight.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- hidden side (shared) ---------------------------------------------------------
    def hidden_logits(self, v: torch.Tensor) -> torch.Tensor:
        """c + v W^T, shape (batch, n_hidden)."""
        return self._weight_addmm(self.hidden_bias, v, transpose=True)

    def mean_hiddens(self, v: torch.Tensor) -> torch.Tensor:
        """P(h=1 | v) = sigmoid(c + v W^T), shape (batch, n_hidden)."""
        return self.hidden_logits(v).sigmoid_()  # in place: the logits are a fresh tensor

    def sample_hiddens(self, h_mean: torch.Tensor) -> torch.Tensor:
        """A binary sample of h given its probabilities, shape (batch, n_hidden)."""
        return _bernoulli(h_mean, self.generator)

    # mean/sample of visibles and the free energy differ per visible type
    def mean_visibles(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample_visibles(self, v_mean: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def reconstruction_cross_entropy(self, v: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def transform(self, v: torch.Tensor) -> torch.Tensor:
        """The upward pass used for stacking: hidden probabilities."""
        return self.mean_hiddens(v)

    # -- sampling -----------------------------------------------------------------
    @torch.no_grad()
    def gibbs(self, v: torch.Tensor, k: int = 1) -> torch.Tensor:
        """Run k full steps v -> h -> v of block Gibbs sampling; returns sampled visibles."""
        check_int(type(self).__name__, "k", k, low=1)
        for _ in range(k):
            h = self.sample_hiddens(self.mean_hiddens(v))
            v = self.sample_visibles(self.mean_visibles(h))
        return v

    @torch.no_grad()
    def negative_phase(self, h_sample: torch.Tensor, k: int, sample_last_visible: bool) -> torch.Tensor:
        """Visibles after k Gibbs half-steps pairs started from a hidden sample.

        Intermediate visibles are sampled (a proper Markov chain); the last one is the
        mean unless ``sample_last_visible`` (PCD keeps samples as its chain state).
        """
        for i in range(k):
            v_mean = self.mean_visibles(h_sample)
            if i == k - 1:
                return self.sample_visibles(v_mean) if sample_last_visible else v_mean
            h_sample = self.sample_hiddens(self.mean_hiddens(self.sample_visibles(v_mean)))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- learning -----------------------------------------------------------------
    @torch.no_grad()
    def step(
        self,
        v_pos: torch.Tensor,
        *,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        k: int = 1,
        persistent: bool = False,
        sparsity_target: float | None = None,
        sparsity_cost: float = 0.0,
    ) -> None:
        """One CD-k (or PCD-k) update on a minibatch ``v_pos`` (batch, n_visible)."""
        with self._training():
            self._cd_step(v_pos, lr, momentum, weight_decay, k, persistent, sparsity_target, sparsity_cost)

    def _cd_step(self, v_pos, lr, momentum, weight_decay, k, persistent, sparsity_target, sparsity_cost) -> None:
        h_pos = self.mean_hiddens(v_pos)  # (batch, n_hidden)
        if persistent:
            chains = self.persistent_chains
            if chains.shape[0] != v_pos.shape[0]:
                # start (or restart, if the batch size changed) the chains at the data
                chains = self.sample_visibles(v_pos) if self.visible_kind == "bernoulli" else v_pos.clone()
            h_start = self.sample_hiddens(self.mean_hiddens(chains))
            v_neg = self.negative_phase(h_start, k, sample_last_visible=True)
            self.persistent_chains = v_neg.clone()
        else:
            v_neg = self.negative_phase(self.sample_hiddens(h_pos), k, sample_last_visible=False)
        h_neg = self.mean_hiddens(v_neg)  # (batch, n_hidden)
        self._apply_update(v_pos, h_pos, v_neg, h_neg, lr, momentum, weight_decay, sparsity_target, sparsity_cost)

    @torch.no_grad()
    def metrics(self, train_x: torch.Tensor, held_x: torch.Tensor | None) -> dict[str, float]:
        """Reconstruction cross-entropy on training and held-out inputs, and the
        free-energy gap ``mean F(held-out) - mean F(train)``, which grows when the RBM
        overfits (Hinton's practical guide, section 6)."""
        m = {"recon_ce_train": float(self.reconstruction_cross_entropy(train_x))}
        if held_x is not None:
            m["recon_ce_heldout"] = float(self.reconstruction_cross_entropy(held_x))
            n = min(len(train_x), len(held_x))
            m["free_energy_gap"] = float(self.free_energy(held_x[:n]).mean() - self.free_energy(train_x[:n]).mean())
        return m

    def _apply_update(
        self, v_pos, h_pos, v_neg, h_neg, lr, momentum, weight_decay, sparsity_target, sparsity_cost
    ) -> None:
        batch = v_pos.shape[0]
        scale = lr / batch
        # velocity <- momentum * velocity + lr * (<h v>_pos - <h v>_neg - weight_decay * W)
        vw = self.weight_velocity.mul_(momentum)
        if self._step_dtype is None:
            vw.addmm_(h_pos.t(), v_pos, alpha=scale)
            vw.addmm_(h_neg.t(), v_neg, alpha=-scale)
        else:
            # bf16: one product over both phases, [h_pos; -h_neg]^T [v_pos; v_neg], so that the
            # difference of the two statistics (which nearly cancel) is summed in fp32 inside
            # it and rounded to bf16 once, as a difference; added to the fp32 velocity
            low = self._step_dtype
            hs = torch.cat([h_pos, h_neg]).to(low)
            hs[batch:].neg_()
            vw.add_(torch.mm(hs.t(), torch.cat([v_pos, v_neg]).to(low)), alpha=scale)
        if weight_decay:
            vw.add_(self.weight, alpha=-lr * weight_decay)
        # column sums as matrix-vector products: a BLAS gemv is several times faster here
        # than a reduction over the batch dimension
        ones = torch.ones(batch, dtype=v_pos.dtype, device=v_pos.device)
        vb = self.visible_bias_velocity.mul_(momentum)
        vb.addmv_(v_pos.t(), ones, alpha=scale).addmv_(v_neg.t(), ones, alpha=-scale)
        vc = self.hidden_bias_velocity.mul_(momentum)
        vc.addmv_(h_pos.t(), ones, alpha=scale).addmv_(h_neg.t(), ones, alpha=-scale)
        if sparsity_target is not None and sparsity_cost:
            # q <- 0.9 q + 0.1 mean(h); push the hidden biases toward the target activity
            self.hidden_activity.mul_(0.9).add_(h_pos.mean(0), alpha=0.1)
            vc.add_(sparsity_target - self.hidden_activity, alpha=lr * sparsity_cost)
        self.weight.add_(vw)
        self.visible_bias.add_(vb)
        self.hidden_bias.add_(vc)


class BernoulliRBM(_RBM):
    """RBM with binary visible and binary hidden units.

    Inputs are probabilities in [0, 1] (e.g. MNIST grey levels), treated as the
    expected value of binary pixels.

    Parameters: n_visible, n_hidden (ints >= 1), seed (the unit's own generator),
    init_std (weights start as N(0, init_std^2); Hinton's guide suggests 0.01).
    """

    visible_kind = "bernoulli"

    def visible_logits(self, h: torch.Tensor) -> torch.Tensor:
        """b + h W, shape (batch, n_visible)."""
        return self._weight_addmm(self.visible_bias, h, transpose=False)

    def mean_visibles(self, h: torch.Tensor) -> torch.Tensor:
        """P(v=1 | h) = sigmoid(b + h W), shape (batch, n_visible)."""
        return self.visible_logits(h).sigmoid_()

    def sample_visibles(self, v_mean: torch.Tensor) -> torch.Tensor:
        return _bernoulli(v_mean, self.generator)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = -b.v - sum_j softplus(c_j + W_j.v), shape (batch,)."""
        return -(v @ self.visible_bias) - F.softplus(self.hidden_logits(v)).sum(1)

    def reconstruction_cross_entropy(self, v: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of -sum_i [v_i log p_i + (1-v_i) log(1-p_i)], in nats,
        with p = P(v=1 | h = P(h|v)); computed from logits (softplus), never log(sigmoid)."""
        logits = self.visible_logits(self.mean_hiddens(v))
        return F.binary_cross_entropy_with_logits(logits, v, reduction="sum") / v.shape[0]


class GaussianBernoulliRBM(_RBM):
    """RBM with real-valued Gaussian visibles of unit variance and binary hiddens.

    Standardise each input feature to mean 0 and variance 1 first. Hinton's guide
    suggests a learning rate one or two orders of magnitude below the binary case.
    """

    visible_kind = "gaussian"

    def mean_visibles(self, h: torch.Tensor) -> torch.Tensor:
        """E[v | h] = b + h W, shape (batch, n_visible)."""
        return self._weight_addmm(self.visible_bias, h, transpose=False)

    def sample_visibles(self, v_mean: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(v_mean.shape, generator=self.generator, dtype=v_mean.dtype, device=v_mean.device)
        return v_mean + noise

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = 0.5 ||v - b||^2 - sum_j softplus(c_j + W_j.v), shape (batch,)."""
        return 0.5 * (v - self.visible_bias).pow(2).sum(1) - F.softplus(self.hidden_logits(v)).sum(1)

    def reconstruction_cross_entropy(self, v: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the data under the unit-variance Gaussian reconstruction:
        mean over the batch of 0.5 ||v - E[v|h]||^2 + 0.5 n log(2 pi), in nats."""
        v_mean = self.mean_visibles(self.mean_hiddens(v))
        sq = (v - v_mean).pow(2).sum(1).mean()
        return 0.5 * sq + 0.5 * self.n_visible * math.log(2 * math.pi)
