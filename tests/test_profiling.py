import json

import pytest
import torch

from harness.cli.main import main
from harness.measure.profile import profile
from harness.protocol import registry

TIMING_KEYS = ["infer_latency_ms", "infer_latency_ms_p10", "infer_latency_ms_p90", "infer_samples_per_sec",
               "train_samples_per_sec", "train_step_ms", "sample_images_per_sec", "peak_mem_mb"]


@pytest.mark.slow  # end to end
def test_profile_all_no_timing_covers_every_architecture_and_tier(tmp_path, capsys):
    assert main(["profile", "--all", "--no-timing", "--json", "--results-dir", str(tmp_path)]) == 0
    results = json.loads(capsys.readouterr().out)
    pairs = {(r["arch"], r["tier"]) for r in results}
    assert pairs == {(a, t) for a in registry.architecture_names() for t in ("smoke", "small", "medium", "large")}
    for r in results:
        assert "error" not in r and r["gmacs"] > 0 and isinstance(r["param_count"], int)
        assert not any(k in r for k in TIMING_KEYS)
    saved = list((tmp_path / "profiles" / "cifar10").rglob("*-static.json"))
    assert len(saved) == len(results)


def test_timed_profile_measures_every_key():
    result = profile("standard", "smoke", device=torch.device("cpu"), batch=4)
    assert "error" not in result, result.get("error")
    for key in TIMING_KEYS:
        assert result[key] >= 0, key
    assert result["infer_latency_ms_p10"] <= result["infer_latency_ms"] <= result["infer_latency_ms_p90"]
    assert result["train_batch"] == result["infer_batch"] == 4 and result["sample_steps"] == 50
    assert result["dtype"] == "fp32" and result["device_type"] == "cpu"


def test_one_broken_architecture_records_an_error_and_the_rest_go_on(arch_dir_with_a_broken_file, tmp_path, capsys):
    assert main(["profile", "--all", "--tier", "smoke", "--no-timing", "--json", "--results-dir", str(tmp_path)]) == 1
    results = {r["arch"]: r for r in json.loads(capsys.readouterr().out)}
    assert "boom" in results["broken"]["error"] and results["no_attn"]["gmacs"] > 0


def test_profile_needs_arch_and_tier_or_all(capsys):
    assert main(["profile", "--arch", "standard"]) == 2
    assert "--all" in capsys.readouterr().err
