"""``run()``: one (task, architecture, tier, seed) from start (or from its checkpoint) to a record.

Everything else (the CLI, sweeps, searches) calls this one function. It resolves the whole
config first, builds and validates the model, then alternates training segments and evaluation
points, writing a checkpoint and the record atomically after each evaluation and every
``checkpoint_every`` steps. Re-running the same call resumes from the checkpoint.

    record = run("shapes", "standard", "smoke")
    record.best_fid, record.status
"""
from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from harness import registry
from harness.data import ImageBatches, load_images
from harness.errors import HarnessError, RunFailed
from harness.evaluation import Evaluator
from harness.flops import count_macs, mfu
from harness.records import (
    CHECKPOINT_FILE, RECORD_FILE, RunRecord, atomic_torch_save, atomic_write_bytes, device_info,
    ensure_writable, git_commit, library_versions, now, run_dir,
)
from harness.tasks import TaskSpec, resolve_task
from harness.trainer import NonFiniteLoss, Trainer, autocast_dtype, precision_name


class RunInterrupted(HarnessError):
    exit_code = 130


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError("--device cuda was asked for, but PyTorch sees no CUDA GPU here. Use --device cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise HarnessError(f"Unknown device '{name}': use auto, cpu or cuda (or cuda:N).") from exc


# Fields that may change between a checkpoint and its resumption: they change neither what was
# trained nor what an FID means, so evaluations before and after stay comparable (a trailing "."
# would cover a whole section). Everything else, evaluation and sampling settings included, is fixed.
_RESUMABLE_CHANGES = ("training.steps", "training.log_every", "training.checkpoint_every", "training.compile",
                      "evaluation.eval_points", "evaluation.feature_batch_size", "sampling.batch_size",
                      "description", "reference_results")


def _run_fingerprint(spec: TaskSpec, device: torch.device, precision: str) -> dict:
    """What a checkpoint must agree with to be resumed: the fixed settings, the device type (RNG
    states are per device) and the precision."""
    return {**_training_fingerprint(spec.to_dict()), "device type": device.type, "precision": precision}


def _training_fingerprint(config: dict, prefix: str = "") -> dict:
    """The resolved config minus the fields in _RESUMABLE_CHANGES, flattened to dotted keys."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if any(name == c or (c.endswith(".") and name.startswith(c)) or name.startswith(c + ".") for c in _RESUMABLE_CHANGES):
            continue
        if isinstance(value, dict):
            out.update(_training_fingerprint(value, f"{name}."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def save_grid(images: torch.Tensor, path: Path, columns: int = 8) -> None:
    """uint8 [N,3,H,W] -> one PNG with ``columns`` images per row."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for i, img in enumerate(images.numpy()):
        r, col = divmod(i, columns)
        canvas[r * h : (r + 1) * h, col * w : (col + 1) * w] = img.transpose(1, 2, 0)
    import io

    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


class _StopOnSignal:
    """First Ctrl-C: finish the current step, checkpoint, stop. Second Ctrl-C: stop at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (e.g. inside a worker): leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def run(
    task: str = "cifar10",
    arch: str = "standard",
    tier: str = "smoke",
    seed: int | None = None,
    *,
    device: str = "auto",
    results_dir: str | Path = "results",
    data_dir: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    fresh: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
    should_stop: Callable[[int], bool] | None = None,
) -> RunRecord:
    """Train and evaluate one architecture under a task's protocol; return its run record.

    ``overrides`` are dotted task fields (``{"training.steps": 100}``). ``should_stop(step)``
    is asked after every step; returning True checkpoints and stops the run (as Ctrl-C does),
    raising RunInterrupted. Raises RunFailed (record status ``failed``) on a non-finite loss.
    """
    started = time.perf_counter()
    overrides = dict(overrides or {})
    if seed is not None:
        overrides["seed"] = seed
    spec = resolve_task(task, tier, overrides)
    dev = pick_device(device)
    architecture = registry.find_architecture(arch)
    directory = run_dir(results_dir, spec.name, architecture.name, spec.tier, spec.seed)
    ensure_writable(directory)
    checkpoint_path, record_path = directory / CHECKPOINT_FILE, directory / RECORD_FILE
    if fresh:
        for path in (checkpoint_path, record_path):
            path.unlink(missing_ok=True)

    architecture, model = registry.load(arch, spec.width_env, dev, spec.seed)
    profile = _static_profile(model, dev)
    images = load_images(spec.data, data_dir)  # uint8 [N,3,32,32] on the host
    batches = ImageBatches(images, spec.training.batch_size, dev, flip=spec.data.horizontal_flip)
    trainer = Trainer(model, spec, batches, dev)

    record = RunRecord(
        task=spec.name, task_version=spec.version, tier=spec.tier, arch=architecture.name, seed=spec.seed,
        status="running", config=spec.to_dict(), arch_file=str(architecture.path), arch_sha256=architecture.sha256,
        param_count=registry.count_parameters(trainer.model), device=device_info(dev), versions=library_versions(),
        git_commit=git_commit(), created_at=now(), updated_at=now(), samples_png=None, profile=profile,
        precision=precision_name(spec, dev),
    )
    totals = {"train_seconds": 0.0, "train_images": 0, "eval_seconds": 0.0, "wall_seconds": 0.0}
    if checkpoint_path.exists():
        # on the CPU first: RNG states must stay CPU tensors; load_state_dict moves the rest
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        _check_resumable(state, _run_fingerprint(spec, dev, record.precision), architecture, checkpoint_path)
        trainer.load_state_dict(state["trainer"])
        record.evaluations, totals = state["evaluations"], state["totals"]
        record.created_at = state.get("created_at", record.created_at)
        record.reference = state.get("reference", record.reference)
        record.samples_png = state.get("samples_png", record.samples_png)
        for evaluation in list(record.evaluations):
            record.add_evaluation(evaluation)
        log(f"Resuming {spec.name}/{architecture.name}/{spec.tier}/seed{spec.seed} from its checkpoint at step "
            f"{trainer.step} ({checkpoint_path}); pass --fresh to start over.")

    done_steps = {e["step"] for e in record.evaluations}
    missed = [p for p in spec.evaluation.eval_points if p not in done_steps and p < trainer.step]
    if missed:  # a point added (e.g. with --set) below where the checkpoint already is
        log(f"Skipping evaluation point(s) {', '.join(map(str, missed))}: the checkpoint is already at step "
            f"{trainer.step}. Pass --fresh to evaluate them.")
    pending = [p for p in spec.evaluation.eval_points if p not in done_steps and p >= trainer.step]
    if trainer.step > spec.training.steps:
        raise HarnessError(
            f"The checkpoint in {directory} is at step {trainer.step}, past the {spec.training.steps} steps asked for. "
            f"Ask for at least {trainer.step} steps, or pass --fresh to start over."
        )

    def bar_factory(total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not progress, dynamic_ncols=True)

    evaluator = Evaluator(spec, dev, lambda: images, autocast_dtype(spec, dev), bar_factory)
    record.inception = {"path": str(evaluator.features.path), "source": evaluator.features.source,
                        "weights_id": evaluator.features.weights_id}

    def checkpoint() -> None:
        totals["wall_seconds"] = wall_before + time.perf_counter() - started
        state = {"trainer": trainer.state_dict(), "evaluations": record.evaluations, "totals": totals,
                 "fingerprint": _run_fingerprint(spec, dev, record.precision), "arch_sha256": architecture.sha256,
                 "created_at": record.created_at, "reference": record.reference, "samples_png": record.samples_png}
        atomic_torch_save(checkpoint_path, state)

    def write_record(status: str) -> None:
        record.status, record.step = status, trainer.step
        record.loss_curve = [list(x) for x in trainer.loss_curve]
        totals["wall_seconds"] = wall_before + time.perf_counter() - started
        record.timings = {
            "train_images_per_sec": round(totals["train_images"] / totals["train_seconds"], 2) if totals["train_seconds"] else None,
            "sampling_images_per_sec": _sampling_rate(record.evaluations),
            "train_seconds": round(totals["train_seconds"], 2), "eval_seconds": round(totals["eval_seconds"], 2),
            "wall_seconds": round(totals["wall_seconds"], 2),
        }
        if totals["train_seconds"] and "gflops" in record.profile:
            record.timings["train_mfu"] = mfu(record.profile["gflops"], totals["train_images"] / totals["train_seconds"],
                                              record.device["name"], record.precision)
        record.save(directory)

    wall_before = totals["wall_seconds"]
    if not pending:
        log(f"Nothing to do: this run already finished {trainer.step} steps and every evaluation. Record: {record_path}. "
            f"Pass --fresh to run it again, or more --steps to continue it.")
        write_record("completed")
        return record

    bar = tqdm(total=spec.training.steps, initial=trainer.step, desc=f"{architecture.name}/{spec.tier}", unit="step",
               disable=not progress, dynamic_ncols=True)
    last_good_step = trainer.step
    stop = _StopOnSignal()

    def stop_requested() -> bool:  # Ctrl-C, or the caller's should_stop
        return stop.requested or (should_stop is not None and should_stop(trainer.step))

    def interrupt(where: str) -> RunInterrupted:
        write_record("interrupted")
        return RunInterrupted(f"Stopped at step {trainer.step}{where}; checkpoint saved to {checkpoint_path}. "
                              f"Run the same command again to resume.")

    try:
        with stop:
            for point in pending:
                segment_start, segment_step = time.perf_counter(), trainer.step
                while trainer.step < point:
                    trainer.train_step()
                    bar.update(1)
                    at_log = trainer.step % spec.training.log_every == 0
                    at_ckpt = trainer.step % spec.training.checkpoint_every == 0
                    stopping = stop_requested()
                    if at_log or at_ckpt or stopping or trainer.step == point:
                        # the loss curve gets a point every log_every steps and at the last step,
                        # wherever a run was interrupted
                        loss = trainer.flush_losses(close_interval=at_log or trainer.step == spec.training.steps)
                        elapsed = time.perf_counter() - segment_start
                        rate = (trainer.step - segment_step) * spec.training.batch_size / max(elapsed, 1e-9)
                        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
                    if at_ckpt or stopping:
                        _account(totals, trainer, segment_start, segment_step, spec)
                        segment_start, segment_step = time.perf_counter(), trainer.step
                        checkpoint()
                        last_good_step = trainer.step
                    if stopping:
                        raise interrupt("")
                _account(totals, trainer, segment_start, segment_step, spec)
                eval_start = time.perf_counter()
                result = evaluator.evaluate(trainer.ema_model(), trainer.step)
                totals["eval_seconds"] += time.perf_counter() - eval_start
                record.add_evaluation(result.to_dict())
                record.reference = {"source": evaluator.reference.source, "num_images": evaluator.reference.num_images,
                                    "cache_file": str(evaluator.reference.path)}
                grid_name = f"samples_step{trainer.step:06d}.png"
                save_grid(result.grid, directory / grid_name)
                save_grid(result.grid, directory / "samples.png")
                record.samples_png = "samples.png"
                bar.write(f"step {trainer.step}: FID {result.fid:.2f}" + (f", KID {result.kid:.4f}" if result.kid is not None else "")
                          + f" ({result.num_samples} samples)")
                checkpoint()
                last_good_step = trainer.step
                write_record("running")
                # a Ctrl-C during the evaluation stops here, before any further training
                if point != pending[-1] and stop_requested():
                    raise interrupt(" after its evaluation")
    except NonFiniteLoss as exc:
        bar.close()
        record.failure = {"step": exc.step, "message": str(exc)}
        trainer.step = exc.step
        write_record("failed")
        raise RunFailed(
            f"Training diverged: the loss was {exc.value} at step {exc.step}. The run stopped; its record "
            f"(status 'failed') is at {record_path}"
            + (f" and the last good checkpoint (step {last_good_step}) is kept at {checkpoint_path}. "
               if checkpoint_path.exists() else ". ")
            + "Check the architecture's initialisation and normalisation, or the learning rate."
        ) from exc
    bar.close()
    write_record("completed")
    return record


def _static_profile(model: torch.nn.Module, device: torch.device) -> dict:
    """Parameters and MACs for the record, so FID can be read against compute."""
    try:
        macs = count_macs(model, device)
    except Exception as exc:  # tracing can fail on exotic models; the run itself must not
        return {"error": f"MAC count failed: {type(exc).__name__}: {exc}"}
    return {"param_count": registry.count_parameters(model), "gmacs": round(macs.gmacs, 4),
            "gflops": round(macs.gflops, 4), "macs_by_op": macs.by_op, "unsupported_ops": macs.unsupported_ops}


def _account(totals: dict, trainer: Trainer, segment_start: float, segment_step: int, spec: TaskSpec) -> None:
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    totals["train_seconds"] += time.perf_counter() - segment_start
    totals["train_images"] += (trainer.step - segment_step) * spec.training.batch_size


def _sampling_rate(evaluations: list[dict]) -> float | None:
    seconds = sum(e["sample_seconds"] for e in evaluations)
    return round(sum(e["num_samples"] for e in evaluations) / seconds, 2) if seconds else None


def _check_resumable(state: dict, fingerprint: dict, architecture: registry.Architecture, path: Path) -> None:
    if state.get("arch_sha256") != architecture.sha256:
        raise HarnessError(
            f"The architecture file {architecture.path} changed since the checkpoint {path} was written, so the "
            f"run cannot resume. Pass --fresh to start over (or restore the file)."
        )
    before, after = state.get("fingerprint", {}), fingerprint
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if "device type" in changed:
        raise HarnessError(
            f"The checkpoint {path} was written on {before.get('device type')!r} and this run is on "
            f"{after['device type']!r}: random-number states and precision differ between devices, so it cannot "
            f"resume here. Resume with --device {before.get('device type')}, or pass --fresh to start over."
        )
    if changed:
        details = "; ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed[:5])
        raise HarnessError(
            f"The checkpoint {path} was made with different settings ({details}), so the run cannot resume "
            f"without mixing incomparable results. "
            f"Pass --fresh to start over, or use another --results-dir."
        )
