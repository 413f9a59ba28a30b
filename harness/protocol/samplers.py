"""The sampler grid: other (sampler, steps) pairs beside the protocol's 50-step DDIM, from the same noise.

A task's ``samplers.grid`` lists pairs such as ``dpmpp_2m:10``. Each is sampled from the per-sample seeds the
protocol's evaluation uses (``diffusion.sample_seeds``), so image i of every pair starts from the same noise
and differences between samplers are paired. The samplers are diffusers' schedulers, each built with every
constructor argument stated (from the task's ``samplers`` section or as a constant here), so a diffusers
release that changes a default cannot change a result; tests/test_samplers.py checks each against diffusers'
own pipeline loop with that scheduler.

    ddim      DDIMScheduler with the protocol's settings (sampling.*), another step count
    dpmpp_2m  DPMSolverMultistepScheduler: DPM-Solver++ (Lu et al. 2022), order 2, multistep, deterministic
    unipc     UniPCMultistepScheduler: UniPC (Zhao et al. 2023), order 2, B(h) = bh2, corrector on

The two multistep solvers clip each step's predicted clean image to [-1, 1] by default, as the protocol's DDIM
does (``clip_sample``): diffusers' ``thresholding`` with ``sample_max_value`` 1, whose dynamic threshold is then
always 1. Without it an undertrained model's DPM-Solver++ left the image range at the demo tier (9 pixels in 10
outside [-1, 1], values to +-43), and its FID measured the missing clip, not the solver.

All three take the model's epsilon at integer timesteps and start from unit-variance noise, as the protocol's
DDIM does (Euler-type samplers take fractional timesteps and scaled inputs, which the architecture contract,
integer timesteps, does not cover).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.errors import HarnessError
from harness.protocol.spec import GRID_SAMPLERS, TaskSpec

if TYPE_CHECKING:  # the task loader checks grids without importing torch or diffusers
    import torch

NAMES = {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++ (2M)", "unipc": "UniPC (bh2)"}


@dataclass(frozen=True)
class GridPoint:
    sampler: str  # one of GRID_SAMPLERS
    steps: int

    @property
    def key(self) -> str:
        """``dpmpp_2m:10``: how the task names it, and the record's key."""
        return f"{self.sampler}:{self.steps}"

    @property
    def label(self) -> str:
        return f"{NAMES[self.sampler]}, {self.steps} steps"


def grid_points(spec: TaskSpec, where: str = "the task") -> list[GridPoint]:
    """The task's grid, checked: known samplers, step counts from 1 to the training timesteps, no pair twice,
    and not the protocol's own DDIM (which every evaluation has already)."""
    points, seen = [], set()
    for text in spec.samplers.grid:
        name, _, steps = str(text).partition(":")
        if name not in GRID_SAMPLERS or not steps.isdigit():
            raise HarnessError(f"{where}: samplers.grid entry {text!r} must be SAMPLER:STEPS with SAMPLER one of "
                               f"{', '.join(GRID_SAMPLERS)} (e.g. dpmpp_2m:10).")
        point = GridPoint(name, int(steps))
        if not 1 <= point.steps <= spec.diffusion.num_train_timesteps:
            raise HarnessError(f"{where}: samplers.grid entry {text!r} needs from 1 to "
                               f"{spec.diffusion.num_train_timesteps} steps (diffusion.num_train_timesteps).")
        if point == GridPoint(spec.sampling.sampler, spec.sampling.steps):
            raise HarnessError(f"{where}: samplers.grid entry {text!r} is the protocol's own sampler; every "
                               f"evaluation has it already. Leave it out of the grid.")
        if point in seen:
            raise HarnessError(f"{where}: samplers.grid lists {text!r} twice.")
        seen.add(point)
        points.append(point)
    return points


# Arguments no task sets: the values the grid has always used (tests/test_samplers.py checks that every
# constructor argument is stated here or from the task)
_DPMPP_FIXED = dict(trained_betas=None, solver_order=2, dynamic_thresholding_ratio=0.995,
                    sample_max_value=1.0, algorithm_type="dpmsolver++", solver_type="midpoint", euler_at_final=False,
                    use_exponential_sigmas=False, use_beta_sigmas=False, use_lu_lambdas=False, use_flow_sigmas=False,
                    flow_shift=1.0, lambda_min_clipped=-float("inf"), variance_type=None, steps_offset=0,
                    rescale_betas_zero_snr=False, use_dynamic_shifting=False, time_shift_type="exponential")
_UNIPC_FIXED = dict(trained_betas=None, solver_order=2, dynamic_thresholding_ratio=0.995,
                    sample_max_value=1.0, predict_x0=True, disable_corrector=[], solver_p=None,
                    use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
                    use_flow_sigmas=False, flow_shift=1.0, steps_offset=0, rescale_betas_zero_snr=False,
                    use_dynamic_shifting=False, time_shift_type="exponential", sigma_min=None, sigma_max=None,
                    shift_terminal=None)


