"""Noise schedule, training loss and DDIM sampling, with diffusers' schedulers underneath.

The betas and alphas come from diffusers' ``DDPMScheduler`` (training) and sampling steps
through ``DDIMScheduler.step`` (built with the same betas), so the protocol matches diffusers'
``DDIMPipeline`` by construction; tests check both against diffusers.

Every generated sample has its own seed (``sample_seeds``): its starting noise is drawn from a
generator seeded with that number alone, so image i is the same whatever the batch size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from harness.protocol.spec import DiffusionSpec, SamplingSpec

# Every constructor argument of both schedulers is passed, from the task or as a constant here, so a
# diffusers release that changes a default cannot change the protocol (tests/test_diffusion.py checks
# that no argument is left to its default). The constants are what the protocol has always used.
_FIXED = dict(trained_betas=None, thresholding=False, dynamic_thresholding_ratio=0.995, clip_sample_range=1.0,
              sample_max_value=1.0, rescale_betas_zero_snr=False)


def _schedule_args(spec: DiffusionSpec) -> dict:
    return dict(num_train_timesteps=spec.num_train_timesteps, beta_schedule=spec.beta_schedule,
                beta_start=spec.beta_start, beta_end=spec.beta_end, prediction_type=spec.prediction_type, **_FIXED)


def ddpm_arguments(spec: DiffusionSpec) -> dict:
    """Every argument of DDPMScheduler. Only its betas (hence alphas_cumprod) are used in training; the
    sampling-side arguments are pinned to the values they have always had, so the config is fully stated."""
    return dict(_schedule_args(spec), variance_type="fixed_small", clip_sample=True, timestep_spacing="leading",
                steps_offset=0)


def ddpm_scheduler(spec: DiffusionSpec) -> DDPMScheduler:
    return DDPMScheduler(**ddpm_arguments(spec))


def ddim_arguments(diffusion: DiffusionSpec, sampling: SamplingSpec) -> dict:
    """Every argument of DDIMScheduler, from the task (or _FIXED)."""
    return dict(_schedule_args(diffusion), clip_sample=sampling.clip_sample, set_alpha_to_one=sampling.set_alpha_to_one,
                steps_offset=sampling.steps_offset, timestep_spacing=sampling.timestep_spacing)


def ddim_scheduler(diffusion: DiffusionSpec, sampling: SamplingSpec) -> DDIMScheduler:
    return DDIMScheduler(**ddim_arguments(diffusion, sampling))


class NoiseSchedule:
    """The forward process q(x_t | x_0) for training.

    The coefficient tables come from diffusers' DDPMScheduler; they are kept on the training
    device so that noising a batch is one gather and one fused multiply-add, with no host
    round trip (``DDPMScheduler.add_noise`` computes the same thing; a test checks equality).
    """

    def __init__(self, spec: DiffusionSpec, device: torch.device):
        if spec.prediction_type != "epsilon":
            raise ValueError("the protocol trains epsilon prediction only")
        alphas_cumprod = ddpm_scheduler(spec).alphas_cumprod.to(device)  # [T] float32
        self.num_timesteps = spec.num_train_timesteps
        self.sqrt_alpha = alphas_cumprod.sqrt()  # [T]
        self.sqrt_one_minus_alpha = (1 - alphas_cumprod).sqrt()  # [T]
        snr = alphas_cumprod / (1 - alphas_cumprod)  # [T], falls from ~1e4 at t=0 to ~4e-5 at T-1
        self.loss_weight = None if spec.snr_gamma is None else snr.clamp(max=spec.snr_gamma) / snr  # [T]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise; x0, noise [B,C,H,W], t [B] int64."""
        a = self.sqrt_alpha[t].view(-1, 1, 1, 1)
        s = self.sqrt_one_minus_alpha[t].view(-1, 1, 1, 1)
        return torch.addcmul(a * x0, s, noise)

    def loss(self, model: torch.nn.Module, x0: torch.Tensor, gen: torch.Generator,
             part: slice = slice(None)) -> torch.Tensor:
        """Epsilon-prediction MSE with t uniform in [0, T), each sample's weighted by ``loss_weight[t]``
        when the spec sets snr_gamma. Returns a 0-dim tensor (no host sync). Timesteps and noise are
        drawn for the whole batch x0 [B,3,H,W], so the generator advances the same way whatever
        ``part`` of the batch (one DDP rank's rows) the loss is taken over."""
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=gen, device=x0.device)
        noise = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        x0, noise, t = x0[part], noise[part], t[part]
        pred = model(self.add_noise(x0, noise, t), t).sample
        if self.loss_weight is None:
            return F.mse_loss(pred.float(), noise.float())
        per_sample = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))  # [b]
        return (per_sample * self.loss_weight[t]).mean()


def draw_noise(gens: list[torch.Generator], device: torch.device, image_size: int = 32) -> torch.Tensor:
    """[len(gens),3,S,S] standard normal, row i from gens[i] (advancing it)."""
    return torch.cat([torch.randn((1, 3, image_size, image_size), generator=g) for g in gens]).to(device)


def sample_seeds(run_seed: int, count: int) -> list[int]:
    """Per-sample seeds for an evaluation: disjoint from the training stream, fixed for a run seed."""
    base = (run_seed + 1) * 1_000_003
    return [base + i for i in range(count)]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1,1] float -> uint8, exactly as diffusers' pipelines quantise before writing a PNG."""
    return ((x.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


@torch.no_grad()
def ddim_sample(
    model: torch.nn.Module,
    diffusion: DiffusionSpec,
    sampling: SamplingSpec,
    seeds: list[int],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    image_size: int = 32,
) -> torch.Tensor:
    """DDIM from per-sample seeded noise. Returns float32 ``[len(seeds),3,S,S]`` in [-1,1]
    (before clamping), equal to ``DDIMPipeline`` with one generator per sample (any eta)."""
    if sampling.sampler != "ddim":
        raise ValueError(f"unknown sampler {sampling.sampler!r}")
    scheduler = ddim_scheduler(diffusion, sampling)
    scheduler.set_timesteps(sampling.steps)
    # One CPU generator per sample, as DDIMPipeline with a list of generators: it gives the initial
    # noise and then (eta > 0) each step's extra noise, so an image depends on its seed alone.
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x = draw_noise(gens, device, image_size)  # [B,3,S,S]
    batch = torch.empty(len(seeds), dtype=torch.int64, device=device)
    for t in scheduler.timesteps:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            eps = model(x, batch.fill_(int(t))).sample  # timestep [B]: the contract's shape
        variance_noise = None
        if sampling.eta > 0:
            variance_noise = draw_noise(gens, device, image_size)
        x = scheduler.step(eps.float(), t, x, eta=sampling.eta, variance_noise=variance_noise).prev_sample
    return x


def seed_batches(seeds: list[int], batch_size: int) -> list[list[int]]:
    """The sampling batches of an evaluation. An image can differ in its last bit with the batch
    it is computed in (conv kernels sum in another order), so sharded evaluation splits by these."""
    return [seeds[start : start + batch_size] for start in range(0, len(seeds), batch_size)]

