"""``bench``: the harness against the script a researcher would write, side by side in one process.

Three comparisons on the same model (``standard``; smoke widths on a CPU, small on a GPU), the
same images and the same seed:

- training step: ``Trainer.train_step`` against a bare loop written the way diffusers'
  ``examples/unconditional_image_generation/train_unconditional.py`` does it (UNet2DModel,
  ``DDPMScheduler.add_noise``, AdamW, ``EMAModel``, a DataLoader with torchvision transforms,
  ``loss.item()`` for the progress bar every step). Blocks of steps alternate between the two so
  that drift in the machine's speed hits both alike;
- sampling: the harness DDIM-50 sampler against diffusers' ``DDIMPipeline`` on the same EMA
  weights and initial noise (and the largest difference between their images);
- FID: the harness FID of a set of generated images against clean-fid's ``fid.compute_fid`` on
  the same images written as PNG folders.

Ratios are harness time / reference time: below 1 means the harness is faster.
"""
from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from harness.files import now
from harness.flops import count_macs
from harness.peaks import matmul_precision, mfu
from harness.protocol import registry
from harness.protocol.data import ImageBatches, generate_shapes
from harness.protocol.diffusion import ddim_sample, ddim_scheduler, ddpm_scheduler, sample_seeds, to_uint8
from harness.protocol.fid import InceptionFeatures, frechet_distance, mean_cov
from harness.protocol.recipe import recipe_for
from harness.protocol.tasks import resolve_task
from harness.protocol.trainer import Trainer
from harness.run.records import device_info, library_versions
from harness.world import sync


@dataclass
class BenchSizes:
    tier: str  # widths and batch of this tier of the cifar10 task
    train_blocks: int  # alternating blocks per side
    steps_per_block: int
    sample_batch: int  # images in the DDIM comparison
    fid_images: int  # generated (and real) images in the FID comparison
    sampling_rounds: int = 2  # timed A-B-B-A rounds of the two samplers, after one untimed call of each

    @classmethod
    def for_device(cls, device: torch.device) -> "BenchSizes":
        if device.type == "cuda":
            return cls(tier="small", train_blocks=6, steps_per_block=20, sample_batch=256, fid_images=5000)
        return cls(tier="smoke", train_blocks=6, steps_per_block=4, sample_batch=16, fid_images=64)


