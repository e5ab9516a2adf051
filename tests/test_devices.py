"""The device plumbing, proved on a CPU-only machine: every tensor a training step or the
loop makes is on the unit's device (the ``meta`` device stands in for a GPU), generators
follow the net, artifacts and checkpoints are CPU tensors whatever the device, a
checkpoint from another kind of device resumes with a note, and bf16 keeps its
accumulators in fp32. The tests that need a GPU skip without one, saying so."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from layerwise import _devices
from layerwise.config import FinetuneConfig
from layerwise.data.streams import TensorData
from layerwise.reporting.reporter import Reporter
from layerwise.stack import DeepBeliefNet
from layerwise.training.finetune import evaluate, make_optimizer, train_step
from layerwise.training.loop import run_loop
from layerwise.units import BernoulliRBM, DenoisingAutoencoder, GaussianBernoulliRBM

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


class DevicesMade(TorchDispatchMode):
    """Records the device of every tensor each op returns."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.made.append((str(func), t.device.type))
        return out


def _off_device(made, device="meta"):
    return sorted({op for op, dev in made if dev != device})


UNIT_STEPS = [
    (BernoulliRBM, {"k": 1}),
    (BernoulliRBM, {"k": 2, "persistent": True, "weight_decay": 1e-3, "sparsity_target": 0.1, "sparsity_cost": 0.1}),
    (GaussianBernoulliRBM, {"k": 1, "persistent": True}),
    (DenoisingAutoencoder, {"noise": 0.3, "weight_decay": 1e-3}),
]


@pytest.mark.parametrize("unit_cls, options", UNIT_STEPS, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_unit_step_makes_every_tensor_on_the_units_device(unit_cls, options, precision):
    unit = unit_cls(12, 7, seed=0).set_precision(precision).to("meta")
    v = torch.empty(10, 12, device="meta")
    with DevicesMade() as mode:
        for _ in range(2):  # the second PCD step goes on from the chains of the first
            unit.step(v, lr=0.1, momentum=0.5, **options)
    assert len(mode.made) > 10
    assert _off_device(mode.made) == [], "ops that made tensors off the unit's device inside a step"


def test_the_loop_makes_every_tensor_on_the_datas_device():
    """The whole loop (the epoch's order, the gather, the batches, the steps) on meta data."""
    unit = BernoulliRBM(12, 7).to("meta")
    data = TensorData(torch.empty(95, 12, device="meta"))
    gen = _devices.device_generator("meta", 0)
    with DevicesMade() as mode:
        run_loop(
            data=data,
            batch_size=10,
            epochs=2,
            generator=gen,
            desc="t",
            reporter=Reporter(),
            step=lambda xb, yb, e: unit.step(xb, lr=0.1),
            end_epoch=lambda e, s: False,
        )
    assert _off_device(mode.made) == []
    assert sum(op.startswith("aten.randperm") for op, _ in mode.made) == 2  # one order per epoch, on meta


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_finetuning_step_makes_every_tensor_on_the_models_device(precision):
    dbn = DeepBeliefNet(12, [8, 6], seed=0)
    clf = dbn.to_classifier(3, dropout_input=0.2, dropout_hidden=0.5).to("meta")
    opt = make_optimizer(clf, FinetuneConfig(momentum=0.9))
    xb, yb = torch.empty(10, 12, device="meta"), torch.zeros(10, dtype=torch.long, device="meta")
    with DevicesMade() as mode:
        for _ in range(2):
            loss = train_step(clf, opt, xb, yb, precision)
    assert loss.device.type == "meta"
    assert _off_device(mode.made) == []


def test_a_net_moved_to_a_device_takes_its_generators_along():
    dbn = DeepBeliefNet(12, [8, 6], seed=0, device="meta")
    assert dbn.device.type == "meta"
    assert all(layer.weight.device.type == "meta" for layer in dbn.layers)
    assert all(layer.generator.device.type == "cpu" for layer in dbn.layers)  # meta draws from a CPU generator
    assert dbn.to_classifier(3)[0].weight.device.type == "meta"
    # the same start on every device: weights are drawn on the CPU, then moved
    a, b = DeepBeliefNet(12, [8], seed=4), DeepBeliefNet(12, [8], seed=4).to("cpu")
    assert torch.equal(a.layers[0].weight, b.layers[0].weight)


def test_a_generator_state_from_another_device_seeds_a_generator_deterministically():
    cpu = torch.Generator().manual_seed(1)
    state = cpu.get_state()
    g, exact = _devices.restore(torch.Generator(), state)
    assert exact and torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(1)))
    philox = torch.tensor([7] * 16, dtype=torch.uint8)  # a CUDA generator's state is 16 bytes
    g1, exact1 = _devices.restore(torch.Generator(), philox)
    g2, _ = _devices.restore(torch.Generator(), philox)
    assert not exact1
    assert torch.equal(torch.rand(5, generator=g1), torch.rand(5, generator=g2))  # the same seed every time


