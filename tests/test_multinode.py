"""One run whose processes span the nodes of a real Ray cluster (two `ray start` nodes on loopback,
one fake GPU each, so that a run given 2 GPUs must place one process on each node)."""
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile

import pytest
import torch
from conftest import SLOW_ARCH, TWO_PROCESSES, stop_ray_cluster
from test_sweep import folder, manifest, sweep_command, wait_for_step, weights

from harness.run.records import RunRecord

pytestmark = pytest.mark.slow

@pytest.fixture
def two_node_cluster(monkeypatch):
    """A head node and a second node, each with 1 CPU and 1 GPU as Ray resources, started with
    `ray start` as on a real cluster (and stopped with `ray stop`), with token authentication as Ray
    2.60 clusters have it. The token is this test's own (RAY_AUTH_TOKEN, inherited by the nodes and by
    the sweep's driver): not ~/.ray/auth_token, which a fresh machine does not have until some Ray
    instance has made one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    env = dict(os.environ, RAY_TMPDIR=ray_tmp)
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "1", "--disable-usage-stats"]
    try:
        head = ["ray", "start", "--head", "--port", str(port), "--include-dashboard=false", *common]
        second = ["ray", "start", "--address", f"127.0.0.1:{port}", *common]
        for command in (head, second):
            started = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
            assert started.returncode == 0, started.stdout + started.stderr
        yield f"127.0.0.1:{port}"
    finally:
        stop_ray_cluster(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.xdist_group("ray-cluster")  # `ray start --head` serves Ray Client on port 10001
def test_a_run_spans_two_nodes_survives_a_lost_process_and_trains_what_one_node_trains(
        two_node_cluster, write_arch, tmp_path, straight_run):
    arch = write_arch("slow", SLOW_ARCH)
    command = sweep_command(tmp_path / "sweep", "--arch", str(arch), "--address", two_node_cluster, "--device", "auto",
                            "--gpus-per-run", "2", "--cpus-per-run", "2", overrides=TWO_PROCESSES)
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        run_folder = folder(tmp_path / "sweep", "slow")
        wait_for_step(run_folder, 8, driver)  # its first checkpoint
        # rank 1 is the process on the second node: kill it as a dying node would
        places = re.findall(r"rank (\d) on \S+ \(([\d.]+), Ray node (\w+), pid (\d+)\)",
                            (run_folder / "run.log").read_text())
        assert len(places) == 2 and places[0][2] != places[1][2], places  # one process on each node
        os.kill(int(places[1][3]), signal.SIGKILL)
        assert driver.wait(timeout=400) == 0, (tmp_path / "driver.log").read_text()
    text = (run_folder / "run.log").read_text()
    assert f"Process rank 1 (pid {places[1][3]}) was lost" in text  # the lost process named, not its peer
    assert text.count("Resuming") == 1  # the sweep's task ran again, from the checkpoint
    (cell,) = manifest(tmp_path / "sweep")["cells"]
    assert cell["status"] == "completed" and cell["attempts"] == 2
    assert manifest(tmp_path / "sweep")["allocation"]["spans_nodes"] is True
    spanning = RunRecord.load(run_folder / "record.json")
    assert spanning.status == "completed" and spanning.step == 24
    assert spanning.processes["count"] == 2 and spanning.processes["backend"] == "gloo"

    # The same run as 2 processes on one machine (one thread each, as each actor has one CPU), uninterrupted:
    # the same computation, so the same numbers to the bit, although it was interrupted and resumed.
    local = straight_run(SLOW_ARCH, TWO_PROCESSES, devices=2)
    one_node = RunRecord.load(local / "record.json")
    assert spanning.loss_curve == one_node.loss_curve
    assert spanning.best_fid == one_node.best_fid and spanning.final_kid == one_node.final_kid
    a, b = weights(run_folder), weights(local)
    assert all(torch.equal(a[k], b[k]) for k in a)
