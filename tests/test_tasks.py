import pytest

from harness.errors import HarnessError
from harness.protocol.tasks import parse_override, resolve_task, task_names, tier_names


def test_cifar10_protocol_is_the_published_one():
    spec = resolve_task("cifar10", "medium")
    assert spec.version == 2 and spec.seed == 42
    assert (spec.diffusion.beta_start, spec.diffusion.beta_end,
            spec.diffusion.num_train_timesteps) == (1e-4, 0.02, 1000)
    assert spec.diffusion.beta_schedule == "linear" and spec.diffusion.prediction_type == "epsilon"
    opt = spec.optimizer
    assert (opt.lr, opt.weight_decay, opt.betas, opt.eps, opt.grad_clip_norm) == (2e-4, 1e-4, (0.9, 0.999), 1e-8, 1.0)
    assert spec.training.ema_decay == 0.9995 and spec.training.steps == 35000
    assert spec.training.ema_schedule == "debiased" and spec.training.precision == "bf16"
    assert (spec.sampling.sampler, spec.sampling.steps, spec.sampling.eta) == ("ddim", 50, 0.0)
    assert (spec.sampling.timestep_spacing, spec.sampling.steps_offset,
            spec.sampling.set_alpha_to_one) == ("leading", 0, True)
    assert spec.evaluation.num_samples == 50000 and spec.evaluation.mode == "clean"
    assert spec.evaluation.precision == "fp32" and spec.evaluation.reference == "cleanfid:cifar10/train/32"
    assert spec.model.block_out_channels == (128, 256, 256, 256) and spec.training.batch_size == 128


def test_tiers_set_widths_and_batch():
    expected = {"smoke": ((32, 64, 64, 64), 1, 32), "small": ((64, 128, 128, 128), 2, 128),
                "medium": ((128, 256, 256, 256), 2, 128), "large": ((256, 512, 512, 512), 2, 64)}
    for tier, (widths, layers, batch) in expected.items():
        spec = resolve_task("cifar10", tier)
        assert (spec.model.block_out_channels, spec.model.layers_per_block,
                spec.training.batch_size) == (widths, layers, batch)
    assert resolve_task("cifar10", "large").width_env == {"BLOCK_OUT_CHANNELS": "256,512,512,512",
                                                          "LAYERS_PER_BLOCK": "2"}


def test_shapes_reuses_cifar10_protocol_with_its_own_data():
    shapes, cifar = resolve_task("shapes", "small"), resolve_task("cifar10", "small")
    assert shapes.data.dataset == "shapes" and shapes.data.num_images >= 10000
    assert (shapes.optimizer == cifar.optimizer and shapes.diffusion == cifar.diffusion
            and shapes.sampling == cifar.sampling)
    assert shapes.evaluation.reference == "dataset" and shapes.reference_results is None
    assert cifar.reference_results["best_fid"]["standard"] == {"small": 18.60, "medium": 8.47, "large": 7.18}
    # cifar10's tiers, plus shapes' own demo tier (a CPU demonstration: the fixed protocol has none)
    assert set(tier_names("shapes")) == set(tier_names("cifar10")) | {"demo"}
    assert set(tier_names("cifar10")) == {"smoke", "small", "medium", "large"}
    assert {"cifar10", "shapes"} <= set(task_names())


def test_last_step_is_always_an_evaluation_point():
    spec = resolve_task("cifar10", "small", {"training.steps": 12000})
    assert spec.evaluation.eval_points == (5000, 10000, 12000)
    assert resolve_task("shapes", "smoke", {"training.steps": 7}).evaluation.eval_points == (0, 7)


def test_unknown_task_suggests_close_name():
    with pytest.raises(HarnessError, match="Did you mean 'shapes'"):
        resolve_task("shape", "smoke")


def test_unknown_tier_lists_tiers():
    with pytest.raises(HarnessError, match=r"Unknown tier 'huge'.*smoke, small, medium, large"):
        resolve_task("cifar10", "huge")


def _task_dir(tmp_path, monkeypatch, text):
    from harness.files import REPO_ROOT

    (tmp_path / "cifar10.yaml").write_text((REPO_ROOT / "tasks" / "cifar10.yaml").read_text())
    (tmp_path / "bad.yaml").write_text(text)
    monkeypatch.setenv("HARNESS_TASKS_DIR", str(tmp_path))


