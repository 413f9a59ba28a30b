"""One process per run folder; damaged checkpoints explained or bypassed."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import FAST

from harness.errors import HarnessError, RunInterrupted
from harness.launch import run
from harness.run.locks import RunLock, RunLocked

HOLD = ("import sys, time; from harness.run.locks import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(600)")


@pytest.fixture
def holder(tmp_path):
    """Start another process that holds the lock of a run folder; yields (folder, process)."""
    folder = tmp_path / "shapes" / "tiny" / "smoke" / "seed42"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc
    proc.kill()
    proc.wait()


def test_lock_refuses_a_second_process_and_names_the_holder(holder):
    folder, proc = holder
    with pytest.raises(RunLocked) as caught:
        RunLock(folder).acquire()
    message = str(caught.value)
    assert f"process {proc.pid} on host {socket.gethostname()} since 20" in message and "-c" in message
    assert caught.value.holder["pid"] == proc.pid


def test_lock_left_by_a_killed_process_does_not_block(holder):
    folder, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with RunLock(folder):
        # read from another process: opening and closing the file here would drop this process's lock
        seen = subprocess.run([sys.executable, "-c", f"print(open({str(folder / 'run.lock')!r}).read())"],
                              capture_output=True, text=True).stdout
        assert json.loads(seen)["pid"] == os.getpid()
        second = subprocess.run([sys.executable, "-c",
                                 f"from harness.run.locks import RunLock; RunLock({str(folder)!r}).acquire()"],
                                capture_output=True, text=True)
        assert second.returncode != 0 and "RunLocked" in second.stderr  # and the lock still holds
    assert (folder / "run.lock").read_text() == ""  # released: names nobody


def test_lock_refuses_the_same_folder_twice_in_one_process(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunLocked, match=f"process {os.getpid()}"):
            RunLock(tmp_path / "run").acquire()
    RunLock(tmp_path / "run").acquire().release()  # and is free again afterwards


def test_run_command_refuses_a_locked_folder_without_traceback(holder, tiny_arch, capsys):
    from harness.cli.main import main  # the command's entry point, in this process; the lock's holder is another

    folder, proc = holder
    code = main(["run", "--task", "shapes", "--arch", str(tiny_arch), "--tier", "smoke", "--results-dir",
                 str(folder.parents[3]), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 75, err
    message = " ".join(err.split())  # the CLI wraps its messages
    assert f"in use by process {proc.pid} on host {socket.gethostname()}" in message and "Traceback" not in message
    assert not (folder / "checkpoint.pt").exists()


def _run(arch, results, **kwargs):
    return run("shapes", str(arch), "smoke", device="cpu", results_dir=results, overrides=FAST, progress=False,
               **kwargs)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_checkpoint_resumes_from_the_previous_one_and_says_so(tiny_arch, tmp_path):
    straight = _run(tiny_arch, tmp_path / "a", log=lambda m: None)
    with pytest.raises(RunInterrupted):  # checkpoints at steps 2 and 4 (checkpoint_every=2); stop at 4
        _run(tiny_arch, tmp_path / "b", log=lambda m: None, should_stop=lambda step: step == 4)
    folder = tmp_path / "b" / "shapes" / "tiny" / "smoke" / "seed42"
    _truncate(folder / "checkpoint.pt")
    logs = []
    resumed = _run(tiny_arch, tmp_path / "b", log=logs.append)
    assert any("cannot be read" in m and "Resuming from the previous checkpoint" in m and "(step 2)" in m for m in logs)
    assert (folder / "checkpoint.pt.corrupt").exists()
    assert resumed.final_fid == straight.final_fid and resumed.loss_curve == straight.loss_curve


def test_truncated_checkpoint_without_a_previous_one_is_a_clear_error(tiny_arch, tmp_path):
    with pytest.raises(RunInterrupted):
        _run(tiny_arch, tmp_path, log=lambda m: None, should_stop=lambda step: step == 2)
    folder = tmp_path / "shapes" / "tiny" / "smoke" / "seed42"
    assert not (folder / "checkpoint.prev.pt").exists()  # the first checkpoint has no predecessor
    _truncate(folder / "checkpoint.pt")
    with pytest.raises(HarnessError, match=r"checkpoint\.pt cannot be read .*truncated.*--fresh"):
        _run(tiny_arch, tmp_path, log=lambda m: None)
    assert _run(tiny_arch, tmp_path, log=lambda m: None, fresh=True).status == "completed"


def test_broken_architecture_gets_a_failed_record_saying_why(write_arch, tmp_path):
    arch = write_arch("broken", "def build_model(device):\n    raise RuntimeError('boom')\n")
    with pytest.raises(HarnessError, match="boom"):
        _run(arch, tmp_path, log=lambda m: None)
    folder = tmp_path / "shapes" / "broken" / "smoke" / "seed42"
    record = json.loads((folder / "record.json").read_text())
    assert record["status"] == "failed" and "boom" in record["failure"]["message"] and record["param_count"] is None
    assert "Traceback" in (folder / "run.log").read_text()
