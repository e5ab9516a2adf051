"""The fused fine-tuning step: autograd's arithmetic, dropout at its rate, and the cases it
leaves to autograd."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import digits_splits
from layerwise.config import FinetuneConfig
from layerwise.stack import build_classifier
from layerwise.training.finetune import evaluate, finetune
from layerwise.training.fused import FusedClassifierStep

SIZES, P_IN, P_HID = [30, 20, 20, 40], 0.1, 0.25


def _reference_step(model, opt, x, y, masks):
    """Autograd and the optimizer, with the given keep masks applied as nn.Dropout does."""
    h = x
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for k, lin in enumerate(linears):
        p = P_IN if k == 0 else P_HID
        h = lin(h * masks[k] / (1 - p))
        if k < len(linears) - 1:
            h = torch.sigmoid(h)
    loss = F.cross_entropy(h, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda ps: torch.optim.SGD(ps, lr=0.3),
        lambda ps: torch.optim.Adam(ps, lr=1e-3),  # not plain SGD: .grad, then the optimizer's own step
    ],
    ids=["sgd-momentum", "sgd-weight-decay", "sgd-plain", "adam"],
)
def test_the_fused_step_is_autograds_step_on_the_same_masks(make_opt):
    gen = torch.Generator().manual_seed(0)
    fused_net = build_classifier(SIZES, 5, dropout_input=P_IN, dropout_hidden=P_HID, seed=0).train()
    ref_net = copy.deepcopy(fused_net)
    step = FusedClassifierStep.make(fused_net)
    assert step is not None and [p for p, _, _ in step.layers] == [P_IN, P_HID, P_HID, P_HID]
    opt_f, opt_r = make_opt(fused_net.parameters()), make_opt(ref_net.parameters())
    for _ in range(4):
        x, y = torch.rand(16, 30, generator=gen), torch.randint(0, 5, (16,), generator=gen)
        masks = [(torch.rand(16, n, generator=gen) > (P_IN if k == 0 else P_HID)).float() for k, n in enumerate(SIZES)]
        x_before = x.clone()
        loss_f = step(x, y, opt_f, masks=masks)
        loss_r = _reference_step(ref_net, opt_r, x, y, masks)
        assert torch.equal(x, x_before)  # the caller's batch is never written
        assert abs(float(loss_f) - float(loss_r)) < 1e-6
        for a, b in zip(fused_net.parameters(), ref_net.parameters()):
            assert torch.allclose(a, b, atol=1e-6, rtol=0), float((a - b).abs().max())
    if isinstance(opt_f, torch.optim.SGD) and opt_f.param_groups[0]["momentum"]:
        state_f, state_r = opt_f.state_dict()["state"], opt_r.state_dict()["state"]
        assert sorted(state_f) == sorted(state_r)
        for k in state_r:
            assert torch.allclose(state_f[k]["momentum_buffer"], state_r[k]["momentum_buffer"], atol=1e-6, rtol=0)


def test_its_masks_drop_at_the_rate_and_follow_the_global_seed():
    net = build_classifier([2000, 10], 3, dropout_input=0.1, seed=0)
    step = FusedClassifierStep.make(net)
    torch.manual_seed(5)
    first = [step._kept(torch.Size((100, 2000)), 0.1, torch.device("cpu")).clone() for _ in range(5)]
    torch.manual_seed(5)
    again = step._kept(torch.Size((100, 2000)), 0.1, torch.device("cpu"))
    assert torch.equal(first[0], again)  # the default generator decides
    kept = torch.stack(first)
    assert set(kept.unique().tolist()) == {0.0, 1.0}
    # 1e6 draws: the drop rate's standard error is 3e-4
    assert abs(float(1 - kept.mean()) - 0.1) < 1.5e-3
    assert abs(float((first[0] * first[1]).mean()) - 0.81) < 3e-3  # independent from one call to the next
    assert abs(float(1 - kept[:, :, 0::4].mean()) - 0.1) < 3e-3  # every 16-bit lane of a word, alike
    assert abs(float(1 - kept[:, :, 3::4].mean()) - 0.1) < 3e-3


def test_nets_it_does_not_know_go_to_autograd():
    net = build_classifier([8, 6, 4], 3, dropout_hidden=0.5, seed=0)
    assert FusedClassifierStep.make(net) is not None
    relu = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    assert FusedClassifierStep.make(relu) is None
    assert FusedClassifierStep.make(nn.Sequential(nn.Linear(8, 6), nn.Sigmoid())) is None  # no linear head
    frozen = copy.deepcopy(net)
    frozen[0].weight.requires_grad_(False)
    assert FusedClassifierStep.make(frozen) is None
    hooked = copy.deepcopy(net)
    hooked[0].register_forward_hook(lambda *a: None)
    assert FusedClassifierStep.make(hooked) is None
    replaced = copy.deepcopy(net)
    replaced.forward = lambda x: x
    assert FusedClassifierStep.make(replaced) is None


@pytest.mark.slow
def test_fine_tuning_with_and_without_it_learns_alike_and_each_is_deterministic():
    (x, y), (xv, yv), (xt, yt) = digits_splits()
    cfg = FinetuneConfig(
        epochs=20, batch_size=20, learning_rate=0.5, momentum=0.9, dropout_input=0.1, dropout_hidden=0.25, patience=None
    )
    results = {}
    for fused in (True, False, True):
        net = build_classifier([64, 48, 32], 10, dropout_input=0.1, dropout_hidden=0.25, seed=0)
        finetune(net, x, y, None, None, dataclasses.replace(cfg, fused=fused), seed=0)
        weights = torch.cat([p.detach().flatten() for p in net.parameters()])
        if fused in results:
            assert torch.equal(weights, results[fused][0])  # the same seed, the same weights
        results[fused] = (weights, evaluate(net, xt, yt)[1])
    assert not torch.equal(results[True][0], results[False][0])  # the masks are drawn differently
    assert results[True][1] > 0.9 and results[False][1] > 0.9
    assert abs(results[True][1] - results[False][1]) < 0.03, (results[True][1], results[False][1])


def test_max_norm_caps_every_units_incoming_weights_and_a_loose_cap_changes_nothing():
    (x, y), _, _ = digits_splits()
    cfg = FinetuneConfig(epochs=3, batch_size=20, learning_rate=0.5, momentum=0.9, dropout_hidden=0.2, patience=None)
    nets = {}
    for cap in (None, 0.5, 1e6):
        net = build_classifier([64, 48, 32], 10, dropout_hidden=0.2, seed=0)
        with torch.no_grad():
            net[0].weight.mul_(3)  # rows longer than the tight cap from the start
        finetune(net, x, y, None, None, dataclasses.replace(cfg, max_norm=cap), seed=0)
        nets[cap] = net
    norms = [torch.linalg.vector_norm(m.weight.detach(), dim=1) for m in nets[0.5] if isinstance(m, nn.Linear)]
    assert all(float(n.max()) <= 0.5 + 1e-5 for n in norms)
    assert float(norms[0].min()) > 0.45  # the first layer's rows all bind at the cap
    free = [torch.linalg.vector_norm(m.weight.detach(), dim=1) for m in nets[None] if isinstance(m, nn.Linear)]
    assert float(free[0].max()) > 1.0  # without the cap they are longer
    for a, b in zip(nets[None].parameters(), nets[1e6].parameters()):
        assert torch.equal(a, b)


def test_the_masks_it_draws_itself_are_the_ones_its_backward_pass_uses():
    """Two layers of the same width each keep their own mask until the backward pass
    (they once shared one buffer, and the first layer's gradient took the second's mask)."""
    fused_net = build_classifier(SIZES, 5, dropout_input=P_IN, dropout_hidden=P_HID, seed=0).train()
    ref_net = copy.deepcopy(fused_net)
    step, twin = FusedClassifierStep.make(fused_net), FusedClassifierStep.make(copy.deepcopy(fused_net))
    opt_f = torch.optim.SGD(fused_net.parameters(), lr=0.1, momentum=0.9)
    opt_r = torch.optim.SGD(ref_net.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for i in range(3):
        x, y = torch.rand(16, 30, generator=gen), torch.randint(0, 5, (16,), generator=gen)
        torch.manual_seed(100 + i)
        step(x, y, opt_f)
        torch.manual_seed(100 + i)  # the same draws, in the same order, by the twin
        masks = [
            twin._kept(torch.Size((16, n)), P_IN if k == 0 else P_HID, x.device, k).clone() for k, n in enumerate(SIZES)
        ]
        _reference_step(ref_net, opt_r, x, y, masks)
        for a, b in zip(fused_net.parameters(), ref_net.parameters()):
            assert torch.allclose(a, b, atol=1e-6, rtol=0), float((a - b).abs().max())


def test_in_bf16_its_products_round_as_bf16_and_the_step_stays_within_that_rounding_of_fp32():
    """precision "bf16": the products read bf16 operands (so the step is not fp32's), and
    the loss and every parameter's change stay within bf16's rounding (2^-8) of fp32's."""
    gen = torch.Generator().manual_seed(2)
    start = build_classifier(SIZES, 5, dropout_input=P_IN, dropout_hidden=P_HID, seed=0).train()
    nets = {prec: copy.deepcopy(start) for prec in ("fp32", "bf16")}
    steps = {prec: FusedClassifierStep.make(net, prec) for prec, net in nets.items()}
    opts = {prec: torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9) for prec, net in nets.items()}
    for _ in range(4):
        x, y = torch.rand(16, 30, generator=gen), torch.randint(0, 5, (16,), generator=gen)
        masks = [(torch.rand(16, n, generator=gen) > (P_IN if k == 0 else P_HID)).float() for k, n in enumerate(SIZES)]
        losses = {prec: float(steps[prec](x, y, opts[prec], masks=masks)) for prec in nets}
        assert abs(losses["bf16"] - losses["fp32"]) < 2e-2 * losses["fp32"], losses
    for p0, p32, p16 in zip(start.parameters(), nets["fp32"].parameters(), nets["bf16"].parameters()):
        change32, change16 = (p32 - p0).detach(), (p16 - p0).detach()
        err = float((change16 - change32).abs().max())
        assert err < 0.03 * float(change32.abs().max()), (err, float(change32.abs().max()))
    weights = [p for p in nets["bf16"].parameters() if p.dim() == 2]
    assert all(w.dtype == torch.float32 for w in weights)  # the master weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(nets["fp32"].parameters(), nets["bf16"].parameters()))


@pytest.mark.slow
def test_fine_tuning_in_bf16_learns_as_fp32_does_and_is_deterministic():
    (x, y), _, (xt, yt) = digits_splits()
    cfg = FinetuneConfig(
        epochs=20, batch_size=20, learning_rate=0.5, momentum=0.9, dropout_input=0.1, dropout_hidden=0.25, patience=None
    )
    results = []
    for prec in ("bf16", "fp32", "bf16"):
        net = build_classifier([64, 48, 32], 10, dropout_input=0.1, dropout_hidden=0.25, seed=0)
        finetune(net, x, y, None, None, cfg, seed=0, precision=prec)
        results.append((torch.cat([p.detach().flatten() for p in net.parameters()]), evaluate(net, xt, yt)[1]))
    (w16, acc16), (w32, acc32), (w16b, _) = results
    assert torch.equal(w16, w16b) and not torch.equal(w16, w32)
    assert acc16 > 0.9 and abs(acc16 - acc32) < 0.03, (acc16, acc32)
