"""One run as several DDP processes (gloo on this CPU): the same training and the same FID as one
process, and a run whose process dies ends at once and resumes."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from harness.cluster.resources import Resources, allocate
from harness.errors import HarnessError
from harness.launch import run
from harness.protocol import registry
from harness.protocol.tasks import resolve_task
from harness.run.records import RunRecord, substitution_line

# The standard U-Net at smoke widths, a few steps, a small evaluation split into ragged sampling
# batches (20 samples in batches of 6: ranks 0 and 1 take batches {0, 2} and {1, 3}).
SETTINGS = {
    "training.steps": 8, "training.log_every": 1, "training.checkpoint_every": 4,
    "evaluation.num_samples": 20, "evaluation.eval_points": [0], "evaluation.reference_images": 64,
    "evaluation.feature_batch_size": 32, "sampling.steps": 4, "sampling.batch_size": 6, "data.num_images": 512,
}


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, **kwargs)


def sets(settings):
    return [item for key, value in settings.items() for item in ("--set", f"{key}={value}")]


def folder(results, arch="standard"):
    return results / "shapes" / arch / "smoke" / "seed42"


def run_in_one_thread(results):
    """The standard U-Net's run in this process with one torch thread, as each of the two processes has."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run("shapes", "standard", "smoke", device="cpu", results_dir=results, overrides=SETTINGS, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_processes_train_and_evaluate_what_one_process_does(tmp_path):
    # Both sides with one torch thread per process: on a CPU the thread count changes how a conv
    # splits its sums (2 threads gave an FID 0.003 away at step 0), the number of processes must not.
    one = run_in_one_thread(tmp_path / "one")
    done = cli("run", "--task", "shapes", "--arch", "standard", "--tier", "smoke", "--device", "cpu", "--devices", "2",
               "--results-dir", str(tmp_path / "two"), "--no-progress", *sets(SETTINGS),
               env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert done.returncode == 0, done.stdout + done.stderr
    two = RunRecord.load(folder(tmp_path / "two") / "record.json")
    assert two.status == "completed" and two.step == 8
    assert two.processes["count"] == 2 and two.processes["backend"] == "gloo" and len(two.processes["devices"]) == 2
    assert one.processes["count"] == 1
    # Step 0: the same initial weights (same seed), evaluated as one process and sharded over two:
    # every image comes from the same batch on the same kernels, so the FID is the same number.
    first_one, first_two = one.evaluations[0], two.evaluations[0]
    assert first_one["step"] == first_two["step"] == 0
    assert abs(first_one["fid"] - first_two["fid"]) < 1e-6 and abs(first_one["kid"] - first_two["kid"]) < 1e-9
    grid = "samples_step000000.png"
    assert (folder(tmp_path / "one") / grid).read_bytes() == (folder(tmp_path / "two") / grid).read_bytes()
    # Training: every rank drew the whole batch from the one generator, so the random stream is
    # the same to the bit; losses and weights differ only by the order of float sums (the mean
    # of two half-batch means, gradients all-reduced).
    a = torch.load(folder(tmp_path / "one") / "checkpoint.pt", weights_only=False)["trainer"]
    b = torch.load(folder(tmp_path / "two") / "checkpoint.pt", weights_only=False)["trainer"]
    assert torch.equal(a["generator"], b["generator"]) and a["step"] == b["step"] == 8
    assert torch.equal(a["batches"]["order"], b["batches"]["order"])
    steps_one, losses_one = zip(*one.loss_curve)
    steps_two, losses_two = zip(*two.loss_curve)
    assert steps_one == steps_two == tuple(range(1, 9))
    assert max(abs(x - y) / x for x, y in zip(losses_one, losses_two)) < 1e-5
    # The weights: compare what 8 steps changed. Measured 2026-11-25: the two updates differ by
    # 0.03% of their norm (max 5e-5 on one weight, against steps of up to lr = 2e-4 each); a rank
    # training on the wrong rows, or on other noise, moves them by as much as the update itself.
    spec = resolve_task("shapes", "smoke", SETTINGS)
    _, model = registry.load("standard", spec.width_env, torch.device("cpu"), 42)
    init = model.state_dict()
    for part in ("model", "ema"):
        update_one = torch.cat([(a[part][k] - init[k]).float().flatten() for k in init])
        update_two = torch.cat([(b[part][k] - init[k]).float().flatten() for k in init])
        assert (update_one - update_two).norm() < 1e-3 * update_one.norm(), part
    # FID after training: the two runs' weights differ by the sum order above, so their FIDs may
    # differ too (CI measured 414.392 against 414.380); what must not differ is the evaluation of
    # the SAME weights. The two-process run's step-8 checkpoint, its step-8 evaluation taken out,
    # resumed by one process: it evaluates those weights again, as one process.
    again = folder(tmp_path / "again")
    shutil.copytree(folder(tmp_path / "two"), again)
    state = torch.load(again / "checkpoint.pt", weights_only=False)
    state["evaluations"] = [e for e in state["evaluations"] if e["step"] != 8]
    torch.save(state, again / "checkpoint.pt")
    grid = "samples_step000008.png"
    (again / grid).unlink()  # written again by the new evaluation
    alone = run_in_one_thread(tmp_path / "again")
    by_one, by_two = alone.evaluations[-1], two.evaluations[-1]
    assert by_one["step"] == by_two["step"] == 8 and by_one["num_samples"] == by_two["num_samples"] == 20
    # Equal to the bit, not within a tolerance: each image is sampled in the same batch on the same
    # kernels and rank 0 scores the gathered features in seed order (measured 2026-12-07 on the
    # 2-core VM: FID 414.40014221611165, KID 0.5544049143791199, fid_std 8.464113391407002 both
    # ways). The FID alone would not see features gathered out of order (a mean and a covariance);
    # KID's seeded subsets, the bootstrap's seeded resamples and the grid do.
    assert (by_one["fid"], by_one["kid"], by_one["fid_std"]) == (by_two["fid"], by_two["kid"], by_two["fid_std"])
    assert (again / grid).read_bytes() == (folder(tmp_path / "two") / grid).read_bytes()


def _workers(launcher: psutil.Process) -> list[psutil.Process]:
    """The launcher's worker processes (spawned by the elastic agent)."""
    found = []
    for child in launcher.children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def _start(results, arch, settings):
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--task", "shapes", "--arch", str(arch), "--tier", "smoke", "--device",
         "cpu", "--devices", "2", "--results-dir", str(results), "--no-progress", *sets(settings)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="2"))


