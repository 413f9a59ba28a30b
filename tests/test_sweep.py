"""Sweeps on a real local Ray instance (and a `ray start --head` cluster), driven as users drive them."""
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import FAST, SLOW_ARCH, TINY_ARCH, stop_ray_cluster

from harness.errors import RunInterrupted
from harness.launch import run
from harness.measure.estimate import predict
from harness.protocol.tasks import resolve_task
from harness.run.records import RunRecord

pytestmark = pytest.mark.slow

# Fields of a record that depend on the training, not on where or when it ran.
RESULT_FIELDS = ("status", "step", "config", "arch_sha256", "param_count", "loss_curve", "evaluations", "best_fid",
                 "best_step", "final_fid", "final_kid", "precision")


def _set_args(overrides):
    args = []
    for key, value in overrides.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def sweep_command(results, *args, overrides=None):
    """`python -m harness sweep` on shapes/smoke with the fast test settings, on the CPU, one thread per run."""
    fast = dict(FAST, **(overrides or {}))
    steps = fast.pop("training.steps")
    return [sys.executable, "-m", "harness", "sweep", "--task", "shapes", "--tier", "smoke", "--steps", str(steps),
            "--results-dir", str(results), "--cpus-per-run", "1", "--device", "cpu", "--no-progress",
            *_set_args(fast), *args]


def harness_sweep(results, *args, overrides=None, timeout=600):
    return subprocess.run(sweep_command(results, *args, overrides=overrides), capture_output=True, text=True,
                          timeout=timeout)


