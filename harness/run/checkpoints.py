"""Checkpoint files: written atomically, the previous one kept, a damaged one explained.

A run folder holds ``checkpoint.pt`` (the latest) and ``checkpoint.prev.pt`` (the one before).
A checkpoint that cannot be read (truncated by a full disk, a half-finished copy between
machines) is set aside as ``checkpoint.pt.corrupt`` and the run resumes from the previous one,
saying so; with no readable one left, the error names the file and what to do.

A checkpoint is data, never code: it is read with torch's restricted unpickler (``weights_only``),
which builds tensors, numbers, strings and their containers and imports nothing, because run folders
travel (a shared results folder, a colleague's copy, a downloaded run given to export-model) and a
crafted pickle runs any code it names when read the ordinary way. ``save`` holds to that form, a file
that needs more is refused naming ``--trust-checkpoint``, and ``trust`` (that option) rewrites a file
the user vouches for in the safe form.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from harness.errors import HarnessError
from harness.files import atomic_torch_save, atomic_write_bytes
from harness.run.locks import RunLock
from harness.run.records import CHECKPOINT_FILE

PREVIOUS_FILE = "checkpoint.prev.pt"
NEXT_FILE = f".{CHECKPOINT_FILE}.next"  # complete, not yet in place
BEST_FILE = "best_ema.safetensors"  # the EMA weights of the best evaluation so far
TRUST_OPTION = "--trust-checkpoint"

# What the restricted unpickler builds besides tensors and containers (exact types: a subclass, a
# namedtuple say, is a class it would have to import)
_LEAVES = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size)
_CONTAINERS = (dict, OrderedDict, list, tuple, set)


class UntrustedCheckpoint(HarnessError):
    """A checkpoint that names classes or functions the restricted unpickler refuses: only Python's own
    unpickler reads it, and that one runs whatever the file names."""

    def __init__(self, path: Path, names: list[str]):
        named = f" (it names {', '.join(sorted(names)[:4])}{', ...' if len(names) > 4 else ''})" if names else ""
        super().__init__(
            f"The checkpoint {path} holds objects that only Python's unrestricted unpickler can read{named}, and "
            f"reading it that way could run any code the file contains, so the harness does not read it. If you "
            f"trust where it comes from (your own run, written by an older version of the harness), pass "
            f"{TRUST_OPTION} once: the file is read that way and rewritten in the safe form, and the command goes "
            f"on. Otherwise delete the run's checkpoints (or run it with --fresh) to start it over.")


def save(directory: Path, state: dict) -> None:
    """Write ``checkpoint.pt``; the one it replaces becomes ``checkpoint.prev.pt``.

    Between the two renames ``checkpoint.pt`` is missing; ``load`` then puts the complete new one
    in place."""
    path, previous, pending = directory / CHECKPOINT_FILE, directory / PREVIOUS_FILE, directory / NEXT_FILE
    atomic_torch_save(pending, safe_form(state, "the checkpoint's state"))
    if path.exists():
        os.replace(path, previous)
    os.replace(pending, path)


def save_best(directory: Path, model: torch.nn.Module, step: int, fid: float) -> None:
    """The sampled (EMA) weights of a new best evaluation, atomically, as safetensors (data only): the weights
    the leaderboard's number belongs to, which export-model exports by default. The step and FID ride along
    in the file's metadata."""
    from safetensors.torch import save

    # contiguous (a channels_last weight is not) and unshared (tied weights): what safetensors stores
    tensors = {name: value.detach().cpu().clone(memory_format=torch.contiguous_format)
               for name, value in model.state_dict().items()}
    atomic_write_bytes(directory / BEST_FILE, save(tensors, metadata={"step": str(step), "fid": repr(float(fid))}))


def load_best(directory: Path) -> tuple[dict, int, float] | None:
    """(weights, step, FID) of the run's best evaluation, or None when the run kept none (made before it did)."""
    from safetensors import safe_open

    if not (directory / BEST_FILE).is_file():
        return None
    with safe_open(directory / BEST_FILE, "pt") as f:
        meta = f.metadata()
        return {name: f.get_tensor(name) for name in f.keys()}, int(meta["step"]), float(meta["fid"])


def exists(directory: Path) -> bool:
    return any((directory / name).exists() for name in (CHECKPOINT_FILE, PREVIOUS_FILE, NEXT_FILE))


def remove(directory: Path) -> None:
    for name in (CHECKPOINT_FILE, PREVIOUS_FILE, NEXT_FILE, BEST_FILE):
        (directory / name).unlink(missing_ok=True)


