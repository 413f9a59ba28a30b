"""Checkpoint files: written atomically, the previous one kept, a damaged one explained.

A run folder holds ``checkpoint.pt`` (the latest) and ``checkpoint.prev.pt`` (the one before).
A checkpoint that cannot be read (truncated by a full disk, a half-finished copy between
machines) is set aside as ``checkpoint.pt.corrupt`` and the run resumes from the previous one,
saying so; with no readable one left, the error names the file and what to do.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from harness.errors import HarnessError
from harness.files import atomic_torch_save
from harness.run.records import CHECKPOINT_FILE

PREVIOUS_FILE = "checkpoint.prev.pt"
NEXT_FILE = f".{CHECKPOINT_FILE}.next"  # complete, not yet in place


def save(directory: Path, state: dict) -> None:
    """Write ``checkpoint.pt``; the one it replaces becomes ``checkpoint.prev.pt``.

    Between the two renames ``checkpoint.pt`` is missing; ``load`` then puts the complete new one
    in place."""
    path, previous, pending = directory / CHECKPOINT_FILE, directory / PREVIOUS_FILE, directory / NEXT_FILE
    atomic_torch_save(pending, state)
    if path.exists():
        os.replace(path, previous)
    os.replace(pending, path)


def exists(directory: Path) -> bool:
    return any((directory / name).exists() for name in (CHECKPOINT_FILE, PREVIOUS_FILE, NEXT_FILE))


def remove(directory: Path) -> None:
    for name in (CHECKPOINT_FILE, PREVIOUS_FILE, NEXT_FILE):
        (directory / name).unlink(missing_ok=True)


def _read(path: Path) -> Any:
    # on the CPU first: RNG states must stay CPU tensors; load_state_dict moves the rest
    return torch.load(path, map_location="cpu", weights_only=False)


# What torch.load raises for a file that is not a whole checkpoint: the zip reader's RuntimeError
# ("failed finding central directory"), or a pickle cut short. OSError (permissions, a stale NFS
# handle) is not damage to the file and propagates as it is.
DAMAGE = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)


def load(directory: Path, log: Callable[[str], None]) -> dict | None:
    """The newest readable checkpoint in ``directory``, or None if there is none."""
    path, previous, pending = directory / CHECKPOINT_FILE, directory / PREVIOUS_FILE, directory / NEXT_FILE
    if not path.exists() and pending.exists():  # stopped between save()'s renames; pending is always whole
        os.replace(pending, path)
    if not path.exists():
        return _read_previous(previous, log, why=None) if previous.exists() else None
    try:
        return _read(path)
    except DAMAGE as exc:
        damage = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if not previous.exists():
            raise HarnessError(
                f"The checkpoint {path} cannot be read ({damage}); it is probably truncated (a full disk, or an "
                f"unfinished copy from another machine) and no previous checkpoint is kept beside it. Copy it again "
                f"if it came from elsewhere, or delete it (or pass --fresh) to start the run over."
            ) from exc
        state = _read_previous(previous, log, why=f"{path} cannot be read ({damage})")
        corrupt = path.with_name(CHECKPOINT_FILE + ".corrupt")
        os.replace(path, corrupt)  # only once the previous one has loaded
        log(f"The damaged checkpoint was moved to {corrupt}.")
        return state


def _read_previous(previous: Path, log: Callable[[str], None], why: str | None) -> dict:
    try:
        state = _read(previous)
    except DAMAGE as exc:
        raise HarnessError(
            f"{why + ', and the' if why else 'The'} previous checkpoint {previous} cannot be read either "
            f"({type(exc).__name__}). Copy the run folder again if it came from elsewhere, or pass --fresh to start "
            f"the run over."
        ) from exc
    log(f"{why + '. ' if why else ''}Resuming from the previous checkpoint {previous} "
        f"(step {state['trainer']['step']}).")
    return state