def start_sweep(results, *args, overrides=None, log=None):
    """A sweep driver in its own process group, with Ctrl-C behaving as in a terminal."""
    return subprocess.Popen(sweep_command(results, *args, overrides=overrides), stdout=log, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _run_command(arch, results, seed, overrides):
    fast = dict(FAST, **(overrides or {}))
    steps = fast.pop("training.steps")
    return [sys.executable, "-m", "harness", "run", "--task", "shapes", "--tier", "smoke", "--arch", str(arch),
            "--seed", str(seed), "--steps", str(steps), "--device", "cpu", "--results-dir", str(results),
            "--no-progress", *_set_args(fast)]


def reference_runs(cells, results, overrides=None):
    """The same cells run one after another in this process (harness.run, the Python API that `harness run` calls,
    without the 5 s of imports a process pays), each with one torch thread (as Ray gives a 1-CPU task); their
    records as written (read back: the returned record holds tuples where its JSON holds lists).
    tests/test_parallel.py compares such a run with a `harness run` process to the bit as well."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for arch, seed in cells:
            run("shapes", str(arch), "smoke", seed, device="cpu", results_dir=results,
                overrides=dict(FAST, **(overrides or {})), progress=False, log=lambda message: None)
    finally:
        torch.set_num_threads(threads)
    return [RunRecord.load(folder(results, Path(arch).stem, seed) / "record.json") for arch, seed in cells]


def reference_run(arch, results, seed=42, overrides=None):
    return reference_runs([(arch, seed)], results, overrides)[0]


def folder(results, arch, seed=42):
    return Path(results) / "shapes" / arch / "smoke" / f"seed{seed}"


def wait_for_step(run_folder, step, proc, timeout=240):
    """Until the run's record (rewritten at every checkpoint) is at ``step`` or beyond."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the sweep ended before the run got there"
        try:
            if json.loads((run_folder / "record.json").read_text())["step"] >= step:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{run_folder} never reached step {step}")


def manifest(results):
    (path,) = (Path(results) / "sweeps").glob("*.json")
    return json.loads(path.read_text())


def weights(run_folder):
    return torch.load(run_folder / "checkpoint.pt", weights_only=False)["trainer"]["model"]


def assert_same_results(a: RunRecord, b: RunRecord):
    """Equal to the bit in everything the training and evaluation computed (timings aside)."""
    for name in RESULT_FIELDS:
        assert getattr(a, name) == getattr(b, name) or name == "evaluations", f"records differ in {name}"
    untimed = [[{k: v for k, v in e.items() if not k.endswith(("_seconds", "_per_sec"))} for e in r.evaluations]
               for r in (a, b)]
    assert untimed[0] == untimed[1], "records differ in evaluations"


def test_sweep_records_equal_single_runs_a_rerun_trains_nothing_and_a_damaged_record_is_run_again(write_arch,
                                                                                                  tmp_path):
    archs = [write_arch("tiny", TINY_ARCH), write_arch("tinier", TINY_ARCH.replace('split(",")[0]', 'split(",")[1]'))]
    result = harness_sweep(tmp_path / "sweep", "--arch", ",".join(map(str, archs)), "--seed", "1,2")
    assert result.returncode == 0, result.stderr
    finished = [line for line in result.stdout.splitlines() if line.startswith("completed  ")]
    assert len(finished) == 4 and all("best FID" in line for line in finished)
    cells = [(arch, seed) for arch in archs for seed in (1, 2)]
    for (arch, seed), single in zip(cells, reference_runs(cells, tmp_path / "single")):
        swept = RunRecord.load(folder(tmp_path / "sweep", arch.stem, seed) / "record.json")
        assert_same_results(swept, single)
    entry = manifest(tmp_path / "sweep")
    assert [c["status"] for c in entry["cells"]] == ["completed"] * 4 and entry["ended_at"]
    for cell in entry["cells"]:  # each evaluation reached the driver as the run went
        record = RunRecord.load(Path(cell["record"]))
        assert cell["last_fid"] == record.final_fid and cell["best_fid"] == record.best_fid and cell["attempts"] == 1
    assert {"cpus", "gpus", "nodes"} <= set(entry["resources"]) and entry["allocation"]["cpus_per_run"] == 1

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep" / "shapes").rglob("checkpoint.pt")}
    again = harness_sweep(tmp_path / "sweep", "--arch", ",".join(map(str, archs)), "--seed", "1,2")
    assert again.returncode == 0, again.stderr
    assert "0 to run" in again.stdout and "4 already completed" in again.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}  # nothing trained, nothing rewritten
    assert len(manifest(tmp_path / "sweep")["sessions"]) == 2

    # A record cut short (a full disk) is not a completed run: the sweep says so and runs it again; a manifest
    # cut short is moved aside, named, and written anew.
    record_path, (manifest_path,) = folder(tmp_path / "sweep", "tiny", 1) / "record.json", (
        tmp_path / "sweep" / "sweeps").glob("*.json")
    record_path.write_text(record_path.read_text()[:100])
    manifest_path.write_text(manifest_path.read_text()[:50])
    damaged = harness_sweep(tmp_path / "sweep", "--arch", ",".join(map(str, archs)), "--seed", "1,2")
    said = " ".join(damaged.stdout.split())
    assert damaged.returncode == 0 and "Traceback" not in damaged.stdout + damaged.stderr, (damaged.stdout
                                                                                         + damaged.stderr)
    assert f"damaged tiny/smoke/seed1 {record_path} is not a valid record" in said, said
    assert f"The sweep's manifest {manifest_path} could not be read" in said
    assert (manifest_path.parent / (manifest_path.name + ".damaged")).exists()
    assert RunRecord.load(record_path).status == "completed"
    # the new manifest: the damaged cell run again, the three others found completed
    assert [c["status"] for c in manifest(tmp_path / "sweep")["cells"]] == ["completed"] + ["skipped"] * 3


def channel_process(driver) -> psutil.Process:
    """The driver's progress actor (harness/cluster/channel.py's Channel): the Ray worker titled ray::Channel
    among the processes of the driver's private Ray instance (another test's sweep may run beside it)."""
    (found,) = [p for p in psutil.Process(driver.pid).children(recursive=True)
                if (p.cmdline() or [""])[0].startswith("ray::Channel")]
    return found


