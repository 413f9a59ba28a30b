"""What a sweep costs over running its cells by hand: the same smoke runs, timed both ways.

Side A is what a user would otherwise type: ``python -m harness run`` once per cell, one after
another. Side B is one ``python -m harness sweep`` over the same cells with ``--max-parallel 1``
(Ray start-up, scheduling, the manifest; a private instance checks no node). Both are whole commands in fresh
processes, in separate results folders, after one untimed run has filled the FID reference
cache. A machine's speed drifts over a quarter of an hour, so the order is A (first half of the
cells), B, A (second half): a linear drift hits both sides alike. ``ratio`` is B / A (1.05 would
mean 5% overhead); the runs' own records split it into training speed and time outside the runs.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from harness.errors import HarnessError
from harness.run.records import RECORD_FILE, RunRecord

CELLS = [("standard", 1), ("no_attn", 1), ("standard", 2), ("no_attn", 2)]


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise HarnessError(f"The benchmark command `{' '.join(command)}` failed: {done.stderr.strip()[-800:]}")
    return time.perf_counter() - start


def _records(results: Path) -> list[RunRecord]:
    return [RunRecord.load(path) for path in sorted(results.rglob(RECORD_FILE))]


def run_sweep_bench(task: str = "shapes", tier: str = "smoke", steps: int | None = None,
                    progress: Callable[[str], None] = print) -> dict:
    harness = [sys.executable, "-m", "harness"]
    common = ["--task", task, "--tier", tier, "--no-progress"] + (["--steps", str(steps)] if steps else [])

    def run_command(arch: str, seed: int, results: Path) -> float:
        return _timed(harness + ["run", "--arch", arch, "--seed", str(seed), "--results-dir", str(results)] + common)

    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        root = Path(tmp)
        progress("untimed warm-up run (fills the FID reference cache)")
        run_command("standard", 0, root / "warm")
        half = len(CELLS) // 2
        progress(f"A: the first {half} cells as `run` commands")
        one_by_one = sum(run_command(arch, seed, root / "a") for arch, seed in CELLS[:half])
        progress(f"B: one `sweep` over all {len(CELLS)} cells, --max-parallel 1")
        archs = ",".join(dict.fromkeys(a for a, _ in CELLS))
        seeds = ",".join(str(s) for s in dict.fromkeys(s for _, s in CELLS))
        swept = _timed(harness + ["sweep", "--arch", archs, "--seed", seeds, "--max-parallel", "1",
                                  "--results-dir", str(root / "b")] + common)
        progress(f"A: the other {len(CELLS) - half} cells as `run` commands")
        one_by_one += sum(run_command(arch, seed, root / "a") for arch, seed in CELLS[half:])
        a, b = _records(root / "a"), _records(root / "b")

    def train_rate(records):  # images per second of training, over all the side's runs
        return sum(r.timings["train_images_per_sec"] * r.timings["train_seconds"] for r in records) / \
            sum(r.timings["train_seconds"] for r in records)

    return {"cells": [f"{a}/{tier}/seed{s}" for a, s in CELLS], "task": task, "steps": steps,
            "run_commands_seconds": round(one_by_one, 2), "sweep_seconds": round(swept, 2),
            "ratio": round(swept / one_by_one, 4),
            "run_commands_train_images_per_sec": round(train_rate(a), 2),
            "sweep_train_images_per_sec": round(train_rate(b), 2),
            # command time not spent inside run() (imports, Ray, scheduling), summed over the side
            "run_commands_outside_runs_seconds": round(one_by_one - sum(r.timings["wall_seconds"] for r in a), 2),
            "sweep_outside_runs_seconds": round(swept - sum(r.timings["wall_seconds"] for r in b), 2)}
