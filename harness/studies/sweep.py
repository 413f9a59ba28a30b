"""Sweeps: the cross product of architectures x tiers x seeds, each cell one ``run`` on Ray.

A cell is exactly the run ``python -m harness run`` makes with the same flags (same folder,
record and checkpoint), so sweeps and single runs resume each other. The plan looks at every
cell's folder first: a completed run with the same settings is skipped, a partial one resumes
from its checkpoint, one locked by a live process is reported and left alone. The manifest
``RESULTS_DIR/sweeps/<task>-<id>.json`` (the id is a hash of the cells and settings, so the same
command finds it again) says where every cell stands; the leaderboard report reads it.

    sweep = Sweep(SweepSpec("shapes", ["standard", "no_attn"], ["smoke"], [42, 43], results_dir="results"))
    manifest = sweep.execute()
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from harness.cluster.connect import connect
from harness.cluster.pool import Job, Outcome, RayPool
from harness.cluster.resources import Resources, allocate, cluster_resources, local_resources, processes_note
from harness.errors import HarnessError
from harness.files import atomic_write_json, now
from harness.protocol import registry
from harness.protocol.spec import TaskSpec
from harness.protocol.tasks import result_settings
from harness.run import checkpoints
from harness.run.folder import LOG_FILE
from harness.run.locks import LOCK_FILE, RunLock, RunLocked
from harness.run.records import RECORD_FILE, RunRecord, git_commit, read_record
from harness.run.request import ResolvedRun, RunRequest, plan_run
from harness.run.signals import signals_interrupt
from harness.studies.drive import Driver, drive
from harness.studies.session import absolute_inputs, driver_lock, ray_session
from harness.world import refuse_cpu_fallback

FINAL = ("completed", "skipped")  # a cell in one of these states needs nothing more


@dataclass(frozen=True)
class SweepSpec:
    """What to run: the cross product of ``archs`` x ``tiers`` x ``seeds`` under one task."""

    task: str
    archs: list[str]
    tiers: list[str]
    seeds: list[int | None]
    results_dir: str | Path = "results"
    overrides: dict = field(default_factory=dict)
    data_dir: str | Path | None = None
    device: str = "auto"


@dataclass
class Cell:
    plan: ResolvedRun  # the cell's run, resolved once: what it is given, its settings and its folder
    action: str = "run"  # run | resume | skip | locked
    resume_step: int | None = None
    holder: dict | None = None
    record_problem: str | None = None  # its record is there but cannot be read: said, and the run rewrites it

    @property
    def arch(self) -> str:  # the registry's name (the file's stem)
        return self.plan.architecture.name

    @property
    def arch_ref(self) -> str:  # what the run is given: a name, or an absolute path for a file outside architectures/
        return self.plan.request.arch

    @property
    def spec(self) -> TaskSpec:
        return self.plan.spec

    @property
    def tier(self) -> str:
        return self.plan.spec.tier

    @property
    def seed(self) -> int:
        return self.plan.spec.seed

    @property
    def folder(self) -> Path:
        return self.plan.folder

    @property
    def key(self) -> str:
        return f"{self.arch}/{self.tier}/seed{self.seed}"


def expand(sweep: SweepSpec) -> list[Cell]:
    """Every (tier, seed, arch), resolved and checked before anything starts; tiers first, so
    the cheap tier of every architecture finishes before the expensive ones."""
    names = registry.architecture_names() if sweep.archs == ["all"] else sweep.archs
    archs = []
    for name in dict.fromkeys(names):
        arch = registry.find_architecture(name)
        in_registry = arch.path.parent.resolve() == registry.architectures_dir().resolve()
        archs.append((arch.name, arch.name if in_registry else str(arch.path.resolve())))
    if len({name for name, _ in archs}) < len(archs):
        raise HarnessError("Two of the architectures given have the same name (file stem), so their runs would share "
                           "a folder. Rename one of the files.")
    return [Cell(plan_run(RunRequest(task=sweep.task, arch=ref, tier=tier, seed=seed, overrides=dict(sweep.overrides),
                                     device=sweep.device, results_dir=sweep.results_dir, data_dir=sweep.data_dir,
                                     progress=False)))
            for tier in dict.fromkeys(sweep.tiers) for seed in dict.fromkeys(sweep.seeds) for _, ref in archs]


def _same_config(record: RunRecord, spec: TaskSpec, device_type: str | None = None) -> bool:
    """The same result settings (protocol/spec.py declares which fields change a result) and, on
    ``device_type``, the same training and sampling precision (training.autocast_devices is no result
    setting, since a record says the precision it used, but it decides that precision): a completed run
    that differs only in where its curves go or how often it logged is done."""
    if result_settings(record.config) != result_settings(spec.to_dict()):
        return False
    if device_type is None:
        return True

    from harness.protocol.recipe import recipe_for

    recipe = recipe_for(spec, device_type)
    return (record.precision, record.eval_precision or record.precision) == (recipe.precision,
                                                                             recipe.sampling_precision)


def inspect(cell: Cell, device_type: str) -> None:
    """Set ``cell.action`` from what its folder holds."""
    record, cell.record_problem = read_record(cell.folder / RECORD_FILE)
    if (record is not None and record.status == "completed" and _same_config(record, cell.spec, device_type)
            and record.arch_sha256 == cell.plan.architecture.sha256
            and (record.device or {}).get("type") == device_type):
        cell.action, cell.resume_step = "skip", record.step
        return
    if (cell.folder / LOCK_FILE).exists():
        try:
            RunLock(cell.folder).acquire().release()
        except RunLocked as exc:
            cell.action, cell.holder = "locked", exc.holder
            return
    if checkpoints.exists(cell.folder):
        cell.action, cell.resume_step = "resume", record.step if record is not None else None


def sweep_id(sweep: SweepSpec, cells: list[Cell]) -> str:
    """Stable across re-runs of the same command: a hash of the cells and the settings."""
    identity = {"task": sweep.task, "cells": [c.key for c in cells], "overrides": sweep.overrides,
                "archs": sorted({c.arch_ref for c in cells}), "device": sweep.device}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{cells[0].spec.name}-{digest}"


class Sweep(Driver):
    what = "sweep"

    def __init__(self, spec: SweepSpec, *, address: str | None = None, gpus_per_run: float | None = None,
                 cpus_per_run: float | None = None, max_parallel: int | None = None, max_retries: int = 3,
                 progress: bool = True, stream=None, devices: int | None = None):
        super().__init__(stream, progress)
        task, results_dir, data_dir = absolute_inputs(spec.task, spec.results_dir, spec.data_dir)
        self.spec = replace(spec, task=task, results_dir=results_dir, data_dir=data_dir)
        self.address = address
        self.requested = {"gpus_per_run": gpus_per_run, "cpus_per_run": cpus_per_run, "max_parallel": max_parallel,
                          "devices": devices}
        self.max_retries = max_retries
        self.cells = expand(self.spec)
        self.id = sweep_id(self.spec, self.cells)
        self.manifest_path = results_dir / "sweeps" / f"{self.id}.json"
        self.by_key = {c.key: c for c in self.cells}
        # while driving (drive.py): the cells to run and each one's first step in this session, those not
        # submitted yet, and this session's finished runs and starts
        self.todo: list[Cell] = []
        self.start_steps: dict[str, int] = {}
        self.queue: list[Cell] = []
        self.finished: set[str] = set()
        self.starts: dict[str, int] = {}  # starts in this session: a second one is a retry
        self.bar = None  # the progress bar

    # -- resources --------------------------------------------------------------------------------

    def allocation(self, resources: Resources) -> dict:
        return allocate(resources, self.spec.device, runs=len(self.cells), **self.requested)

    def plan(self, allocation: dict) -> list[Cell]:
        refuse_cpu_fallback([c.spec for c in self.cells], self.spec.device, allocation["device_type"])
        for cell in self.cells:
            inspect(cell, allocation["device_type"])
        return self.cells

    # -- dry run ----------------------------------------------------------------------------------

    def dry_run(self) -> dict:
        """The cells, what each would do, and the resources asked for; starts nothing."""
        if self.address or os.environ.get("RAY_ADDRESS"):
            import ray

            connect(self.address)
            try:
                resources = cluster_resources()
            finally:
                ray.shutdown()
        else:
            resources = local_resources()
        allocation = self.allocation(resources)
        self.plan(allocation)
        return {"sweep": self.id, "manifest": str(self.manifest_path), "resources": resources.to_dict(),
                "allocation": allocation, "cells": [self._cell_entry(c) for c in self.cells]}

    # -- execution --------------------------------------------------------------------------------

    def execute(self) -> dict:
        """Run every cell that needs it; return the manifest (also written to ``manifest_path``).
        Raises KeyboardInterrupt after a Ctrl-C has stopped every run with a checkpoint."""
        def allocation(resources: Resources) -> dict:
            chosen = self.allocation(resources)
            self.plan(chosen)
            return chosen

        def arch_hashes() -> dict[str, str] | None:  # each node must have the same files as this one
            todo = self._todo()
            return {c.arch_ref: c.plan.architecture.sha256 for c in todo} if todo else None

        with driver_lock(self.spec.results_dir, self.manifest_path.with_suffix(".lock"), f"sweep {self.id}"):
            if not (self.address or os.environ.get("RAY_ADDRESS")):  # a private instance would be this machine
                resources = local_resources()
                chosen = allocation(resources)
                if not self._todo():  # nothing to run: no Ray instance to start (7 s on a 2-core VM)
                    self._open_manifest(resources, chosen)
                    self._report_plan([])
                    self._close_session(interrupted=False)
                    return self.manifest
            with ray_session(self.address, allocation, self.max_retries, self.spec.results_dir, arch_hashes,
                             "sweep") as session:
                todo = self._todo()
                self._open_manifest(session.resources, session.allocation)
                self._report_plan(todo)
                if todo:
                    self._drive(session.pool, todo, session.allocation["max_parallel"])
                else:
                    self._close_session(interrupted=False)
        return self.manifest

    def _todo(self) -> list[Cell]:
        return [c for c in self.cells if c.action in ("run", "resume")]

    @signals_interrupt()  # also around closing the session (drive() enters it again for its loop)
    def _drive(self, pool: RayPool, todo: list[Cell], max_parallel: int) -> None:
        self.todo, self.queue = todo, list(todo)
        self.finished, self.starts = set(), {}  # this session's
        self.start_steps = {c.key: c.resume_step or 0 for c in todo}
        self.bar = tqdm(total=sum(c.spec.training.steps - self.start_steps[c.key] for c in todo), unit="step",
                        desc="sweep", disable=not self.progress, dynamic_ncols=True)
        try:
            drive(pool, self, max_parallel)
        finally:
            self.bar.close()
            self._close_session(interrupted=self.stopping)

    def next_job(self) -> Job | None:
        if not self.queue:
            return None
        cell = self.queue.pop(0)
        self._set(cell, status="queued")
        return Job(key=cell.key, request=replace(cell.plan.request, tags={"sweep": self.id}), folder=str(cell.folder))

    def on_stop(self) -> None:
        self.queue.clear()

    def on_wait(self, steps: dict[str, int]) -> None:
        """The bar counts training steps done in this session over every cell, so its ETA means something."""
        statuses = [self._entry(c)["status"] for c in self.todo]
        start = self.start_steps
        self.bar.n = sum(c.spec.training.steps - start[c.key] if status in FINAL
                         else max(0, steps.get(c.key, start[c.key]) - start[c.key])
                         for c, status in zip(self.todo, statuses))
        self.bar.set_postfix({"done": sum(s in FINAL for s in statuses), "running": statuses.count("running"),
                              "failed": sum(s in ("failed", "locked") for s in statuses),
                              "queued": statuses.count("queued")}, refresh=True)

    # -- events -----------------------------------------------------------------------------------

    def on_event(self, key: str, event: dict) -> None:
        cell = self.by_key[key]
        if cell.key in self.finished:  # a late report of a run whose outcome is in
            return
        if event["kind"] == "started":
            entry = self._entry(cell)
            self.starts[cell.key] = self.starts.get(cell.key, 0) + 1
            self._set(cell, status="running", node=event["node"], attempts=entry.get("attempts", 0) + 1,
                      started_at=now())
            if self.starts[cell.key] > 1:
                self.say(f"retrying   {cell.key} on {event['node']} (attempt {self.starts[cell.key]}): its worker "
                         f"died; it resumes from its checkpoint")
        elif event["kind"] == "evaluation":
            self._set(cell, last_fid=event["fid"], last_eval_step=event["step"])
        elif event["kind"] == "note":  # long work that is not training (an FID reference): said, not silent
            self.say(f"note       {cell.key}: {event['text']}")

    def on_outcome(self, outcome: Outcome) -> None:
        cell = self.by_key[outcome.key]
        self.finished.add(cell.key)
        fields = {k: v for k, v in outcome.to_dict().items() if k != "key" and v is not None}
        self._set(cell, ended_at=now(), **fields)
        line = f"{outcome.status:<11}{cell.key}"
        if outcome.status == "completed":
            line += (f"  best FID {outcome.best_fid:.2f} at step {outcome.best_step}" if outcome.best_fid is not None
                     else "")
            line += f"  {outcome.wall_seconds:.0f} s  on {outcome.node}"
        elif outcome.status in ("failed", "locked"):
            line += f"  {outcome.message}" + (f"  (log: {outcome.log})" if outcome.status == "failed" and outcome.log
                                              else "")
        self.say(line)

    # -- manifest ---------------------------------------------------------------------------------

    def _cell_entry(self, cell: Cell) -> dict:
        entry = {"key": cell.key, "arch": cell.arch, "tier": cell.tier, "seed": cell.seed, "action": cell.action,
                 "status": {"skip": "skipped", "locked": "locked"}.get(cell.action, "queued"),
                 "record": str(cell.folder / RECORD_FILE), "log": str(cell.folder / LOG_FILE)}
        if cell.resume_step is not None:
            entry["resume_step" if cell.action == "resume" else "step"] = cell.resume_step
        if cell.holder:
            entry["holder"] = cell.holder
            entry["message"] = str(RunLocked(cell.folder, cell.holder))
        return entry

    def _open_manifest(self, resources: Resources, allocation: dict) -> None:
        previous = {}
        if self.manifest_path.exists():
            try:
                previous = json.loads(self.manifest_path.read_text())
            except (OSError, ValueError) as exc:  # cut short, say: the runs' own folders still say where each is
                kept = self.manifest_path.with_name(self.manifest_path.name + ".damaged")
                os.replace(self.manifest_path, kept)
                self.say(f"The sweep's manifest {self.manifest_path} could not be read ({exc}); moved it to {kept} "
                         f"and writing a new one (each run's folder still says how far it got).")
        old_cells = {c["key"]: c for c in previous.get("cells", [])}
        cells = []
        for cell in self.cells:
            entry = self._cell_entry(cell)
            old = old_cells.get(cell.key, {})
            entry["attempts"] = old.get("attempts", 0)
            if cell.action == "skip":  # keep what the finishing session wrote (best FID, node, times)
                entry = {**old, **entry}
            cells.append(entry)
        session = {"started_at": now(), "host": socket.gethostname(), "pid": os.getpid(), "command": " ".join(sys.argv)}
        self.manifest = {
            "sweep": self.id, "task": self.spec.task, "archs": sorted({c.arch for c in self.cells}),
            "tiers": list(dict.fromkeys(c.tier for c in self.cells)),
            "seeds": list(dict.fromkeys(c.seed for c in self.cells)),
            "overrides": self.spec.overrides, "results_dir": str(self.spec.results_dir),
            "started_at": previous.get("started_at", now()), "ended_at": None, "git_commit": git_commit(),
            "resources": resources.to_dict(), "allocation": allocation, "max_retries": self.max_retries,
            "sessions": previous.get("sessions", []) + [session], "cells": cells,
        }
        self._save_manifest()

    def _entry(self, cell: Cell) -> dict:
        return next(e for e in self.manifest["cells"] if e["key"] == cell.key)

    def _set(self, cell: Cell, **values) -> None:
        self._entry(cell).update(values)
        self._save_manifest()

    def _save_manifest(self) -> None:
        atomic_write_json(self.manifest_path, self.manifest)

    def _close_session(self, interrupted: bool) -> None:
        for entry in self.manifest["cells"]:
            if entry["status"] in ("queued", "running"):  # not reached, or stopped by Ctrl-C
                entry["status"] = "interrupted" if interrupted else entry["status"]
        self.manifest["sessions"][-1].update(ended_at=now(), interrupted=interrupted)
        if all(e["status"] in FINAL for e in self.manifest["cells"]):
            self.manifest["ended_at"] = now()
        self._save_manifest()

    def _report_plan(self, todo: list[Cell]) -> None:
        skipped = [c for c in self.cells if c.action == "skip"]
        locked = [c for c in self.cells if c.action == "locked"]
        resumed = [c for c in todo if c.action == "resume"]
        alloc = self.manifest["allocation"]
        self.say(f"Sweep {self.id}: {len(self.cells)} cells; {len(todo)} to run ({len(resumed)} resuming from "
                 f"checkpoints), {len(skipped)} already completed, {len(locked)} locked by other processes. Each run: "
                 f"{alloc['gpus_per_run']:g} GPU, {alloc['cpus_per_run']:g} CPU{processes_note(alloc)}; up to "
                 f"{alloc['max_parallel']} at once. "
                 f"Manifest: {self.manifest_path}")
        for cell in locked:
            self.say(f"locked     {cell.key}  {self._entry(cell)['message']}")
        for cell in (c for c in self.cells if c.record_problem):
            self.say(f"damaged    {cell.key}  {cell.record_problem}: not counted as done; the run "
                     + ("resumes from its checkpoint" if cell.action == "resume" else "starts again")
                     + " and writes a new record")
