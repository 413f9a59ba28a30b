"""``run()``: one (task, architecture, tier, seed) from start (or from its checkpoint) to a record.

Everything else (the CLI, sweeps, searches, the Ray pool) calls this one function. One process runs
``Run`` (harness/run/runner.py) here; several processes are started by a launcher: DDP on this
machine (``local``) or Ray actors that may span nodes (``ray_nodes``). The launchers sit above
``Run`` and below this function, so nothing in the training loop knows how it was started.

    record = run("shapes", "standard", "smoke")
    record.best_fid, record.status
"""
from __future__ import annotations

from typing import Any

from harness.run.records import RunRecord
from harness.run.runner import Run


def run(task: str = "cifar10", arch: str = "standard", tier: str = "smoke", seed: int | None = None,
        **options: Any) -> RunRecord:
    """Train and evaluate one architecture under a task's protocol; return its run record.

    ``overrides`` are dotted task fields (``{"training.steps": 100}``); the other keyword options
    are those of ``Run``, plus ``devices``: train with that many DDP processes on this machine
    (harness/launch/local.py), or, with ``placement`` (each process's Ray resources, e.g.
    ``{"GPU": 1, "CPU": 4}``), as Ray actors that may span nodes (harness/launch/ray_nodes.py; inside a
    Ray task). Raises RunInterrupted when stopped (Ctrl-C or ``should_stop``),
    RunFailed (record status ``failed``) when the run fails by itself (a non-finite loss, out of
    memory), RunLocked when another live process holds the run folder.
    """
    devices, placement = options.pop("devices", None), options.pop("placement", None)
    if devices is not None and devices != 1:  # (the launchers refuse 0 and below)
        from harness.launch import local, ray_nodes  # here: ray_nodes imports Ray

        callbacks = {k: options.pop(k) for k in ("should_stop", "on_evaluation", "log") if k in options}
        options = dict(options, task=task, arch=arch, tier=tier, seed=seed)
        if placement:
            return ray_nodes.launch(options, devices, placement, **callbacks)
        return local.launch(options, devices, **callbacks)
    return Run(task, arch, tier, seed, **options).execute()
