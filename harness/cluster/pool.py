"""Runs on Ray: one Ray task per run, a channel for progress and stop requests, checks first.

This module knows nothing of training. A ``Job`` is a ``RunRequest`` with the pool's key for it; the Ray task
``_execute`` resolves the request there (``plan_run``) and runs it (``harness.launch.launch``) with a
``DriverLink`` as its hooks, and returns an ``Outcome``. Sweeps and searches drive a ``RayPool``
(harness/studies/drive.py): ``submit`` jobs, ``wait`` for events and outcomes, ``stop`` a run (it checkpoints
at its next step and returns ``interrupted``).

Failures are split the way a user needs them: a worker process or node that dies is Ray's
business (``max_retries``: the task runs again and the run resumes from its checkpoint); a run
that fails by itself (a broken file, a non-finite loss, out of memory) returns ``failed`` and is
not retried, because it would fail the same way again.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from harness.cluster.channel import DriverLink, start_channel
from harness.cluster.nodes import check_node
from harness.errors import HarnessError
from harness.run.request import RunRequest

# A run retried after its node died may find the folder still locked by the dead node's process:
# NFS keeps a client's locks until its lease lapses (90 s by default on NFSv4). Wait that long.
STALE_LOCK_WAIT_SECONDS = 150
FORWARDED_ENV = ("HARNESS_CACHE_DIR", "HARNESS_ARCH_DIR", "HARNESS_DATA_DIR", "HARNESS_INCEPTION_WEIGHTS",
                 "HARNESS_TASKS_DIR", "HARNESS_PEAK_TFLOPS")


@dataclass(frozen=True)
class Job:
    """One run for the pool. The Ray task resolves ``request`` where it runs: a name (of a task, of an
    architecture) is looked up in that node's copy of the harness, as ``harness run`` there would. Its paths are
    absolute: workers may run in another directory."""

    key: str  # unique within a pool, e.g. "standard/small/seed42"
    request: RunRequest
    folder: str  # the run folder, as the driver's plan of the request names it: the outcome's paths
    measure_latency: bool = False  # also time one forward pass of one image on the run's device (a search objective)


@dataclass
class Outcome:
    key: str
    status: str  # completed | failed | interrupted | locked
    message: str = ""
    record: str | None = None  # path of record.json
    log: str | None = None  # path of run.log
    best_fid: float | None = None
    best_step: int | None = None
    step: int | None = None
    wall_seconds: float | None = None
    node: str | None = None
    holder: dict | None = None  # who holds the run folder, when locked
    latency_ms: float | None = None  # when the job asked for it

    def to_dict(self) -> dict:
        return asdict(self)


def _execute(job: Job, channel, threads: int) -> Outcome:
    """The Ray task: one run, reporting to ``channel``; returns its Outcome, never raises for a
    run that fails by itself (only a dying process makes Ray retry it)."""
    import ray
    import torch

    from harness.errors import ProcessLost, RunFailed, RunInterrupted
    from harness.launch import launch
    from harness.run import locks
    from harness.run.folder import LOG_FILE
    from harness.run.locks import RunLocked
    from harness.run.records import RECORD_FILE
    from harness.run.request import plan_run

    torch.set_num_threads(threads)
    locks.command_label = f"a sweep's Ray task for {job.key}"
    node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    folder = Path(job.folder)
    outcome = Outcome(job.key, "failed", record=str(folder / RECORD_FILE), log=str(folder / LOG_FILE), node=node)
    link = DriverLink(channel, job.key)
    if link.stop:
        outcome.status, outcome.message = "interrupted", "stopped before it started"
        return outcome
    with link.running(node):
        started = time.perf_counter()
        try:
            with _output_into(folder / LOG_FILE):
                plan = plan_run(job.request)
                record = _run_past_dead_holders(lambda: launch(plan, link.hooks()))
            outcome.status = "completed"
            outcome.best_fid, outcome.best_step, outcome.step = record.best_fid, record.best_step, record.step
            if job.measure_latency:
                outcome.latency_ms = _latency_ms(plan)
        except RunLocked as exc:
            outcome.status, outcome.message, outcome.holder = "locked", str(exc), exc.holder
        except RunInterrupted as exc:
            if exc.signal_name and not link.stop:
                # this worker was told to stop (a node drained or preempted), not the run by its driver: the
                # run checkpointed at its step, and Ray runs the task again, which resumes there
                raise ProcessLost(f"Its Ray worker (pid {os.getpid()} on {node}) got {exc.signal_name}. {exc}") \
                    from exc
            outcome.status, outcome.message, outcome.step = "interrupted", str(exc), link.step
        except ProcessLost:  # a process of the run died, not the run's fault: Ray runs this task again
            raise
        except (RunFailed, HarnessError) as exc:
            outcome.message = str(exc)
        except Exception as exc:  # the run itself logged its traceback when it got that far
            outcome.message = f"{type(exc).__name__}: {exc}"
            _append_traceback(folder / LOG_FILE)
    outcome.wall_seconds = round(time.perf_counter() - started, 2)
    return outcome


def _latency_ms(plan) -> float:
    from harness.measure.profile import inference_latency_ms
    from harness.world import pick_device

    return inference_latency_ms(plan.architecture, plan.spec, pick_device(plan.request.device))


def _run_past_dead_holders(start):
    """``start()``, waiting up to STALE_LOCK_WAIT_SECONDS while the run folder is locked by a
    process on a node that Ray knows to be dead (its NFS lock outlives it for a lease)."""
    import ray

    from harness.run.locks import RunLocked

    deadline = time.monotonic() + STALE_LOCK_WAIT_SECONDS
    while True:
        try:
            return start()
        except RunLocked as exc:
            nodes = ray.nodes()
            alive = {n.get("NodeManagerHostname") for n in nodes if n.get("Alive")}
            dead = {n.get("NodeManagerHostname") for n in nodes if not n.get("Alive")} - alive
            if exc.holder.get("host") not in dead or time.monotonic() > deadline:
                raise
            time.sleep(10)


@contextlib.contextmanager
def _output_into(path: Path):
    """Everything the run's process prints (warnings, an architecture's prints, native libraries)
    goes to its run.log while it runs; the worker's own output comes back afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def _append_traceback(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(traceback.format_exc())
    except OSError:
        pass


