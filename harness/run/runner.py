"""One process's part of one run, from start (or from its checkpoint) to a record.

``execute(plan, hooks)`` is the shell: it takes the run folder's lock, opens ``run.log``, builds the run's parts
in one step (parts.py: model, data, trainer, evaluator, record, trackers; then its checkpoint) and hands them to a
``Run``, which alternates training segments and evaluation points, writing a checkpoint and the record atomically
after each evaluation and every ``checkpoint_every`` steps. Re-running the same request resumes from the
checkpoint. ``harness.launch`` calls it in this process, or in each of several (DDP).

Why a shell and a ``Run`` built from finished parts, and not one object whose phases build it: a ``Run`` has all
its attributes from its first line on (a phase called out of order cannot meet a half-built run), and the order
of the phases (build, resume, train and evaluate, finish) reads top to bottom in ``execute``.

    record = execute(plan_run(RunRequest("shapes", "standard", "smoke")))
    record.best_fid, record.status
"""
from __future__ import annotations

import contextlib
import copy
import os
import socket
import time
import traceback
from dataclasses import asdict

import torch
from tqdm.auto import tqdm

from harness.errors import CannotWrite, HarnessError, NonFiniteLoss, RunFailed, RunInterrupted
from harness.files import now
from harness.protocol.recipe import COMPILE_NOTE, recipe_for
from harness.run import checkpoints, grid, locks, parts
from harness.run.failures import describe_failure, stopped_message
from harness.run.folder import GRID_FILE, LOG_FILE, RunLog, grid_canvas, save_grid
from harness.run.records import CHECKPOINT_FILE, RunRecord, ensure_writable, read_record, run_timings
from harness.run.request import Hooks, ResolvedRun
from harness.run.signals import StopOnSignal
from harness.world import SINGLE, World, device_substitutions, pick_device, refuse_cpu_fallback, sync


def execute(plan: ResolvedRun, hooks: Hooks = Hooks(), world: World = SINGLE, device: str | None = None) -> RunRecord:
    """Run ``plan`` in this process; return its record. ``device``: the device this process uses where a launcher
    chose it (a DDP worker's ``cuda:N``); the request's device is what the user asked for.

    With a ``world`` of several processes (harness/launch/local.py) every rank runs the same phases in step, a stop
    is agreed on by all ranks at the same step, and rank 0 alone writes (the launcher holds the lock). Raises
    RunInterrupted when stopped (a signal, or ``hooks.should_stop``), RunFailed when the run fails by itself."""
    started = time.perf_counter()
    asked = plan.request.device
    used = pick_device(device or asked)
    refuse_cpu_fallback([plan.spec], asked, used.type)
    run_log = RunLog(plan.folder / LOG_FILE if world.is_main else None, echo=hooks.log)
    log = run_log.write
    ensure_writable(plan.folder)
    lock = contextlib.nullcontext() if world.distributed else locks.RunLock(plan.folder)
    with lock, run_log:
        log(f"Run {plan.name} on {socket.gethostname()}, pid {os.getpid()}, {used} ({locks.holder_command()})")
        substitutions = parts.Substitutions(log, device_substitutions(asked, used.type))
        try:
            built = parts.build(plan, used, world, substitutions, log)
        except Exception as exc:  # a broken file, missing data or weights: say so in a record
            log(traceback.format_exc().rstrip())
            _record_failure_before_training(plan, used, world, exc, log)
            raise
        try:
            parts.resume(built, plan, used, log)
        except Exception:  # changed settings, an unreadable checkpoint: the record stays as it was
            log(traceback.format_exc().rstrip())
            raise
        return Run(plan, built, hooks, world, used, run_log, started).execute()


