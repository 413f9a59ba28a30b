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

from harness.diffusion import generate, sample_seeds
from harness.fid import InceptionFeatures, frechet_distance, kernel_inception_distance, mean_cov
from harness.reference import Reference, get_reference
from harness.tasks import TaskSpec

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

    def to_dict(self) -> dict:
        return {"step": self.step, "fid": self.fid, "kid": self.kid, "num_samples": self.num_samples,
                "sample_seconds": round(self.sample_seconds, 3), "feature_seconds": round(self.feature_seconds, 3),
                "sampling_images_per_sec": round(self.num_samples / max(self.sample_seconds, 1e-9), 2)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Evaluator:
    def __init__(self, spec: TaskSpec, device: torch.device, load_images: Callable[[], np.ndarray],
                 autocast_dtype: torch.dtype | None = None, progress_factory=None):
        self.spec = spec
        self.device = device
        self.load_images = load_images
        self.autocast_dtype = autocast_dtype
        self.progress_factory = progress_factory  # (total, description) -> a tqdm-like bar, or None
        self.features = InceptionFeatures(device, spec.evaluation.inception_weights)
        self._reference: Reference | None = None

    @property
    def reference(self) -> Reference:
        if self._reference is None:
            bar = None
            if self.progress_factory:
                bar = lambda n: self.progress_factory(n, "FID reference (once, then cached)")  # noqa: E731
            self._reference = get_reference(self.spec.data, self.spec.evaluation, self.features, self.load_images, bar)
        return self._reference

    def evaluate(self, ema_model: torch.nn.Module, step: int) -> EvaluationResult:
        reference = self.reference
        evaluation = self.spec.evaluation
        seeds = sample_seeds(self.spec.seed, evaluation.num_samples)
        bar = self.progress_factory(len(seeds), f"FID @ step {step}") if self.progress_factory else None
        feats, grid = [], []
        sample_seconds = feature_seconds = 0.0
        batches = generate(ema_model, self.spec.diffusion, self.spec.sampling, seeds, self.device, self.autocast_dtype)
        t0 = time.perf_counter()
        for images in batches:  # uint8 [b,3,32,32] on the device
            _sync(self.device)
            t1 = time.perf_counter()
            sample_seconds += t1 - t0
            if sum(len(g) for g in grid) < GRID_IMAGES:
                grid.append(images[: GRID_IMAGES - sum(len(g) for g in grid)].cpu())
            for start in range(0, len(images), evaluation.feature_batch_size):
                feats.append(self.features(images[start : start + evaluation.feature_batch_size]).cpu().numpy())
            t0 = time.perf_counter()
            feature_seconds += t0 - t1
            if bar is not None:
                bar.update(len(images))
        if bar is not None:
            bar.close()
        features = np.concatenate(feats)  # [N,2048] float32
        mu, sigma = mean_cov(features)
        fid = frechet_distance(mu, sigma, reference.mu, reference.sigma)
        kid = None
        if evaluation.kid and reference.kid_features is not None:
            kid = kernel_inception_distance(features, reference.kid_features)
        return EvaluationResult(step, fid, kid, len(seeds), sample_seconds, feature_seconds, torch.cat(grid))
