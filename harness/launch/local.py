"""One run on several devices: DistributedDataParallel processes started by the harness.

``launch`` is what a request with ``devices=N`` does in the process the user started: it checks the
settings, holds the run folder's lock, and starts N worker processes with torch's elastic launcher
(torchrun as a function: c10d rendezvous on localhost, a worker that fails stops the others and
raises ChildFailedError, so a dead process never leaves the rest hanging). Each worker joins the
process group (NCCL on GPUs, gloo on the CPU) and runs the same plan with a ``World``; rank 0
writes everything (log, checkpoints, record, sample grids), the others only compute.

The launcher and its workers talk through a TCPStore (torch.distributed's key-value store, served
by the launcher): rank 0 posts its step, each evaluation and its log lines (a sweep shows progress, a
search prunes on them, the caller prints the lines), and the launcher posts a stop request (Ctrl-C, or a
sweep stopping the run).

Why N processes train the model one process trains: every rank draws the whole global batch
(images, flips, timesteps, noise) from the run's one generator, identical on all ranks, and
trains on its contiguous slice; DDP averages the gradients, which is the gradient of the mean loss
over the whole batch. Evaluation is split by whole sampling batches, so every image (and its
Inception features) is computed exactly as one process computes it.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from harness.errors import HarnessError, ProcessLost, RunFailed
from harness.run.request import Hooks, ResolvedRun
from harness.run.signals import StopOnSignal
from harness.world import World, process_group_backend, refuse_cpu_fallback

STORE_POLL_SECONDS = 0.5  # how often rank 0 looks for a stop request and the launcher for progress
# Rank 0 alone computes the FID reference the first time (minutes on a CPU) while the others wait.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


# ----------------------------------------------------------------------------- the launcher


def check_devices(devices: int, device: str, batch_size: int) -> str:
    """The device type the workers will use ("cuda" or "cpu"), or a HarnessError saying why N
    processes cannot train this run."""
    kind = "cuda" if device == "auto" and torch.cuda.is_available() else device.split(":")[0]
    if kind == "auto":
        kind = "cpu"
    if kind == "cuda" and devices > torch.cuda.device_count():
        raise HarnessError(f"--devices {devices} asks for more GPUs than this machine shows "
                           f"({torch.cuda.device_count()}); use --devices {max(1, torch.cuda.device_count())} or fewer "
                           f"(CUDA_VISIBLE_DEVICES limits them).")
    if ":" in device and devices > 1:
        raise HarnessError(f"--device {device} names one GPU, and --devices {devices} needs {devices}: "
                           f"pass --device cuda (set CUDA_VISIBLE_DEVICES to choose which).")
    check_batch(devices, batch_size)
    return kind


def check_batch(devices: int, batch_size: int) -> None:
    if devices < 1:
        raise HarnessError(f"--devices must be at least 1, not {devices}.")
    if batch_size % devices:
        raise HarnessError(
            f"The global batch size {batch_size} does not split into {devices} equal parts, so {devices} processes "
            f"cannot train exactly what one process trains. Use a number of devices that divides it, or change it "
            f"with --set training.batch_size=N (a different protocol setting, recorded as such)."
        )


def prepare(plan: ResolvedRun, *, local: bool = True) -> str:
    """The device kind ``plan.request.devices`` processes of the run will use, or a HarnessError. ``local`` False:
    the processes run on other nodes (their GPUs are not this one's)."""
    from harness.run.records import ensure_writable

    request, spec = plan.request, plan.spec
    if local:
        kind = check_devices(request.devices, request.device, spec.training.batch_size)
        # here, before any process starts or data is fetched, as one process refuses in the runner; the
        # workers are given the resolved kind, and record the substitution from the request's device
        refuse_cpu_fallback([spec], request.device, kind)
    else:
        check_batch(request.devices, spec.training.batch_size)
        kind = request.device.split(":")[0]  # "auto" stays: each process finds its own GPU (or none)
    ensure_writable(plan.folder)
    return kind


@contextlib.contextmanager
def held_run_folder(plan: ResolvedRun, log):
    """The run folder's lock and log, held by the launcher for all its processes; a fresh start
    is made here, not in the processes (one could read a file that another removes)."""
    from harness.run import checkpoints, locks, tracking
    from harness.run.folder import LOG_FILE, RunLog

    with locks.RunLock(plan.folder), RunLog(plan.folder / LOG_FILE, echo=log) as run_log:
        if plan.request.fresh:
            checkpoints.remove(plan.folder)
            plan.record_path.unlink(missing_ok=True)
            tracking.clear(plan.folder)  # TensorBoard's files; W&B and MLflow start new runs
        yield run_log


def launch(plan: ResolvedRun, hooks: Hooks):
    """Run ``plan`` as ``plan.request.devices`` DDP processes on this machine; return its record.
    Raises what a one-process run raises: RunInterrupted, RunFailed, RunLocked, HarnessError, and
    ProcessLost (a RunFailed) when a process was killed.
    ``hooks.log`` is told rank 0's messages (through the store; None: they go to run.log only)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    kind = prepare(plan)
    devices, spec = plan.request.devices, plan.spec
    threads = max(1, torch.get_num_threads() // devices)  # N processes share this process's CPU threads
    with held_run_folder(plan, hooks.log) as run_log:
        run_log.write(f"Starting {devices} processes ({process_group_backend(kind)} on {kind}, "
                      f"{threads} thread(s) each), global batch {spec.training.batch_size} = {devices} x "
                      f"{spec.training.batch_size // devices}")
        store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=devices, run_id=uuid.uuid4().hex, rdzv_backend="c10d",
            rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.5, start_method="spawn",
            # Ctrl-C, SIGTERM and SIGUSR1 ask the workers to stop at the next step and checkpoint
            # (_LauncherSignals); the agent must not answer them by killing them, as torchrun's does by default.
            signals_to_handle="SIGHUP,SIGQUIT",
        )
        # the agent logs each failure with its traceback; the launcher says it in one paragraph instead
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
        failures = []
        workers = Workers(plan.asking(fresh=False), kind, threads)
        with Watcher(store, hooks), _LauncherSignals(store), \
                _thread_environment(threads):
            try:
                elastic_launch(config, worker)(workers, store.port, os.getpid())
            except ChildFailedError as exc:
                failures = _failures_of(exc)
        return outcome(plan.folder, failures, run_log)


@dataclass
class ProcessFailure:
    """How one process of a run ended badly, as the launcher saw it."""

    rank: int
    order: float  # when (a timestamp, or the order the launcher noticed it): the first is the likely cause
    killed: bool  # ended by a signal or lost with its node: the others then only lost their peer
    cause: str  # "was killed by SIGKILL", "exited with code 1 (ValueError: ...)"
    pid: int | None = None
    traceback: str | None = None


def _failures_of(exc) -> list[ProcessFailure]:
    """The elastic agent's ChildFailedError as ProcessFailures."""
    failures = []
    for rank, info in exc.failures.items():
        message = info.message if isinstance(info.message, dict) else {}
        if info.exitcode < 0:
            cause = f"was killed by {info.signal_name()}"
        else:
            text = str(message.get("message", "") if message else info.message or "").strip()
            cause = f"exited with code {info.exitcode}" + (f" ({text.splitlines()[-1]})" if text else "")
        failures.append(ProcessFailure(rank, info.timestamp, info.exitcode < 0, cause, info.pid,
                                       message.get("extraInfo", {}).get("py_callstack")))
    return failures


def outcome(directory: Path, failures: list[ProcessFailure], run_log):
    """The launcher's answer from what rank 0 wrote and how the processes ended: the record, or
    the exception a one-process run would have raised."""
    from harness.errors import RunInterrupted
    from harness.run.records import CHECKPOINT_FILE, RECORD_FILE, RunRecord

    path = directory / RECORD_FILE
    record = RunRecord.load(path) if path.exists() else None
    if not failures and record is not None and record.status == "completed":
        return record
    if not failures and record is not None and record.status == "interrupted":
        by = (record.interruption or {}).get("signal")
        raise RunInterrupted(f"Stopped{f' by {by}' if by else ''} at step {record.step}; checkpoint saved to "
                             f"{directory / CHECKPOINT_FILE}. Run the same command again to resume.", by)
    # The root cause: the first process killed (its peers then fail with "connection reset"), else the first to fail.
    first = min(failures, key=lambda f: (not f.killed, f.order)) if failures else None
    if first is not None and not first.killed and first.rank == 0 and record is not None \
            and record.status == "failed" and record.failure:
        # rank 0 failed first, by itself (out of memory, a broken architecture, a non-finite loss), and said why
        raise RunFailed(f"{record.failure['message']} The record (status 'failed') is at {path}; the log is "
                        f"{directory / 'run.log'}.")
    for failure in sorted(failures, key=lambda f: f.rank):  # their tracebacks, for the log
        if failure.traceback:
            run_log.write(f"Traceback of process rank {failure.rank}:\n{failure.traceback.rstrip()}")
    if first is None:
        what = "The worker processes ended without a result."
    else:
        pid = f" (pid {first.pid})" if first.pid else ""
        what = f"Process rank {first.rank}{pid} {first.cause}, so every process of the run was stopped."
    run_log.write(what)
    step = record.step if record is not None else 0
    if record is not None:
        record.status = "failed"
        record.failure = {"step": step, "message": what,
                          "error": "ProcessLost" if first and first.killed else "ChildFailedError"}
        record.save(directory)
    kept = (directory / CHECKPOINT_FILE).exists()
    message = what + (f" The run stopped; its checkpoint (step {step}) is kept at {directory / CHECKPOINT_FILE}: "
                      f"run the same command again to resume." if kept else " The run stopped.")
    raise (ProcessLost if first is not None and first.killed else RunFailed)(message)


def _thread_environment(threads: int):
    """The workers' BLAS and OpenMP pools sized like their torch threads (a spawned process reads
    these when numpy loads): an OpenBLAS pool wider than its share of the cores spins against
    the other processes (the FID's eigvalsh took minutes instead of seconds)."""
    from harness.world import environment

    return environment({name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})


class Watcher:
    """A launcher thread: passes rank 0's step, evaluations and log lines to the caller's hooks and its
    stop decision down to the workers."""

    def __init__(self, store, hooks: Hooks):
        self.store, self.hooks = store, hooks
        self.seen, self.done = {"evaluation": 0, "line": 0}, threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        if self.hooks.should_stop or self.hooks.on_evaluation or self.hooks.log:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()
        self._forward()  # the last ones may land after the final poll

    def _loop(self):
        while not self.done.wait(STORE_POLL_SECONDS):
            self._forward()
            step = int(self.store.get("step")) if self.store.check(["step"]) else None
            if self.hooks.should_stop is not None and self.hooks.should_stop(step):
                self.store.set("stop", "1")

    def _forward(self):
        on_evaluation, log = self.hooks.on_evaluation, self.hooks.log
        for kind, told in (("evaluation", on_evaluation and (lambda text: on_evaluation(json.loads(text)))),
                           ("line", log)):
            count = int(self.store.add(f"{kind}s", 0))
            while self.seen[kind] < count:
                text = self.store.get(f"{kind}/{self.seen[kind]}").decode()
                self.seen[kind] += 1
                if told:
                    told(text)


class _LauncherSignals(StopOnSignal):
    """In the launcher: Ctrl-C, SIGTERM or SIGUSR1 asks the workers to stop, naming the signal (they
    also see a terminal's Ctrl-C, or a scheduler's signal to the whole job, themselves); a second
    Ctrl-C raises KeyboardInterrupt, and the agent then ends them. The handlers the elastic agent
    installs (SIGHUP, SIGQUIT) are undone afterwards, so a caller's own (a Ray worker's) are back
    once the run is over."""

    AGENT_SIGNALS = (signal.SIGHUP, signal.SIGQUIT)

    def __init__(self, store):
        super().__init__()
        self.store, self.saved = store, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.saved = {s: signal.getsignal(s) for s in self.AGENT_SIGNALS}
        return super().__enter__()

    def on_request(self, signal_name: str) -> None:
        self.store.set("stop", signal_name)

    def __exit__(self, *exc):
        super().__exit__(*exc)
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- the workers


class LauncherLink:
    """Rank 0's side of the store: the hooks of its run (``should_stop``, ``on_evaluation``, ``log``). A launcher
    that is gone (killed; the parent pid tells, on one machine) counts as a stop request, so its
    workers checkpoint and end. (Ray actors need no such check: they die with their owner.)"""

    def __init__(self, store, launcher_pid: int | None):
        self.store, self.launcher_pid = store, launcher_pid
        self.last_poll, self.stop = 0.0, False

    def should_stop(self, step: int) -> bool | str:
        now = time.monotonic()
        if not self.stop and now - self.last_poll >= STORE_POLL_SECONDS:
            self.last_poll = now
            self.store.set("step", str(step))
            if self.store.check(["stop"]):  # the signal the launcher got, or "1" for its caller's request
                asked = self.store.get("stop").decode()
                self.stop = asked if asked.startswith("SIG") else True
            else:
                self.stop = self.launcher_pid is not None and os.getppid() != self.launcher_pid
        return self.stop

    def on_evaluation(self, evaluation: dict) -> None:
        self._post("evaluation", json.dumps(evaluation))

    def log(self, line: str) -> None:
        """Rank 0's log lines, for the launcher's caller (a terminal, or a sweep's driver): never printed by a
        worker itself, whose output may be the run's log already (a sweep's Ray task)."""
        self._post("line", line)

    def _post(self, kind: str, text: str) -> None:
        index = int(self.store.add(f"{kind}s", 0))  # one writer: the count is bumped once the item is there
        self.store.set(f"{kind}/{index}", text)
        self.store.add(f"{kind}s", 1)


@dataclass(frozen=True)
class Workers:
    """What every process of a run is given (it pickles): the plan, the device kind the launcher chose ("cuda",
    "cpu", or "auto": each process finds its own) and its CPU threads."""

    plan: ResolvedRun
    kind: str
    threads: int


def worker(workers: Workers, store_port: int, launcher_pid: int) -> str:
    """One process of a run on this machine, started by the elastic agent (which sets RANK,
    WORLD_SIZE, LOCAL_RANK and the rendezvous address). Returns the outcome every rank agreed on;
    an error of this process alone propagates, and the agent then stops the others."""
    rank = int(os.environ["RANK"])
    link = LauncherLink(dist.TCPStore("127.0.0.1", store_port, is_master=False), launcher_pid) if rank == 0 else None
    return train_process(workers, rank, int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]), link)


