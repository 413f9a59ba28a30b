"""The task schema: one frozen dataclass per section of a task file. Every field a protocol has is here,
with its type and default; ``tasks.py`` loads YAML into these and checks it.

Each field also declares, once and beside it (as timm declares a model's config beside the model), what it
means for results, in its dataclass metadata (``setting``):

- ``result``: whether it changes a result. Runs that differ in a result field are never averaged or ranked
  together (the report's grouping), and a sweep reruns a completed cell whose record differs in one. A field
  that changes neither what is trained nor what an FID means (where the curves go, batch sizes of
  evaluation, checkpoint intervals) is not.
- ``resumable``: whether a checkpoint may be resumed with it changed (the resume check).
- ``choices``: the values the harness implements (for a list field: the values its items may take); the
  task loader refuses anything else when the task is read.

The report, the resume check, the sweep's "already done" rule and the loader's choices are all derived from
these declarations (``fields_where``, ``declared_choices``); no other list says it.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

TRACKERS = ("tensorboard", "wandb", "mlflow")  # training.log_with's choices (harness/run/tracking.py)
SHAPE_KINDS = ("circle", "square", "triangle", "ring", "diamond", "cross")  # the shapes dataset's kinds
SHAPE_BACKGROUNDS = ("gradient", "plain")
FOLDER_FITS = ("center_crop", "stretch", "exact")  # harness/protocol/folder_data.py
FOLDER_RESAMPLES = ("bicubic", "lanczos", "bilinear", "box")


def setting(default=dataclasses.MISSING, *, result: bool = True, resumable: bool = False,
            choices: tuple | None = None):
    """A task field with what it means for results (see the module's docstring)."""
    return dataclasses.field(default=default, metadata={"result": result, "resumable": resumable,
                                                        "choices": choices})


@dataclass(frozen=True)
class DataSpec:
    # "cifar10", "shapes", or "folder" (image files under ``path``: harness/protocol/folder_data.py)
    dataset: str = setting(choices=("cifar10", "shapes", "folder"))
    # pixels per side: cifar10 32; shapes 32, or 16 or 8 (drawn at 32, area-averaged); folder 32 or 64
    image_size: int = 32
    horizontal_flip: bool = True  # random left-right flip of each training image
    # shapes: how many to generate; cifar10: None = the whole split; folder: a seeded uniform sample of the files
    num_images: int | None = None
    seed: int = 0  # shapes: generator seed; folder: seeds its subsets (the dataset, not the run)
    max_shapes: int = 3  # shapes: each image has 1 to this many shapes (at most 3)
    shape_radius: tuple[float, ...] = (4.0, 10.0)  # shapes: [min, max] size in pixels, drawn uniformly
    shape_kinds: tuple[str, ...] = setting(SHAPE_KINDS, choices=SHAPE_KINDS)  # shapes: the kinds drawn from, uniformly
    # shapes: "gradient" (between two colours) or "plain" (the first colour)
    background: str = setting("gradient", choices=SHAPE_BACKGROUNDS)
    path: str | None = None  # folder: the folder of images (made absolute when the task is read)
    # folder: "center_crop" (the centred square, resized), "stretch", or "exact"
    fit: str = setting("center_crop", choices=FOLDER_FITS)
    # folder: PIL's filter for resizing: bicubic, lanczos, bilinear or box
    resample: str = setting("bicubic", choices=FOLDER_RESAMPLES)


@dataclass(frozen=True)
class DiffusionSpec:
    num_train_timesteps: int = 1000
    beta_schedule: str = setting("linear", choices=("linear", "scaled_linear", "squaredcos_cap_v2"))
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # the model predicts the added noise; loss = MSE(pred, noise)
    prediction_type: str = setting("epsilon", choices=("epsilon",))
    # None: every timestep's MSE counts alike (the protocol). A number: Min-SNR-gamma weighting
    # (Hang et al. 2023), each sample's MSE times min(SNR_t, gamma) / SNR_t, which lowers the
    # weight of the nearly clean timesteps (with 5 and the linear schedule: t below 130)
    snr_gamma: float | None = None


@dataclass(frozen=True)
class ModelSpec:
    block_out_channels: tuple[int, ...]  # -> env BLOCK_OUT_CHANNELS, e.g. "128,256,256,256"
    layers_per_block: int = 2  # -> env LAYERS_PER_BLOCK


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = setting("adamw", choices=("adamw",))
    lr: float = 2e-4  # constant: no warm-up, no decay
    weight_decay: float = 1e-4
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip_norm: float = 1.0  # max global gradient norm
    # AdamW's implementation: "auto" (one fused kernel on CUDA, multi-tensor "foreach" ops on a CPU),
    # "fused", "foreach" or "for-loop"; the record's recipe says which a run used
    implementation: str = setting("auto", result=False, choices=("auto", "fused", "foreach", "for-loop"))


@dataclass(frozen=True)
class TrainingSpec:
    steps: int = setting(resumable=True)  # a run may be extended (or shortened) from its checkpoint
    batch_size: int
    ema_decay: float = 0.9995  # evaluation uses the EMA weights
    # how the EMA starts (harness/protocol/trainer.py): "constant" (decay ema_decay from the initial weights on),
    # "warmup" (diffusers' EMAModel: decay min(ema_decay, (1+t)/(10+t))), or "debiased" (decay ema_decay,
    # bias-corrected as Adam's moments are: an exponential average of the trained weights only)
    ema_schedule: str = setting("constant", choices=("constant", "warmup", "debiased"))
    # loss read back from the device (one host sync) every this many steps
    log_every: int = setting(100, result=False, resumable=True)
    checkpoint_every: int = setting(1000, result=False, resumable=True)
    # "fp32", or "bf16": autocast on the device types below (elsewhere fp32; the record says)
    precision: str = setting("fp32", choices=("fp32", "bf16"))
    # the device types on which precision bf16 (training's, and evaluation's for sampling) autocasts: GPUs only
    # by default, since bf16 is slower than fp32 on most CPUs; [cuda, cpu] runs the GPU recipe on a CPU
    autocast_devices: tuple[str, ...] = setting(("cuda",), result=False, choices=("cuda", "cpu"))
    channels_last: str = setting("cuda", result=False, resumable=True, choices=("cuda", "always", "never"))
    # memory format: "cuda" (on GPUs only; slower for CPU training), "always", "never"
    compile: bool = setting(False, result=False, resumable=True)  # torch.compile the model for training
    # experiment trackers fed live (harness/run/tracking.py): tensorboard (into the run folder), wandb, mlflow
    log_with: tuple[str, ...] = setting(("tensorboard",), result=False, resumable=True, choices=TRACKERS)
    # with --device auto, a machine without a usable GPU is refused (a real tier would train for days
    # on a CPU); --device cpu still runs it. Set false on the tiers meant for CPUs (smoke, demo).
    gpu_required: bool = setting(False, result=False, resumable=True)


@dataclass(frozen=True)
class SamplingSpec:
    sampler: str = setting("ddim", choices=("ddim",))
    steps: int = 50
    eta: float = 0.0
    clip_sample: bool = True  # clip the predicted x0 to [-1, 1] (diffusers' DDIMScheduler default)
    # which of the num_train_timesteps the sampling steps visit, as diffusers' DDIMScheduler names it:
    # "leading" (t = 0, 20, ..., 980 for 50 steps, plus steps_offset), "trailing" or "linspace"
    timestep_spacing: str = setting("leading", choices=("leading", "trailing", "linspace"))
    steps_offset: int = 0  # added to every sampling timestep
    set_alpha_to_one: bool = True  # the last step's "previous" alpha_cumprod is 1 (a clean image), not alpha_0
    batch_size: int = setting(500, result=False, resumable=True)


@dataclass(frozen=True)
class EvaluationSpec:
    num_samples: int  # generated images per FID evaluation
    # best FID is the minimum over these: it changes a result; a resumed run may add points
    # training steps at which FID is measured; the last step always is
    eval_points: tuple[int, ...] = setting(resumable=True)
    mode: str = setting("clean", choices=("clean",))  # clean-fid mode
    reference: str = "dataset"  # "dataset" (computed from the training images) or "cleanfid:NAME/SPLIT/RES"
    reference_images: int | None = None  # images in a computed reference; None = all of them
    kid: bool = True
    inception_weights: str | None = None  # a path; else env HARNESS_INCEPTION_WEIGHTS, clean-fid's cache, ...
    feature_batch_size: int = setting(200, result=False, resumable=True)  # Inception batch
    # the precision of DDIM sampling: "fp32", or "bf16" (autocast on CUDA, as training with bf16). The
    # Inception network always runs in fp32 with TF32 off, so FID's feature extractor is clean-fid's.
    precision: str = setting("fp32", choices=("fp32", "bf16"))
    # resamples of the generated images' features (with replacement, the reference fixed) whose FIDs'
    # standard deviation is each evaluation's sampling noise (record: evaluations[].fid_std); 0: none
    fid_bootstrap: int = setting(50, result=False, resumable=True)
    # precision, recall, density and coverage (harness/protocol/manifold.py) with this many nearest neighbours;
    # null: not computed. They use the reference's kept features, so they need evaluation.kid's features too
    manifold_k: int | None = 3
    manifold_samples: int = 10_000  # at most this many images on each side (the first, in seed order)


GRID_SAMPLERS = ("ddim", "dpmpp_2m", "unipc")  # the sampler grid's (harness/protocol/samplers.py)


@dataclass(frozen=True)
class SamplersSpec:
    """The sampler grid (docs/samplers.md): (sampler, steps) pairs evaluated beside the protocol's DDIM, from the
    same per-sample noise. Its settings change only the grid's own results, each of which records every argument
    of its scheduler (the report compares a grid point across runs only where they are equal), never the
    protocol's FID: so none is a result field here."""
    # "sampler:steps" pairs, e.g. [ddim:10, dpmpp_2m:20, unipc:20]; none by default (the protocol alone)
    grid: tuple[str, ...] = setting((), result=False, resumable=True)
    # where the grid runs: "final" (the last evaluation point, and the best's kept weights when it is another),
    # or "every" (each evaluation point)
    at: str = setting("final", result=False, resumable=True, choices=("final", "every"))
    # DDIM in the grid is the protocol's DDIM (sampling.*: eta, clip_sample, spacing, ...) at other step counts.
    # dpmpp_2m: diffusers' DPMSolverMultistepScheduler, DPM-Solver++ of order 2 (multistep), deterministic.
    # clip_x0: each step's predicted clean image clipped to [-1, 1], as the protocol's DDIM does (clip_sample):
    # diffusers' thresholding with sample_max_value 1 (its dynamic threshold is then always 1). Without it an
    # undertrained model's solver can leave the image range entirely (docs/samplers.md)
    dpmpp_2m_clip_x0: bool = setting(True, result=False, resumable=True)
    dpmpp_2m_timestep_spacing: str = setting("linspace", result=False, resumable=True,
                                             choices=("leading", "trailing", "linspace"))
    dpmpp_2m_lower_order_final: bool = setting(True, result=False, resumable=True)  # first order at the last steps
    dpmpp_2m_use_karras_sigmas: bool = setting(False, result=False, resumable=True)
    dpmpp_2m_final_sigmas_type: str = setting("zero", result=False, resumable=True, choices=("zero", "sigma_min"))
    # unipc: diffusers' UniPCMultistepScheduler (UniPC with B(h) = bh2, order 2, data prediction, corrector on)
    unipc_clip_x0: bool = setting(True, result=False, resumable=True)  # as dpmpp_2m_clip_x0
    unipc_timestep_spacing: str = setting("linspace", result=False, resumable=True,
                                          choices=("leading", "trailing", "linspace"))
    unipc_solver_type: str = setting("bh2", result=False, resumable=True, choices=("bh1", "bh2"))
    unipc_lower_order_final: bool = setting(True, result=False, resumable=True)
    unipc_final_sigmas_type: str = setting("zero", result=False, resumable=True, choices=("zero", "sigma_min"))


@dataclass(frozen=True)
class TaskSpec:
    name: str
    version: int
    tier: str
    seed: int = setting(result=False)  # the run folder: a different seed is a different run
    description: str = setting(result=False, resumable=True)
    data: DataSpec
    diffusion: DiffusionSpec
    model: ModelSpec
    optimizer: OptimizerSpec
    training: TrainingSpec
    sampling: SamplingSpec
    evaluation: EvaluationSpec
    # published best FID per architecture and tier, shown beside measured ones in reports
    reference_results: dict | None = setting(None, result=False, resumable=True)
    samplers: SamplersSpec = SamplersSpec()  # the sampler grid beside the protocol's DDIM (none by default)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def width_env(self) -> dict[str, str]:
        """The environment an architecture file reads its widths from."""
        return {
            "BLOCK_OUT_CHANNELS": ",".join(str(c) for c in self.model.block_out_channels),
            "LAYERS_PER_BLOCK": str(self.model.layers_per_block),
        }


def declarations(cls=TaskSpec, prefix: str = "") -> dict[str, dict]:
    """Every task field by dotted name -> its declaration: result, resumable, choices (the defaults, result
    True, resumable False and no choices, where a field declares nothing)."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(declarations(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = {"result": True, "resumable": False, "choices": None, **f.metadata}
    return out


def fields_where(**wanted) -> tuple[str, ...]:
    """The dotted fields whose declaration matches, e.g. ``fields_where(result=False)``."""
    return tuple(k for k, d in declarations().items() if all(d[key] == value for key, value in wanted.items()))


def declared_choices() -> dict[str, tuple]:
    return {k: d["choices"] for k, d in declarations().items() if d["choices"] is not None}