class BareLoop:
    """A training step the way diffusers' train_unconditional.py writes it (single process, no accelerate)."""

    def __init__(self, model: torch.nn.Module, images: np.ndarray, spec, device: torch.device):
        from diffusers.training_utils import EMAModel
        from torchvision import transforms

        self.model, self.device = model.train(), device
        self.scheduler = ddpm_scheduler(spec.diffusion)
        opt = spec.optimizer
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, betas=opt.betas,
                                           weight_decay=opt.weight_decay, eps=opt.eps)
        self.ema = EMAModel(model.parameters(), decay=spec.training.ema_decay, use_ema_warmup=True, inv_gamma=1.0,
                            power=3 / 4, model_cls=type(model), model_config=getattr(model, "config", None))
        self.ema.to(device)
        augment = transforms.Compose([
            transforms.Resize(32, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(32),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ])
        pil = [Image.fromarray(img.transpose(1, 2, 0)) for img in images]

        class Images(torch.utils.data.Dataset):
            def __len__(self):
                return len(pil)

            def __getitem__(self, i):
                return {"input": augment(pil[i])}

        self.loader = torch.utils.data.DataLoader(Images(), batch_size=spec.training.batch_size, shuffle=True,
                                                  num_workers=0)
        self._batches = iter(())
        self.clip = spec.optimizer.grad_clip_norm
        self.last_loss = None

    def _next_batch(self) -> torch.Tensor:
        try:
            return next(self._batches)["input"]
        except StopIteration:
            self._batches = iter(self.loader)
            return next(self._batches)["input"]

    def train_step(self) -> None:
        clean = self._next_batch().to(self.device)
        noise = torch.randn(clean.shape, device=self.device)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (clean.shape[0],),
                                  device=self.device).long()
        noisy = self.scheduler.add_noise(clean, noise, timesteps)
        loss = F.mse_loss(self.model(noisy, timesteps).sample.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.ema.step(self.model.parameters())
        self.last_loss = loss.detach().item()  # the script logs this to its progress bar every step


def _time_block(step, steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def bench_training(model, images, spec, device, sizes: BenchSizes) -> dict:
    harness = Trainer(copy.deepcopy(model), spec, ImageBatches(images, spec.training.batch_size, device), device)
    bare = BareLoop(copy.deepcopy(model), images, spec, device)
    for _ in range(2):  # warm-up: allocator, optimizer state, kernels
        harness.train_step()
        bare.train_step()
    harness_times, bare_times = [], []
    for block in range(sizes.train_blocks):
        # A-B then B-A: neither side always runs first (caches, clock boost), and drift hits both
        order = ((harness, harness_times), (bare, bare_times))
        for loop, times in order if block % 2 == 0 else order[::-1]:
            times.append(_time_block(loop.train_step, sizes.steps_per_block, device))
    harness.flush_losses()
    h, b = statistics.median(harness_times), statistics.median(bare_times)
    batch = spec.training.batch_size
    return {"train_step_ratio": round(h / b, 4), "harness_train_images_per_sec": round(batch / h, 2),
            "bare_train_images_per_sec": round(batch / b, 2),
            "raw": {"harness_train_step_seconds": harness_times, "bare_train_step_seconds": bare_times}}, harness


def bench_sampling(trainer: Trainer, spec, device, sizes: BenchSizes) -> dict:
    from diffusers import DDIMPipeline

    # Both samplers drive the very same module (the EMA weights), so any difference in their images
    # comes from the samplers alone, and so does any difference in time.
    model = trainer.ema_model()
    pipe = DDIMPipeline(unet=model, scheduler=ddim_scheduler(spec.diffusion, spec.sampling))
    pipe.set_progress_bar_config(disable=True)
    seeds = sample_seeds(spec.seed, sizes.sample_batch)
    amp = recipe_for(spec, device).sampling_autocast  # the protocol's evaluation.precision, for both samplers

    def harness_sampler():
        return ddim_sample(model, spec.diffusion, spec.sampling, seeds, device, amp)

    def pipeline_sampler():
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            return pipe(batch_size=len(seeds), generator=generators, eta=spec.sampling.eta,
                        num_inference_steps=spec.sampling.steps, output_type="pt").images

    # One untimed call of each (first-call allocations, lazy initialisation), then A-B-B-A rounds
    # so that neither sampler always runs first and drift in the machine's speed hits both alike.
    samplers = {"harness": harness_sampler, "pipeline": pipeline_sampler}
    outputs = {name: sampler() for name, sampler in samplers.items()}
    times: dict[str, list[float]] = {"harness": [], "pipeline": []}
    for _ in range(sizes.sampling_rounds):
        for name in ("harness", "pipeline", "pipeline", "harness"):
            sync(device)
            start = time.perf_counter()
            samplers[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    ours, theirs = outputs["harness"], outputs["pipeline"]
    harness_seconds, pipeline_seconds = statistics.median(times["harness"]), statistics.median(times["pipeline"])
    diff = float(((ours.float() / 2 + 0.5).clamp(0, 1) - theirs.float().to(ours.device)).abs().max())
    n = len(seeds)
    return {"sampling_ratio": round(harness_seconds / pipeline_seconds, 4), "sampling_max_abs_diff": diff,
            "harness_sampling_images_per_sec": round(n / harness_seconds, 3),
            "pipeline_sampling_images_per_sec": round(n / pipeline_seconds, 3),
            "raw": {"harness_sampling_seconds": times["harness"], "pipeline_sampling_seconds": times["pipeline"]}}


def bench_fid(trainer: Trainer, spec, device, sizes: BenchSizes, real: np.ndarray) -> dict:
    from cleanfid import fid as cleanfid_fid
    from cleanfid.inception_torchscript import InceptionV3W

    seeds = sample_seeds(spec.seed + 1, sizes.fid_images)
    generated = torch.cat([to_uint8(ddim_sample(trainer.ema_model(), spec.diffusion, spec.sampling, seeds[i:i + 256],
                                                 device, trainer.recipe.sampling_autocast)).cpu()
                           for i in range(0, len(seeds), 256)]).numpy()
    real = real[: sizes.fid_images]
    features = InceptionFeatures(device)
    # clean-fid with its own Inception wrapper around the same weights (its download is not needed)
    if features.path.name == "inception-2015-12-05.pt":
        extractor = InceptionV3W(str(features.path.parent), download=False).to(device)
    else:
        extractor = InceptionV3W.__new__(InceptionV3W)
        torch.nn.Module.__init__(extractor)
        extractor.base, extractor.layers, extractor.resize_inside = None, features.layers, False
    with tempfile.TemporaryDirectory() as tmp:
        for name, images in (("generated", generated), ("real", real)):
            (Path(tmp) / name).mkdir()
            for i, img in enumerate(images):
                Image.fromarray(img.transpose(1, 2, 0)).save(Path(tmp) / name / f"{i:06d}.png")
        sync(device)
        start = time.perf_counter()
        expected = cleanfid_fid.compute_fid(str(Path(tmp) / "generated"), str(Path(tmp) / "real"), mode="clean",
                                            num_workers=min(12, os.cpu_count() or 1), device=device,
                                            custom_feat_extractor=extractor, verbose=False, use_dataparallel=False)
        cleanfid_seconds = time.perf_counter() - start
    start = time.perf_counter()
    batch = 500 if device.type == "cuda" else 64
    mu1, s1 = mean_cov(features.of_array(generated, batch))
    mu2, s2 = mean_cov(features.of_array(real, batch))
    ours = frechet_distance(mu1, s1, mu2, s2)
    harness_seconds = time.perf_counter() - start
    return {"fid_ratio": round(harness_seconds / cleanfid_seconds, 4), "fid_abs_diff": abs(ours - expected),
            "harness_fid": ours, "cleanfid_fid": float(expected),
            "raw": {"harness_fid_seconds": harness_seconds, "cleanfid_fid_seconds": cleanfid_seconds,
                    "images": len(real)}}


def run_bench(device: torch.device, sizes: BenchSizes | None = None, compile: bool = False, progress=print) -> dict:
    sizes = sizes or BenchSizes.for_device(device)
    spec = resolve_task("cifar10", sizes.tier, {"training.compile": compile})
    torch.manual_seed(spec.seed)
    arch = registry.find_architecture("standard")
    model = registry.build(arch, spec.width_env, device)
    images = generate_shapes(max(2048, spec.training.batch_size * 4, sizes.fid_images), seed=0)
    out = {"device": device_info(device), "versions": library_versions(), "created_at": now(),
           "model": f"standard at {sizes.tier} widths {spec.width_env['BLOCK_OUT_CHANNELS']}",
           "batch_size": spec.training.batch_size, "precision": recipe_for(spec, device).precision,
           "compile": compile, "sizes": sizes.__dict__}
    raw = {}
    progress("training step: harness vs diffusers-style loop ...")
    result, trainer = bench_training(model, images, spec, device, sizes)
    raw.update(result.pop("raw"))
    out.update(result)
    progress("sampling: harness DDIM vs DDIMPipeline ...")
    result = bench_sampling(trainer, spec, device, sizes)
    raw.update(result.pop("raw"))
    out.update(result)
    progress("FID: harness vs clean-fid compute_fid ...")
    result = bench_fid(trainer, spec, device, sizes, images)
    raw.update(result.pop("raw"))
    out.update(result)
    out["raw"] = raw
    gflops = count_macs(trainer.model).gflops
    out["gflops_per_image"] = round(gflops, 4)
    # each loop against the peak of the precision it computes in: the bare loop, as the script, in fp32
    dev = out["device"]
    harness_peak = matmul_precision(out["precision"], device.type, dev.get("capability"))
    bare_peak = matmul_precision("fp32", device.type, dev.get("capability"))
    out["harness_train_mfu"] = mfu(gflops, out["harness_train_images_per_sec"], dev["name"], harness_peak)
    out["bare_train_mfu"] = mfu(gflops, out["bare_train_images_per_sec"], dev["name"], bare_peak)
    out["mfu_peaks"] = {"harness": harness_peak, "bare": bare_peak}
    return out
