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
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from harness.cluster.connect import connect
from harness.cluster.pool import Job, Outcome, RayPool
from harness.cluster.resources import Resources, allocate, cluster_resources, local_resources, processes_note
from harness.errors import HarnessError
from harness.files import atomic_write_json, now
from harness.protocol import registry
from harness.protocol.spec import TaskSpec
from harness.protocol.tasks import resolve_task, result_settings
from harness.run import checkpoints
from harness.run.folder import LOG_FILE
from harness.run.locks import LOCK_FILE, RunLock, RunLocked
from harness.run.records import RECORD_FILE, RunRecord, ensure_writable, git_commit, read_record, run_dir
from harness.run.signals import signal_of, signals_interrupt
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
    arch: str  # the registry's name (the file's stem)
    arch_ref: str  # what the run is given: a name, or an absolute path for a file outside architectures/
    tier: str
    seed: int
    spec: TaskSpec
    folder: Path
    action: str = "run"  # run | resume | skip | locked
    resume_step: int | None = None
    holder: dict | None = None
    record_problem: str | None = None  # its record is there but cannot be read: said, and the run rewrites it

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
        archs.append((arch, arch.name if in_registry else str(arch.path.resolve())))
    if len({a.name for a, _ in archs}) < len(archs):
        raise HarnessError("Two of the architectures given have the same name (file stem), so their runs would share "
                           "a folder. Rename one of the files.")
    cells = []
    for tier in dict.fromkeys(sweep.tiers):
        for seed in dict.fromkeys(sweep.seeds):
            overrides = dict(sweep.overrides, **({"seed": seed} if seed is not None else {}))
            spec = resolve_task(sweep.task, tier, overrides)
            for arch, ref in archs:
                folder = run_dir(sweep.results_dir, spec.name, arch.name, spec.tier, spec.seed)
                cells.append(Cell(arch.name, ref, spec.tier, spec.seed, spec, folder))
    return cells


def _same_config(record: RunRecord, spec: TaskSpec, device_type: str | None = None) -> bool:
    """The same result settings (protocol/spec.py declares which fields change a result) and, on
    ``device_type``, the same training and sampling precision (training.autocast_devices is no result
    setting, since a record says the precision it used, but it decides that precision): a completed run
    that differs only in where its curves go or how often it logged is done."""
    if result_settings(record.config) != result_settings(spec.to_dict()):
        return False
    if device_type is None:
        return True
    import torch

    from harness.protocol.trainer import precision_name, sampling_dtype

    device = torch.device(device_type)
    used = (record.precision, record.eval_precision or record.precision)
    return used == (precision_name(spec, device), "bf16" if sampling_dtype(spec, device) else "fp32")


