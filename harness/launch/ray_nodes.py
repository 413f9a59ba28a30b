"""One run whose processes span nodes: N Ray actors, one per GPU, in a placement group.

A sweep cell (or search trial) given more GPUs than any one node has is launched here instead
of by harness/launch/local.py's local launcher. The Ray task that runs the cell is the launcher: it
reserves N bundles ``{GPU: g, CPU: c}`` as one placement group (PACK: as few nodes as possible),
starts one actor per bundle, and serves a torch TCPStore on its node. In that store the actors
form the torch process group (NCCL on GPUs, gloo on CPUs) and rank 0 posts its step,
evaluations and log lines, as on one machine; each actor then runs ``local.train_process``.

Ray gives placement and fate: the actors belong to the launcher's task, so they die with it.
When one of them dies or fails, the launcher kills the others at once (a collective would wait
for the lost peer until its timeout) and raises ProcessLost (a process or node was lost: the
sweep's task is retried and the run resumes from its checkpoint) or RunFailed (a process failed
by itself: not retried).
"""
from __future__ import annotations

import os
import socket
import time

import torch.distributed as dist

from harness.launch.local import (
    LauncherLink,
    ProcessFailure,
    Watcher,
    Workers,
    held_run_folder,
    outcome,
    prepare,
    train_process,
)
from harness.run.request import Hooks, ResolvedRun

# After the first failure, how long to wait for the others' ends: a killed process's peers fail
# too (connection reset), and the one that was killed is the cause to report.
SETTLE_SECONDS = 5.0


class RankProcess:
    """A Ray actor: one process of the run, on the GPU (and CPUs) of its bundle."""

    def where(self) -> dict:
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
                "host": socket.gethostname(), "pid": os.getpid()}

    def train(self, workers: Workers, rank: int, size: int, host: str, port: int) -> str:
        from dataclasses import replace

        from harness.run.request import plan_run

        # resolved here, once: a name (of a task, an architecture) is looked up in this node's copy of the
        # harness, whose path may differ from the launcher's (the node check compared the files' hashes)
        workers = replace(workers, plan=plan_run(workers.plan.request))
        store = dist.TCPStore(host, port, is_master=False)
        link = LauncherLink(store, None) if rank == 0 else None
        return train_process(workers, rank, size, 0, link, store=store)


def launch(plan: ResolvedRun, hooks: Hooks):
    """Run ``plan`` as ``plan.request.devices`` processes placed by Ray, each with the resources in
    ``plan.request.placement`` (``{"GPU": 1, "CPU": 4}``); return its record. Call it inside a Ray task or
    driver. Raises what ``local.launch`` raises."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from harness.errors import RunInterrupted

    kind = prepare(plan, local=False)
    spec, devices, placement, should_stop = plan.spec, plan.request.devices, plan.request.placement, hooks.should_stop
    workers = Workers(plan.asking(fresh=False), kind, max(1, int(placement.get("CPU", 1))))
    with held_run_folder(plan, hooks.log) as run_log:
        bundle = {k: v for k, v in placement.items() if v}
        group = placement_group([bundle] * devices, strategy="PACK")
        actors = []
        try:
            run_log.write(f"Waiting for {devices} x {bundle} from the Ray cluster")
            if not _ready(group, should_stop):
                raise RunInterrupted("Stopped before its processes started.")
            actors = _start_actors(group, devices, bundle)
            places = ray.get([actor.where.remote() for actor in actors])
            host = ray.util.get_node_ip_address()  # the actors reach the launcher's store here
            store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False)
            nodes = len({p["node"] for p in places})
            run_log.write(f"Starting {devices} processes on {nodes} node(s), global batch {spec.training.batch_size} = "
                          f"{devices} x {spec.training.batch_size // devices}: " + "; ".join(
                              f"rank {r} on {p['host']} ({p['ip']}, Ray node {p['node'][:12]}, pid {p['pid']})"
                              for r, p in enumerate(places)))
            refs = {actor.train.remote(workers, rank, devices, host, store.port): rank
                    for rank, actor in enumerate(actors)}
            with Watcher(store, hooks):
                failures = _wait_all(refs, places)
        finally:
            for actor in actors:
                ray.kill(actor)
            remove_placement_group(group)
        return outcome(plan.folder, failures, run_log)


def _ready(group, should_stop) -> bool:
    """Wait for the placement group (other runs may hold the GPUs); False if stopped meanwhile."""
    import ray

    while not ray.wait([group.ready()], timeout=1.0)[0]:
        if should_stop is not None and should_stop(None):
            return False
    return True


def _start_actors(group, devices: int, bundle: dict) -> list:
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    actor = ray.remote(RankProcess)
    return [actor.options(num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0), max_restarts=0,
                          scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i))
            .remote() for i in range(devices)]


def _wait_all(refs: dict, places: list[dict]) -> list[ProcessFailure]:
    """Wait for every rank; on the first failure, give the others SETTLE_SECONDS to end too (so
    that a killed process is told from the peers that lost it), then return the failures."""
    import ray

    failures, pending, deadline = [], dict(refs), None
    while pending and (deadline is None or time.monotonic() < deadline):
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in ready:
            rank = pending.pop(ref)
            failure = _failure(ref, rank, places[rank]["pid"])
            if failure is not None:
                failures.append(failure)
                deadline = deadline or time.monotonic() + SETTLE_SECONDS
    return failures


def _failure(ref, rank: int, pid: int) -> ProcessFailure | None:
    import ray

    try:
        ray.get(ref)
        return None
    except ray.exceptions.RayActorError as exc:  # the process (or its node) died
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ProcessFailure(rank, time.time(), True, f"was lost (its process or node died: {first})", pid)
    except ray.exceptions.RayTaskError as exc:  # it raised
        last = str(exc).strip().splitlines()[-1]
        return ProcessFailure(rank, time.time(), False, f"failed ({last})", pid, str(exc))
