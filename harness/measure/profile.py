"""``profile``: parameters, MACs (attention included), latency, throughput and memory of one
architecture at one tier, measured the same way for every architecture.

Keys are flat, timm style (``param_count``, ``gmacs``, ``infer_samples_per_sec``, ...); what each
one includes is documented in the README. Timing warms up, synchronises the device before every
clock read, and reports the median over repeats with its spread. A failure becomes an ``error``
key, so one broken architecture does not stop ``profile --all``.
"""
from __future__ import annotations

import statistics
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from harness.errors import HarnessError
from harness.files import atomic_write_json, now
from harness.flops import count_macs
from harness.measure.memory import PeakMemory
from harness.peaks import matmul_precision, mfu
from harness.protocol import registry
from harness.protocol.data import ImageBatches
from harness.protocol.diffusion import ddim_sample, sample_seeds
from harness.protocol.recipe import recipe_for
from harness.protocol.spec import TaskSpec
from harness.protocol.tasks import resolve_task
from harness.protocol.trainer import Trainer
from harness.run.records import device_info, library_versions
from harness.world import sync

SAMPLE_BATCH = {"cuda": 256, "cpu": 8}  # fixed DDIM batch per device type, the same for every architecture


def build_for_counting(arch: registry.Architecture, env: dict[str, str]) -> torch.nn.Module:
    """A CPU model with the right shapes, fast: built on the meta device, then given zeroed CPU
    storage (its values do not matter for counting). Files that cannot build on meta are built for real."""
    model = registry.build_without_weights(arch, env)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                tensor.zero_()
    return model


def static_profile(arch: registry.Architecture, spec: TaskSpec) -> dict:
    """Parameters and MACs: no timing, seconds on a CPU."""
    model = build_for_counting(arch, spec.width_env)
    macs = count_macs(model, torch.device("cpu"), spec.data.image_size)
    return {
        "param_count": registry.count_parameters(model),
        "gmacs": round(macs.gmacs, 4),  # one forward pass, one 32x32 image; 1 MAC = one multiply-add
        "gflops": round(macs.gflops, 4),  # = 2 x gmacs
        "macs_by_op": macs.by_op,
        "unsupported_ops": macs.unsupported_ops,
    }


