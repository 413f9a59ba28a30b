"""The sampler grid: each sampler against diffusers' own pipeline loop with that scheduler, from the same
per-sample noise; every scheduler argument stated; the grid's pairs checked when the task is read."""
import inspect

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from test_diffusion import tiny_unet

from harness.errors import HarnessError
from harness.protocol import samplers
from harness.protocol.diffusion import ddim_sample
from harness.protocol.samplers import GridPoint, grid_points, grid_sample, make_scheduler, scheduler_arguments
from harness.protocol.tasks import resolve_task

SPEC = resolve_task("cifar10", "smoke")
CPU = torch.device("cpu")


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_equals_diffusers_pipeline_with_its_scheduler_from_the_same_noise(steps):
    """DDPMPipeline's loop (noise from one generator per sample, set_timesteps, unet, scheduler.step) with the
    grid's DPM-Solver++ scheduler: the images the harness samples are the pipeline's to 1e-5."""
    unet, seeds = tiny_unet(), [11, 12, 13]
    pipe = DDPMPipeline(unet=unet, scheduler=make_scheduler(SPEC, "dpmpp_2m"))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=3, generator=[torch.Generator().manual_seed(s) for s in seeds],
                    num_inference_steps=steps, output_type="np").images  # [3,32,32,3] in [0,1]
    ours = grid_sample(unet, SPEC, GridPoint("dpmpp_2m", steps), seeds, CPU)  # [3,3,32,32] in [-1,1]
    ours = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - expected).max() < 1e-5


@pytest.mark.parametrize("steps", [10, 20])
def test_unipc_equals_diffusers_pipeline_loop_with_its_scheduler_from_the_same_noise(steps):
    """UniPC's step() takes no generator, which DDPMPipeline passes, so the pipeline's loop is written out:
    diffusers' randn_tensor with one generator per sample, set_timesteps, then unet and step at each timestep."""
    from diffusers.utils.torch_utils import randn_tensor

    unet, seeds = tiny_unet(), [11, 12, 13]
    scheduler = make_scheduler(SPEC, "unipc")
    image = randn_tensor((3, 3, 32, 32), generator=[torch.Generator().manual_seed(s) for s in seeds])
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            image = scheduler.step(unet(image, t).sample, t, image).prev_sample
    ours = grid_sample(unet, SPEC, GridPoint("unipc", steps), seeds, CPU)
    assert (ours.clamp(-1, 1) - image.clamp(-1, 1)).abs().max() / 2 < 1e-5


def test_grid_ddim_is_the_protocols_ddim_at_another_step_count():
    unet, seeds = tiny_unet(), [4, 5]
    sampling = SPEC.sampling.__class__(**{**SPEC.sampling.__dict__, "steps": 10})
    assert torch.equal(grid_sample(unet, SPEC, GridPoint("ddim", 10), seeds, CPU),
                       ddim_sample(unet, SPEC.diffusion, sampling, seeds, CPU))


def test_the_samplers_start_from_the_same_noise_and_differ_only_by_the_solver():
    """Paired: a denoiser that predicts no noise leaves every deterministic sampler a function of x_T alone,
    and two samplers given the same seed start from the same x_T (their first model input is it)."""
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, x, t):
            seen.setdefault(self.name, x.clone())
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    for sampler in ("ddim", "dpmpp_2m", "unipc"):
        model = Recorder()
        model.name = sampler
        grid_sample(model, SPEC, GridPoint(sampler, 10), [7, 8], CPU)
    assert torch.equal(seen["ddim"], seen["dpmpp_2m"]) and torch.equal(seen["ddim"], seen["unipc"])


@pytest.mark.parametrize("sampler, scheduler", [("dpmpp_2m", DPMSolverMultistepScheduler),
                                                ("unipc", UniPCMultistepScheduler)])
def test_every_scheduler_argument_is_stated_so_no_diffusers_default_is_the_grids(sampler, scheduler):
    expected = set(inspect.signature(scheduler.__init__).parameters) - {"self"}
    assert set(scheduler_arguments(SPEC, sampler)) == expected  # a new diffusers argument fails here until pinned


