"""Start one run: in this process, or as several processes (DDP) on this machine or across Ray nodes.

Everything else (the CLI, the Python API, sweeps and searches through the Ray pool) resolves a ``RunRequest``
once (``plan_run``) and calls ``launch`` with the plan, which runs it here, or hands it to a launcher whose
processes each run it as it is. The launchers sit above the runner and below this function, so nothing in
the training loop knows how it was started.

    record = launch(plan_run(RunRequest(task="shapes", arch="standard", tier="smoke")))
    record = run("shapes", "standard", "smoke", device="cpu")   # the same, as keywords
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from harness.run.records import RunRecord
from harness.run.request import Hooks, ResolvedRun, RunRequest, plan_run
from harness.run.runner import execute


def launch(plan: ResolvedRun, hooks: Hooks = Hooks()) -> RunRecord:
    """Train and evaluate one resolved run; return its record.

    ``plan.request.devices`` > 1 trains with that many DDP processes on this machine (harness/launch/local.py), or,
    with ``plan.request.placement`` (each process's Ray resources, e.g. ``{"GPU": 1, "CPU": 4}``), as Ray actors
    that may span nodes (harness/launch/ray_nodes.py; inside a Ray task). Raises RunInterrupted when stopped (Ctrl-C
    or ``hooks.should_stop``), RunFailed (record status ``failed``) when the run fails by itself (a non-finite loss,
    out of memory), RunLocked when another live process holds the run folder, HarnessError for a bad request."""
    if plan.request.devices != 1:  # (the launchers refuse 0 and below)
        from harness.launch import local, ray_nodes  # here: ray_nodes imports Ray

        if plan.request.placement:
            return ray_nodes.launch(plan, hooks)
        return local.launch(plan, hooks)
    return execute(plan, hooks)


def run(task: str = "cifar10", arch: str = "standard", tier: str = "smoke", seed: int | None = None, *,
        device: str = "auto", devices: int = 1, results_dir: str | Path = "results",
        data_dir: str | Path | None = None, overrides: dict | None = None, fresh: bool = False, progress: bool = True,
        tags: dict | None = None, placement: dict | None = None, log: Callable[[str], None] | None = tqdm.write,
        should_stop: Callable[[int], bool | str] | None = None,
        on_evaluation: Callable[[dict], None] | None = None) -> RunRecord:
    """``launch`` with the request's fields and the hooks as keywords (RunRequest and Hooks say what each is)."""
    request = RunRequest(task=task, arch=str(arch), tier=tier, seed=seed, overrides=dict(overrides or {}),
                         device=device, devices=devices, placement=placement, results_dir=results_dir,
                         data_dir=data_dir, fresh=fresh, progress=progress, tags=dict(tags or {}))
    return launch(plan_run(request), Hooks(log=log, should_stop=should_stop, on_evaluation=on_evaluation))
