"""The process policy: one precedence for threads (flag > recipe > default), on --resume too."""

import os

import pytest
import torch

from conftest import SMALL_RECIPE, read_metrics
from layerwise import config, runtime
from layerwise.cli import main
from layerwise.jobs import train


def _recipe(npz_files) -> str:
    return (
        SMALL_RECIPE.replace("train.npz", str(npz_files[0]))
        .replace("test.npz", str(npz_files[1]))
        .replace('"r"', '"t"')
    )


def test_threads_precedence_and_defaults():
    cores = os.cpu_count() or 1
    assert runtime.resolve_threads(3, 1) == 3  # the flag wins
    assert runtime.resolve_threads(None, 1) == 1  # then the recipe
    assert runtime.resolve_threads() == min(2, cores)
    assert runtime.resolve_threads(local_workers=cores) == 1  # a worker's fair share of the cores
    with pytest.raises(ValueError, match="The 'threads' parameter of the runtime policy must be an int in the range"):
        runtime.resolve_threads(None, 0)
    r = runtime.apply(threads=2, device="cpu")
    assert (r.threads, r.device, torch.get_num_threads()) == (2, torch.device("cpu"), 2)
    assert r.wait_policy in (
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
        f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}",
    )


def test_the_wait_policy_spins_briefly_on_idle_cores_unless_the_environment_sets_one(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setattr(runtime, "busy_cores", lambda: 0.2)
    assert runtime.set_wait_policy() == "GOMP_SPINCOUNT=10000" and os.environ["GOMP_SPINCOUNT"] == "10000"
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delenv("GOMP_SPINCOUNT")
    for busy in (0.9, None):  # another process holds a core, or no /proc/stat to tell
        monkeypatch.setattr(runtime, "busy_cores", lambda busy=busy: busy)
        assert runtime.set_wait_policy() == "OMP_WAIT_POLICY=PASSIVE" and "GOMP_SPINCOUNT" not in os.environ
        monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "500")
    assert runtime.set_wait_policy() == "GOMP_SPINCOUNT=500"  # the user's own
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert runtime.set_wait_policy() == "OMP_WAIT_POLICY=ACTIVE" and "GOMP_SPINCOUNT" not in os.environ


def test_busy_cores_reads_the_machine():
    busy = runtime.busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= (os.cpu_count() or 1) + 1e-9


def test_device_specs_resolve_or_fail_with_the_reason(monkeypatch):
    with pytest.raises(
        ValueError,
        match="The 'device' parameter of the runtime policy must be one of 'auto', 'cpu', "
        "'cuda' or 'cuda:N'. Got 'gpu' instead",
    ):
        runtime.resolve_device("gpu")
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert runtime.resolve_device("auto") == torch.device("cpu")  # auto: the CPU when torch sees no GPU
        monkeypatch.setenv("LOCAL_RANK", "1")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert runtime.resolve_device("auto") == torch.device("cpu")  # a worker too
        for spec in ("cuda", "cuda:1"):
            with pytest.raises(ValueError, match="this machine has no CUDA device"):
                runtime.resolve_device(spec)
        with pytest.warns(UserWarning, match="tf32' applies to CUDA matrix products only"):
            assert runtime.apply(threads=1, device="auto", precision="tf32").device == torch.device("cpu")
    else:  # pragma: no cover - on a GPU machine
        n = torch.cuda.device_count()
        assert runtime.resolve_device("auto").type == "cuda"
        monkeypatch.setenv("LOCAL_RANK", str(n - 1))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(n))
        assert runtime.resolve_device("cuda") == torch.device("cuda", n - 1)  # a worker's own GPU
        if n > 1:
            with pytest.raises(ValueError, match="names one GPU, but"):  # n workers cannot share one GPU under NCCL
                runtime.resolve_device("cuda:0")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(n + 1))  # more workers than GPUs: every one on the CPU
        assert runtime.resolve_device("auto") == torch.device("cpu")
        monkeypatch.setenv("LOCAL_RANK", str(n))
        with pytest.raises(ValueError, match=f"LOCAL_RANK {n} of a distributed run needs GPU {n}"):
            runtime.resolve_device("cuda")
    with pytest.raises(ValueError, match="The 'precision' parameter of the runtime policy must be one of"):
        runtime.apply(threads=1, precision="fp16")


def test_train_leaves_the_thread_count_alone(tmp_path, npz_files):
    """Library functions take the policy as given: a recipe's threads = 1 is the command's
    to apply, not train()'s."""
    (tmp_path / "r.toml").write_text(_recipe(npz_files))
    torch.set_num_threads(2)
    train(config.load(tmp_path / "r.toml"), runs_dir=tmp_path / "runs")
    assert torch.get_num_threads() == 2


def _interrupted(tmp_path, npz_files, name):
    (tmp_path / "r.toml").write_text(_recipe(npz_files))
    cfg = config.load(tmp_path / "r.toml")
    cfg.name = name

    def stop_in_finetuning(line):
        if line.startswith("phase=finetune epoch=2 "):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, runs_dir=tmp_path / "runs", echo=stop_in_finetuning)
    return tmp_path / "runs" / name


@pytest.mark.parametrize("flag, expected", [(["--threads", "2"], 2), ([], 1)])
def test_resume_applies_the_flag_else_the_runs_recipe(tmp_path, npz_files, flag, expected):
    run = _interrupted(tmp_path, npz_files, "t")
    torch.set_num_threads(3)  # neither: what the process had before the command applied its policy
    assert main(["train", "--resume", str(run), "--quiet", *flag]) == 0
    resumed = [r for r in read_metrics(run) if r["phase"] == "resume"]
    assert len(resumed) == 1 and resumed[0]["threads"] == expected, resumed


def test_kill_points_of_the_tests_are_read_per_loop_rank_and_life(monkeypatch):
    from killpoints import kill_point

    monkeypatch.setenv("LAYERWISE_TEST_KILL", "1/pretrain layer 1@12.30,finetune@3.30:INT")
    assert kill_point("pretrain layer 1/2 (36->48)", rank=1) == (12, 30, "KILL")
    assert kill_point("pretrain layer 1/2 (36->48)", rank=0) is None  # another rank
    assert kill_point("finetune", rank=1) is None  # another loop
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # the second life of a restarted worker
    assert kill_point("finetune", rank=0) == (3, 30, "INT")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert kill_point("finetune", rank=0) is None
    monkeypatch.setenv("LAYERWISE_TEST_KILL", "finetune-3")
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    with pytest.raises(
        ValueError, match=r"LAYERWISE_TEST_KILL: cannot read 'finetune-3'; expected \[RANK/\]LOOP@EPOCH.BATCH"
    ):
        kill_point("finetune")


def test_bf16_on_a_cpu_without_bfloat16_instructions_warns_and_with_them_does_not(monkeypatch):
    import warnings

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no bfloat16 instructions .* emulated and slower than fp32"):
        assert runtime.apply(threads=1, device="cpu", precision="bf16").precision == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.apply(threads=1, device="cpu", precision="bf16")
    monkeypatch.undo()
    assert isinstance(runtime.cpu_has_bf16(), bool)
