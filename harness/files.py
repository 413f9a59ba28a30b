"""Where the harness lives and how it writes: atomic writes, a shared-file lock, UTC time stamps.

A leaf: every layer that writes a file a user may keep (a record, a checkpoint, an FID reference, a
study's export) writes it through here, so nothing half-written is ever left under the final name.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.errors import CannotWrite

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout: architectures/, tasks/, results/ live here


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temporary file next to ``path`` with the permissions a plain open() would give it
    (mkstemp makes files private, 0600, which would hide results from the rest of a team)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def free_space(path: Path) -> str:
    """'1.2 GB free there': the space left on the filesystem ``path`` (or its nearest existing parent) is on."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "free space unknown"
    size = next((f"{free / 1000 ** k:.1f} {unit}" for k, unit in ((3, "GB"), (2, "MB"), (1, "kB"))
                 if free >= 1000 ** k), f"{free} bytes")
    return f"{size} free there"


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """OSError while writing ``path`` -> CannotWrite naming the file, the reason and the space left."""
    try:
        yield
    except OSError as exc:
        raise CannotWrite(f"Cannot write {path}: {exc.strerror or exc} ({free_space(path.parent)}). Nothing "
                          f"half-written was left under its name. Free some space (or make the folder writable) "
                          f"and run the same command again.") from exc


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: Path, write: Callable[[Any], Any]) -> None:
    """As atomic_write_bytes, with ``write(file)`` filling the temporary file: a writer that streams from its own
    buffer (np.save of an array) holds no second copy of the data."""
    with writing(path):
        fd, tmp = _temp_beside(path)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):  # a full disk: the partial file goes, and its space with it
                os.unlink(tmp)


def atomic_write_json(path: Path, obj: Any, *, spare: Path | None = None) -> None:
    """``spare``: a file held by :func:`keep_spare` whose space this write may take where the disk is full,
    so that a last word (a failed run's record) is still written whole, never cut short in place."""
    data = (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode()
    try:
        atomic_write_bytes(path, data)
    except CannotWrite as exc:
        if spare is None or getattr(exc.__cause__, "errno", None) != errno.ENOSPC or not spare.exists():
            raise
        spare.unlink()
        atomic_write_bytes(path, data)


def keep_spare(path: Path, size: int) -> None:
    """Hold ``size`` bytes of disk at ``path`` for :func:`atomic_write_json`'s ``spare``. Random bytes, so that
    a compressing filesystem allocates them. Where even they do not fit, the disk is full already and the
    next checkpoint says so; the write goes on without a spare."""
    if path.exists() and path.stat().st_size >= size:
        return
    with contextlib.suppress(CannotWrite):
        atomic_write_bytes(path, os.urandom(size))


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch  # here only: the modules that read records and write JSON need no torch

    with writing(path):
        fd, tmp = _temp_beside(path)
        os.close(fd)
        try:
            try:
                torch.save(obj, tmp)
            except RuntimeError as exc:  # torch's zip writer says "unexpected pos ..." where the disk is full
                full = shutil.disk_usage(path.parent).free < 2 ** 20
                raise OSError(errno.ENOSPC if full else errno.EIO,
                              os.strerror(errno.ENOSPC) if full else str(exc).splitlines()[0]) from exc
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def waiting(path: str | Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive POSIX lock on ``path`` for the block, waiting for it as long as another process
    has it: one writer of a shared file (an FID reference) at a time, on one machine or over NFS. The
    lock file is opened once and never by anyone else in this process, so the lock is not dropped early.
    ``on_wait`` is called once if another process holds it (a wait that may take minutes is said)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held elsewhere
            if on_wait is not None:
                on_wait()
            fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