def test_failing_architectures_fail_only_their_own_cells(write_arch, tmp_path):
    good = write_arch("tiny", TINY_ARCH)
    bad = write_arch("broken", "def build_model(device):\n    raise RuntimeError('boom at build')\n")
    # finite through the contract check and 3 training steps, then NaN
    nan = write_arch("diverges", TINY_ARCH.replace("        return UNet2DOutput(sample=self.out(h))",
                                                   "        self.calls = getattr(self, 'calls', 0) + self.training\n"
                                                   "        out = self.out(h)\n"
                                                   "        return UNet2DOutput(sample=out * float('nan') "
                                                   "if self.calls > 3 else out)"))
    result = harness_sweep(tmp_path, "--arch", f"{good},{bad},{nan}", "--seed", "1,2")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "4 of 6 runs did not complete" in result.stderr
    for seed in (1, 2):
        assert f"failed: broken/smoke/seed{seed}: " in result.stderr and "boom at build" in result.stderr
        assert f"failed: diverges/smoke/seed{seed}: Training diverged: the loss was nan at step 4" in result.stderr
        assert str(folder(tmp_path, "broken", seed) / "run.log") in result.stderr
        failed = RunRecord.load(folder(tmp_path, "broken", seed) / "record.json")
        assert failed.status == "failed" and "boom at build" in failed.failure["message"]
        diverged = RunRecord.load(folder(tmp_path, "diverges", seed) / "record.json")
        assert diverged.status == "failed" and diverged.failure["error"] == "NonFiniteLoss"
        assert RunRecord.load(folder(tmp_path, "tiny", seed) / "record.json").status == "completed"
    statuses = sorted(c["status"] for c in manifest(tmp_path)["cells"])
    assert statuses == ["completed", "completed", "failed", "failed", "failed", "failed"]
    assert all(c["attempts"] == 1 for c in manifest(tmp_path)["cells"])  # a run that fails by itself is not retried


