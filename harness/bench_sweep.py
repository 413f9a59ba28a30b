"""What a sweep costs over running its cells by hand: the same smoke runs, timed both ways.

Side A is what a user would otherwise type: ``python -m harness run`` once per cell, one after
another. Side B is one ``python -m harness sweep`` over the same cells with ``--max-parallel 1``
(Ray start-up, the node checks, scheduling, the manifest). Both are whole commands in fresh
processes, in separate results folders, after one untimed run has filled the FID reference
cache; ``ratio`` is B / A (1.05 would mean 5% overhead).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from harness.errors import HarnessError

CELLS = [("standard", 1), ("no_attn", 1), ("standard", 2), ("no_attn", 2)]


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise HarnessError(f"The benchmark command `{' '.join(command)}` failed: {done.stderr.strip()[-800:]}")
    return time.perf_counter() - start


def run_sweep_bench(task: str = "shapes", tier: str = "smoke", steps: int | None = None,
                    progress: Callable[[str], None] = print) -> dict:
    harness = [sys.executable, "-m", "harness"]
    common = ["--task", task, "--tier", tier, "--no-progress"] + (["--steps", str(steps)] if steps else [])
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        root = Path(tmp)
        progress("untimed warm-up run (fills the FID reference cache)")
        _timed(harness + ["run", "--arch", "standard", "--seed", "0", "--results-dir", str(root / "warm")] + common)
        progress(f"A: {len(CELLS)} `run` commands one after another")
        one_by_one = sum(_timed(harness + ["run", "--arch", arch, "--seed", str(seed), "--results-dir", str(root / "a")]
                                + common) for arch, seed in CELLS)
        progress(f"B: one `sweep` over the same {len(CELLS)} cells, --max-parallel 1")
        archs = ",".join(dict.fromkeys(a for a, _ in CELLS))
        seeds = ",".join(str(s) for s in dict.fromkeys(s for _, s in CELLS))
        swept = _timed(harness + ["sweep", "--arch", archs, "--seed", seeds, "--max-parallel", "1",
                                  "--results-dir", str(root / "b")] + common)
    return {"cells": [f"{a}/{tier}/seed{s}" for a, s in CELLS], "task": task, "steps": steps,
            "run_commands_seconds": round(one_by_one, 2), "sweep_seconds": round(swept, 2),
            "ratio": round(swept / one_by_one, 4)}
