"""Find architecture files, build them at a tier's widths, and check the contract.

An architecture is a file ``architectures/<name>.py`` defining ``build_model(device)``. It reads
its widths from the environment (``BLOCK_OUT_CHANNELS``, ``LAYERS_PER_BLOCK``), exactly like
files written for the MLS-Bench cv-diffusion-architecture task, so the harness sets those
variables around the import and the call and restores them afterwards. The file is executed
afresh for every build, so a file that reads the widths at import time works too.

The returned module is called as ``model(x, timestep)`` with x ``[B,3,32,32]`` in [-1,1] and
timestep ``[B]`` int64 in [0,1000), and returns an object whose ``.sample`` is the predicted
noise ``[B,3,32,32]``. ``validate`` checks that with a tiny forward pass and explains failures.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.files import REPO_ROOT
from harness.world import environment


def architectures_dir() -> Path:
    return Path(os.environ.get("HARNESS_ARCH_DIR", REPO_ROOT / "architectures"))


def canonical_name(name: str) -> str:
    """``full-attn`` and ``full_attn`` name the same file."""
    return name.replace("-", "_")


def architecture_names() -> list[str]:
    return sorted(p.stem for p in architectures_dir().glob("*.py") if not p.name.startswith("_"))


@dataclass(frozen=True)
class Architecture:
    name: str
    path: Path
    built_sha256: str | None = None  # the hash of the source that built the model (set by ``load``)

    @property
    def sha256(self) -> str:
        """The built source's hash once a model is built from it (a file edited later does not change
        what this run vouches for), else the file's as it is now."""
        return self.built_sha256 or hashlib.sha256(self.path.read_bytes()).hexdigest()

    @property
    def summary(self) -> str:
        """First line of the file's docstring."""
        import ast

        doc = ast.get_docstring(ast.parse(self.path.read_text())) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


