"""What a user asks for (``RunRequest``), resolved once into what will run (``ResolvedRun``).

Every way of starting a run (``harness run``, the Python API, a sweep's or a search's Ray task, the DDP
launchers) builds a ``RunRequest`` and calls ``plan_run`` once: the task file is read once, the tier and
overrides merged, the architecture file found and the run folder named, once per process. The plan then
travels as it is to the DDP processes on this machine (it pickles). A process elsewhere is sent the request
and plans it there, once: a sweep's or search's Ray task (the driver planned it too, to name its folder) and
each rank of a run across Ray nodes, whose copy of the harness may sit at another path.

Callbacks are not part of a request: they are the caller's (``Hooks``), and a request stays plain data that
a sweep can store, compare and send to another machine.

    plan = plan_run(RunRequest(task="shapes", arch="standard", tier="smoke"))
    plan.folder, plan.spec.training.steps, plan.record_path
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from harness.protocol import registry
from harness.protocol.spec import TaskSpec
from harness.protocol.tasks import resolve_with_tier
from harness.run.records import RECORD_FILE, run_dir


@dataclass(frozen=True)
class RunRequest:
    """One (task, architecture, tier, seed), as asked: names and paths as the user gave them."""

    task: str = "cifar10"  # a task name in tasks/ or a path to a task file
    arch: str = "standard"  # an architecture name in architectures/ or a path to a .py file
    tier: str = "smoke"
    seed: int | None = None  # None: the task's seed
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted task fields, as --set
    device: str = "auto"  # auto, cpu, cuda or cuda:N: what the user asked for (a launcher may resolve it)
    devices: int = 1  # DDP processes training this one run
    placement: dict | None = None  # each process's Ray resources, when the processes may span nodes
    results_dir: str | Path = "results"
    data_dir: str | Path | None = None
    fresh: bool = False  # start over: the checkpoints, record and TensorBoard files removed
    progress: bool = True  # progress bars
    tags: dict = field(default_factory=dict)  # what the run's trackers tag it with (a sweep's or study's names)

    def task_overrides(self) -> dict[str, Any]:
        """The overrides with the seed among them, as the task resolves them."""
        return {**self.overrides, **({"seed": self.seed} if self.seed is not None else {})}


@dataclass(frozen=True)
class Hooks:
    """The caller's side of a run. ``should_stop(step)`` is asked after steps (True, or a signal's name,
    checkpoints and raises RunInterrupted); ``on_evaluation(evaluation)`` is told of each saved evaluation;
    ``log`` gets every line of run.log (None: run.log only)."""

    log: Callable[[str], None] | None = tqdm.write
    should_stop: Callable[[int], bool | str] | None = None
    on_evaluation: Callable[[dict], None] | None = None


@dataclass(frozen=True)
class ResolvedRun:
    """A request resolved: the settings it runs with, the files they came from, and where it writes."""

    request: RunRequest
    spec: TaskSpec  # the task at the tier with the overrides and the seed
    tier_config: dict  # the tier as the task file defines it (the seed aside): a record says what it changed
    task_file: dict  # {"path", "sha256"} of the task file read
    architecture: registry.Architecture
    folder: Path  # RESULTS_DIR/<task>/<arch>/<tier>/seed<N>

    @property
    def record_path(self) -> Path:
        return self.folder / RECORD_FILE

    def asking(self, **changes) -> "ResolvedRun":
        """The same plan with request fields changed that do not change what is resolved (``fresh``, ``progress``:
        what a launcher tells its workers)."""
        return replace(self, request=replace(self.request, **changes))

    @property
    def name(self) -> str:
        return f"{self.spec.name}/{self.architecture.name}/{self.spec.tier}/seed{self.spec.seed}"


def plan_run(request: RunRequest) -> ResolvedRun:
    """Resolve ``request`` (one read of its task file), or a HarnessError saying what is wrong with it."""
    spec, tier_spec, task_file = resolve_with_tier(request.task, request.tier, request.task_overrides())
    architecture = registry.find_architecture(request.arch)
    return ResolvedRun(
        request=request, spec=spec, tier_config=tier_spec.to_dict(), task_file=task_file, architecture=architecture,
        folder=run_dir(request.results_dir, spec.name, architecture.name, spec.tier, spec.seed))