def time_it(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``fn``, each call bracketed by device synchronisation."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def timed_profile(arch: registry.Architecture, spec: TaskSpec, device: torch.device, batch: int | None = None,
                  repeats: int = 10) -> dict:
    """Latency, throughput and memory, measured on ``device``."""
    batch = batch or spec.training.batch_size
    out: dict = {}
    torch.manual_seed(spec.seed)
    model = registry.build(arch, spec.width_env, device)
    registry.validate(model, arch, device, image_size=spec.data.image_size)
    recipe = recipe_for(spec, device)
    amp = recipe.autocast

    # training step (forward, backward, clip, AdamW, EMA) at the tier's batch, through the real Trainer
    size = spec.data.image_size
    images = torch.randint(0, 256, (max(batch, 64), 3, size, size), dtype=torch.uint8)
    trainer = Trainer(model, spec, ImageBatches(images, batch, device), device)
    trainer.train_step()  # first step allocates optimizer state; not part of the peak below
    sync(device)
    cuda = device.type == "cuda"
    with PeakMemory(device) as memory:
        times = time_it(trainer.train_step, device, warmup=2 if cuda else 1,
                        repeats=repeats if cuda else max(3, repeats // 3))
    if cuda:
        out["peak_mem_mb"], out["peak_mem_increase_mb"] = memory.peak_mb, memory.increase_mb
    else:  # the process's RSS includes all it loaded before: the step's own memory is the increase
        out["peak_mem_mb"] = memory.increase_mb
    trainer.flush_losses()
    out["train_batch"] = batch
    out["train_step_ms"] = round(statistics.median(times) * 1e3, 3)
    out["train_samples_per_sec"] = round(batch / statistics.median(times), 2)

    # inference: EMA-style eval model, no grad, at batch 1 (latency) and at the tier's batch (throughput)
    ema = trainer.ema.eval()

    def forward(b: int) -> Callable[[], None]:
        return _forward_call(ema, b, device, amp, trainer.memory_format, size)

    lat = np.array(time_it(forward(1), device, warmup=3, repeats=repeats * 3)) * 1e3
    out["infer_latency_ms"] = round(float(np.median(lat)), 3)
    out["infer_latency_ms_p10"], out["infer_latency_ms_p90"] = (round(float(v), 3)
                                                                for v in np.percentile(lat, [10, 90]))
    thr = time_it(forward(batch), device, warmup=2, repeats=repeats)
    out["infer_batch"] = batch
    out["infer_samples_per_sec"] = round(batch / statistics.median(thr), 2)

    # DDIM-50 sampling at a fixed batch per device type
    sample_batch = SAMPLE_BATCH.get(device.type, 8)
    seeds = sample_seeds(spec.seed, sample_batch)
    sample_amp = recipe.sampling_autocast  # the protocol's evaluation.precision
    sample_times = time_it(lambda: ddim_sample(ema, spec.diffusion, spec.sampling, seeds, device, sample_amp, size),
                           device, warmup=1 if device.type == "cuda" else 0, repeats=3 if device.type == "cuda" else 1)
    out["sample_batch"], out["sample_steps"] = sample_batch, spec.sampling.steps
    out["sample_images_per_sec"] = round(sample_batch / statistics.median(sample_times), 3)
    return out


def _forward_call(model: torch.nn.Module, batch: int, device: torch.device, amp, memory_format,
                  image_size: int = 32) -> Callable[[], None]:
    """One no-grad forward pass of ``batch`` random images [batch,3,S,S] at random timesteps."""
    x = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=memory_format)
    t = torch.randint(0, 1000, (batch,), device=device)

    def call():
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            model(x, t)
    return call


def inference_latency_ms(arch: registry.Architecture, spec: TaskSpec, device: torch.device, repeats: int = 30) -> float:
    """Median milliseconds of one forward pass of one image (batch 1), as ``profile`` measures
    ``infer_latency_ms``; weights do not change it, so a fresh model is timed."""
    torch.manual_seed(spec.seed)
    model = registry.build(arch, spec.width_env, device).eval()
    recipe = recipe_for(spec, device)
    model = model.to(memory_format=recipe.memory_format)
    call = _forward_call(model, 1, device, recipe.autocast, recipe.memory_format, spec.data.image_size)
    return round(statistics.median(time_it(call, device, warmup=3, repeats=repeats)) * 1e3, 3)


def profile(arch_name: str, tier: str, task: str = "cifar10", device: torch.device | None = None,
            batch: int | None = None, timing: bool = True) -> dict:
    """The full profile of one architecture at one tier; a failure is recorded under ``error``."""
    device = device or torch.device("cpu")
    spec = resolve_task(task, tier)
    out = {"arch": registry.canonical_name(Path(arch_name).stem), "tier": tier, "task": spec.name,
           "task_version": spec.version, "device": device_info(device)["name"], "device_type": device.type,
           "dtype": recipe_for(spec, device).precision, "timing": timing}
    try:
        arch = registry.find_architecture(arch_name)
        out["arch"] = arch.name
        out.update(static_profile(arch, spec))
        if timing:
            out.update(timed_profile(arch, spec, device, batch))
            peak = matmul_precision(out["dtype"], device.type, device_info(device).get("capability"))
            out["train_mfu"] = mfu(out["gflops"], out["train_samples_per_sec"], out["device"], peak)
            out["mfu_peak"] = peak
    except HarnessError as exc:
        out["error"] = str(exc)
    except Exception as exc:  # one architecture's crash must not stop a sweep over all of them
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc(limit=5)
    out["versions"] = library_versions()
    out["created_at"] = now()
    return out


def profile_path(results_dir: str | Path, result: dict) -> Path:
    device = "".join(c if c.isalnum() else "-" for c in result["device"]).strip("-").lower() or result["device_type"]
    suffix = "" if result["timing"] else "-static"
    return Path(results_dir) / "profiles" / result["task"] / result["arch"] / result["tier"] / f"{device}{suffix}.json"


def save_profile(results_dir: str | Path, result: dict) -> Path:
    path = profile_path(results_dir, result)
    atomic_write_json(path, result)
    return path