class RayPool:
    """Runs jobs as Ray tasks, at most as many at once as the caller submits."""

    def __init__(self, allocation: dict, max_retries: int):
        """``allocation``: what ``resources.allocate`` decided (GPUs, CPUs and processes per run, and
        whether a run's processes are placed over nodes)."""
        import ray

        from harness.errors import ProcessLost

        self.gpus_per_run, self.cpus_per_run = allocation["gpus_per_run"], allocation["cpus_per_run"]
        self.devices_per_run, self.max_retries = allocation.get("devices_per_run", 1), max_retries
        self.placement = None
        if allocation.get("spans_nodes"):  # the task only launches; each process holds one bundle
            self.placement = {"GPU": self.gpus_per_run / self.devices_per_run,
                              "CPU": self.cpus_per_run / self.devices_per_run}
        self.channel = start_channel()
        self.stop_requests: set[str | None] = set()  # sent again each wait: a restarted channel starts empty
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        self.runtime_env = {"env_vars": env} if env else None  # the runs see the driver's HARNESS_* settings
        self._task = ray.remote(_execute).options(
            num_gpus=0 if self.placement else self.gpus_per_run, num_cpus=0 if self.placement else self.cpus_per_run,
            max_retries=max_retries, retry_exceptions=[ProcessLost], runtime_env=self.runtime_env,
        )
        self.running: dict[Any, Job] = {}  # ObjectRef -> job

    def check_nodes(self, results_dir: Path, arch_hashes: dict[str, str]) -> list[str]:
        """Problems found on any alive node (empty when every node can run every job)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from harness.files import atomic_write_bytes

        marker, token = f".sweep-check-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
        atomic_write_bytes(results_dir / marker, token.encode())
        check = ray.remote(check_node)
        try:
            refs = [check.options(num_cpus=0, runtime_env=self.runtime_env,
                                  scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(str(results_dir), marker, token, arch_hashes) for n in ray.nodes() if n.get("Alive")]
            try:
                reports = ray.get(refs, timeout=300)
            except ray.exceptions.RayTaskError as exc:
                return [f"a worker could not run the harness ({str(exc).strip().splitlines()[-1]}): "
                        f"install it on every node (`pip install -e .` in the same place) "
                        f"or submit with `ray job submit --working-dir .`"]
            except ray.exceptions.RayError as exc:  # a node that does not answer in 5 minutes, a runtime env that fails
                return [f"checking the nodes failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0]})"]
        finally:
            (results_dir / marker).unlink(missing_ok=True)
        return [f"on {r['node']}: {p}" for r in reports for p in r["problems"]]

    def submit(self, job: Job) -> None:
        threads = max(1, int(self.cpus_per_run))
        request = replace(job.request, progress=False)  # a Ray task draws no progress bars
        if request.device == "auto" and not self.gpus_per_run:
            # Ray does not hide GPUs from a task that asked for none: keep such runs off them
            request = replace(request, device="cpu")
        if self.devices_per_run > 1:
            request = replace(request, devices=self.devices_per_run, placement=self.placement)
        job = replace(job, request=request)
        self.running[self._task.remote(job, self.channel, threads)] = job

    def wait(self, timeout: float) -> tuple[list[tuple[str, dict]], dict[str, int], list[Outcome]]:
        """Block up to ``timeout`` s; return (events, current step of each run, finished outcomes)."""
        import ray

        finished = []
        if self.running:
            ready, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=timeout)
            for ref in ready:
                job = self.running.pop(ref)
                finished.append(self._outcome(ref, job))
        else:
            time.sleep(timeout)
        try:
            for key in self.stop_requests:
                self.channel.stop.remote(key)
            events, steps = ray.get(self.channel.drain.remote(), timeout=60)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            # the channel is restarting (Ray restarts it, or its process was lost): the events it held are
            # gone, the runs go on and their outcomes still come back through their tasks
            events, steps = [], {}
        return events, steps, finished

    def _outcome(self, ref, job: Job) -> Outcome:
        import ray

        from harness.errors import ProcessLost
        from harness.run.folder import LOG_FILE
        from harness.run.records import RECORD_FILE

        try:
            return ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return Outcome(job.key, "interrupted", "cancelled before it started")
        except ray.exceptions.RayTaskError as exc:  # _execute raised: processes lost too often, or a bug
            if isinstance(exc.cause, ProcessLost):
                return Outcome(job.key, "failed", f"{exc.cause} (lost {self.max_retries + 1} time(s): the sweep "
                               f"stopped retrying it)", record=str(Path(job.folder) / RECORD_FILE),
                               log=str(Path(job.folder) / LOG_FILE))
            return Outcome(job.key, "failed", f"the run's task raised {str(exc).strip().splitlines()[-1]}")
        except ray.exceptions.RayError as exc:  # the worker or its node died more often than max_retries
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Outcome(job.key, "failed", f"its worker died {self.max_retries + 1} time(s) ({type(exc).__name__}: "
                           f"{first}); its checkpoint is kept: run the sweep again to resume it")

    def stop(self, key: str | None = None) -> None:
        """Ask one run (or all, with None) to checkpoint at its next step and return."""
        import ray

        self.stop_requests.add(key)
        ray.get(self.channel.stop.remote(key))

    def kill(self) -> None:
        import ray

        for ref in self.running:
            ray.cancel(ref, force=True)