def test_invalid_task_file_names_the_unknown_field(tmp_path, monkeypatch):
    _task_dir(tmp_path, monkeypatch, "include: cifar10.yaml\nname: bad\ntraining:\n  batchsize: 3\n")
    with pytest.raises(HarnessError,
                       match=r"bad.yaml: unknown field 'training.batchsize'. Did you mean 'training.batch_size'"):
        resolve_task("bad", "small")


def test_invalid_task_file_names_the_mistyped_field(tmp_path, monkeypatch):
    _task_dir(tmp_path, monkeypatch, "include: cifar10.yaml\nname: bad\noptimizer:\n  lr: fast\n")
    with pytest.raises(HarnessError, match=r"field 'optimizer.lr' must be float, not 'fast'"):
        resolve_task("bad", "small")


def test_task_file_missing_required_field(tmp_path, monkeypatch):
    _task_dir(tmp_path, monkeypatch, "name: bad\nseed: 1\ndata: {dataset: shapes}\ntiers: {t: {}}\n")
    with pytest.raises(HarnessError, match="required field"):
        resolve_task("bad", "t")


def test_include_loop_is_reported(tmp_path, monkeypatch):
    _task_dir(tmp_path, monkeypatch, "include: bad.yaml\n")
    with pytest.raises(HarnessError, match="loop"):
        resolve_task("bad", "small")


def test_overrides_are_typed_and_checked():
    assert parse_override("optimizer.lr=1e-3") == ("optimizer.lr", 0.001)
    assert parse_override("evaluation.eval_points=[1, 2]") == ("evaluation.eval_points", [1, 2])
    assert resolve_task("cifar10", "small", dict([parse_override("training.batch_size=64")])).training.batch_size == 64
    with pytest.raises(HarnessError, match="Cannot override 'training.stepz'.*Did you mean 'training.steps'"):
        resolve_task("cifar10", "small", {"training.stepz": 3})
    # a field put in the wrong section points to the right one
    with pytest.raises(HarnessError, match="Cannot override 'training.lr'.*Did you mean 'optimizer.lr'"):
        resolve_task("cifar10", "small", {"training.lr": 1e-3})
    with pytest.raises(HarnessError, match="KEY=VALUE"):
        parse_override("lr")


@pytest.mark.parametrize("field, value, message", [
    ("optimizer.name", "sgd", "optimizer.name must be 'adamw'"),
    ("diffusion.prediction_type", "v_prediction", "diffusion.prediction_type must be 'epsilon'"),
    ("sampling.sampler", "ddpm", "sampling.sampler must be 'ddim'"),
    ("evaluation.mode", "legacy_pytorch", "evaluation.mode must be 'clean'"),
    ("training.log_every", 0, "training.log_every must be a positive integer"),
    ("training.checkpoint_every", -5, "training.checkpoint_every must be a positive integer"),
    ("sampling.batch_size", 0, "sampling.batch_size must be a positive integer"),
    ("evaluation.feature_batch_size", 0, "evaluation.feature_batch_size must be a positive integer"),
    ("sampling.steps", 2000, "cannot exceed"),
    ("sampling.eta", 2.0, "sampling.eta must be between"),
    ("training.ema_decay", 1.0, "training.ema_decay must be in"),
    ("diffusion.snr_gamma", 0, "diffusion.snr_gamma must be a positive number"),
    ("diffusion.snr_gamma", "five", "'diffusion.snr_gamma' must be float"),
    ("evaluation.reference", "cleanfid:cifar10/train", "cleanfid:NAME/SPLIT/RES"),
])
def test_values_the_protocol_does_not_implement_are_refused_when_read(field, value, message):
    # refused before any training, not at the first evaluation hours later
    with pytest.raises(HarnessError, match=message):
        resolve_task("cifar10", "smoke", {field: value})


