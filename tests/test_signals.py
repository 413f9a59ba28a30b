"""How clusters stop jobs: SIGTERM (SLURM at the time limit or on preemption, Kubernetes, spot
instances) and SIGUSR1 (SLURM's `--signal=USR1@N` warning) are a polite stop everywhere: the run
finishes its step, checkpoints there, records `interrupted` with the signal, exits 128 + the
signal's number, and the same command resumes at that step, ending equal to an uninterrupted run."""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import SLOW_ARCH, TWO_PROCESSES
from test_sweep import (
    _run_command,
    assert_same_results,
    channel_process,
    folder,
    manifest,
    sweep_command,
    wait_for_step,
    weights,
)

from harness.files import REPO_ROOT
from harness.run.records import RunRecord

pytestmark = pytest.mark.slow

# 24 steps of ~0.25 s; checkpoints every 8, so that a checkpoint at any other step is the signal's
LONG = {"training.steps": 24, "training.checkpoint_every": 8, "training.log_every": 1}
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")  # as the reference runs (and a 1-CPU Ray task) have


def checkpoint_step(run_folder: Path) -> int:
    return torch.load(run_folder / "checkpoint.pt", weights_only=False)["trainer"]["step"]


def assert_stopped_by(run_folder, name, before):
    """Interrupted by ``name`` off the checkpoint schedule, and the checkpoint is at the record's step."""
    record = RunRecord.load(run_folder / "record.json")
    assert record.status == "interrupted" and record.interruption["signal"] == name, record.interruption
    assert record.interruption["step"] == record.step == checkpoint_step(run_folder)
    assert before <= record.step < before + 8 and record.step % 8 != 0, (before, record.step)
    return record.step


def test_sigterm_and_sigusr1_stop_a_run_politely_and_it_resumes_to_the_same_result(write_arch, tmp_path, straight_run):
    """SIGTERM straight to `harness run`; then SIGUSR1 as SLURM sends it (`--signal=B:USR1@300`) to the
    batch script docs/slurm/harness.sbatch, which passes it on and requeues the job; then the requeued
    job. SLURM itself is not here: `scontrol` is a stand-in that writes down what it was asked."""
    arch = write_arch("slow", SLOW_ARCH)
    straight = RunRecord.load(straight_run(SLOW_ARCH, LONG) / "record.json")
    results = tmp_path / "stopped"
    run_folder = folder(results, "slow")
    command = _run_command(arch, results, 42, LONG)
    bin_dir, asked = tmp_path / "bin", tmp_path / "scontrol.txt"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {asked}\n')
    (bin_dir / "scontrol").chmod(0o755)
    job = dict(ONE_THREAD, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242")
    batch = ["bash", str(REPO_ROOT / "docs" / "slurm" / "harness.sbatch"), *command]
    stops = []
    for sig, name, after, argv in ((signal.SIGTERM, "SIGTERM", 8, command), (signal.SIGUSR1, "SIGUSR1", 16, batch)):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=job)
        wait_for_step(run_folder, after, proc)
        os.kill(proc.pid, sig)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 128 + sig, out  # 143, 138: the shell's convention for a signal
        assert "Traceback" not in out and f"Stopped by {name} at step" in out, out
        stops.append(assert_stopped_by(run_folder, name, after))
    assert asked.read_text() == "requeue 4242\n"  # the batch script requeued its job, once
    done = subprocess.run(batch, capture_output=True, text=True, env=job, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert asked.read_text() == "requeue 4242\n"  # finished: not requeued again
    log = (run_folder / "run.log").read_text()
    assert all(f"from its checkpoint at step {s}" in log for s in stops), log  # resumed exactly there
    resumed = RunRecord.load(run_folder / "record.json")
    assert_same_results(resumed, straight)  # loss curve, every FID: nothing trained twice or skipped


def test_sigterm_to_a_two_process_run_stops_both_at_one_step_and_it_resumes(write_arch, tmp_path, straight_run):
    """The launcher alone gets it (`kill PID`), then the launcher and both workers (as SLURM signals
    every process of a job step): either way both ranks stop at the same step, rank 0 checkpoints."""
    arch = write_arch("slow", SLOW_ARCH)
    straight = straight_run(SLOW_ARCH, TWO_PROCESSES, devices=2)  # the same command, uninterrupted
    results = tmp_path / "stopped"
    run_folder = folder(results, "slow")
    command = _run_command(arch, results, 42, TWO_PROCESSES) + ["--devices", "2"]
    stops = []
    for whole_group, after in ((False, 8), (True, 16)):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ONE_THREAD,
                                start_new_session=True)
        wait_for_step(run_folder, after, proc)
        if whole_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 143 and "Traceback" not in out, out
        stops.append(assert_stopped_by(run_folder, "SIGTERM", after))
    done = subprocess.run(command, capture_output=True, text=True, env=ONE_THREAD, timeout=300)
    assert done.returncode == 0, done.stderr
    log = (run_folder / "run.log").read_text()
    assert all(f"from its checkpoint at step {s}" in log for s in stops), log
    assert_same_results(RunRecord.load(run_folder / "record.json"), RunRecord.load(straight / "record.json"))