def train_process(workers: Workers, rank: int, size: int, local_rank: int, link: LauncherLink | None,
                  store=None) -> str:
    """Join the process group and run the plan as rank ``rank`` of ``size``. The group meets in ``store`` (a
    TCPStore) when given, else where the environment says (torchrun's variables). ``workers.kind``: "cuda" (this
    process's GPU is ``local_rank``), "cpu", or "auto" (the first visible GPU, where a scheduler gave the process
    one GPU, else the CPU)."""
    import warnings


    # as in the command line: deprecation notices of clean-fid's and fvcore's TorchScript use
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
    from harness.errors import NonFiniteLoss, RunInterrupted
    from harness.run.runner import execute

    torch.set_num_threads(workers.threads)
    device = workers.kind
    if device == "auto":
        device, local_rank = ("cuda", 0) if torch.cuda.is_available() else ("cpu", 0)
    if device == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    backend = process_group_backend(device)
    if store is None:
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    else:
        dist.init_process_group(backend, store=dist.PrefixStore("group", store), rank=rank, world_size=size,
                                timeout=COLLECTIVE_TIMEOUT)
    control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if backend != "gloo" else dist.group.WORLD
    world = World(rank, size, local_rank, backend, control)
    main = rank == 0
    plan = workers.plan.asking(progress=workers.plan.request.progress and main)
    hooks = Hooks(log=link.log, should_stop=link.should_stop, on_evaluation=link.on_evaluation) if main else \
        Hooks(log=None)
    try:
        execute(plan, hooks, world, device)
        outcome = "completed"
    except RunInterrupted:  # every rank agreed on the step; rank 0 saved the checkpoint and record
        outcome = "interrupted"
    except RunFailed as exc:
        if not isinstance(exc.__cause__, NonFiniteLoss):  # the averaged loss: every rank saw it
            raise
        outcome = "failed"
    dist.destroy_process_group()
    return outcome
