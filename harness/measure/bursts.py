"""Short timed bursts of each piece of a run, at the run's shapes and settings, for ``estimate``.

Each burst calls the code a run calls (``registry.load``, ``record_counts``, ``Trainer.train_step``,
``ddim_sample``, ``InceptionFeatures``, the FID statistics, ``checkpoints.save``) on this device, after
a warm-up and with the device synchronised before every clock read. It returns seconds per unit (per
training step, per sampling batch, per image, per evaluation); ``estimate.py`` multiplies them by the
counts of a whole run. What is scaled rather than run whole, and why:

- sampling: a batch is timed at 2 and 6 DDIM steps (``SAMPLING_STEPS``): the slope is a step's cost (one
  forward pass and one scheduler update of the same shape), the intercept the batch's fixed cost (its
  per-sample generators and noise, the scheduler's set-up, to_uint8), paid once per batch whatever the
  steps. Scaling a 3-step batch by steps / 3 counted the fixed cost 50/3 times (about 0.24 s a batch too
  much on the project's CPU at cifar10/small);
- features: one whole feature batch (a part of one under-predicted the demo tier's 128-image batches on a
  CPU: 0.075 s per image timed on 64 of them, 0.10 s per image in the run);
- scoring: above ``SCORING_ROWS`` generated images the FID's matrix products grow linearly with the
  number of images (N x 2048 by 2048 x 2048), so it is timed at two sizes and extrapolated; the
  bootstrap times 1 and 3 resamples and scales their difference to the task's count.
"""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.flops import record_counts
from harness.measure.memory import PeakMemory
from harness.protocol import registry
from harness.protocol.data import ImageBatches
from harness.protocol.diffusion import ddim_sample, sample_seeds, to_uint8
from harness.protocol.fid import (
    FEATURE_DIM,
    InceptionFeatures,
    fid_from_features,
    kernel_inception_distance,
    mean_cov,
    resampled_fids,
    symmetric_sqrt,
)
from harness.protocol.manifold import manifold_metrics
from harness.protocol.reference import KID_FEATURES
from harness.protocol.spec import TaskSpec
from harness.protocol.trainer import Trainer
from harness.run import checkpoints
from harness.world import sync

SAMPLING_STEPS = (2, 6)  # the two step counts a sampling batch is timed at
SCORING_ROWS = 4096


def seconds(fn, device: torch.device) -> float:
    """Wall seconds of one call of ``fn``, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def build_burst(arch_name: str, spec: TaskSpec, device: torch.device) -> tuple[dict, registry.Architecture,
                                                                                   torch.nn.Module]:
    """What a run's preparation costs per architecture: build and validate the model, count its MACs."""
    start = time.perf_counter()
    arch, model = registry.load(arch_name, spec.width_env, device, spec.seed, spec.data.image_size)
    sync(device)
    built = time.perf_counter() - start
    start = time.perf_counter()
    counts = record_counts(model, device, spec.data.image_size)
    return {"build_seconds": built, "profile_seconds": time.perf_counter() - start,
            "param_count": registry.count_parameters(model), "gflops": counts.get("gflops")}, arch, model


def train_burst(model: torch.nn.Module, spec: TaskSpec, device: torch.device, min_seconds: float,
                max_steps: int = 50) -> tuple[dict, Trainer]:
    """Training steps of the tier's batch through the real Trainer on random images of the task's size.

    The first step (optimizer state, kernel selection, torch.compile's compilation) is timed apart; then
    steps run until ``min_seconds`` have passed (at least 3), ending with the loss read-back a log
    interval ends with. On a GPU a step is their mean (a step there is only queued when the call returns).
    On a CPU it is their median: one slow step (another process, a page-fault storm) does not move it."""
    size, batch = spec.data.image_size, spec.training.batch_size
    images = torch.randint(0, 256, (max(2 * batch, 64), 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))  # uint8 [N,3,S,S], as a dataset's
    trainer = Trainer(model, spec, ImageBatches(images, batch, device, flip=spec.data.horizontal_flip), device)
    with PeakMemory(device) as memory:
        first = seconds(trainer.train_step, device)
        trainer.train_step()  # a second warm-up
        sync(device)
        times, start = [], time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - start < min_seconds and len(times) < max_steps):
            began = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - began)
        trainer.flush_losses()  # the host sync; it also waits for the device
        elapsed = time.perf_counter() - start
    steps = len(times)
    step = elapsed / steps if device.type == "cuda" else statistics.median(times)
    return {"first_step_seconds": first, "step_seconds": step, "steps_timed": steps,
            "train_images_per_sec": batch / step, "train_peak_memory_mb": memory.peak_mb,
            "train_memory_increase_mb": memory.increase_mb, "memory_kind": memory.kind}, trainer


def sampling_burst(trainer: Trainer, spec: TaskSpec, device: torch.device) -> dict:
    """One sampling batch of the evaluation (its size and precision): a batch's seconds are its fixed cost plus
    a step's cost times the task's steps, both from timings at SAMPLING_STEPS (a task with no more steps
    than the larger is timed whole)."""
    batch = min(spec.sampling.batch_size, spec.evaluation.num_samples)
    seeds = sample_seeds(spec.seed, batch)
    amp = trainer.recipe.sampling_autocast
    model = trainer.ema_model()

    def sample(steps: int) -> None:
        sampling = dataclasses.replace(spec.sampling, steps=steps)
        to_uint8(ddim_sample(model, spec.diffusion, sampling, seeds, device, amp, spec.data.image_size))

    sample(1)  # warm-up: the first no-grad forwards at this batch
    low, high = SAMPLING_STEPS
    with PeakMemory(device) as memory:
        if spec.sampling.steps <= high:
            batch_seconds = seconds(lambda: sample(spec.sampling.steps), device)
            per_step, fixed = batch_seconds / spec.sampling.steps, None
        else:
            short, long = seconds(lambda: sample(low), device), seconds(lambda: sample(high), device)
            per_step = (long - short) / (high - low)
            if per_step <= 0:  # the timings' noise exceeded 4 steps: no split, the longer timing scaled whole
                per_step, fixed = long / high, 0.0
            else:
                fixed = max(0.0, short - low * per_step)
            batch_seconds = fixed + per_step * spec.sampling.steps
    return {"sampling_batch": batch, "sampling_steps_timed": [spec.sampling.steps] if fixed is None else [low, high],
            "sampling_step_seconds": per_step, "sampling_fixed_seconds": fixed,
            "sampling_batch_seconds": batch_seconds, "sampling_images_per_sec": batch / batch_seconds,
            "sampling_peak_memory_mb": memory.peak_mb}


