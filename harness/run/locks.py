"""One process per run folder: a lock that holds across machines and dies with its holder.

``RunLock(directory)`` takes an exclusive POSIX record lock (``fcntl.lockf``) on
``<directory>/run.lock`` and writes who holds it (host, pid, since, command) into the file. POSIX
locks are what NFS implements across clients (flock on NFS is emulated with them), and the
kernel (or the NFS server, when a client's lease lapses) drops them when the holding process
dies, so a lock left by ``kill -9`` never blocks anyone. The file is never deleted: deleting a
lock file races with a process that has just opened it.

Written here rather than with the ``filelock`` package because the refusal must name the holder,
and ``filelock`` neither records nor reports one.

POSIX locks belong to a process, not to a file handle, and any close of any handle to the file
drops them; so this module never opens the file again while holding it, and a second lock of a
folder from the same process is refused from a table of the folders this process holds.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
from pathlib import Path

from harness.errors import HarnessError

LOCK_FILE = "run.lock"

_held: dict[Path, dict] = {}  # folders this process holds -> holder info
_held_guard = threading.Lock()
command_label: str | None = None  # what the holder says it runs; set by a Ray task, else the command line


def holder_command() -> str:
    return command_label or " ".join(sys.argv)[:300]


class RunLocked(HarnessError):
    """The run folder (or a sweep, a study) is in use by a live process: this one or another, here or elsewhere."""

    exit_code = 75  # EX_TEMPFAIL: try again later

    def __init__(self, directory: Path, holder: dict, driver: str | None = None):
        self.directory, self.holder = directory, holder
        who = (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('since', '?')}"
               if holder else "another process (it has not written its name yet)")
        command = f" (running: {holder['command']})" if holder.get("command") else ""
        if driver:  # "sweep <id>" or "study <name>"
            subject = driver
            advice = (f"Another driver is running this {driver.split()[0]}; two would run its runs twice. Wait for it "
                      f"to finish, or stop it (Ctrl-C)")
        else:
            subject = f"run folder {directory}"
            advice = ("Two processes training into one folder would overwrite each other's checkpoints, so this one "
                      "does not start. Wait for that run to finish (or stop it with Ctrl-C; it checkpoints), or use "
                      "another --results-dir or --seed")
        super().__init__(f"The {subject} is in use by {who}{command}. {advice}. The lock is released by "
                         f"itself when its process exits or is killed.")


def _holder_info() -> dict:
    from harness.files import now

    return {"host": socket.gethostname(), "pid": os.getpid(), "since": now(), "command": holder_command()}


def read_holder(lock_file: Path) -> dict:
    """Who wrote the lock file last (the holder, if it is locked). Only read the file from a
    process that does not hold the lock: closing the handle would release it."""
    key = Path(lock_file).resolve()
    if key in _held:
        return dict(_held[key])
    try:
        return json.loads(Path(lock_file).read_text() or "{}")
    except (OSError, ValueError):
        return {}


class RunLock:
    """``with RunLock(run_folder):`` ... raises RunLocked at once if a live process holds it.
    ``RunLock(sweeps_dir, name="<id>.lock", driver="sweep <id>")`` locks a sweep (or a study)
    against a second driver."""

    def __init__(self, directory: str | Path, name: str = LOCK_FILE, driver: str | None = None):
        self.directory, self.path, self.driver = Path(directory), Path(directory) / name, driver
        self._key = self.path.resolve()
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        with _held_guard:
            if self._key in _held:
                raise RunLocked(self.directory, _held[self._key], self.driver)
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)  # this process holds no lock on the file, so closing releases nothing
                raise RunLocked(self.directory, read_holder(self.path), self.driver) from None
            info = _holder_info()
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
                os.fsync(fd)
            except OSError:  # a full disk, say: do not keep a lock nobody can see
                os.close(fd)
                raise
            self._fd, _held[self._key] = fd, info
        return self

    def release(self) -> None:
        with _held_guard:
            if self._fd is None:
                return
            try:
                os.ftruncate(self._fd, 0)  # an unlocked file names nobody
            except OSError:
                pass
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            _held.pop(self._key, None)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
