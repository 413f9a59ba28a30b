"""The check a sweep or search runs once on every node before any run: the same results folder, the same files."""
from __future__ import annotations

import socket
from pathlib import Path

from harness.errors import HarnessError


def check_node(results_dir: str, marker: str, token: str, arch_hashes: dict[str, str]) -> dict:
    """Runs once on every node before a sweep: can it write the results folder, is it the same
    folder the driver sees (shared storage on a cluster), and are the architecture files the same?"""
    import ray

    from harness.protocol import registry
    from harness.run.records import ensure_writable

    problems = []
    node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    try:
        ensure_writable(Path(results_dir))
        seen = (Path(results_dir) / marker).read_text() if (Path(results_dir) / marker).exists() else None
        if seen != token:
            problems.append(f"the results folder {results_dir} there is not the driver's (no shared storage?)")
    except HarnessError as exc:
        problems.append(str(exc))
    for name, digest in arch_hashes.items():
        try:
            theirs = registry.find_architecture(name).sha256
        except Exception as exc:
            problems.append(f"architecture {name!r} is missing there ({exc})")
            continue
        if theirs != digest:
            problems.append(f"architecture {name!r} differs there from the driver's file")
    return {"node": node, "problems": problems}