def find_architecture(name: str) -> Architecture:
    """A registered name (``standard``, ``full-attn``) or a path to a ``.py`` file."""
    as_path = Path(name)
    if as_path.suffix == ".py":
        if not as_path.is_file():
            raise HarnessError(f"Architecture file {as_path} does not exist. Pass a name or a path to a .py file.")
        return Architecture(as_path.stem, as_path.resolve())
    canonical = canonical_name(name)
    path = architectures_dir() / f"{canonical}.py"
    if not path.is_file():
        known = architecture_names()
        close = difflib.get_close_matches(canonical, known, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise HarnessError(
            f"Unknown architecture '{name}'.{hint} Available: {', '.join(known) or '(none)'}. "
            f"An architecture is a file in {architectures_dir()} defining build_model(device); "
            f"you can also pass a path to such a file."
        )
    return Architecture(canonical, path)


def _where_in_file(exc: BaseException, path: Path) -> str:
    """'line N' of the deepest traceback frame inside the architecture file, if any."""
    if isinstance(exc, SyntaxError) and exc.lineno is not None:
        return f"line {exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == path]
    return f"line {frames[-1].lineno}" if frames else "a library it calls"


def _import(arch: Architecture, source: bytes):
    """Execute ``source`` (the file's bytes, read once by the caller) as the architecture's module."""
    module_name = f"harness_architecture_{arch.name}"
    spec = importlib.util.spec_from_file_location(module_name, arch.path)
    module = importlib.util.module_from_spec(spec)
    # Registered before executing, as a normal import does: dataclasses, pickling and typing look
    # the defining module up in sys.modules. Each build replaces it with a fresh execution.
    sys.modules[module_name] = module
    try:
        exec(compile(source, str(arch.path), "exec"), module.__dict__)
    except Exception as exc:  # any failure inside user code becomes a precise message
        sys.modules.pop(module_name, None)
        raise HarnessError(
            f"Architecture file {arch.path} could not be imported ({_where_in_file(exc, arch.path)}): "
            f"{type(exc).__name__}: {exc}. Fix the file; it must import on its own with plain Python."
        ) from exc
    if not callable(getattr(module, "build_model", None)):
        raise HarnessError(
            f"Architecture file {arch.path} has no build_model(device) function. Define one that returns "
            f"an nn.Module called as model(x, timestep) whose output has .sample (see architectures/README.md)."
        )
    return module


def build(arch: Architecture, env: dict[str, str], device: torch.device | str) -> torch.nn.Module:
    """Execute the file and call build_model(device) with the widths in ``env``."""
    return build_with_hash(arch, env, device)[0]


def build_with_hash(arch: Architecture, env: dict[str, str], device: torch.device | str) -> tuple[torch.nn.Module, str]:
    """The model and the sha256 of the exact source that built it (the file is read once)."""
    source = arch.path.read_bytes()
    with environment(env):
        module = _import(arch, source)
        try:
            model = module.build_model(device)
        except Exception as exc:
            raise HarnessError(
                f"build_model in {arch.path} raised at {_where_in_file(exc, arch.path)} "
                f"(BLOCK_OUT_CHANNELS={env.get('BLOCK_OUT_CHANNELS')}, "
                f"LAYERS_PER_BLOCK={env.get('LAYERS_PER_BLOCK')}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(model, torch.nn.Module):
        raise HarnessError(
            f"build_model in {arch.path} returned {type(model).__name__}, not a torch.nn.Module. "
            f"Return the model itself (e.g. a diffusers UNet2DModel)."
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise HarnessError(f"build_model in {arch.path} returned a model with no trainable parameters.")
    return model, hashlib.sha256(source).hexdigest()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_count(arch: Architecture, env: dict[str, str]) -> int:
    """Exact parameter count without allocating or initialising weights (built on the meta device)."""
    return count_parameters(build_without_weights(arch, env))


def build_without_weights(arch: Architecture, env: dict[str, str]) -> torch.nn.Module:
    """The model on the meta device (shapes only, no memory, no initialisation: seconds even for the
    large tier). A file that cannot build there (e.g. it calls ``.item()`` while initialising) is
    built for real on the CPU; if that fails too, its error is the one reported."""
    try:
        with torch.device("meta"):
            return build(arch, env, torch.device("meta"))
    except Exception:
        return build(arch, env, torch.device("cpu"))


@torch.no_grad()
def validate(model: torch.nn.Module, arch: Architecture, device: torch.device, batch: int = 2,
             image_size: int = 32) -> None:
    """One tiny forward pass at the task's image size; raise a HarnessError that says exactly what is wrong."""
    gen = torch.Generator().manual_seed(0)  # a private generator: the run's RNG stream is untouched
    shape = (3, image_size, image_size)
    x = (torch.rand(batch, *shape, generator=gen) * 2 - 1).to(device)
    t = torch.randint(0, 1000, (batch,), generator=gen, dtype=torch.int64).to(device)
    was_training = model.training
    model.eval()
    try:
        out = model(x, t)
    except Exception as exc:
        raise HarnessError(
            f"The model from {arch.path} failed on a test input (x [{batch},3,{image_size},{image_size}] float32 in "
            f"[-1,1], timestep [{batch}] int64) at {_where_in_file(exc, arch.path)}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        model.train(was_training)
    sample = getattr(out, "sample", None)
    if not isinstance(sample, torch.Tensor):
        got = "a Tensor" if isinstance(out, torch.Tensor) else type(out).__name__
        raise HarnessError(
            f"The model from {arch.path} returned {got}, which has no .sample tensor. Return an object with "
            f".sample, e.g. diffusers.models.unets.unet_2d.UNet2DOutput(sample=eps)."
        )
    expected = (batch, *shape)
    if tuple(sample.shape) != expected:
        raise HarnessError(
            f"The model from {arch.path} returned .sample of shape {list(sample.shape)}; expected "
            f"{list(expected)} (the predicted noise has the input's shape)."
        )
    if not torch.isfinite(sample).all():
        raise HarnessError(
            f"The model from {arch.path} returned non-finite values (NaN or inf) in .sample for a plain test "
            f"input. Check its initialisation and normalisation layers."
        )


def load(arch: str | Architecture, env: dict[str, str], device: torch.device, seed: int,
         image_size: int = 32) -> tuple[Architecture, torch.nn.Module]:
    """Find (given a name or path), build (seeded) and validate an architecture on ``device``. The returned
    Architecture's ``sha256`` is that of the source the model was built from, fixed for the rest of the process."""
    arch = arch if isinstance(arch, Architecture) else find_architecture(arch)
    torch.manual_seed(seed)  # weight initialisation is part of the run's seed
    model, sha256 = build_with_hash(arch, env, device)
    validate(model, arch, device, image_size=image_size)
    return dataclasses.replace(arch, built_sha256=sha256), model