def inspect(cell: Cell, device_type: str) -> None:
    """Set ``cell.action`` from what its folder holds."""
    record, cell.record_problem = read_record(cell.folder / RECORD_FILE)
    if (record is not None and record.status == "completed" and _same_config(record, cell.spec, device_type)
            and record.arch_sha256 == registry.find_architecture(cell.arch_ref).sha256
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


class Sweep:
    def __init__(self, spec: SweepSpec, *, address: str | None = None, gpus_per_run: float | None = None,
                 cpus_per_run: float | None = None, max_parallel: int | None = None, max_retries: int = 3,
                 progress: bool = True, stream=None, devices: int | None = None):
        results_dir = Path(spec.results_dir).expanduser().resolve()
        if "runtime_resources" in results_dir.parts:
            raise HarnessError(
                f"The results folder {results_dir} is inside Ray's temporary copy of the working directory (a relative "
                f"--results-dir under `ray job submit --working-dir`), which Ray deletes. Pass an absolute "
                f"--results-dir on storage every node mounts at the same path, e.g. --results-dir /shared/results."
            )
        data_dir = str(Path(spec.data_dir).expanduser().resolve()) if spec.data_dir else None
        task = spec.task  # a task file given by path must resolve the same way on every worker
        if Path(task).suffix in (".yaml", ".yml") and Path(task).exists():
            task = str(Path(task).resolve())
        self.spec = SweepSpec(**{**spec.__dict__, "task": task, "results_dir": results_dir, "data_dir": data_dir})
        self.address = address
        self.requested = {"gpus_per_run": gpus_per_run, "cpus_per_run": cpus_per_run, "max_parallel": max_parallel,
                          "devices": devices}
        self.max_retries, self.progress, self.stream = max_retries, progress, stream or sys.stdout
        self.cells = expand(self.spec)
        self.id = sweep_id(self.spec, self.cells)
        self.manifest_path = results_dir / "sweeps" / f"{self.id}.json"

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
        import ray

        ensure_writable(self.spec.results_dir)
        with RunLock(self.manifest_path.parent, name=f"{self.id}.lock",
                     driver=f"sweep {self.id}"):  # one driver per sweep
            connect(self.address)
            try:
                resources = cluster_resources()
                allocation = self.allocation(resources)
                self.plan(allocation)
                todo = [c for c in self.cells if c.action in ("run", "resume")]
                pool = RayPool(allocation, self.max_retries)
                if todo:
                    self._check_nodes(pool, todo)
                self._open_manifest(resources, allocation)
                self._report_plan(todo)
                if todo:
                    self._drive(pool, todo, allocation["max_parallel"])
                else:
                    self._close_session(interrupted=False)
            finally:
                ray.shutdown()  # stops a private instance; only disconnects from a cluster
        return self.manifest

    def _check_nodes(self, pool: RayPool, todo: list[Cell]) -> None:
        hashes = {c.arch_ref: registry.find_architecture(c.arch_ref).sha256 for c in todo}
        problems = pool.check_nodes(self.spec.results_dir, hashes)
        if problems:
            raise HarnessError("The sweep cannot start: " + "; ".join(problems) + ". Put --results-dir on storage "
                               "every node mounts at the same path, and the same architecture files on every node "
                               "(or submit with `ray job submit --working-dir .`).")

    @signals_interrupt()  # SIGTERM and SIGUSR1 stop the runs as Ctrl-C does
    def _drive(self, pool: RayPool, todo: list[Cell], max_parallel: int) -> None:
        queue = list(todo)
        cells = {c.key: c for c in todo}
        start_steps = {c.key: c.resume_step or 0 for c in todo}
        total = sum(c.spec.training.steps - start_steps[c.key] for c in todo)
        bar = tqdm(total=total, unit="step", desc="sweep", disable=not self.progress, dynamic_ncols=True)
        stopping, stopped_by = False, "SIGINT"
        self._finished: set[str] = set()
        self._starts: dict[str, int] = {}  # starts in this session: a second one is a retry
        try:
            while queue or pool.running:
                try:
                    while queue and len(pool.running) < max_parallel and not stopping:
                        cell = queue.pop(0)
                        pool.submit(self._job(cell))
                        self._set(cell, status="queued")
                    events, steps, outcomes = pool.wait(timeout=1.0)
                    for key, event in events:
                        self._on_event(cells[key], event)
                    for outcome in outcomes:
                        self._on_outcome(cells[outcome.key], outcome)
                    self._show_progress(bar, todo, steps, start_steps)
                except KeyboardInterrupt as interrupt:
                    if stopping and signal_of(interrupt) != "SIGINT":
                        continue  # a scheduler's signal again (or to the whole job): the runs are stopping already
                    again, stopping, stopped_by = stopping, True, stopped_by if stopping else signal_of(interrupt)
                    queue.clear()
                    pool.interrupt(again, self.say, by=stopped_by, runs="every run", driver="sweep")
        finally:
            bar.close()
            self._close_session(interrupted=stopping)
        if stopping:
            raise KeyboardInterrupt(stopped_by)

    def _show_progress(self, bar, todo: list[Cell], steps: dict[str, int], start_steps: dict[str, int]) -> None:
        """The bar counts training steps done in this session over every cell, so its ETA means something."""
        statuses = [self._entry(c)["status"] for c in todo]
        bar.n = sum(c.spec.training.steps - start_steps[c.key] if status in FINAL
                    else max(0, steps.get(c.key, start_steps[c.key]) - start_steps[c.key])
                    for c, status in zip(todo, statuses))
        bar.set_postfix({"done": sum(s in FINAL for s in statuses), "running": statuses.count("running"),
                         "failed": sum(s in ("failed", "locked") for s in statuses),
                         "queued": statuses.count("queued")}, refresh=True)

    def _job(self, cell: Cell) -> Job:
        s = self.spec
        return Job(key=cell.key, folder=str(cell.folder), task=s.task, arch=cell.arch_ref, tier=cell.tier,
                   seed=cell.seed, results_dir=str(s.results_dir), overrides=dict(s.overrides), data_dir=s.data_dir,
                   device=s.device, tags={"sweep": self.id})

    # -- events -----------------------------------------------------------------------------------

    def _on_event(self, cell: Cell, event: dict) -> None:
        if cell.key in self._finished:  # a late report of a run whose outcome is in
            return
        if event["kind"] == "started":
            entry = self._entry(cell)
            self._starts[cell.key] = self._starts.get(cell.key, 0) + 1
            self._set(cell, status="running", node=event["node"], attempts=entry.get("attempts", 0) + 1,
                      started_at=now())
            if self._starts[cell.key] > 1:
                self.say(f"retrying   {cell.key} on {event['node']} (attempt {self._starts[cell.key]}): its worker "
                         f"died; it resumes from its checkpoint")
        elif event["kind"] == "evaluation":
            self._set(cell, last_fid=event["fid"], last_eval_step=event["step"])
        elif event["kind"] == "note":  # long work that is not training (an FID reference): said, not silent
            self.say(f"note       {cell.key}: {event['text']}")

    def _on_outcome(self, cell: Cell, outcome: Outcome) -> None:
        self._finished.add(cell.key)
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

    def say(self, line: str) -> None:
        tqdm.write(line, file=self.stream)  # above the progress bar, not through it
