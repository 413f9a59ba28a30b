import json
import math

import pytest
import torch
from conftest import FAST
from PIL import Image

from harness.errors import HarnessError, RunFailed, RunInterrupted
from harness.launch import run
from harness.run.records import RunRecord


def _run(arch, results, **kwargs):
    overrides = dict(FAST, **kwargs.pop("overrides", {}))
    return run("shapes", str(arch), "smoke", device="cpu", results_dir=results, overrides=overrides, progress=False,
               log=lambda msg: None, **kwargs)


def _checkpoint(results, name="tiny"):
    return torch.load(results / "shapes" / name / "smoke" / "seed42" / "checkpoint.pt", weights_only=False)


def test_resumed_run_ends_bitwise_equal_to_uninterrupted(tiny_arch, tmp_path):
    straight = _run(tiny_arch, tmp_path / "a")
    with pytest.raises(RunInterrupted, match="Stopped at step 3"):
        _run(tiny_arch, tmp_path / "b", should_stop=lambda step: step == 3)
    interrupted = RunRecord.load(tmp_path / "b" / "shapes" / "tiny" / "smoke" / "seed42" / "record.json")
    assert interrupted.status == "interrupted" and interrupted.step == 3
    logs = []
    resumed = run("shapes", str(tiny_arch), "smoke", device="cpu", results_dir=tmp_path / "b", overrides=FAST,
                  progress=False, log=logs.append)
    assert any("Resuming" in m and "step 3" in m for m in logs)
    a, b = _checkpoint(tmp_path / "a")["trainer"], _checkpoint(tmp_path / "b")["trainer"]
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), f"{key} weights differ after resume"
    assert a["loss_curve"] == b["loss_curve"]
    assert straight.final_fid == resumed.final_fid and straight.status == resumed.status == "completed"


def test_record_holds_what_the_issue_lists(tiny_arch, tmp_path):
    record = _run(tiny_arch, tmp_path, overrides={"evaluation.eval_points": [0, 2]})
    path = tmp_path / "shapes" / "tiny" / "smoke" / "seed42"
    saved = json.loads((path / "record.json").read_text())
    assert saved["status"] == "completed" and saved["task_version"] == 2 and saved["config"]["training"]["steps"] == 6
    assert saved["param_count"] == sum(p.numel()
                                       for p in torch.nn.Conv2d(3, 32, 3).parameters()) + 1000 * 32 + (32 * 9 * 3 + 3)
    assert [e["step"] for e in saved["evaluations"]] == [0, 2, 6]
    assert all(math.isfinite(e["fid"]) and e["kid"] is not None for e in saved["evaluations"])
    assert (saved["best_fid"] == min(e["fid"] for e in saved["evaluations"])
            and saved["final_fid"] == saved["evaluations"][-1]["fid"])
    assert saved["loss_curve"] and all(len(p) == 2 for p in saved["loss_curve"])
    assert {"train_images_per_sec", "sampling_images_per_sec", "wall_seconds"} <= set(saved["timings"])
    assert {"torch", "diffusers", "clean-fid"} <= set(saved["versions"]) and saved["device"]["type"] == "cpu"
    assert "git_commit" in saved and saved["reference"]["num_images"] == 12
    assert saved["profile"]["gmacs"] > 0 and saved["profile"]["param_count"] == saved["param_count"]
    assert (path / "samples.png").is_file() and record.samples_png == "samples.png"
    # what the report needs to compare it honestly: its tier as the task file defined it, that file, the
    # precisions used, each FID's sampling noise, and the first step's draws (to pair seeds across archs)
    assert saved["tier_config"]["training"]["steps"] == 120 and saved["task_file"]["path"].endswith("shapes.yaml")
    assert saved["precision"] == saved["eval_precision"] == "fp32" and len(saved["stream_sha256"]) == 16
    assert all(e["fid_std"] > 0 and e["fid_bootstrap"] == 50 for e in saved["evaluations"])


def test_rerunning_a_finished_run_does_nothing(tiny_arch, tmp_path):
    first = _run(tiny_arch, tmp_path)
    logs = []
    again = run("shapes", str(tiny_arch), "smoke", device="cpu", results_dir=tmp_path, overrides=FAST, progress=False,
                log=logs.append)
    assert again.final_fid == first.final_fid and any("Nothing to do" in m for m in logs)
    # the rewritten record keeps everything the first session wrote
    saved = json.loads((tmp_path / "shapes" / "tiny" / "smoke" / "seed42" / "record.json").read_text())
    assert saved["reference"] == first.reference and saved["reference"]["source"].startswith("computed from")
    assert saved["samples_png"] == "samples.png" and saved["evaluations"] == first.evaluations


