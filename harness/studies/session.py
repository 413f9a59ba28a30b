"""What a study (a sweep, a search) holds while it runs: its inputs made absolute, one driver's lock, and a Ray
session with a checked pool. The same for both:

    task, results_dir, data_dir = absolute_inputs(task, results_dir, data_dir)   # workers may run elsewhere
    with driver_lock(results_dir, results_dir / "sweeps" / "abc.lock", "sweep abc"):   # one driver at a time
        with ray_session(address, allocate, max_retries, results_dir, arch_hashes, "sweep") as session:
            drive(session.pool, driver, session.allocation["max_parallel"])           # harness/studies/drive.py

``ray_session`` connects (a private instance, or the cluster at ``address``), allocates the cluster's resources
(``allocate``: the study's rule, which may refuse before any run starts), starts the pool, checks every node of a
cluster can read and write the results folder (and has the same architecture files), and shuts Ray down at the
end: a private instance stops, a cluster is only left.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from harness.cluster.connect import connect
from harness.cluster.pool import RayPool
from harness.cluster.resources import Resources, cluster_resources
from harness.errors import HarnessError
from harness.run.locks import RunLock
from harness.run.records import ensure_writable


def absolute_inputs(task: str, results_dir: str | Path, data_dir: str | Path | None) -> tuple[str, Path, str | None]:
    """``task`` (a task file given by path made absolute, a name as it is), ``results_dir`` and ``data_dir`` as
    every worker must see them: the runs may start in another directory, on another node."""
    results_dir = Path(results_dir).expanduser().resolve()
    if "runtime_resources" in results_dir.parts:
        raise HarnessError(
            f"The results folder {results_dir} is inside Ray's temporary copy of the working directory (a relative "
            f"--results-dir under `ray job submit --working-dir`), which Ray deletes. Pass an absolute "
            f"--results-dir on storage every node mounts at the same path, e.g. --results-dir /shared/results."
        )
    if Path(task).suffix in (".yaml", ".yml") and Path(task).exists():
        task = str(Path(task).resolve())
    return task, results_dir, str(Path(data_dir).expanduser().resolve()) if data_dir else None


@contextlib.contextmanager
def driver_lock(results_dir: Path, lock: Path, driver: str) -> Iterator[None]:
    """The results folder checked writable, then ``lock`` held for ``driver`` (e.g. "sweep shapes-1a2b"): a
    second driver of the same sweep or study is refused, naming the first."""
    ensure_writable(results_dir)
    with RunLock(lock.parent, name=lock.name, driver=driver):
        yield


@dataclass(frozen=True)
class Session:
    resources: Resources  # what the cluster (or this machine) has
    allocation: dict  # what each run gets, and how many run at once (harness/cluster/resources.py allocate)
    pool: RayPool


@contextlib.contextmanager
def ray_session(address: str | None, allocate: Callable[[Resources], dict], max_retries: int, results_dir: Path,
                arch_hashes: Callable[[], dict[str, str] | None], what: str) -> Iterator[Session]:
    """Connected to Ray, with a pool sized by ``allocate(resources)``; ``arch_hashes()`` (asked once the allocation
    is made) names the architecture files each node must have, by hash: None checks no node (nothing will run)."""
    import ray

    private = connect(address)
    try:
        resources = cluster_resources()
        allocation = allocate(resources)
        pool = RayPool(allocation, max_retries)
        hashes = arch_hashes()
        # A private instance's one node is this machine: its workers run this Python and see the folder the
        # driver just found writable and the files it just hashed, so only a cluster's nodes are checked (the
        # check is a round trip to a worker before the first run: 3.4 s of a one-cell local sweep, measured
        # 2026-12-07, though the run's own worker start then takes part of that back).
        if hashes is not None and not private:
            problems = pool.check_nodes(results_dir, hashes)
            if problems:
                raise HarnessError(
                    f"The {what} cannot start: " + "; ".join(problems) + ". Put --results-dir on storage every node "
                    "mounts at the same path" + (", and the same architecture files on every node (or submit with "
                                                 "`ray job submit --working-dir .`)" if hashes else "") + ".")
        yield Session(resources, allocation, pool)
    finally:
        ray.shutdown()  # stops a private instance; only disconnects from a cluster
