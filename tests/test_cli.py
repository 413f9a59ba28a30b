"""The command line, end to end, as a user types it."""
import json
import math
import os
import subprocess
import sys

import pytest

from harness.cli.main import main
from harness.protocol.tasks import REPO_ROOT


def harness(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          cwd=cwd or REPO_ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), timeout=900)


@pytest.mark.slow  # end to end
def test_run_end_to_end_on_shapes(tmp_path):
    result = harness("run", "--task", "shapes", "--arch", "standard", "--tier", "smoke", "--steps", "3",
                     "--fid-samples", "8", "--set", "evaluation.reference_images=16", "--set", "sampling.steps=10",
                     "--results-dir", str(tmp_path), "--no-progress")
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "shapes" / "standard" / "smoke" / "seed42"
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "completed" and record["step"] == 3 and record["arch"] == "standard"
    assert [e["step"] for e in record["evaluations"]] == [0, 3]
    assert all(math.isfinite(e["fid"]) for e in record["evaluations"])
    assert record["config"]["sampling"]["steps"] == 10 and record["config"]["evaluation"]["num_samples"] == 8
    assert (run_dir / "samples.png").stat().st_size > 0
    assert "best FID" in result.stdout and str(run_dir / "record.json") in result.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--arch", "standrd", "--tier", "smoke"], "Did you mean 'standard'?"),
    (["run", "--arch", "standard", "--tier", "huge"], "Unknown tier 'huge'"),
    (["run", "--arch", "standard", "--tier", "smoke", "--task", "cifar"], "Unknown task 'cifar'"),
    (["run", "--arch", "standard", "--tier", "smoke", "--set", "training.batchsize=3"],
     "Cannot override 'training.batchsize'"),
])
def test_bad_input_is_one_clear_message_without_traceback(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("error: ")


def test_debug_shows_the_traceback():
    result = harness("--debug", "run", "--arch", "standrd", "--tier", "smoke")
    assert result.returncode != 0 and "Traceback" in result.stderr and "HarnessError" in result.stderr


def test_missing_cifar_offline_exits_non_zero_with_instructions(tmp_path, monkeypatch, capsys):
    import torchvision

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    assert main(["run", "--arch", "standard", "--tier", "smoke", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "--data-dir" in err and "cifar-10" in err.lower()  # says how to provide the data


def test_list_json_has_exact_parameter_counts_for_every_tier():
    result = harness("list", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    names = {a["name"]: a for a in listing["architectures"]}
    assert {"standard", "full_attn", "no_attn"} <= set(names)
    for arch in names.values():
        assert set(arch["param_count"]) == {"smoke", "small", "medium", "large"}
        assert all(isinstance(n, int) and n > 0 for n in arch["param_count"].values())
    assert ({"cifar10", "shapes"} <= set(listing["tasks"])
            and listing["tiers"]["medium"]["block_out_channels"] == [128, 256, 256, 256])
    assert listing["tiers_of_other_tasks"]["shapes"] == ["demo"]  # the tier a newcomer runs first is findable


def test_help_tells_the_story():
    result = harness("--help")
    assert result.returncode == 0 and "run" in result.stdout and "list" in result.stdout and "example" in result.stdout
    assert "example" in harness("run", "--help").stdout


def test_list_reports_a_broken_file_on_its_row_and_lists_the_rest(arch_dir_with_a_broken_file, capsys):
    assert main(["list", "--json"]) == 1
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["architectures"]}
    assert "boom" in rows["broken"]["error"] and rows["no_attn"]["param_count"]["small"] > 0
    assert main(["list"]) == 1
    captured = capsys.readouterr()
    assert "broken" in captured.out and "error:" in captured.out and "Traceback" not in captured.out + captured.err
    assert "task 'shapes' also has tier(s) demo: python -m harness list --task shapes" in captured.out


@pytest.mark.parametrize("command", [["run", "--arch", "standard", "--tier", "small"],
                                     ["sweep", "--arch", "standard,no_attn", "--tier", "smoke,medium", "--dry-run"]])
def test_a_gpu_tier_on_a_machine_without_one_needs_device_cpu(command, tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides every GPU, so this machine has no usable one whatever it holds
    done = subprocess.run([sys.executable, "-m", "harness", *command, "--results-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert done.returncode == 2
    err = " ".join(done.stderr.split())
    assert "--device auto found no GPU" in err and "Pass --device cpu" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing was started or written