def test_more_steps_continue_a_finished_run(tiny_arch, tmp_path):
    _run(tiny_arch, tmp_path)
    longer = _run(tiny_arch, tmp_path, overrides={"training.steps": 8})
    assert [e["step"] for e in longer.evaluations] == [6, 8] and longer.step == 8


def test_changed_settings_refuse_to_resume(tiny_arch, tmp_path):
    with pytest.raises(RunInterrupted):
        _run(tiny_arch, tmp_path, should_stop=lambda step: step == 2)
    with pytest.raises(HarnessError, match=r"different settings \(optimizer.lr: 0.0002 -> 0.001\)"):
        _run(tiny_arch, tmp_path, overrides={"optimizer.lr": 1e-3})
    assert _run(tiny_arch, tmp_path, overrides={"optimizer.lr": 1e-3}, fresh=True).status == "completed"


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(write_arch, tmp_path):
    # finite for the contract check and the first 3 training steps, then NaN
    arch = write_arch("diverges", '''
        import torch
        from diffusers.models.unets.unet_2d import UNet2DOutput
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
                self.calls = 0
            def forward(self, x, timestep):
                if self.training:
                    self.calls += 1
                out = self.conv(x)
                return UNet2DOutput(sample=out * float("nan") if self.calls > 3 else out)
        def build_model(device):
            return M().to(device)
    ''')
    with pytest.raises(RunFailed, match=r"loss was nan at step 4.*last good checkpoint \(step 2\)"):
        _run(arch, tmp_path)
    path = tmp_path / "shapes" / "diverges" / "smoke" / "seed42"
    record = json.loads((path / "record.json").read_text())
    assert record["status"] == "failed" and record["failure"]["step"] == 4
    assert _checkpoint(tmp_path, "diverges")["trainer"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in _checkpoint(tmp_path, "diverges")["trainer"]["model"].values())


