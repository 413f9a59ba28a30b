"""The protocol's GPU recipe where it can run without a GPU, and its CUDA-only code reached anyway.

On the CPU torch supports the recipe's pieces: bf16 autocast (training.autocast_devices [cuda, cpu]),
channels_last, the fused AdamW kernel and torch.compile. A run with all of them trains, its losses are
finite and close to fp32's, a stop and resume continues it to the bit, and its record says what it used.

What has no CPU equivalent (CUDA's RNG state in checkpoints, NCCL, CUDA memory statistics, the device's
name and MFU peak) is reached through the functions that choose and record it, with torch.cuda's calls
replaced by stand-ins that note how they were called: a typo or a wrong argument there fails here, not
on the first GPU run. Whether CUDA itself behaves is for a GPU machine (docs/estimate.md).
"""
import pytest
import torch
from conftest import FAST

from harness.errors import RunInterrupted
from harness.launch import run
from harness.protocol.recipe import recipe_for
from harness.protocol.tasks import resolve_task
from harness.protocol.trainer import device_rng_state, restore_device_rng_state

GPU_RECIPE = {"training.precision": "bf16", "evaluation.precision": "bf16",
              "training.autocast_devices": ["cuda", "cpu"], "training.channels_last": "always",
              "optimizer.implementation": "fused", "training.compile": True}
CUDA = torch.device("cuda", 0)


def _run(arch, results, overrides, **options):
    return run("shapes", str(arch), "smoke", device="cpu", results_dir=results, overrides={**FAST, **overrides},
               progress=False, log=lambda message: None, **options)


def test_the_gpu_recipe_trains_on_the_cpu_close_to_fp32_and_resumes_to_the_bit(tiny_arch, tmp_path):
    recipe_run = _run(tiny_arch, tmp_path / "recipe", GPU_RECIPE)
    assert recipe_run.status == "completed" and recipe_run.precision == "bf16" and recipe_run.eval_precision == "bf16"
    assert recipe_run.recipe == {"device_type": "cpu", "precision": "bf16", "sampling_precision": "bf16",
                                 "channels_last": True, "optimizer": "fused", "compile": True,
                                 "rng_states": ["generator", "torch_rng"]}
    assert not [s for s in recipe_run.substitutions if "precision" in s["what"]]  # bf16 was used, as asked

    fp32 = _run(tiny_arch, tmp_path / "fp32", {"training.precision": "fp32", "evaluation.precision": "fp32"})
    assert fp32.recipe["precision"] == "fp32" and fp32.recipe["optimizer"] == "foreach" and not fp32.recipe["compile"]
    losses, reference = [loss for _, loss in recipe_run.loss_curve], [loss for _, loss in fp32.loss_curve]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses != reference and losses == pytest.approx(reference, rel=0.05)  # bf16: close, not equal

    # stopped at step 3 (off the schedule of a checkpoint every 4 steps), then resumed by the same call
    with pytest.raises(RunInterrupted):
        _run(tiny_arch, tmp_path / "resumed", {**GPU_RECIPE, "training.checkpoint_every": 4},
             should_stop=lambda step: step == 3)
    resumed = _run(tiny_arch, tmp_path / "resumed", {**GPU_RECIPE, "training.checkpoint_every": 4})
    straight = _run(tiny_arch, tmp_path / "straight", {**GPU_RECIPE, "training.checkpoint_every": 4})
    assert resumed.loss_curve == straight.loss_curve and resumed.final_fid == straight.final_fid
    a = torch.load(tmp_path / "resumed" / "shapes" / "tiny" / "smoke" / "seed42" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "straight" / "shapes" / "tiny" / "smoke" / "seed42" / "checkpoint.pt", weights_only=False)
    for part in ("model", "ema"):
        assert all(torch.equal(a["trainer"][part][k], b["trainer"][part][k]) for k in a["trainer"][part])


def test_a_bf16_task_on_a_cpu_says_it_ran_fp32_by_default(tiny_arch, tmp_path):
    record = _run(tiny_arch, tmp_path, {"training.precision": "bf16", "training.steps": 2})
    assert record.precision == "fp32" and record.recipe["precision"] == "fp32"
    note = next(s for s in record.substitutions if s["what"] == "training.precision")
    assert note["asked"] == "bf16" and note["used"] == "fp32" and "training.autocast_devices" in note["why"]


