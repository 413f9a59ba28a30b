import dataclasses
import inspect
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel

from harness.protocol import diffusion
from harness.protocol.diffusion import (
    NoiseSchedule,
    ddim_sample,
    ddim_scheduler,
    seed_batches,
    to_uint8,
)
from harness.protocol.tasks import resolve_task

SPEC = resolve_task("cifar10", "smoke")
CPU = torch.device("cpu")


def tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=32, block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


def test_schedule_is_diffusers_linear_ddpm_schedule():
    reference = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    schedule = NoiseSchedule(SPEC.diffusion, CPU)
    assert torch.allclose(schedule.sqrt_alpha ** 2, reference.alphas_cumprod, atol=1e-7, rtol=0)
    assert abs(float(reference.betas[0]) - 1e-4) < 1e-9 and abs(float(reference.betas[-1]) - 0.02) < 1e-9


def test_add_noise_equals_diffusers():
    schedule = NoiseSchedule(SPEC.diffusion, CPU)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    x0, noise = torch.rand(16, 3, 32, 32) * 2 - 1, torch.randn(16, 3, 32, 32)
    t = torch.tensor([0, 1, 2, 10, 100, 250, 499, 500, 501, 700, 900, 990, 997, 998, 999, 999])
    assert torch.allclose(schedule.add_noise(x0, noise, t), reference.add_noise(x0, noise, t), atol=1e-6, rtol=0)


