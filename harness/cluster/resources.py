"""What a Ray cluster (or this machine) has, and how a sweep's or search's runs are fitted onto it."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from harness.errors import HarnessError


@dataclass
class Resources:
    cpus: float
    gpus: float
    nodes: int
    max_node_cpus: float
    cpus_per_gpu: float | None  # the fewest CPUs per GPU on any node with GPUs
    max_node_gpus: float = 0

    def to_dict(self) -> dict:
        return asdict(self)


def local_resources() -> Resources:
    """What a private Ray instance on this machine would have (without starting one)."""
    import torch

    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    return Resources(cpus=cpus, gpus=gpus, nodes=1, max_node_cpus=cpus, cpus_per_gpu=cpus / gpus if gpus else None,
                     max_node_gpus=gpus)


def cluster_resources() -> Resources:
    import ray

    alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    per_gpu = [r.get("CPU", 0) / r["GPU"] for r in alive if r.get("GPU")]
    return Resources(cpus=total.get("CPU", 0), gpus=total.get("GPU", 0), nodes=len(alive),
                     max_node_cpus=max((r.get("CPU", 0) for r in alive), default=0),
                     cpus_per_gpu=min(per_gpu) if per_gpu else None,
                     max_node_gpus=max((r.get("GPU", 0) for r in alive), default=0))


def allocate(resources: Resources, device: str, gpus_per_run: float | None, cpus_per_run: float | None,
             max_parallel: int | None, runs: int, devices: int | None = None) -> dict:
    """GPUs and CPUs per run, DDP processes per run, and how many runs at once, from the flags and
    the cluster (sweeps and searches alike). A run given N >= 2 whole GPUs trains on all of them."""
    gpus = gpus_per_run
    if gpus is None:
        gpus = (devices or 1) if resources.gpus and device != "cpu" else 0
    if gpus and device == "cpu":
        raise HarnessError("--device cpu with GPUs per run above 0: drop one of them.")
    if gpus >= 2 and (gpus != int(gpus) or (devices and devices != gpus)):
        raise HarnessError(f"{gpus:g} GPUs per run with --devices {devices or 1}: a run trains with one process per "
                           f"GPU, so give a whole number of GPUs and the same --devices (or leave --devices out).")
    processes = int(gpus) if gpus >= 2 else devices or 1
    if gpus and gpus < 2 and processes > 1:
        raise HarnessError(f"--devices {processes} needs {processes} GPUs per run, not {gpus:g}: pass --gpus-per-run "
                           f"{processes} (or leave it out).")
    if gpus > resources.gpus or (device.startswith("cuda") and not resources.gpus):
        raise HarnessError(
            f"The runs ask for {gpus or 1:g} GPU(s) each, but the Ray cluster has {resources.gpus:g}. Ask for 0 GPUs "
            f"per run (or --device cpu) to run on CPUs, or join a cluster with GPUs (--address)."
        )
    # more GPUs than one node has: the run's processes are placed over nodes (harness/launch/ray_nodes.py)
    spans = processes > 1 and gpus > resources.max_node_gpus
    cpus, wanted = cpus_per_run, max_parallel
    if cpus is None and gpus:  # one run per GPU, with its node's share of the CPUs
        cpus = max(1, int(resources.cpus_per_gpu * gpus))
    elif cpus is None:  # CPUs alone: one run per node, or the node's CPUs split among --max-parallel runs
        cpus = max(1, resources.max_node_cpus * resources.nodes // wanted) if wanted else resources.max_node_cpus
        cpus = min(cpus, resources.max_node_cpus)
    per_node = cpus / processes if spans else cpus  # a spanning run's processes may each be on another node
    if per_node > resources.max_node_cpus:
        each = f" ({per_node:g} per process)" if spans else ""
        raise HarnessError(f"{cpus:g} CPUs per run{each} is more than any node has ({resources.max_node_cpus:g}), so "
                           f"no run could ever start. Ask for at most {resources.max_node_cpus:g}.")
    slots = int(resources.cpus // cpus) if cpus else runs
    if gpus:
        slots = min(slots, int(resources.gpus // gpus))
    return {"gpus_per_run": gpus, "cpus_per_run": cpus, "max_parallel": wanted or max(1, slots),
            "torch_threads_per_run": max(1, int(per_node)), "devices_per_run": processes,
            "spans_nodes": spans,
            "device_type": "cuda" if gpus or device.startswith("cuda") else "cpu"}


def processes_note(allocation: dict) -> str:
    """How a run's processes are placed, for the plan's one-line summary (empty for one process)."""
    processes = allocation.get("devices_per_run", 1)
    if processes < 2:
        return ""
    return f" as {processes} processes" + (" placed over nodes by Ray" if allocation.get("spans_nodes")
                                           else " on one node")
