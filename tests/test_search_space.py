"""The default search space: the baselines are points of it, and its other points build and run."""
import pytest
import torch

from harness.protocol import registry
from harness.protocol.tasks import resolve_task, tier_names
from harness.search import space


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("tier", tier_names("cifar10"))
@pytest.mark.parametrize("name", ["standard", "full_attn", "no_attn"])
def test_baselines_built_from_the_space_match_their_files_exactly(name, tier):
    spec = resolve_task("cifar10", tier)
    choices = space.baseline(name, spec.model.layers_per_block)
    assert space.infeasible(choices, spec.model.block_out_channels) is None
    with torch.device("meta"):
        model = space.build(choices, spec.model.block_out_channels, "meta")
    assert _params(model) == registry.parameter_count(registry.find_architecture(name), spec.width_env)


def test_a_point_far_from_the_baselines_builds_and_predicts_noise_shaped_output():
    choices = {**space.baseline("no_attn", 3), "attn_8": True, "mid_attn": False, "head_channels": 32,
               "norm_groups": 8, "time_conditioning": "scale_shift", "resample": "resnet"}
    widths = resolve_task("cifar10", "smoke").model.block_out_channels
    assert space.infeasible(choices, widths) is None
    torch.manual_seed(0)
    model = space.build(choices, widths)
    x = torch.randn(2, 3, 32, 32)
    out = model(x, torch.tensor([1, 999])).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert model.config.resnet_time_scale_shift == "scale_shift" and model.config.downsample_type == "resnet"


def test_choices_that_cannot_be_built_are_named_before_a_run():
    widths = resolve_task("cifar10", "smoke").model.block_out_channels  # (32, 64, 64, 64)
    too_wide = {**space.baseline("full_attn", 1), "head_channels": 64}
    assert "no attention head" in space.infeasible(too_wide, widths)
    assert space.infeasible({**too_wide, "attn_32": False}, widths) is None  # 64-channel levels take 64 per head


def test_every_option_of_the_space_is_a_listed_choice():
    for name in ("standard", "full_attn", "no_attn"):
        choices = space.baseline(name, 2)
        assert set(choices) == set(space.CHOICES) and all(choices[k] in space.CHOICES[k] for k in choices)


def test_an_optuna_trial_asks_for_every_choice_and_an_enqueued_baseline_comes_back_unchanged():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    standard = space.baseline("standard", 2)
    study.enqueue_trial(standard)
    assert space.suggest(study.ask()) == standard  # a baseline enters a study as an enqueued trial
    sampled = space.suggest(study.ask())
    assert set(sampled) == set(space.CHOICES) and all(sampled[k] in space.CHOICES[k] for k in sampled)