def test_loss_is_epsilon_mse_with_uniform_t():
    model = tiny_unet()
    schedule = NoiseSchedule(SPEC.diffusion, CPU)
    x0 = torch.rand(8, 3, 32, 32) * 2 - 1
    gen = torch.Generator().manual_seed(3)
    loss = schedule.loss(model, x0, gen)
    # replay the same draws and compute the loss the diffusers training example's way
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (8,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    expected = F.mse_loss(model(reference.add_noise(x0, noise, t), t).sample, noise)
    assert torch.allclose(loss, expected, atol=1e-6)

    # the timesteps the harness draws cover all 1000 steps evenly: record what the model receives
    seen = []

    def recording_model(x, t):
        seen.append(t.clone())
        return type("Out", (), {"sample": torch.zeros_like(x)})()

    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        schedule.loss(recording_model, torch.zeros(1000, 3, 32, 32), gen)
    counts = torch.bincount(torch.cat(seen), minlength=1000)  # 50,000 draws, ~50 per step
    assert len(counts) == 1000 and counts.min() > 15 and counts.max() < 95


def test_min_snr_weighting_equals_diffusers_training_scripts():
    from diffusers.training_utils import compute_snr

    model = tiny_unet()
    spec = resolve_task("cifar10", "smoke", {"diffusion.snr_gamma": 5.0})
    x0 = torch.rand(8, 3, 32, 32) * 2 - 1
    loss = NoiseSchedule(spec.diffusion, CPU).loss(model, x0, torch.Generator().manual_seed(3))
    # replay the draws; weight each sample's MSE as diffusers' train_text_to_image.py does for epsilon
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (8,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    snr = compute_snr(reference, t)
    weights = torch.stack([snr, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0] / snr
    mse = F.mse_loss(model(reference.add_noise(x0, noise, t), t).sample, noise, reduction="none").mean(dim=(1, 2, 3))
    assert torch.allclose(loss, (mse * weights).mean(), atol=1e-6)
    assert not torch.allclose(loss, mse.mean(), atol=1e-4)  # the weights did something (t below 130 drawn)
    assert (t < 120).any()


def test_ddim_equals_diffusers_ddim_pipeline_for_same_weights_and_noise():
    unet = tiny_unet()
    seeds = [11, 12, 13]
    scheduler = ddim_scheduler(SPEC.diffusion, SPEC.sampling)
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=3, generator=[torch.Generator().manual_seed(s) for s in seeds], eta=0.0,
                    num_inference_steps=50, output_type="pt").images  # [3,3,32,32] in [0,1]
    ours = ddim_sample(unet, SPEC.diffusion, SPEC.sampling, seeds, CPU)
    assert (ours / 2 + 0.5).clamp(0, 1).sub(expected).abs().max() < 1e-5
    # and the uint8 images are what a PNG written from the pipeline's output would hold
    pipeline_uint8 = (expected * 255).round().to(torch.uint8)
    assert (to_uint8(ours).int() - pipeline_uint8.int()).abs().max() <= 1


def test_ddim_with_eta_equals_pipeline_and_draws_noise_per_sample():
    # eta > 0 draws extra noise every step; it comes from each sample's own generator, as in the pipeline
    unet = tiny_unet()
    sampling = dataclasses.replace(SPEC.sampling, eta=1.0, steps=5)
    a = ddim_sample(unet, SPEC.diffusion, sampling, [1, 2], CPU)
    b = ddim_sample(unet, SPEC.diffusion, sampling, [2], CPU)
    # equal up to float32 summation order at another batch size (~1e-7 per conv, scaled up by the
    # DDIM coefficients 1/sqrt(alpha_t) over the steps)
    assert torch.allclose(a[1:], b, atol=1e-4)
    pipe = DDIMPipeline(unet=unet, scheduler=ddim_scheduler(SPEC.diffusion, sampling))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=2, generator=[torch.Generator().manual_seed(s) for s in (1, 2)], eta=1.0,
                    num_inference_steps=5, output_type="pt").images
    assert (a / 2 + 0.5).clamp(0, 1).sub(expected).abs().max() < 1e-5
    # and with eta = 0 the same seeds give different images: the extra noise is really drawn
    deterministic = ddim_sample(unet, SPEC.diffusion, dataclasses.replace(sampling, eta=0.0), [1, 2], CPU)
    assert (deterministic - a).abs().max() > 1e-2


def test_samples_do_not_depend_on_batch_size():
    # the evaluation's images: uint8, one DDIM call per sampling batch of the seeds (seed_batches)
    unet, seeds, sampling = tiny_unet(), list(range(100, 105)), dataclasses.replace(SPEC.sampling, steps=10)

    def images(batch_size):
        return torch.cat([to_uint8(ddim_sample(unet, SPEC.diffusion, sampling, chunk, CPU))
                          for chunk in seed_batches(seeds, batch_size)])
    one, many = images(5), images(2)
    assert one.shape == (5, 3, 32, 32) and one.dtype == torch.uint8
    assert (one.int() - many.int()).abs().max() <= 1  # identical up to float summation order in conv kernels


def test_each_sample_starts_from_its_own_seeds_noise():
    # a denoiser that predicts no noise makes DDIM element-wise in the starting noise, so a seed's image is
    # the same bit for bit alone or in a batch: its noise is drawn from its seed, not from the batch's
    def no_noise(x, timestep):
        return SimpleNamespace(sample=torch.zeros_like(x))
    sampling = dataclasses.replace(SPEC.sampling, steps=5)
    pair = ddim_sample(no_noise, SPEC.diffusion, sampling, [5, 6], CPU)
    assert torch.equal(pair[1], ddim_sample(no_noise, SPEC.diffusion, sampling, [6], CPU)[0])
    assert not torch.equal(pair[0], pair[1])


@pytest.mark.parametrize("scheduler, arguments", [
    (DDIMScheduler, lambda spec: diffusion.ddim_arguments(spec.diffusion, spec.sampling)),
    (DDPMScheduler, lambda spec: diffusion.ddpm_arguments(spec.diffusion)),
])
def test_every_scheduler_argument_is_stated_so_no_diffusers_default_is_protocol(scheduler, arguments):
    spec = resolve_task("cifar10", "small")
    expected = set(inspect.signature(scheduler.__init__).parameters) - {"self"}
    assert set(arguments(spec)) == expected  # a new diffusers argument fails here until it is pinned


def test_sampling_timesteps_are_task_fields():
    spec = resolve_task("cifar10", "small")
    leading = diffusion.ddim_scheduler(spec.diffusion, spec.sampling)
    leading.set_timesteps(50)
    assert leading.timesteps.tolist() == list(range(980, -1, -20))
    trailing = resolve_task("cifar10", "small", {"sampling.timestep_spacing": "trailing", "sampling.steps_offset": 0})
    s = diffusion.ddim_scheduler(trailing.diffusion, trailing.sampling)
    s.set_timesteps(50)
    assert s.timesteps.tolist() == list(range(999, -1, -20))
    offset = resolve_task("cifar10", "small", {"sampling.steps_offset": 1})
    s = diffusion.ddim_scheduler(offset.diffusion, offset.sampling)
    s.set_timesteps(50)
    assert s.timesteps.tolist() == list(range(981, 0, -20))
