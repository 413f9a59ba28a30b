"""The benchmark runs and its outputs match the references; speed is printed, never asserted."""
import json

import pytest
import torch

from harness.cli.main import main
from harness.measure import bench

# 8 FID images: rank-deficient covariances, as at 24 (the FID checked against clean-fid either way; clean-fid's
# square root of a 2048 x 2048 matrix, about 17 s on one thread here, is the same cost at any count)
TINY = bench.BenchSizes(tier="smoke", train_blocks=1, steps_per_block=1, sample_batch=2, fid_images=8,
                        sampling_rounds=1)


@pytest.mark.slow  # end to end: training, sampling and two FIDs, each timed twice
def test_bench_outputs_match_diffusers_and_cleanfid(monkeypatch, capsys):
    monkeypatch.setattr(bench.BenchSizes, "for_device", classmethod(lambda cls, device: TINY))
    assert main(["bench", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sampling_max_abs_diff"] < 1e-4  # same weights and noise: the same images
    assert result["fid_abs_diff"] < 1e-2 and result["cleanfid_fid"] > 0
    for key in ("train_step_ratio", "sampling_ratio", "fid_ratio", "harness_train_images_per_sec",
                "bare_train_images_per_sec", "harness_sampling_images_per_sec", "pipeline_sampling_images_per_sec"):
        assert result[key] > 0, key
    assert {"harness_train_step_seconds", "bare_train_step_seconds", "cleanfid_fid_seconds"} <= set(result["raw"])
    assert result["device"]["type"] == "cpu" and "torch" in result["versions"] and result["precision"] == "fp32"


def test_bare_loop_is_the_diffusers_example_step():
    # the reference loop really trains: its loss goes down on a fixed batch of shapes
    from harness.protocol import registry
    from harness.protocol.data import generate_shapes
    from harness.protocol.tasks import resolve_task

    spec = resolve_task("cifar10", "smoke", {"training.batch_size": 8})
    torch.manual_seed(0)
    model = registry.build(registry.find_architecture("standard"), spec.width_env, torch.device("cpu"))
    loop = bench.BareLoop(model, generate_shapes(8, seed=0), spec, torch.device("cpu"))
    losses = []
    for _ in range(6):
        loop.train_step()
        losses.append(loop.last_loss)
    assert losses[-1] < losses[0]
    assert loop.ema.optimization_step == 6