def test_one_declaration_decides_what_the_report_the_resume_and_the_sweep_treat_as_a_result(monkeypatch):
    """spec.py declares once per field whether it changes a result and whether a resume may change it; redeclare
    training.log_every as a result that a resume may not change and all three follow."""
    import dataclasses
    import types

    import torch

    from harness.protocol.spec import TrainingSpec
    from harness.protocol.tasks import resolve_task
    from harness.report import tables
    from harness.run.resume import run_fingerprint
    from harness.studies.sweep import _same_config

    every, often = resolve_task("shapes", "smoke"), resolve_task("shapes", "smoke", {"training.log_every": 1})
    done = types.SimpleNamespace(config=every.to_dict())  # a completed run's record, as the sweep reads it
    cpu = torch.device("cpu")

    def follow() -> tuple[bool, bool, bool]:
        return (tables.result_settings(every.to_dict()) == tables.result_settings(often.to_dict()),  # one group
                run_fingerprint(every, cpu, "fp32") == run_fingerprint(often, cpu, "fp32"),  # resumable
                _same_config(done, often))  # the sweep counts the cell as done

    assert follow() == (True, True, True)  # as declared: where the loss is logged changes nothing
    field = next(f for f in dataclasses.fields(TrainingSpec) if f.name == "log_every")
    monkeypatch.setattr(field, "metadata", types.MappingProxyType({"result": True, "resumable": False}))
    assert follow() == (False, False, False)
    # eval_points is declared a result (best FID is the minimum over them): runs that differ in it are not averaged
    points = resolve_task("shapes", "smoke", {"evaluation.eval_points": [10]})
    assert tables.result_settings(points.to_dict()) != tables.result_settings(every.to_dict())


def test_the_loaders_choices_are_the_declared_ones(monkeypatch):
    import dataclasses
    import types

    from harness.errors import HarnessError
    from harness.protocol.spec import SamplingSpec, declared_choices
    from harness.protocol.tasks import resolve_task

    assert declared_choices()["sampling.timestep_spacing"] == ("leading", "trailing", "linspace")
    with pytest.raises(HarnessError, match="sampling.timestep_spacing must be 'leading' or 'trailing' or 'linspace'"):
        resolve_task("shapes", "smoke", {"sampling.timestep_spacing": "middle"})
    field = next(f for f in dataclasses.fields(SamplingSpec) if f.name == "timestep_spacing")
    monkeypatch.setattr(field, "metadata", types.MappingProxyType({"choices": ("leading", "middle")}))
    spec = resolve_task("shapes", "smoke", {"sampling.timestep_spacing": "middle"})
    assert spec.sampling.timestep_spacing == "middle"
    with pytest.raises(HarnessError, match="training.log_with must list values among 'tensorboard', 'wandb'"):
        resolve_task("shapes", "smoke", {"training.log_with": ["tensorboard", "comet"]})


def test_a_checkpoint_from_before_a_field_became_resumable_still_resumes(tmp_path):
    """Checkpoints written before training.channels_last was declared resumable hold it in their fingerprint;
    a resume leaves it out of both sides, as fingerprints written now do."""
    import torch

    from harness.protocol import registry
    from harness.run.resume import check_resumable, run_fingerprint

    arch = registry.Architecture("standard", tmp_path / "standard.py", built_sha256="abc")
    now = run_fingerprint(resolve_task("shapes", "smoke"), torch.device("cpu"), "fp32")
    assert "training.channels_last" not in now
    state = {"arch_sha256": "abc", "fingerprint": {**now, "training.channels_last": "cuda"}}
    check_resumable(state, now, arch, tmp_path / "checkpoint.pt")  # no refusal
    with pytest.raises(HarnessError, match="sampling.steps"):  # a result setting still refuses
        check_resumable({**state, "fingerprint": {**now, "sampling.steps": 10}}, now, arch, tmp_path / "c.pt")


def test_a_sweep_reruns_a_completed_cell_that_trained_at_another_precision():
    """training.autocast_devices is no result setting (a record says the precision it used), but it decides the
    precision: a completed fp32 CPU run is not the cell a bf16-on-CPU sweep asks for."""
    import types

    from harness.studies.sweep import _same_config

    on_gpu_only = resolve_task("shapes", "smoke", {"training.precision": "bf16"})
    on_cpu_too = resolve_task("shapes", "smoke", {"training.precision": "bf16", "training.autocast_devices": ["cpu"]})
    done = types.SimpleNamespace(config=on_gpu_only.to_dict(), precision="fp32", eval_precision="fp32")
    assert _same_config(done, on_gpu_only, "cpu")  # bf16 autocasts on CUDA only: on a CPU it trained in fp32
    assert not _same_config(done, on_cpu_too, "cpu")  # the same result settings, but this cell trains in bf16