def test_the_settings_a_gpu_run_would_use_are_chosen_and_recorded_without_one():
    spec = resolve_task("cifar10", "small")  # the protocol: bf16 training, fp32 sampling, channels_last on CUDA
    gpu = recipe_for(spec, CUDA)
    assert gpu.autocast is torch.bfloat16 and gpu.sampling_autocast is None
    assert gpu.channels_last and gpu.memory_format is torch.channels_last and gpu.optimizer_options == {"fused": True}
    assert gpu.to_dict() == {"device_type": "cuda", "precision": "bf16", "sampling_precision": "fp32",
                             "channels_last": True, "optimizer": "fused", "compile": False,
                             "rng_states": ["generator", "torch_rng", "cuda_rng"]}
    cpu = recipe_for(spec, torch.device("cpu"))
    assert cpu.autocast is None and not cpu.channels_last and cpu.precision == "fp32"
    assert cpu.optimizer_options == {"foreach": True}
    loop = resolve_task("cifar10", "small", {"optimizer.implementation": "for-loop"})
    assert recipe_for(loop, CUDA).optimizer_options == {"foreach": False}


class StandIn:
    """Replaces torch.cuda functions; notes each call's arguments and returns what it is given."""

    def __init__(self, monkeypatch, **returns):
        self.calls = []
        for name, value in returns.items():
            monkeypatch.setattr(torch.cuda, name, self._function(name, value))

    def _function(self, name, value):
        def call(*args, **kwargs):
            self.calls.append((name, args))
            return value
        return call


def test_cuda_rng_state_goes_into_a_checkpoint_and_back(monkeypatch):
    state = torch.arange(16, dtype=torch.uint8)
    cuda = StandIn(monkeypatch, get_rng_state=state, set_rng_state=None)
    saved = device_rng_state(CUDA)
    assert list(saved) == ["cuda_rng"] and saved["cuda_rng"] is state
    restore_device_rng_state(saved, CUDA)
    assert cuda.calls == [("get_rng_state", (CUDA,)), ("set_rng_state", (state, CUDA))]
    assert device_rng_state(torch.device("cpu")) == {}  # a CPU checkpoint holds torch_rng only
    restore_device_rng_state({"cuda_rng": state}, torch.device("cpu"))  # a GPU checkpoint's on a CPU: ignored
    assert len(cuda.calls) == 2


def test_nccl_between_gpus_gloo_between_cpu_processes():
    from harness.world import process_group_backend

    assert process_group_backend("cuda:1") == "nccl" and process_group_backend("cuda") == "nccl"
    assert process_group_backend("cpu") == "gloo"


def test_cuda_memory_statistics_device_name_and_peak(monkeypatch):
    from harness.measure.memory import PeakMemory
    from harness.peaks import matmul_precision, mfu
    from harness.run.records import device_info
    from harness.world import sync

    cuda = StandIn(monkeypatch, synchronize=None, reset_peak_memory_stats=None, memory_allocated=2**30,
                   max_memory_allocated=3 * 2**30, get_device_name="NVIDIA H200",
                   get_device_capability=(9, 0))
    with PeakMemory(CUDA) as memory:
        pass
    assert memory.peak_mb == 3072.0 and memory.increase_mb == 2048.0
    assert memory.kind == "torch.cuda.max_memory_allocated"
    assert ("reset_peak_memory_stats", (CUDA,)) in cuda.calls and ("max_memory_allocated", (CUDA,)) in cuda.calls
    sync(CUDA)
    assert cuda.calls[-1] == ("synchronize", (CUDA,))
    info = device_info(CUDA)
    assert info == {"type": "cuda", "name": "NVIDIA H200", "capability": "9.0"}
    peak = matmul_precision("fp32", "cuda", info["capability"])
    assert peak == "tf32" and matmul_precision("bf16", "cuda", "9.0") == "bf16"
    # 1 GFLOP per image forward at 1000 img/s: 3 TFLOP/s of training against the H200's 989.4 bf16 TFLOP/s
    assert mfu(1.0, 1000.0, info["name"], "bf16") == pytest.approx(3.0 / 989.4)