def _wait_for_step(record_path, step, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        if record_path.exists():
            try:
                if RunRecord.load(record_path).step >= step:
                    return
            except ValueError:  # caught between two writes of a record being replaced: try again
                pass
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint at step {step} within {timeout} s")


@pytest.mark.slow
def test_ctrl_c_and_a_killed_process_end_the_run_cleanly_and_it_resumes(tmp_path, tiny_arch):
    settings = {"training.steps": 3000, "training.log_every": 10, "training.checkpoint_every": 10,
                "evaluation.num_samples": 8, "evaluation.eval_points": [], "evaluation.reference_images": 16,
                "evaluation.feature_batch_size": 16, "sampling.steps": 2, "sampling.batch_size": 4,
                "data.num_images": 256}
    record_path = folder(tmp_path, "tiny") / "record.json"
    # Ctrl-C at a terminal reaches the launcher and both workers: they agree on a step, rank 0
    # saves the checkpoint and the record, and the command exits 130.
    proc = _start(tmp_path, tiny_arch, settings)
    _wait_for_step(record_path, 10, proc)
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "Run the same command again to resume" in " ".join(output.split())
    stopped = RunRecord.load(record_path)
    assert stopped.status == "interrupted"
    # The same command resumes; then one worker is killed: the launcher notices, stops the other
    # (no hang), says which process died, exits 1 and keeps the checkpoint.
    proc = _start(tmp_path, tiny_arch, settings)
    _wait_for_step(record_path, stopped.step + 20, proc)
    rank0 = int(re.findall(r"pid (\d+)",
                           (folder(tmp_path, "tiny") / "run.log").read_text())[-1])  # "Run ... on HOST, pid N"
    (rank1,) = [p for p in _workers(psutil.Process(proc.pid)) if p.pid != rank0]
    killed_at = time.monotonic()
    rank1.kill()
    output = proc.communicate(timeout=120)[0]
    assert time.monotonic() - killed_at < 60
    assert proc.returncode == 1, output
    assert "Process rank 1" in output and "SIGKILL" in output and "Traceback" not in output
    assert not _workers(psutil.Process(os.getpid()))  # no worker left behind
    failed = RunRecord.load(record_path)
    assert failed.status == "failed" and "rank 1" in failed.failure["message"]
    # The next attempt, here a sweep cell given 2 devices (a Ray task that launches the two
    # processes), resumes from the checkpoint and finishes.
    finish = cli("sweep", "--task", "shapes", "--arch", str(tiny_arch), "--tier", "smoke", "--device", "cpu",
                 "--devices", "2", "--results-dir", str(tmp_path), "--no-progress",
                 *sets(dict(settings, **{"training.steps": failed.step + 20})),
                 env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert finish.returncode == 0, finish.stdout + finish.stderr
    assert "completed" in finish.stdout
    log = (folder(tmp_path, "tiny") / "run.log").read_text()
    assert log.count("Resuming") == 2
    done = RunRecord.load(record_path)
    assert done.status == "completed" and done.step == failed.step + 20 and done.processes["count"] == 2


def test_bad_devices_are_refused_before_anything_starts(tmp_path, capsys):
    from harness.cli.main import main  # the command's own entry point, in this process (no torch import to wait on)

    for args, words in [(["--devices", "3"], "does not split into 3 equal parts"), (["--devices", "0"], "at least 1"),
                        (["--devices", "2", "--device", "cuda"], "more GPUs than this machine shows")]:
        code = main(["run", "--task", "shapes", "--arch", "standard", "--tier", "smoke", "--results-dir",
                     str(tmp_path), *args])
        err = capsys.readouterr().err
        assert code == 2 and words in " ".join(err.split()), err
        assert "Traceback" not in err
    assert not list(tmp_path.rglob("record.json"))


# CUDA_VISIBLE_DEVICES="" hides every GPU: a machine without a usable one, whatever this one holds
NO_GPU = dict(os.environ, CUDA_VISIBLE_DEVICES="")


def test_device_auto_without_a_gpu_refuses_a_gpu_tier_as_one_process_does(tmp_path):
    # cifar10's small tier is meant for GPUs (training.gpu_required): --device auto without a GPU
    # refuses it before any process starts or any data is fetched, in the words one process uses
    said = []
    for devices in ("2", "1"):
        done = cli("run", "--task", "cifar10", "--arch", "standard", "--tier", "small", "--device", "auto",
                   "--devices", devices, "--results-dir", str(tmp_path / "results"),
                   "--data-dir", str(tmp_path / "data"), env=NO_GPU)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        said.append(" ".join(done.stderr.split()))
    assert "--device auto found no GPU" in said[0] and "small of task cifar10 are meant for GPUs" in said[0]
    assert said[0] == said[1]
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


# Loaded by every Python process of a run through PYTHONPATH: counts each rank's stop collectives
# (World.any across processes), the one the training loop makes to agree on a stop.
COUNT_STOP_COLLECTIVES = """
import os

import harness.world as world

_any = world.World.any


def counted(self, flag):
    if self.distributed:
        with open(os.path.join(os.environ["STOP_COLLECTIVES"], f"rank{self.rank}"), "a") as f:
            f.write("1 ")
    return _any(self, flag)


world.World.any = counted
"""


@pytest.mark.slow  # two processes load torch and Inception (about 35 s on 2 cores)
def test_device_auto_without_a_gpu_is_a_recorded_substitution_with_two_processes(tmp_path, tiny_arch):
    """Also: the ranks agree on a stop once per log interval, not after every step (a collective each time)."""
    from conftest import FAST

    site, counts = tmp_path / "site", tmp_path / "counts"
    site.mkdir(), counts.mkdir()
    (site / "sitecustomize.py").write_text(COUNT_STOP_COLLECTIVES)
    done = cli("run", "--task", "shapes", "--arch", str(tiny_arch), "--tier", "smoke", "--device", "auto",
               "--devices", "2", "--results-dir", str(tmp_path), "--no-progress", *sets(FAST),
               env=dict(NO_GPU, OMP_NUM_THREADS="2", PYTHONPATH=str(site), STOP_COLLECTIVES=str(counts)))
    assert done.returncode == 0, done.stdout + done.stderr
    # 6 steps logged every 2: asked at steps 2, 4 and 6 (the last also ends the segment), 3 times per rank, not 6
    asked = {p.name: len(p.read_text().split()) for p in counts.iterdir()}
    per_rank = FAST["training.steps"] // FAST["training.log_every"]
    assert asked == {"rank0": per_rank, "rank1": per_rank} and per_rank == 3
    record = RunRecord.load(folder(tmp_path, "tiny") / "record.json")
    assert record.processes["count"] == 2 and record.device["type"] == "cpu"
    (note,) = [n for n in record.substitutions if n["what"] == "device"]
    assert (note["asked"], note["used"]) == ("auto (a GPU if there is one)", "cpu")
    said = [line for line in done.stdout.splitlines() if line.startswith("Substitution: ")]
    assert len(said) == len(record.substitutions) and substitution_line(note) in said  # said once, by rank 0


def test_sweeps_give_each_run_its_gpus_as_processes():
    node = Resources(cpus=32, gpus=8, nodes=1, max_node_cpus=32, cpus_per_gpu=4, max_node_gpus=8)
    four = allocate(node, "auto", 4, None, None, runs=4)
    assert (four["devices_per_run"], four["cpus_per_run"], four["max_parallel"]) == (4, 16, 2)
    two = allocate(node, "auto", None, None, None, runs=4, devices=2)  # --devices alone sets the GPUs per run
    assert (two["gpus_per_run"], two["devices_per_run"], two["max_parallel"]) == (2, 2, 4)
    assert allocate(node, "auto", 0.5, None, None, runs=4)["devices_per_run"] == 1  # a shared GPU: one process
    cpu = allocate(Resources(cpus=2, gpus=0, nodes=1, max_node_cpus=2, cpus_per_gpu=None), "cpu", None, None, 1,
                   runs=1, devices=2)
    assert (cpu["gpus_per_run"], cpu["devices_per_run"], cpu["cpus_per_run"]) == (0, 2, 2)
    for gpus, devices, words in [(2.5, None, "whole number"), (2, 4, "the same --devices"),
                                 (1, 2, "needs 2 GPUs per run")]:
        with pytest.raises(HarnessError, match=words):
            allocate(node, "auto", gpus, None, None, runs=1, devices=devices)
    two_nodes = Resources(cpus=64, gpus=16, nodes=2, max_node_cpus=32, cpus_per_gpu=4, max_node_gpus=8)
    within = allocate(two_nodes, "auto", 8, None, None, runs=2)  # fits one node: one task starts its processes
    assert (within["devices_per_run"], within["spans_nodes"], within["max_parallel"]) == (8, False, 2)
    spanning = allocate(two_nodes, "auto", 16, None, None, runs=1)  # more than a node has: placed over nodes
    assert (spanning["devices_per_run"], spanning["spans_nodes"], spanning["cpus_per_run"]) == (16, True, 64)
    assert spanning["torch_threads_per_run"] == 4  # each process has its GPU's share of its node's CPUs
    with pytest.raises(HarnessError, match="more than any node has"):  # 40 CPUs for one process
        allocate(two_nodes, "auto", 16, 640, None, runs=1)
    with pytest.raises(HarnessError, match="the Ray cluster has 16"):
        allocate(two_nodes, "auto", 24, None, None, runs=1)