class Run:
    """A run with every part built: ``execute`` trains to each pending evaluation point and evaluates there;
    ``train_to``, ``evaluate``, ``checkpoint`` and ``finish`` are its phases."""

    def __init__(self, plan: ResolvedRun, built: parts.Parts, hooks: Hooks, world: World, device: torch.device,
                 run_log: RunLog, started: float):
        self.plan, self.spec, self.folder = plan, plan.spec, plan.folder
        self.parts, self.hooks, self.world, self.device = built, hooks, world, device
        self.trainer, self.evaluator, self.record, self.trackers = (built.trainer, built.evaluator, built.record,
                                                                    built.trackers)
        self.totals, self.substitutions = built.totals, built.substitutions
        self.run_log, self.log = run_log, run_log.write
        self.started, self.wall_before = started, built.totals.wall_seconds  # this process's start; earlier ones'
        self.last_good_step = self.trainer.step  # the step of the newest checkpoint on disk
        self.stop = StopOnSignal()
        self.stopped_by: str | None = None  # the signal that asked for a stop, when one did
        self.compiled = False  # with training.compile: whether this process's first step (the compile) is done

    def execute(self) -> RunRecord:
        pending = self._pending_points()
        if not pending:
            self.complete_grid()  # a run killed after its last evaluation, or a grid asked for once it finished
            self.log(f"Nothing to do: this run already finished {self.trainer.step} steps and every evaluation. "
                     f"Record: {self.plan.record_path}. Pass --fresh to run it again, or more --steps to continue it.")
            return self.finish("completed")
        self.trackers.start(self.trainer.step)
        bar = tqdm(total=self.spec.training.steps, initial=self.trainer.step, unit="step", dynamic_ncols=True,
                   desc=f"{self.parts.architecture.name}/{self.spec.tier}", disable=not self.plan.request.progress)
        try:
            with self.stop:
                for point in pending:
                    self.train_to(point, bar)
                    self.evaluate()
                    # a Ctrl-C during the evaluation stops here, before any further training
                    if point != pending[-1] and self._stop_requested():
                        raise self._interrupt(" after its evaluation")
                self.complete_grid()
        except (RunInterrupted, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise self._fail(exc) from exc
        finally:
            bar.close()
        return self.finish("completed")

    # -- phases ---------------------------------------------------------------------------------

    def train_to(self, point: int, bar) -> None:
        """Train until step ``point``, logging the loss and checkpointing on the task's schedule."""
        trainer, training = self.trainer, self.spec.training
        segment_start, segment_step = time.perf_counter(), trainer.step
        while trainer.step < point:
            compiling = self.parts.recipe.compile and not self.compiled  # torch.compile works at the first step
            if compiling:
                self.log(f"{COMPILE_NOTE}compiling the training step (the first step of this process; may take "
                         f"minutes)")
            trainer.train_step()
            if compiling:
                self.compiled = True
                self.log(f"{COMPILE_NOTE}compiled; the first step took {time.perf_counter() - segment_start:.0f} s")
            bar.update(1)
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
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
                self.trackers.losses(trainer.loss_curve)  # host floats already read back: no device sync
            if at_ckpt or stopping:
                self._account(segment_start, segment_step)
                segment_start, segment_step = time.perf_counter(), trainer.step
                self.checkpoint()
            if stopping:
                raise self._interrupt("")
        self._account(segment_start, segment_step)

    def evaluate(self) -> None:
        """FID/KID of the EMA model at the current step, saved with a checkpoint and the record; then the sampler
        grid's pairs due there, saved again: a pair that fails at run time loses none of the protocol's numbers."""
        eval_start = time.perf_counter()
        result = self.evaluator.evaluate(self.trainer.ema_model(), self.trainer.step, self.world)
        self.totals.eval_seconds += time.perf_counter() - eval_start
        if result is not None:  # rank 0 (the others' share is in its result)
            self._keep_evaluation(result)
        points = self.evaluator.grid_at(self.trainer.step)
        if not points:
            return
        grid_start = time.perf_counter()
        grid = self.evaluator.evaluate_grid(self.trainer.ema_model(), self.trainer.step, points, self.world)
        self.totals.eval_seconds += time.perf_counter() - grid_start
        if grid is None:  # not rank 0
            return
        entry = next(e for e in self.record.evaluations if e["step"] == self.trainer.step)
        entry["samplers"] = {**entry.get("samplers", {}), **grid}
        for key, scores in grid.items():  # the sampler grid, from the same seeds
            manifold = scores if "precision" in scores else None  # evaluation.manifold_k null: none
            self.log(f"step {self.trainer.step}: {key} FID {scores['fid']:.2f}" + _manifold_text(manifold))
        self.checkpoint()

    def _keep_evaluation(self, result) -> None:
        """Rank 0: the protocol's evaluation into the record (a new best's weights kept), the trackers, the sample
        grid PNGs and the log; saved with a checkpoint."""
        record, reference = self.record, self.evaluator.reference
        record.add_evaluation(result.to_dict())
        if record.best_step == result.step:  # a new best: its weights are what export-model exports by default
            checkpoints.save_best(self.folder, self.trainer.ema_model(), result.step, result.fid)
        self.trackers.evaluation(self.trainer.step, result.to_dict(), grid_canvas(result.grid))
        record.reference = {"source": reference.source, "num_images": reference.num_images,
                            "cache_file": str(reference.path), "asked": self.spec.evaluation.reference,
                            "substitution": reference.substitution}
        if reference.substitution:
            self.substitutions.add("FID reference", self.spec.evaluation.reference, reference.source,
                                   reference.substitution)
        if reference.kid_substitution:
            self.substitutions.add("kid", f"KID against {self.spec.evaluation.reference} (evaluation.kid: true)",
                                   "none", reference.kid_substitution)
        save_grid(result.grid, self.folder / f"samples_step{self.trainer.step:06d}.png")
        save_grid(result.grid, self.folder / GRID_FILE)
        record.samples_png = GRID_FILE
        self.log(f"step {self.trainer.step}: FID {result.fid:.2f}"
                 + (f", KID {result.kid:.4f}" if result.kid is not None else "") + _manifold_text(result.manifold)
                 + f" ({result.num_samples} samples)")
        self.checkpoint()
        if self.hooks.on_evaluation is not None:
            self.hooks.on_evaluation(result.to_dict())

    def complete_grid(self) -> None:
        """The sampler grid where the run lacks it: at the last evaluation (a grid asked for after the run
        finished) and, with samplers.at final, at the best evaluation's kept weights when that is another step.
        Rank 0 alone: the other ranks of a multi-process run have finished."""
        record, points = self.record, self.evaluator.grid_at(self.spec.training.steps)
        if not self.world.is_main or not points:
            return

        def model_of(weights: dict | None) -> torch.nn.Module:
            model = self.trainer.ema_model()
            if weights is not None:
                model = copy.deepcopy(model)
                model.load_state_dict(weights)
            return model

        grid.add_grid(record, self.evaluator, points, grid.kept_weights(self.folder, record, self.trainer.step),
                      model_of, self.checkpoint, self.log)

    def checkpoint(self) -> None:
        """Save the checkpoint (the previous one kept) and the record, status running."""
        if not self.world.is_main:
            self.last_good_step = self.trainer.step
            return
        self.totals.wall_seconds = self._wall()
        record = self.record
        state = {"trainer": self.trainer.state_dict(), "evaluations": record.evaluations,
                 "totals": asdict(self.totals), "fingerprint": parts.fingerprint(self.parts, self.plan, self.device),
                 "arch_sha256": self.parts.architecture.sha256, "created_at": record.created_at,
                 "reference": record.reference, "samples_png": record.samples_png,
                 "substitutions": self.substitutions.notes}
        checkpoints.save(self.folder, state)
        self.last_good_step = self.trainer.step
        self._write_record("running")
        self.trackers.timings(self.trainer.step, record.timings)

    def finish(self, status: str) -> RunRecord:
        self._write_record(status)
        self.log(f"Run {status} at step {self.trainer.step}: best FID "
                 + (f"{self.record.best_fid:.2f} at step {self.record.best_step}" if self.record.best_fid is not None
                    else "n/a") + f"; record {self.plan.record_path}")
        return self.record

    # -- helpers ----------------------------------------------------------------------------------

    def _pending_points(self) -> list[int]:
        step, points = self.trainer.step, self.spec.evaluation.eval_points
        done = {e["step"] for e in self.record.evaluations}
        missed = [p for p in points if p not in done and p < step]
        if missed:  # a point added (e.g. with --set) below where the checkpoint already is
            self.log(f"Skipping evaluation point(s) {', '.join(map(str, missed))}: the checkpoint is already at step "
                     f"{step}. Pass --fresh to evaluate them.")
        return [p for p in points if p not in done and p >= step]

    def _stop_requested(self) -> bool:
        """A stop signal, or the caller's should_stop (which may answer with the name of a signal its caller
        got), in any process of the run: a collective, every rank asks at the same points."""
        should_stop = self.hooks.should_stop
        asked = should_stop(self.trainer.step) if should_stop is not None else False
        if self.stop.requested or asked:
            self.stopped_by = self.stop.signal_name or (asked if isinstance(asked, str) else None) or self.stopped_by
        return self.world.any(bool(self.stop.requested or asked))

    def _interrupt(self, where: str) -> RunInterrupted:
        by, said = self.stopped_by, f" by {self.stopped_by}" if self.stopped_by else ""
        self.record.interruption = {"step": self.trainer.step, "signal": by, "at": now()}
        self._write_record("interrupted")
        self.log(f"Stopped{said} at step {self.trainer.step}{where} (checkpoint saved).")
        return RunInterrupted(f"Stopped{said} at step {self.trainer.step}{where}; checkpoint saved to "
                              f"{self.folder / CHECKPOINT_FILE}. Run the same command again to resume.", by)

    def _fail(self, exc: Exception) -> RunFailed:
        """The run failed by itself: record why (status failed), keep the last good checkpoint."""
        self.log(traceback.format_exc().rstrip())
        if isinstance(exc, NonFiniteLoss):
            self.trainer.step = exc.step
        what, advice = describe_failure(exc, self.trainer.step, self.run_log.path)
        self.record.failure = {"step": self.trainer.step, "message": what, "error": type(exc).__name__}
        try:
            self._write_record("failed")
            said = f"its record (status 'failed') is at {self.plan.record_path}"
        except CannotWrite as second:  # the disk is full even for the record: it keeps its last state
            self.log(str(second))
            said = f"its record {self.plan.record_path} could not be updated either ({second.__cause__})"
        return RunFailed(stopped_message(what, said, self.folder / CHECKPOINT_FILE, self.last_good_step, advice))

    def _account(self, segment_start: float, segment_step: int) -> None:
        sync(self.device)  # the steps queued on a GPU are done before the clock is read
        self.totals.train_seconds += time.perf_counter() - segment_start
        self.totals.train_images += (self.trainer.step - segment_step) * self.spec.training.batch_size

    def _wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def _write_record(self, status: str) -> None:
        if not self.world.is_main:
            return
        record, trainer = self.record, self.trainer
        record.status, record.step = status, trainer.step
        record.loss_curve = [list(x) for x in trainer.loss_curve]
        self.totals.wall_seconds = self._wall()
        record.timings = run_timings(asdict(self.totals), record, self.device.type, self.world.size)
        record.stream_sha256 = trainer.stream_sha256
        record.save(self.folder)
        if status != "running":  # the last word: the trackers end (MLflow attaches the record)
            self.trackers.close(status)


def _record_failure_before_training(plan: ResolvedRun, device: torch.device, world: World, exc: Exception,
                                    log) -> None:
    """A run that cannot even start says why in its record: a new record, or the failure added to a partial one
    (its evaluations kept); a completed record is left as it is."""
    if not world.is_main:
        return
    message = str(exc) if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {exc}"
    failure = {"step": 0, "message": message, "error": type(exc).__name__}
    record, problem = read_record(plan.record_path)
    if problem:
        log(f"The earlier record {problem}; writing a new one.")
    if record is not None:
        if record.status != "completed":
            record.status, record.failure = "failed", dict(failure, step=record.step)
            record.save(plan.folder)
        return
    parts.new_record(plan, plan.architecture, device, recipe_for(plan.spec, device), "failed", param_count=None,
                     failure=failure).save(plan.folder)


def _manifold_text(manifold: dict | None) -> str:
    return "" if not manifold else (f", precision {manifold['precision']:.3f}, recall {manifold['recall']:.3f}, "
                                    f"density {manifold['density']:.3f}, coverage {manifold['coverage']:.3f}")