def inception_burst(spec: TaskSpec, device: torch.device) -> tuple[dict, InceptionFeatures]:
    """Loading the Inception network (every run loads it) and hashing its weights (the record names them)."""
    start = time.perf_counter()
    features = InceptionFeatures(device, spec.evaluation.inception_weights)
    features.weights_id  # noqa: B018  (a sha256 of the 95 MB file, as every run computes)
    sync(device)
    return {"inception_load_seconds": time.perf_counter() - start}, features


def feature_burst(features: InceptionFeatures, spec: TaskSpec, device: torch.device) -> dict:
    """Seconds per image of resize + Inception at the task's image size and feature batch."""
    count = spec.evaluation.feature_batch_size  # a whole batch: per image, a CPU is slower at 128 than at 64
    size = spec.data.image_size
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, device=device)
    features(images[:2]).cpu()  # warm-up
    took = seconds(lambda: features(images).cpu().numpy(), device)
    return {"feature_images_timed": count, "feature_seconds_per_image": took / count,
            "feature_images_per_sec": count / took}


def _random_features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, FEATURE_DIM), dtype=np.float32)  # [rows,2048]


def _statistics_seconds(spec: TaskSpec, device: torch.device, rows: int, mu, root) -> float:
    """Seconds of one evaluation's FID and bootstrap at ``rows`` generated images (random features). The
    bootstrap's one-time product (features x covariance root) is split from its per-resample cost by
    timing 1 and 3 resamples, after one untimed call (GPU solver start-up)."""
    evaluation = spec.evaluation
    feats = _random_features(rows)
    took = seconds(lambda: fid_from_features(feats, mu, root), device)
    if evaluation.fid_bootstrap:
        def boot(draws: int) -> float:
            return seconds(lambda: resampled_fids(feats, mu, root, draws, device=device), device)
        boot(1)
        one, three = boot(1), boot(3)
        per_draw = max(0.0, three - one) / 2
        took += max(0.0, one - per_draw) + per_draw * evaluation.fid_bootstrap
    return took


def scoring_burst(spec: TaskSpec, device: torch.device) -> dict:
    """One evaluation's statistics on random features of its size: FID, the bootstrap of its noise, KID;
    and the reference's covariance root, computed once per run process. Above SCORING_ROWS images the
    FID's cost is a + b N (the d x d decomposition, the N x d products): timed at two sizes, extrapolated."""
    evaluation = spec.evaluation
    ref = _random_features(SCORING_ROWS, seed=1)
    mu, sigma = mean_cov(ref)
    start = time.perf_counter()
    root = symmetric_sqrt(sigma)
    root_seconds = time.perf_counter() - start
    n = evaluation.num_samples
    if n <= SCORING_ROWS:
        took = _statistics_seconds(spec, device, n, mu, root)
    else:
        small, large = (_statistics_seconds(spec, device, rows, mu, root) for rows in (SCORING_ROWS // 2 + 512,
                                                                                       SCORING_ROWS))
        took = large + max(0.0, large - small) / (SCORING_ROWS // 2 - 512) * (n - SCORING_ROWS)
    if evaluation.kid:  # 100 subsets of at most 1000 rows: its cost does not grow past 1000 images
        feats = _random_features(min(n, SCORING_ROWS))
        took += seconds(lambda: kernel_inception_distance(feats, ref), device)
    if evaluation.manifold_k is not None:  # three rows x rows distance matrices: timed at up to 2048, scaled by rows^2
        rows = min(n, evaluation.manifold_samples, KID_FEATURES)
        timed = min(rows, SCORING_ROWS // 2)
        if timed >= evaluation.manifold_k + 2:
            feats = _random_features(timed)
            took += seconds(lambda: manifold_metrics(feats, ref, evaluation.manifold_k, timed), device) \
                * (rows / timed) ** 2
    return {"scoring_seconds": took, "sigma_root_seconds": root_seconds}


def reference_stats_seconds(count: int) -> float:
    """The mean and covariance of ``count`` images' features (a computed reference), scaled from SCORING_ROWS."""
    rows = min(count, SCORING_ROWS)
    feats = _random_features(rows)
    start = time.perf_counter()
    mean_cov(feats)
    return (time.perf_counter() - start) * count / rows


def checkpoint_burst(trainer: Trainer) -> dict:
    """One checkpoint as a run writes it (model, EMA, optimizer, RNG, data position), into a temporary folder."""
    state = {"trainer": trainer.state_dict(), "evaluations": [], "totals": {}}
    with tempfile.TemporaryDirectory(prefix="estimate-") as tmp:
        start = time.perf_counter()
        checkpoints.save(Path(tmp), state)
        took = time.perf_counter() - start
        size = (Path(tmp) / checkpoints.CHECKPOINT_FILE).stat().st_size
    return {"checkpoint_seconds": took, "checkpoint_mb": round(size / 2**20, 1)}