def safe_form(obj: Any, where: str) -> Any:
    """``obj`` as the restricted unpickler reads it back: numpy scalars become Python numbers and numpy
    arrays tensors; containers are copied only where something inside them changed (a module's state
    dict keeps its ``_metadata``). Anything else is a TypeError naming where it is: a programming error
    at ``save``, an old checkpoint's content at ``trust``."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return torch.from_numpy(obj)
    if type(obj) in (torch.Tensor, torch.nn.Parameter) or type(obj) in _LEAVES:
        return obj
    if type(obj) not in _CONTAINERS:
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}")
    if isinstance(obj, dict):
        pairs = [(safe_form(k, f"a key of {where}"), safe_form(v, f"{where}[{k!r}]")) for k, v in obj.items()]
        if all(k is old_k and v is old_v for (k, v), (old_k, old_v) in zip(pairs, obj.items())):
            return obj
        new = type(obj)(pairs)
    else:
        items = [safe_form(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if all(v is old for v, old in zip(items, obj)):
            return obj
        new = type(obj)(items)
    if getattr(obj, "__dict__", None):  # OrderedDict attributes (a state dict's _metadata) go along
        new.__dict__.update(obj.__dict__)
    return new


def _read(path: Path) -> Any:
    # weights_only (see the module's docstring); on the CPU first: RNG states must stay CPU tensors,
    # load_state_dict moves the rest
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = _unsafe_names(path)
        if names is None:  # nothing it names is refused: the pickle itself is damaged
            raise
        raise UntrustedCheckpoint(path, names) from None


def _unsafe_names(path: Path) -> list[str] | None:
    """The classes and functions ``path`` names that the restricted unpickler refuses, found by reading
    the pickle's opcodes (nothing is imported or called); None where it names none or cannot be parsed."""
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is None:  # torch < 2.5 cannot list them: a refusal is taken as one
        return []
    try:
        return scan(path) or None
    except (*DAMAGE, ValueError, KeyError):
        return None


# What torch.load raises for a file that is not a whole checkpoint: the zip reader's RuntimeError
# ("failed finding central directory"), a pickle cut short or garbled (one that names classes the
# restricted unpickler refuses is UntrustedCheckpoint instead), or the KeyError of the legacy reader
# on a file that is no zip at all. OSError (permissions, a stale NFS handle) is not damage to the
# file and propagates as it is.
DAMAGE = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError)


def trust(directory: Path, log: Callable[[str], None]) -> None:
    """``--trust-checkpoint``: each checkpoint in ``directory`` that only the unrestricted unpickler reads is
    read that way (the user vouches for it) and rewritten, atomically, in the safe form; then everything
    reads it as usual. A damaged one is left for ``load`` to explain; another process's run folder is
    refused (RunLocked) rather than rewritten under it."""
    untrusted = []
    for path in (directory / name for name in (CHECKPOINT_FILE, PREVIOUS_FILE, NEXT_FILE)):
        try:
            if path.exists():
                _read(path)
        except UntrustedCheckpoint:
            untrusted.append(path)
        except DAMAGE:
            pass
    if not untrusted:
        return
    with RunLock(directory):
        for path in untrusted:
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)  # the user's word: see above
            except DAMAGE:
                continue
            except (ImportError, AttributeError) as exc:  # a class of a module (or version) not installed here
                raise HarnessError(f"The checkpoint {path} cannot be read even with {TRUST_OPTION}: {exc}. It was "
                                   f"written with code this Python does not have; delete the run's checkpoints "
                                   f"(or run it with --fresh) to start it over.") from None
            try:
                converted = safe_form(state, "its content")
            except TypeError as exc:
                raise HarnessError(f"The checkpoint {path} cannot be rewritten in the safe form: {exc}, which is "
                                   f"not data the harness stores. Delete the run's checkpoints (or run it with "
                                   f"--fresh) to start it over.") from None
            atomic_torch_save(path, converted)
            log(f"{TRUST_OPTION}: {path} was read with Python's unrestricted unpickler and rewritten in the safe "
                f"form; it is read safely from now on.")


def load(directory: Path, log: Callable[[str], None], read_only: bool = False) -> dict | None:
    """The newest readable checkpoint in ``directory``, or None if there is none. ``read_only``: nothing in the
    folder is renamed or moved (export-model reading a run that may be live): a pending checkpoint is read
    where it is and a damaged one left in place."""
    path, previous, pending = directory / CHECKPOINT_FILE, directory / PREVIOUS_FILE, directory / NEXT_FILE
    if not path.exists() and pending.exists():  # stopped between save()'s renames; pending is always whole
        if read_only:
            path = pending
        else:
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
        if not read_only:
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
