"""Scaling efficiency of one run over N processes: img/s with N over N x img/s with one.

Both sides are whole ``python -m harness run`` commands on the same cell, in separate results
folders, after an untimed run has filled the FID reference cache: one with ``--devices 1`` and T
torch threads, then one with ``--devices N`` and N x T threads (the launcher gives each process
T). Training speed comes from the runs' own records (training segments only: no start-up, no
evaluation). On GPUs, one process per GPU; on a CPU the N processes share the machine's cores, so
the figure shows only what the gradient all-reduce and the launcher cost.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from harness.errors import HarnessError
from harness.run.records import RECORD_FILE, RunRecord

# few samples and DDIM steps: the run must end with an evaluation, the benchmark times training
QUICK_EVALUATION = {"evaluation.num_samples": 8, "evaluation.eval_points": [], "sampling.steps": 2,
                    "sampling.batch_size": 8, "evaluation.reference_images": 64}


def run_scaling_bench(devices: int, device: str = "auto", task: str = "shapes", tier: str = "smoke",
                      arch: str = "standard", steps: int = 60, threads: int | None = None,
                      progress: Callable[[str], None] = print) -> dict:
    if devices < 2:
        raise HarnessError(f"--scaling needs at least 2 devices to compare with one, not {devices}.")
    threads = threads or max(1, (os.cpu_count() or 1) // devices)
    sets = [item for key, value in {**QUICK_EVALUATION, "training.steps": steps}.items()
            for item in ("--set", f"{key}={value}")]

    def run_command(n: int, results: Path) -> RunRecord:
        command = [sys.executable, "-m", "harness", "run", "--task", task, "--arch", arch, "--tier", tier,
                   "--device", device, "--devices", str(n), "--results-dir", str(results), "--no-progress", *sets]
        done = subprocess.run(command, capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS=str(threads * n)))
        if done.returncode != 0:
            raise HarnessError(f"The benchmark command `{' '.join(command)}` failed: {done.stderr.strip()[-800:]}")
        return RunRecord.load(next(results.rglob(RECORD_FILE)))

    with tempfile.TemporaryDirectory(prefix="scaling-bench-") as tmp:
        root = Path(tmp)
        progress("untimed warm-up run (fills the FID reference cache)")
        run_command(1, root / "warm")
        progress(f"1 process, {threads} thread(s), {steps} steps")
        one = run_command(1, root / "one")
        progress(f"{devices} processes, {threads} thread(s) each, {steps} steps")
        many = run_command(devices, root / "many")
    rate_one, rate_many = one.timings["train_images_per_sec"], many.timings["train_images_per_sec"]
    return {"task": task, "tier": tier, "arch": arch, "steps": steps,
            "batch_size": one.config["training"]["batch_size"],
            "device": many.device, "devices": devices, "threads_per_process": threads,
            "one_process_train_images_per_sec": rate_one, "processes_train_images_per_sec": rate_many,
            "speedup": round(rate_many / rate_one, 3), "efficiency": round(rate_many / (devices * rate_one), 3)}
