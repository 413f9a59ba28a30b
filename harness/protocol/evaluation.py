"""One evaluation point: sample with the EMA weights, score the images with FID and KID.

Images are generated in batches, quantised to uint8 exactly as a PNG would hold them, and turned
into Inception features right away on the same device, so a 50,000-sample evaluation never holds
more than one batch of images (the 2048-d features of all of them are kept: 400 MB at 50k).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from harness.protocol.diffusion import ddim_sample, sample_seeds, seed_batches, to_uint8
from harness.protocol.fid import InceptionFeatures, fid_from_features, kernel_inception_distance, resampled_fids
from harness.protocol.reference import Reference, get_reference
from harness.protocol.spec import TaskSpec
from harness.world import SINGLE, World, sync

GRID_IMAGES = 64


@dataclass
class EvaluationResult:
    step: int
    fid: float
    kid: float | None
    num_samples: int
    sample_seconds: float  # DDIM sampling only
    feature_seconds: float  # resize + Inception
    grid: torch.Tensor  # uint8 [<=64,3,32,32] on the CPU: the first samples, for the PNG grid
    fid_std: float | None = None  # the FID's sampling noise: std of the FIDs of bootstrap resamples of the features
    fid_bootstrap: int = 0  # how many resamples fid_std comes from

    def to_dict(self) -> dict:
        return {"step": self.step, "fid": self.fid, "kid": self.kid, "num_samples": self.num_samples,
                "fid_std": self.fid_std, "fid_bootstrap": self.fid_bootstrap,
                "sample_seconds": round(self.sample_seconds, 3), "feature_seconds": round(self.feature_seconds, 3),
                "sampling_images_per_sec": round(self.num_samples / max(self.sample_seconds, 1e-9), 2)}


class Evaluator:
    def __init__(self, spec: TaskSpec, device: torch.device, load_images: Callable[[], np.ndarray],
                 autocast_dtype: torch.dtype | None = None, progress_factory=None,
                 announce: Callable[[str], None] | None = None):
        self.spec = spec
        self.device = device
        self.load_images = load_images
        self.autocast_dtype = autocast_dtype
        self.progress_factory = progress_factory  # (total, description) -> a tqdm-like bar, or None
        self.announce = announce  # told of the reference's long work (the run's log)
        self.features = InceptionFeatures(device, spec.evaluation.inception_weights, announce)
        self._reference: Reference | None = None

    @property
    def reference(self) -> Reference:
        if self._reference is None:
            bar = None
            if self.progress_factory:
                bar = lambda n: self.progress_factory(n, "FID reference (once, then cached)")  # noqa: E731
            self._reference = get_reference(self.spec.data, self.spec.evaluation, self.features, self.load_images, bar,
                                            self.announce)
        return self._reference

    def evaluate(self, ema_model: torch.nn.Module, step: int, world: World = SINGLE) -> EvaluationResult | None:
        """Every rank of ``world`` generates whole sampling batches (batch j on rank j mod N) and
        their features; rank 0 gathers them in seed order and returns the result, the others None."""
        evaluation = self.spec.evaluation
        if world.is_main:
            self.reference  # noqa: B018  (computed, or read from its cache, before sampling starts)
        seeds = sample_seeds(self.spec.seed, evaluation.num_samples)
        size = self.spec.sampling.batch_size
        chunks = seed_batches(seeds, size)
        mine = range(world.rank, len(chunks), world.size)
        bar = None
        if self.progress_factory and world.is_main:
            bar = self.progress_factory(sum(len(chunks[j]) for j in mine), f"FID @ step {step}")
        parts, seconds = {}, [0.0, 0.0]  # batch index -> (features [b,2048], first grid images); sampling, features
        for j in mine:
            t0 = time.perf_counter()
            images = to_uint8(ddim_sample(ema_model, self.spec.diffusion, self.spec.sampling, chunks[j], self.device,
                                          self.autocast_dtype,
                                          self.spec.data.image_size))  # uint8 [b,3,S,S] on the device
            sync(self.device)
            t1 = time.perf_counter()
            feats = [self.features(images[i : i + evaluation.feature_batch_size]).cpu().numpy()
                     for i in range(0, len(images), evaluation.feature_batch_size)]
            grid = images[: max(0, GRID_IMAGES - j * size)].cpu()
            parts[j] = (np.concatenate(feats), grid)
            seconds[0] += t1 - t0
            seconds[1] += time.perf_counter() - t1
            if bar is not None:
                bar.update(len(images))
        if bar is not None:
            bar.close()
        gathered = world.gather((parts, seconds))
        if not world.is_main:
            return None
        for rank_parts, _ in gathered[1:]:
            parts.update(rank_parts)
        features = np.concatenate([parts[j][0] for j in range(len(chunks))])  # [N,2048] float32, seed order
        grid = torch.cat([parts[j][1] for j in range(len(chunks))])
        reference = self.reference
        fid = fid_from_features(features, reference.mu, reference.sigma_root)
        kid = None
        if evaluation.kid and reference.kid_features is not None:
            kid = kernel_inception_distance(features, reference.kid_features)
        fid_std = None
        if evaluation.fid_bootstrap:
            fids = resampled_fids(features, reference.mu, reference.sigma_root, evaluation.fid_bootstrap,
                                  seed=self.spec.seed, device=self.device)
            fid_std = float(np.std(fids, ddof=1))
        # the evaluation took as long as its slowest process
        sample_seconds, feature_seconds = (max(s[i] for _, s in gathered) for i in range(2))
        return EvaluationResult(step, fid, kid, len(seeds), sample_seconds, feature_seconds, grid, fid_std,
                                evaluation.fid_bootstrap)