def scheduler_arguments(spec: TaskSpec, sampler: str) -> dict:
    """Every constructor argument of ``sampler``'s diffusers scheduler (DDIM: the protocol's, harness/protocol/
    diffusion.py), as the record keeps them beside each grid result."""
    from harness.protocol.diffusion import ddim_arguments

    s, d = spec.samplers, spec.diffusion
    schedule = dict(num_train_timesteps=d.num_train_timesteps, beta_schedule=d.beta_schedule, beta_start=d.beta_start,
                    beta_end=d.beta_end, prediction_type=d.prediction_type)
    if sampler == "ddim":
        return ddim_arguments(spec.diffusion, spec.sampling)
    if sampler == "dpmpp_2m":
        return dict(schedule, **_DPMPP_FIXED, thresholding=s.dpmpp_2m_clip_x0,
                    timestep_spacing=s.dpmpp_2m_timestep_spacing, lower_order_final=s.dpmpp_2m_lower_order_final,
                    use_karras_sigmas=s.dpmpp_2m_use_karras_sigmas, final_sigmas_type=s.dpmpp_2m_final_sigmas_type)
    if sampler == "unipc":
        return dict(schedule, **_UNIPC_FIXED, thresholding=s.unipc_clip_x0,
                    timestep_spacing=s.unipc_timestep_spacing, solver_type=s.unipc_solver_type,
                    lower_order_final=s.unipc_lower_order_final, final_sigmas_type=s.unipc_final_sigmas_type)
    raise ValueError(f"unknown grid sampler {sampler!r}")


def make_scheduler(spec: TaskSpec, sampler: str):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    kind = {"ddim": DDIMScheduler, "dpmpp_2m": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}[sampler]
    return kind(**scheduler_arguments(spec, sampler))


def check_grid(spec: TaskSpec, points: list[GridPoint]) -> None:
    """Build every pair's scheduler and sample one tiny image with a model that predicts unit noise, before
    any training: a diffusers release without an argument stated here, a step count at which the scheduler
    visits a timestep twice (a zero-length step) or takes another number of steps, or settings that give NaN
    (UniPC's bh1 with a zero final sigma, say) are refused now, not after hours of training."""
    import torch

    class UnitNoise(torch.nn.Module):
        def forward(self, x, t):
            return type("Output", (), {"sample": torch.ones_like(x)})()

    for point in points:
        try:
            scheduler = make_scheduler(spec, point.sampler)
        except TypeError as exc:
            raise HarnessError(f"samplers.grid {point.key}: this diffusers cannot build the scheduler with every "
                               f"argument the harness states ({exc}). Install the diffusers the harness is tested "
                               f"with (pip install -U diffusers).") from exc
        scheduler.set_timesteps(point.steps)
        visited = [int(t) for t in scheduler.timesteps]
        if len(visited) != point.steps or len(set(visited)) != point.steps:
            raise HarnessError(f"samplers.grid {point.key}: with these settings diffusers' {type(scheduler).__name__} "
                               f"takes {len(visited)} steps over {len(set(visited))} distinct timesteps, not "
                               f"{point.steps}; ask for fewer steps or another timestep spacing.")
        grid_sample(UnitNoise(), spec, point, [0], torch.device("cpu"))  # raises on NaN


def settings_text(spec: TaskSpec, sampler: str) -> str:
    """The task's settings of ``sampler``, as a message names them."""
    prefix = f"{sampler}_"
    return ", ".join(f"samplers.{name}={value!r}" for name, value in vars(spec.samplers).items()
                     if name.startswith(prefix)) or "the protocol's sampling settings"


def recorded_arguments(spec: TaskSpec, point: GridPoint) -> dict:
    """The scheduler's arguments as JSON keeps them (with the step count and, for DDIM, eta)."""
    arguments = {k: (None if v == -float("inf") else v) for k, v in scheduler_arguments(spec, point.sampler).items()}
    extra = {"eta": spec.sampling.eta} if point.sampler == "ddim" else {}
    return {"scheduler": type(make_scheduler(spec, point.sampler)).__name__, "steps": point.steps, **extra,
            "arguments": arguments}


def grid_sample(model: torch.nn.Module, spec: TaskSpec, point: GridPoint, seeds: list[int], device: torch.device,
                autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``point``'s sampler from per-sample seeded noise: float32 [len(seeds),3,S,S] in [-1,1] (before
    clamping), equal to diffusers' pipeline loop with that scheduler and one generator per sample."""
    import torch

    from harness.protocol.diffusion import ddim_sample, draw_noise

    size = spec.data.image_size
    scheduler = make_scheduler(spec, point.sampler)
    if point.sampler == "ddim":
        sampling = dataclasses.replace(spec.sampling, steps=point.steps)
        x = ddim_sample(model, spec.diffusion, sampling, seeds, device, autocast_dtype, size)
    else:
        scheduler.set_timesteps(point.steps)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        x = draw_noise(gens, device, size) * scheduler.init_noise_sigma  # [B,3,S,S]; the solvers' sigma is 1
        batch = torch.empty(len(seeds), dtype=torch.int64, device=device)
        with torch.no_grad():
            for t in scheduler.timesteps:
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    eps = model(scheduler.scale_model_input(x, t), batch.fill_(int(t))).sample  # timestep [B]
                x = scheduler.step(eps.float(), t, x).prev_sample
    if not torch.isfinite(x).all():  # quantised, NaN would be a black image with a finite FID
        raise HarnessError(f"samplers.grid {point.key}: the sampler produced NaN images (diffusers' "
                           f"{type(scheduler).__name__} with {settings_text(spec, point.sampler)}): change these "
                           f"settings, or, where they are sound, look at the model, which gave NaN at one of this "
                           f"sampler's timesteps.")
    return x
