"""A results folder on a filesystem that fills up mid-run (a 4 MB tmpfs the test mounts; skipped where
it may not): one clear message naming the file and the space left, a non-zero exit, the previous
checkpoint intact, a record that is not `running`; freeing space and the same command resume it."""
import errno
import subprocess

import pytest
import torch
from conftest import SLOW_ARCH
from test_signals import LONG, ONE_THREAD
from test_sweep import _run_command, assert_same_results, folder, wait_for_step

from harness.run.records import SPARE_FILE, RunRecord

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (it needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(path):
    """Write to ``path`` until the filesystem is full. Unbuffered: a buffered file would try again to write
    what did not fit when it is closed, and raise there."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_disk_that_fills_up_mid_run_is_one_clear_error_and_freeing_it_resumes(write_arch, tmp_path, small_disk,
                                                                                 straight_run):
    arch = write_arch("slow", SLOW_ARCH)
    straight = RunRecord.load(straight_run(SLOW_ARCH, LONG) / "record.json")
    run_folder = folder(small_disk, "slow")
    command = _run_command(arch, small_disk, 42, LONG)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    wait_for_step(run_folder, 8, proc)  # its first checkpoint is written
    filler = small_disk / "filler.bin"
    fill(filler)
    out, err = proc.communicate(timeout=120)
    said = " ".join(err.split())
    assert proc.returncode == 1 and "Traceback" not in out + err, out + err
    assert f"Cannot write {run_folder / '.checkpoint.pt.next'}: No space left on device" in said, said
    assert "free there)" in said and "the last good checkpoint (step 8) is kept" in said, said
    record = RunRecord.load(run_folder / "record.json")
    assert record.status == "failed" and record.failure["error"] == "CannotWrite" and record.step == 16
    assert not (run_folder / SPARE_FILE).exists()  # its space held that record
    kept = torch.load(run_folder / "checkpoint.pt", weights_only=False)
    assert kept["trainer"]["step"] == 8

    filler.unlink()  # space freed: the same command resumes from step 8 and ends as if never stopped
    again = subprocess.run(command, capture_output=True, text=True, env=ONE_THREAD, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "from its checkpoint at step 8" in (run_folder / "run.log").read_text()
    assert_same_results(RunRecord.load(run_folder / "record.json"), straight)
    assert not (run_folder / SPARE_FILE).exists()  # a finished run gives its spare back