def test_the_tasks_sampler_settings_reach_the_scheduler_and_the_record():
    spec = resolve_task("cifar10", "smoke", {"samplers.grid": ["dpmpp_2m:10"], "samplers.dpmpp_2m_timestep_spacing":
                                             "trailing", "samplers.dpmpp_2m_use_karras_sigmas": True})
    scheduler = make_scheduler(spec, "dpmpp_2m")
    assert scheduler.config.timestep_spacing == "trailing" and scheduler.config.use_karras_sigmas
    recorded = samplers.recorded_arguments(spec, GridPoint("dpmpp_2m", 10))
    assert recorded["scheduler"] == "DPMSolverMultistepScheduler" and recorded["steps"] == 10
    arguments = recorded["arguments"]
    assert arguments["timestep_spacing"] == "trailing" and arguments["lambda_min_clipped"] is None  # JSON has no -inf


def test_the_grid_is_empty_by_default_and_its_pairs_are_checked_when_the_task_is_read():
    assert grid_points(resolve_task("cifar10", "small")) == []
    spec = resolve_task("shapes", "smoke", {"samplers.grid": ["ddim:10", "dpmpp_2m:20", "unipc:5"]})
    assert [p.key for p in grid_points(spec)] == ["ddim:10", "dpmpp_2m:20", "unipc:5"]
    steps = spec.sampling.steps
    for grid, message in ((["euler:10"], "must be SAMPLER:STEPS with SAMPLER one of ddim, dpmpp_2m, unipc"),
                          (["dpmpp_2m"], "must be SAMPLER:STEPS"),
                          (["unipc:0"], "needs from 1 to 1000 steps"),
                          ([f"ddim:{steps}"], "is the protocol's own sampler"),
                          (["unipc:10", "unipc:10"], "lists 'unipc:10' twice")):
        with pytest.raises(HarnessError, match=message):
            resolve_task("shapes", "smoke", {"samplers.grid": grid})
    for manifold in ({"evaluation.manifold_k": 0}, {"evaluation.manifold_k": 3, "evaluation.manifold_samples": 4}):
        with pytest.raises(HarnessError, match="evaluation.manifold_k must be null"):
            resolve_task("shapes", "smoke", manifold)


@pytest.mark.parametrize("overrides, message", [
    ({"samplers.grid": ["unipc:10"], "samplers.unipc_solver_type": "bh1"}, "produced NaN images"),
    ({"samplers.grid": ["unipc:10"], "samplers.unipc_lower_order_final": False}, "produced NaN images"),
    ({"samplers.grid": ["dpmpp_2m:1000"]}, "takes 1000 steps over 999 distinct timesteps"),
    ({"samplers.grid": ["dpmpp_2m:61"], "samplers.dpmpp_2m_timestep_spacing": "trailing"}, "takes 62 steps"),
])
def test_a_pair_that_cannot_sample_is_refused_before_any_training(overrides, message, tmp_path):
    """The evaluator is built before training (run/parts.py): these settings fail there, not hours later with
    black images scored as a finite FID."""
    from harness.protocol.evaluation import Evaluator

    spec = resolve_task("shapes", "smoke", overrides)
    with pytest.raises(HarnessError, match=message):
        Evaluator(spec, CPU, lambda: None)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "unipc"])
def test_the_multistep_solvers_clip_the_predicted_image_as_the_protocols_ddim_does(sampler):
    """A denoiser whose noise prediction is far off (an undertrained model's) drives an unclipped solver out of
    the image range; clipped, as DDIM's clip_sample, it stays in [-1, 1] and matches the pipeline's loop."""
    from types import SimpleNamespace

    def off(x, timestep):
        return SimpleNamespace(sample=torch.full_like(x, 3.0))

    clipped = grid_sample(off, SPEC, GridPoint(sampler, 10), [1, 2], CPU)
    free = resolve_task("cifar10", "smoke", {f"samplers.{sampler}_clip_x0": False})
    unclipped = grid_sample(off, free, GridPoint(sampler, 10), [1, 2], CPU)
    assert clipped.abs().max() <= 1.0 + 1e-6 < unclipped.abs().max()
    config = make_scheduler(SPEC, sampler).config
    assert config.thresholding and config.sample_max_value == 1