def test_a_signalled_or_lost_ray_worker_is_retried_and_sigterm_to_the_driver_stops_the_sweep(write_arch, tmp_path,
                                                                                             straight_run):
    """One sweep, three things that happen to clusters, each followed by the run going on from a checkpoint:
    SIGTERM to the run's Ray worker (its node drained or preempted: the run checkpoints where it is and Ray runs
    it again); the next worker and the driver's progress actor killed -9 together (their node died: Ray restarts
    the actor and runs the task again, from the last checkpoint); SIGTERM to the driver (every run checkpoints and
    is `interrupted`, the driver exits 143, and the same command finishes it). The end equals an uninterrupted
    run of the same file to the bit."""
    arch = write_arch("slow", SLOW_ARCH)
    straight = straight_run(SLOW_ARCH, LONG)
    results = tmp_path / "sweep"
    run_folder = folder(results, "slow")
    command = sweep_command(results, "--arch", str(arch), overrides=LONG)
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def wait_for_log(text, count):
        deadline = time.monotonic() + 120
        while (run_folder / "run.log").read_text().count(text) < count:
            assert driver.poll() is None and time.monotonic() < deadline, (tmp_path / "driver.log").read_text()
            time.sleep(0.2)

    def worker_pid():  # the process that holds the run folder
        return json.loads((run_folder / "run.lock").read_text())["pid"]

    # SIGTERM while it trains (past its first checkpoint, so its handler is in place): a stop off the schedule
    wait_for_step(run_folder, 8, driver)
    os.kill(worker_pid(), signal.SIGTERM)
    wait_for_log("Resuming", 1)
    log = (run_folder / "run.log").read_text()
    worker_stop = int(re.search(r"Stopped by SIGTERM at step (\d+)", log).group(1))
    assert 8 <= worker_stop < 16 and f"from its checkpoint at step {worker_stop}" in log, log

    # kill -9 the next worker and the progress actor after the checkpoint at 16: it resumes there
    wait_for_step(run_folder, 16, driver)
    channel = channel_process(driver)
    os.kill(worker_pid(), signal.SIGKILL)
    channel.kill()
    wait_for_log("Resuming", 2)
    assert "from its checkpoint at step 16" in (run_folder / "run.log").read_text()

    os.kill(driver.pid, signal.SIGTERM)
    assert driver.wait(timeout=120) == 143, (tmp_path / "driver.log").read_text()
    said = (tmp_path / "driver.log").read_text()
    assert "Traceback" not in said and "Stopping (SIGTERM)" in said, said
    assert "retrying   slow/smoke/seed42" in said and "(attempt 3)" in said, said
    assert manifest(results)["cells"][0]["attempts"] == 3  # the task ran again after each lost worker
    record = RunRecord.load(run_folder / "record.json")
    assert record.status == "interrupted" and record.step == checkpoint_step(run_folder) < 24
    assert record.interruption["signal"] is None  # the driver's stop request, not a signal to the run

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_same_results(RunRecord.load(run_folder / "record.json"), RunRecord.load(straight / "record.json"))
    mine, theirs = weights(run_folder), weights(straight)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