def test_unwritable_results_dir_is_a_clear_error(tiny_arch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(HarnessError, match="Cannot write results to .*--results-dir"):
        _run(tiny_arch, blocker / "results")


def test_evaluation_settings_are_fixed_but_batch_sizes_may_change(tiny_arch, tmp_path):
    with pytest.raises(RunInterrupted):
        _run(tiny_arch, tmp_path, should_stop=lambda step: step == 2)
    # a different FID sample count would make this run's evaluations incomparable with each other
    with pytest.raises(HarnessError, match=r"evaluation.num_samples: 6 -> 8"):
        _run(tiny_arch, tmp_path, overrides={"evaluation.num_samples": 8})
    with pytest.raises(HarnessError, match=r"sampling.steps: 5 -> 10"):
        _run(tiny_arch, tmp_path, overrides={"sampling.steps": 10})
    # batch sizes change speed, not results
    assert _run(tiny_arch, tmp_path,
                overrides={"sampling.batch_size": 4, "evaluation.feature_batch_size": 5}).status == "completed"


def test_checkpoints_and_records_from_before_a_new_task_field_still_count(tiny_arch, tmp_path):
    """data.max_shapes was added after runs existed: theirs lack it and must read as its default."""
    from harness.files import atomic_torch_save
    from harness.protocol.tasks import resolve_task
    from harness.studies.sweep import _same_config

    with pytest.raises(RunInterrupted):
        _run(tiny_arch, tmp_path, should_stop=lambda step: step == 2)
    folder = tmp_path / "shapes" / "tiny" / "smoke" / "seed42"
    state = _checkpoint(tmp_path)
    del state["fingerprint"]["data.max_shapes"]
    atomic_torch_save(folder / "checkpoint.pt", state)
    record = RunRecord.load(folder / "record.json")
    del record.config["data"]["max_shapes"]
    assert _same_config(record, resolve_task("shapes", "smoke", FAST))
    assert not _same_config(record, resolve_task("shapes", "smoke", dict(FAST, **{"data.max_shapes": 1})))
    assert _run(tiny_arch, tmp_path).status == "completed"  # resumed, not refused
    with pytest.raises(RunInterrupted):
        _run(tiny_arch, tmp_path / "b", should_stop=lambda step: step == 2)
    state = _checkpoint(tmp_path / "b")
    del state["fingerprint"]["data.max_shapes"]
    atomic_torch_save(tmp_path / "b" / "shapes" / "tiny" / "smoke" / "seed42" / "checkpoint.pt", state)
    with pytest.raises(HarnessError, match=r"data.max_shapes: 3 -> 1"):  # the default is what it had
        _run(tiny_arch, tmp_path / "b", overrides={"data.max_shapes": 1})


def test_checkpoint_from_another_device_type_is_refused_clearly(tiny_arch, tmp_path):
    from harness.protocol.registry import find_architecture
    from harness.run.resume import check_resumable

    with pytest.raises(RunInterrupted):
        _run(tiny_arch, tmp_path, should_stop=lambda step: step == 2)
    state = _checkpoint(tmp_path)
    assert state["fingerprint"]["device type"] == "cpu" and state["fingerprint"]["precision"] == "fp32"
    on_gpu = dict(state["fingerprint"], **{"device type": "cuda", "precision": "bf16"})
    with pytest.raises(HarnessError, match=r"written on 'cpu'.*Resume with --device cpu"):
        check_resumable(state, on_gpu, find_architecture(str(tiny_arch)), tmp_path / "checkpoint.pt")


def test_evaluation_point_behind_the_checkpoint_is_skipped_not_repeated(tiny_arch, tmp_path):
    with pytest.raises(RunInterrupted):
        _run(tiny_arch, tmp_path, should_stop=lambda step: step == 4)
    logs = []
    record = run("shapes", str(tiny_arch), "smoke", device="cpu", results_dir=tmp_path, progress=False, log=logs.append,
                 overrides=dict(FAST, **{"evaluation.eval_points": [2]}))
    assert [e["step"] for e in record.evaluations] == [6]  # no evaluation of step 4's weights filed as step 2
    assert any("Skipping evaluation point(s) 2" in m for m in logs)


@pytest.mark.slow
def test_the_demo_tier_resolves_and_runs_a_few_steps(tmp_path):
    """The demo tier is a shapes tier only (the cifar10 protocol has none); its 10-minute figure
    is a measurement in the README, not a test."""
    from harness.protocol.tasks import resolve_task

    demo = resolve_task("shapes", "demo")
    assert demo.evaluation.num_samples >= 256 and demo.data.max_shapes == 1 and demo.sampling.eta == 1.0
    with pytest.raises(HarnessError, match="Unknown tier 'demo'"):
        resolve_task("cifar10", "demo")
    quick = {"training.steps": 3, "evaluation.num_samples": 8, "evaluation.reference_images": 16,
             "data.num_images": 256, "sampling.steps": 4}
    record = run("shapes", "standard", "demo", device="cpu", results_dir=tmp_path, overrides=quick, progress=False,
                 log=lambda msg: None)
    assert record.status == "completed" and record.step == 3 and record.tier == "demo"
    assert record.config["optimizer"]["lr"] == demo.optimizer.lr and record.config["data"]["max_shapes"] == 1
    assert record.config["data"]["background"] == "plain" and record.config["diffusion"]["snr_gamma"] is None
    # 16x16 images all the way: training, sampling, Inception features, the grid (8 x 16 pixels wide)
    assert record.config["data"]["image_size"] == 16 and record.profile["gmacs"] > 0
    with Image.open(tmp_path / "shapes" / "standard" / "demo" / "seed42" / "samples.png") as grid:
        assert grid.size == (8 * 16, 16)  # the 8 samples in one row


def test_equal_seeds_draw_the_same_batches_and_noise_whatever_the_architecture(tiny_arch, write_arch, tmp_path):
    from conftest import TINY_ARCH

    other = write_arch("other", TINY_ARCH.replace("self.inp(x)", "self.inp(x) * 0.5"))
    a, b = _run(tiny_arch, tmp_path), _run(other, tmp_path)
    c = _run(tiny_arch, tmp_path, overrides={"seed": 7})
    assert a.stream_sha256 == b.stream_sha256 != c.stream_sha256  # what lets the report pair seeds
    assert a.best_fid != b.best_fid


def test_a_gpu_tier_with_device_auto_on_a_cpu_stops_before_anything_starts(tiny_arch, tmp_path):
    import subprocess
    import sys

    # in a process whose GPUs are hidden (CUDA_VISIBLE_DEVICES=""), so it holds on any machine
    script = ("import sys; from harness.launch import run\n"
              "run('shapes', sys.argv[1], 'small', device='auto', results_dir=sys.argv[2], progress=False, log=None)")
    done = subprocess.run([sys.executable, "-c", script, str(tiny_arch), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=dict(__import__("os").environ, CUDA_VISIBLE_DEVICES=""))
    assert done.returncode != 0 and "HarnessError: --device auto found no GPU" in done.stderr
    assert "Pass --device cpu" in " ".join(done.stderr.split())
    assert not (tmp_path / "shapes").exists()
    record = run("shapes", str(tiny_arch), "small", device="cpu", results_dir=tmp_path, progress=False, log=None,
                 overrides=dict(FAST, **{"training.steps": 2}))
    # asked for the CPU: no device substitution (the bf16 the tier asks for still is one)
    whats = [n["what"] for n in record.substitutions]
    assert record.status == "completed" and "device" not in whats and "training.precision" in whats


GRID = {"samplers.grid": ["ddim:3", "dpmpp_2m:3", "unipc:4"], "samplers.at": "every",
        "evaluation.eval_points": [2, 4]}


def _without_timings(evaluations):
    timing = ("sample_seconds", "feature_seconds", "sampling_images_per_sec")
    return [{k: ({p: {n: v for n, v in got.items() if n not in timing} for p, got in value.items()}
                 if k == "samplers" else value) for k, value in e.items() if k not in timing} for e in evaluations]


@pytest.mark.slow  # four runs, each with three grid pairs: about 30 s
def test_a_sampler_grid_is_recorded_at_each_point_and_resumes_to_the_same_results(tiny_arch, tmp_path):
    straight = _run(tiny_arch, tmp_path / "a", overrides=GRID)
    with pytest.raises(RunInterrupted, match="Stopped at step 3"):
        _run(tiny_arch, tmp_path / "b", overrides=GRID, should_stop=lambda step: step == 3)
    resumed = _run(tiny_arch, tmp_path / "b", overrides=GRID)
    assert [e["step"] for e in straight.evaluations] == [2, 4, 6]
    for e in straight.evaluations:
        assert list(e["samplers"]) == ["ddim:3", "dpmpp_2m:3", "unipc:4"]
        for key, got in e["samplers"].items():
            assert math.isfinite(got["fid"]) and got["fid_std"] > 0 and got["num_samples"] == 6
            assert {"precision", "recall", "density", "coverage"} <= set(got) and got["manifold_k"] == 3
            assert got["sampler"]["steps"] == int(key.split(":")[1])
        assert len({e["fid"], *(got["fid"] for got in e["samplers"].values())}) == 4  # four samplers, four FIDs
    assert _without_timings(resumed.evaluations) == _without_timings(straight.evaluations)
    # by default the grid runs at the last evaluation point only, and the protocol's numbers do not move
    final_only = _run(tiny_arch, tmp_path / "c", overrides=dict(GRID, **{"samplers.at": "final"}))
    assert [("samplers" in e) for e in final_only.evaluations] == [False, False, True]
    assert [e["fid"] for e in final_only.evaluations] == [e["fid"] for e in straight.evaluations]


def test_a_grid_pair_that_fails_at_run_time_loses_none_of_the_protocols_numbers(write_arch, tmp_path):
    """A model whose output is NaN at timestep 333 only, which 3 DDIM steps visit ([666, 333, 0]) and the
    protocol's 5 ([800, ..., 0]) do not: the pair fails after the check before training (which samples a stand-in),
    the run fails saying so, and its record keeps the protocol's evaluation of that step."""
    from conftest import TINY_ARCH

    nan_at_333 = TINY_ARCH.replace("        return UNet2DOutput(sample=self.out(h))",
                                   "        out = self.out(h)\n"
                                   "        if not self.training and bool((timestep == 333).any()):\n"
                                   "            out = out * float('nan')\n"
                                   "        return UNet2DOutput(sample=out)")
    arch = write_arch("nan_at_333", nan_at_333)
    with pytest.raises(RunFailed, match="ddim:3: the sampler produced NaN images"):
        _run(arch, tmp_path, overrides={"samplers.grid": ["ddim:3"]})
    record = RunRecord.load(tmp_path / "shapes" / "nan_at_333" / "smoke" / "seed42" / "record.json")
    assert record.status == "failed" and "ddim:3" in record.failure["message"]
    (evaluation,) = record.evaluations
    assert evaluation["step"] == 6 and math.isfinite(evaluation["fid"]) and "samplers" not in evaluation
    assert record.final_fid == evaluation["fid"]


@pytest.mark.slow  # two runs with a grid: about 15 s
def test_with_the_grid_at_final_the_best_evaluations_kept_weights_get_it_too(tiny_arch, tmp_path):
    """A run whose best evaluation is not its last (a learning rate too high for the EMA-less weights): the
    grid runs at the last step and at the best step's kept weights, equal to the grid computed at that step
    while training (samplers.at every)."""
    worse = {"optimizer.lr": 0.05, "training.ema_decay": 0.0, "evaluation.eval_points": [2],
             "samplers.grid": ["ddim:3", "unipc:3"]}
    final = _run(tiny_arch, tmp_path / "a", overrides=worse)
    assert final.best_step == 2 and final.step == 6
    every = _run(tiny_arch, tmp_path / "b", overrides=dict(worse, **{"samplers.at": "every"}))
    assert _without_timings(final.evaluations) == _without_timings(every.evaluations)
    assert all(list(e["samplers"]) == ["ddim:3", "unipc:3"] for e in final.evaluations)
