"""Where this process stands in its job: rank, number of processes, the host-side collectives, the device
(``sync`` waits for it), and the environment variables it runs with (``environment``).

A leaf, as edm's ``torch_utils/distributed.py`` is for its training loop: the trainer and the
evaluator take a ``World`` and never import the launchers that create one (harness/launch/).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from harness.errors import HarnessError


@dataclass
class World:
    """Where this process stands in its run: rank, number of processes, and the collectives the
    run loop needs on the host side (a gloo group, so that agreeing on a stop or averaging the
    logged loss never touches the GPU's stream)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    control: Any = None  # gloo process group; None for one process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def batch_slice(self, batch_size: int) -> slice:
        """This rank's contiguous part of a global batch (checked divisible before launching)."""
        part = batch_size // self.size
        return slice(self.rank * part, (self.rank + 1) * part)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any (a stop request seen by one process)."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        return bool(value.item())

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise mean over ranks of a CPU tensor (the logged losses of each rank's slice)."""
        if not self.distributed:
            return values
        values = values.clone()
        dist.all_reduce(values, group=self.control)
        return values / self.size

    def gather(self, obj: Any) -> list | None:
        """Rank 0 gets every rank's ``obj`` in rank order; the others get None."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.control)
        return out


SINGLE = World()


def process_group_backend(device: str) -> str:
    """The torch.distributed backend between a run's processes: NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.startswith("cuda") else "gloo"


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError("--device cuda was asked for, but PyTorch sees no CUDA GPU here. Use --device cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise HarnessError(f"Unknown device '{name}': use auto, cpu or cuda (or cuda:N).") from exc


def sync(device: torch.device) -> None:
    """Wait until the device has done the work queued on it (a CUDA stream runs behind the host), before a
    clock or a memory counter is read; a CPU has nothing queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration, then restore the caller's values: an architecture
    file's widths (BLOCK_OUT_CHANNELS, LAYERS_PER_BLOCK) around its build, a launcher's thread counts
    (OMP_NUM_THREADS, ...) around starting its processes."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def refuse_cpu_fallback(specs: list, device: str, device_type: str) -> None:
    """``--device auto`` that found no usable GPU may not quietly train a tier meant for GPUs on the CPU.
    ``specs``: the resolved TaskSpecs about to run (duck-typed: this leaf imports no protocol module)."""
    tiers = sorted({s.tier for s in specs if s.training.gpu_required})
    if device == "auto" and device_type == "cpu" and tiers:
        import torch.version

        why = ("this PyTorch is a CPU-only build" if torch.version.cuda is None
               else f"PyTorch (CUDA {torch.version.cuda}) sees no usable GPU: torch.cuda.is_available() is False")
        raise HarnessError(
            f"--device auto found no GPU ({why}), and tier(s) {', '.join(tiers)} of task {specs[0].name} are meant "
            f"for GPUs ({specs[0].training.steps:,} steps of {specs[0].training.batch_size} images; `python -m "
            f"harness estimate --device cpu` with the same options says how long they would take here). Pass "
            f"--device cpu to train on the CPU anyway, run on a machine with a GPU, or pick a tier made for CPUs "
            f"(smoke; demo for the shapes task).")


def device_substitutions(device: str, device_type: str) -> list[dict]:
    """The record's note when ``--device auto`` found no GPU and the run uses the CPU (none otherwise)."""
    if device == "auto" and device_type == "cpu":
        return [{"what": "device", "asked": "auto (a GPU if there is one)", "used": "cpu",
                 "why": "PyTorch sees no usable GPU here (torch.cuda.is_available() is False)"}]
    return []
