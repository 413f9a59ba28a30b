"""One evaluation point: sample with the EMA weights, score the images with FID, KID and the manifold metrics,
with the protocol's DDIM and with each pair of the task's sampler grid (harness/protocol/samplers.py) due there.

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
from harness.protocol.manifold import manifold_metrics
from harness.protocol.reference import Reference, get_reference
from harness.protocol.samplers import GridPoint, check_grid, grid_points, grid_sample, recorded_arguments
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
    manifold: dict | None = None  # precision, recall, density, coverage, manifold_k, manifold_rows (or None)

    def to_dict(self) -> dict:
        out = {"step": self.step, "fid": self.fid, "kid": self.kid, "num_samples": self.num_samples,
               "fid_std": self.fid_std, "fid_bootstrap": self.fid_bootstrap,
               "sample_seconds": round(self.sample_seconds, 3), "feature_seconds": round(self.feature_seconds, 3),
               "sampling_images_per_sec": round(self.num_samples / max(self.sample_seconds, 1e-9), 2),
               **(self.manifold or {})}
        return out


@dataclass
class SampleSet:
    """One sampler's images at an evaluation point, as rank 0 holds them after the gather."""
    features: np.ndarray  # [N,2048] float32, in seed order
    grid: torch.Tensor  # uint8 [<=64,3,S,S], the first images
    sample_seconds: float  # the slowest rank's
    feature_seconds: float


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
        self.grid = grid_points(spec)
        check_grid(spec, self.grid)  # before any training: a pair that cannot sample fails now
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

    def grid_at(self, step: int) -> list[GridPoint]:
        """The sampler grid's pairs evaluated at ``step``: at the last step only (samplers.at final) or at each."""
        at_every = self.spec.samplers.at == "every"
        return self.grid if at_every or step == self.spec.training.steps else []

    def evaluate(self, ema_model: torch.nn.Module, step: int, world: World = SINGLE) -> EvaluationResult | None:
        """Every rank of ``world`` generates whole sampling batches (batch j on rank j mod N) and their
        features with the protocol's DDIM from the per-sample seeds; rank 0 gathers them in seed order and returns
        the result, the others None. The grid pairs due at ``step`` (grid_at) are a second call, evaluate_grid,
        from the same seeds: the caller saves the protocol's numbers in between, so a failing pair loses none."""
        if world.is_main:
            self.reference  # noqa: B018  (computed, or read from its cache, before sampling starts)
        spec, autocast = self.spec, self.autocast_dtype
        protocol = self._sample_set(lambda seeds: ddim_sample(ema_model, spec.diffusion, spec.sampling, seeds,
                                                              self.device, autocast, spec.data.image_size),
                                    world, f"FID @ step {step}")
        if not world.is_main:
            return None
        scores = self._scores(protocol.features)
        return EvaluationResult(step, scores["fid"], scores["kid"], len(protocol.features), protocol.sample_seconds,
                                protocol.feature_seconds, protocol.grid, scores["fid_std"],
                                scores["fid_bootstrap"], scores["manifold"])

    def evaluate_grid(self, ema_model: torch.nn.Module, step: int, points: list[GridPoint],
                      world: World = SINGLE) -> dict | None:
        """Each grid pair of ``points`` from the evaluation's seeds: on rank 0 {"dpmpp_2m:10": its FID, noise,
        KID, manifold metrics, timings and scheduler settings}, on the others None. ``step`` names the bars."""
        spec, autocast = self.spec, self.autocast_dtype
        sets = {point: self._sample_set(lambda seeds, point=point: grid_sample(ema_model, spec, point, seeds,
                                                                                self.device, autocast),
                                        world, f"{point.key} @ step {step}")
                for point in points}
        if not world.is_main:
            return None
        return {point.key: {**_flat(self._scores(got.features)), "num_samples": len(got.features),
                            "sample_seconds": round(got.sample_seconds, 3),
                            "feature_seconds": round(got.feature_seconds, 3),
                            "sampler": recorded_arguments(spec, point)}
                for point, got in sets.items()}

    def _sample_set(self, sample: Callable[[list[int]], torch.Tensor], world: World,
                    description: str) -> SampleSet | None:
        """``sample(seeds)`` (float [b,3,S,S] in [-1,1]) over the evaluation's seeds, quantised to uint8 and
        turned into features batch by batch; rank 0 gets the gathered set, the other ranks None."""
        evaluation = self.spec.evaluation
        seeds = sample_seeds(self.spec.seed, evaluation.num_samples)
        size = self.spec.sampling.batch_size
        chunks = seed_batches(seeds, size)
        mine = range(world.rank, len(chunks), world.size)
        bar = None
        if self.progress_factory and world.is_main:
            bar = self.progress_factory(sum(len(chunks[j]) for j in mine), description)
        parts, seconds = {}, [0.0, 0.0]  # batch index -> (features [b,2048], first grid images); sampling, features
        for j in mine:
            t0 = time.perf_counter()
            images = to_uint8(sample(chunks[j]))  # uint8 [b,3,S,S] on the device
            sync(self.device)
            t1 = time.perf_counter()
            feats = [self.features(images[i : i + evaluation.feature_batch_size]).cpu().numpy()
                     for i in range(0, len(images), evaluation.feature_batch_size)]
            parts[j] = (np.concatenate(feats), images[: max(0, GRID_IMAGES - j * size)].cpu())
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
        # the evaluation took as long as its slowest process
        sample_seconds, feature_seconds = (max(s[i] for _, s in gathered) for i in range(2))
        return SampleSet(np.concatenate([parts[j][0] for j in range(len(chunks))]),
                         torch.cat([parts[j][1] for j in range(len(chunks))]), sample_seconds, feature_seconds)

    def _scores(self, features: np.ndarray) -> dict:
        """FID, its bootstrap noise, KID and the manifold metrics of one sample set's features [N,2048]. The
        bootstrap draws the same resamples for every sample set of a run (seeded by the run's seed): paired."""
        evaluation, reference = self.spec.evaluation, self.reference
        out = {"fid": fid_from_features(features, reference.mu, reference.sigma_root), "kid": None,
               "fid_std": None, "fid_bootstrap": evaluation.fid_bootstrap, "manifold": None}
        if evaluation.kid and reference.kid_features is not None:
            out["kid"] = kernel_inception_distance(features, reference.kid_features)
        if evaluation.fid_bootstrap:
            fids = resampled_fids(features, reference.mu, reference.sigma_root, evaluation.fid_bootstrap,
                                  seed=self.spec.seed, device=self.device)
            out["fid_std"] = float(np.std(fids, ddof=1))
        if evaluation.manifold_k is not None and reference.kid_features is not None:
            out["manifold"] = manifold_metrics(features, reference.kid_features, evaluation.manifold_k,
                                               evaluation.manifold_samples)
        return out


def _flat(scores: dict) -> dict:
    """A grid pair's scores as the record keeps them: the manifold metrics beside FID and KID."""
    return {**{k: v for k, v in scores.items() if k != "manifold"}, **(scores["manifold"] or {})}