def test_bf16_keeps_parameters_momentum_and_metrics_in_fp32():
    x = (torch.rand(64, 20, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    a, b = BernoulliRBM(20, 10, seed=2), BernoulliRBM(20, 10, seed=2).set_precision("bf16")
    for unit in (a, b):
        for _ in range(20):
            unit.step(x, lr=0.1, momentum=0.5)
    assert all(t.dtype == torch.float32 for t in [*b.parameters(), *b.buffers()])
    rel = float((a.weight - b.weight).norm() / a.weight.norm())
    assert 0 < rel < 0.05, f"bf16 weights {rel:.3g} (relative) away from fp32's"
    # the metric of the bf16 unit is an fp32 computation: equal to evaluating its weights in fp32
    c = BernoulliRBM(20, 10)
    c.load_state_dict(b.state_dict())
    assert torch.equal(b.reconstruction_cross_entropy(x), c.reconstruction_cross_entropy(x))


def test_the_bf16_cd_update_rounds_the_difference_of_the_statistics_once():
    """<hv>_pos and <hv>_neg nearly cancel: rounding each to bf16 before subtracting
    loses 2.4% of their difference here, one product over both phases 0.4%."""
    g = torch.Generator().manual_seed(0)
    v = (torch.rand(100, 50, generator=g) < 0.3).float()
    v_neg = (v + 0.05 * torch.rand(100, 50, generator=g)).clamp(0, 1)
    h = torch.rand(100, 40, generator=g)
    h_neg = (h + 0.05 * torch.rand(100, 40, generator=g)).clamp(0, 1)
    ref, low = BernoulliRBM(50, 40, seed=0), BernoulliRBM(50, 40, seed=0).set_precision("bf16")
    ref._apply_update(v, h, v_neg, h_neg, 0.1, 0.0, 0.0, None, 0.0)
    with low._training():
        low._apply_update(v, h, v_neg, h_neg, 0.1, 0.0, 0.0, None, 0.0)
    exact = ref.weight_velocity
    rel = float((low.weight_velocity - exact).norm() / exact.norm())
    assert 0 < rel < 0.01, rel


def test_bf16_fine_tuning_learns_like_fp32(tmp_path):
    from conftest import make_patterns

    x, y = (torch.from_numpy(a) for a in make_patterns(n=200))
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        clf = DeepBeliefNet(36, [16], seed=0).to_classifier(3)
        opt = make_optimizer(clf, FinetuneConfig(learning_rate=0.5))
        for _ in range(30):
            train_step(clf, opt, x, y, precision)
        assert all(p.dtype == torch.float32 for p in clf.parameters())
        losses[precision] = evaluate(clf, x, y)[0]
    assert losses["bf16"] < 0.5 and abs(losses["bf16"] - losses["fp32"]) < 0.1, losses


@GPU
def test_a_net_trained_on_a_gpu_evaluates_on_the_cpu_and_back(tmp_path):  # pragma: no cover - needs a GPU
    from conftest import make_patterns
    from layerwise.storage.artifacts import classifier_architecture, load_model, write_artifact

    x, y = (torch.from_numpy(a) for a in make_patterns(n=200))
    clf = DeepBeliefNet(36, [16], seed=0, device="cuda").to_classifier(3)
    opt = make_optimizer(clf, FinetuneConfig(learning_rate=0.5))
    for _ in range(10):
        train_step(clf, opt, x.cuda(), y.cuda())
    write_artifact(
        tmp_path / "m",
        clf.state_dict(),
        kind="finetuned",
        architecture=classifier_architecture([36, 16], 3, 0, 0),
        config={},
        stages=[],
        metrics={},
    )
    cpu, _ = load_model(tmp_path / "m")
    assert next(cpu.parameters()).device.type == "cpu"
    gpu_loss, cpu_loss = evaluate(clf, x, y)[0], evaluate(cpu, x, y)[0]
    assert abs(gpu_loss - cpu_loss) < 1e-4
    assert abs(evaluate(cpu.cuda(), x, y)[0] - cpu_loss) < 1e-4


@pytest.mark.slow
def test_a_checkpoint_from_another_device_resumes_with_a_note(tmp_path):
    """A checkpoint written on a GPU (its device and a CUDA generator's 16-byte state,
    put there by hand) resumes on the CPU: the run finishes, and says that its result is
    not the uninterrupted run's."""
    import signal
    import subprocess
    import sys

    from conftest import RESUME_RECIPE, worker_env, write_patterns
    from layerwise.storage.checkpointing import load_checkpoint, save_checkpoint

    write_patterns(tmp_path)
    (tmp_path / "r.toml").write_text(RESUME_RECIPE)
    cmd = [sys.executable, "-m", "layerwise", "train"]
    killed = subprocess.run(
        [*cmd, "r.toml", "--quiet"],
        cwd=tmp_path,
        env=worker_env(LAYERWISE_TEST_KILL="finetune@2.53"),
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ck = tmp_path / "runs" / "r" / "checkpoint"
    tensors, meta = load_checkpoint(ck)
    assert meta["device"] == "cpu"
    meta["device"] = "cuda:0"
    generators = [k for k in tensors if k.endswith("/generator")]
    assert generators, sorted(tensors)
    for k in generators:
        tensors[k] = torch.arange(16, dtype=torch.uint8)  # what a CUDA (Philox) generator's state looks like
    save_checkpoint(ck, tensors, meta)
    res = subprocess.run(
        [*cmd, "--resume", "runs/r", "--quiet"], cwd=tmp_path, env=worker_env(), capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "was checkpointed on cuda:0 and resumes on cpu" in res.stderr
    assert "will not be bitwise equal to an uninterrupted run" in res.stderr
    assert (tmp_path / "runs" / "r" / "finetuned").is_dir()


def test_restored_pcd_chains_land_on_the_units_device():
    a = BernoulliRBM(12, 7)
    a.step(torch.rand(10, 12), lr=0.1, persistent=True)
    b = BernoulliRBM(12, 7).to("meta")
    with pytest.warns(UserWarning, match="copying from a non-meta parameter"):  # torch: a copy into meta is a no-op
        b.load_state_dict(a.state_dict())
    assert b.persistent_chains.device.type == "meta" and b.persistent_chains.shape == (10, 12)