@pytest.mark.xdist_group("ray-cluster")  # `ray start --head` serves Ray Client on port 10001
def test_sweep_joins_a_cluster_started_with_ray_start_and_runs_one_per_gpu(write_arch, tmp_path):
    arch = write_arch("slow", SLOW_ARCH)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    env = dict(os.environ, RAY_TMPDIR=ray_tmp)
    # two GPUs as Ray resources (this machine has none: the runs themselves use the CPU)
    start = subprocess.run(["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                            "--num-cpus", "2", "--num-gpus", "2", "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, env=env, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        # --device auto (the default; the helper's --device cpu is overridden) lets the GPUs count
        result = harness_sweep(tmp_path / "results", "--arch", str(arch), "--seed", "1,2", "--device", "auto",
                               "--address", f"127.0.0.1:{port}", overrides={"training.steps": 20})
        assert result.returncode == 0, result.stderr
        entry = manifest(tmp_path / "results")
        assert entry["resources"]["nodes"] == 1 and entry["resources"]["gpus"] == 2
        assert entry["allocation"]["gpus_per_run"] == 1 and entry["allocation"]["max_parallel"] == 2
        first, second = entry["cells"]
        # at once: each started before the other ended (times in whole seconds; each run trains for 5 s)
        assert first["started_at"] < second["ended_at"] and second["started_at"] < first["ended_at"]
        assert all(RunRecord.load(Path(c["record"])).status == "completed" for c in entry["cells"])
    finally:
        stop_ray_cluster(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_ctrl_c_or_a_killed_driver_stops_every_run_and_the_same_command_continues_from_checkpoints(write_arch,
                                                                                                   tmp_path):
    """Ctrl-C: every run checkpoints and is `interrupted`, the driver exits 130. Then the same command, its driver
    killed -9 (no chance to clean up). Each time the same command again continues from the checkpoints."""
    arch = write_arch("slow", SLOW_ARCH)
    longer = {"training.steps": 32}
    with open(tmp_path / "driver.log", "w") as log:
        driver = start_sweep(tmp_path, "--arch", str(arch), "--seed", "1,2", overrides=longer, log=log)
        for seed in (1, 2):
            wait_for_step(folder(tmp_path, "slow", seed), 2, driver)
        os.killpg(driver.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
        assert driver.wait(timeout=120) == 130, (tmp_path / "driver.log").read_text()
    stopped = {}
    for seed in (1, 2):
        record = RunRecord.load(folder(tmp_path, "slow", seed) / "record.json")
        saved = torch.load(folder(tmp_path, "slow", seed) / "checkpoint.pt", weights_only=False)["trainer"]["step"]
        assert record.status == "interrupted" and 2 <= record.step == saved < 32
        stopped[seed] = saved
    assert {c["status"] for c in manifest(tmp_path)["cells"]} == {"interrupted"}

    driver = start_sweep(tmp_path, "--arch", str(arch), "--seed", "1,2", overrides=longer, log=subprocess.DEVNULL)
    run_folder = folder(tmp_path, "slow", 1)
    for seed in (1, 2):
        wait_for_step(folder(tmp_path, "slow", seed), stopped[seed] + 2, driver)  # resumed, a checkpoint further
    driver.kill()  # kill -9: no chance to clean up
    driver.wait()
    for seed in (1, 2):  # its orphaned Ray workers hold the run folders until Ray reaps them: wait, as a user would
        holder = json.loads((folder(tmp_path, "slow", seed) / "run.lock").read_text())["pid"]
        with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
            psutil.Process(holder).wait(timeout=60)
    killed_at = RunRecord.load(run_folder / "record.json").step

    result = harness_sweep(tmp_path, "--arch", str(arch), "--seed", "1,2", overrides=longer)
    assert result.returncode == 0 and "2 resuming from checkpoints" in result.stdout, result.stdout + result.stderr
    assert all(RunRecord.load(folder(tmp_path, "slow", s) / "record.json").step == 32 for s in (1, 2))
    for seed in (1, 2):  # each resumed twice, first where Ctrl-C stopped it, then at least where it was killed
        log = (folder(tmp_path, "slow", seed) / "run.log").read_text()
        resumed_at = [int(line.split("at step ")[1].split()[0]) for line in log.splitlines() if "Resuming" in line]
        assert len(resumed_at) == 2 and resumed_at[0] == stopped[seed] < resumed_at[1], log
        assert RunRecord.load(folder(tmp_path, "slow", seed) / "record.json").status == "completed"
        if seed == 1:
            assert resumed_at[1] >= killed_at, log


def test_dry_run_shows_what_would_be_skipped_resumed_run_or_is_locked(tiny_arch, tmp_path):
    reference_run(tiny_arch, tmp_path, seed=1)  # completed, same settings
    with pytest.raises(RunInterrupted):
        run("shapes", str(tiny_arch), "smoke", 2, device="cpu", results_dir=tmp_path, overrides=FAST,
            progress=False, log=lambda m: None, should_stop=lambda step: step == 4)
    hold = ("import sys, time; from harness.run.locks import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(folder(tmp_path, "tiny", 4))], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = harness_sweep(tmp_path, "--arch", str(tiny_arch), "--seed", "1,2,3,4", "--dry-run", "--json")
        assert result.returncode == 0, result.stderr
        plan = json.loads(result.stdout)
        actions = {c["seed"]: c["action"] for c in plan["cells"]}
        assert actions == {1: "skip", 2: "resume", 3: "run", 4: "locked"}
        assert plan["cells"][1]["resume_step"] == 4 and plan["cells"][3]["holder"]["pid"] == holder.pid
        assert plan["allocation"]["cpus_per_run"] == 1 and not (tmp_path / "sweeps").exists()
        # the estimate of what is left: seed 3 from step 0 and seed 2 from step 4 of 6 (the reference is cached)
        estimate = plan["estimate"]
        assert [run["arch"] for run in estimate["runs"]] == ["tiny"] and estimate["study"]["runs"] == 2
        tiny = estimate["runs"][0]
        assert tiny["predicted"]["reference"] == 0 and tiny["measured"]["reference_plan"] == "cached"
        spec = resolve_task("shapes", "smoke", FAST)
        rest = predict(spec, tiny["measured"], from_step=4)  # 2 steps, the evaluation at 6, 2 checkpoints
        assert rest["training"] < tiny["predicted"]["training"] and rest["sampling"] == tiny["predicted"]["sampling"]
        assert estimate["study"]["device_seconds"] == pytest.approx(tiny["predicted"]["total"] + rest["total"],
                                                                    abs=0.2)
        # executed, the locked cell is reported, not run twice
        result = harness_sweep(tmp_path, "--arch", str(tiny_arch), "--seed", "4")
        assert result.returncode == 1 and f"in use by process {holder.pid}" in result.stdout + result.stderr
        assert not (folder(tmp_path, "tiny", 4) / "checkpoint.pt").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("args, message", [
    (["--arch", "standrd"], "Did you mean 'standard'?"),
    (["--arch", "standard", "--seed", "1,x"], "comma list of integers"),
    (["--arch", "standard", "--gpus-per-run", "1"], "ask for 1 GPU(s) each, but the Ray cluster has 0"),
    (["--arch", "standard", "--cpus-per-run", "64"], "more than any node has"),
    (["--arch", "standard", "--set", "training.lr=1"], "optimizer.lr"),
    (["--arch", ","], "--arch is empty"),
])
def test_bad_sweep_input_is_a_clear_error(args, message, tmp_path, capsys):
    from harness.cli.main import main

    assert main(["sweep", "--tier", "smoke", "--results-dir", str(tmp_path), "--dry-run", *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err


def test_a_private_instance_needs_no_network_but_loopback(tiny_arch, tmp_path):
    if not shutil.which("ip") or subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow a network namespace (unshare --net) to cut the network off")
    command = shlex.join(sweep_command(tmp_path, "--arch", str(tiny_arch)))
    # a network namespace whose only interface is loopback
    result = subprocess.run(["unshare", "--net", "bash", "-c", f"ip link set lo up && {command}"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert RunRecord.load(folder(tmp_path, "tiny") / "record.json").status == "completed"


def test_node_check_finds_unshared_results_and_different_architecture_files(tiny_arch, tmp_path):
    from harness.cluster.nodes import check_node
    from harness.protocol.registry import find_architecture

    digest = find_architecture(str(tiny_arch)).sha256
    (tmp_path / ".marker").write_text("token")
    assert check_node(str(tmp_path), ".marker", "token", {str(tiny_arch): digest})["problems"] == []
    # a node that sees another folder at the same path (no shared storage) and an edited file
    problems = check_node(str(tmp_path), ".marker", "other-token", {str(tiny_arch): "0" * 64})["problems"]
    assert any("is not the driver's" in p for p in problems) and any("differs there" in p for p in problems)
    missing = check_node(str(tmp_path), ".marker", "token", {str(tmp_path / "gone.py"): digest})["problems"]
    assert any("is missing there" in p for p in missing)


def test_arch_all_means_every_registered_architecture(arch_dir_with_a_broken_file, tmp_path, capsys):
    from harness.cli.main import main

    assert main(["sweep", "--task", "shapes", "--arch", "all", "--tier", "smoke", "--seed", "1,2",
                 "--results-dir", str(tmp_path), "--dry-run", "--no-estimate", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [c["key"] for c in plan["cells"]] == ["broken/smoke/seed1", "no_attn/smoke/seed1",
                                                 "broken/smoke/seed2", "no_attn/smoke/seed2"]
