"""How a run trains and samples on its device: one ``Recipe`` per (task spec, device), computed once.

The task asks (``training.precision``, ``evaluation.precision``, ``training.channels_last``,
``optimizer.implementation``, ``training.compile``); the device decides what of it applies: bf16 autocast only on
the device types in ``training.autocast_devices`` (GPUs by default), channels_last on a GPU where asked "cuda",
AdamW fused on a GPU and multi-tensor on a CPU where asked "auto". The trainer, the evaluator, the profiler and the
estimate read the same recipe, and the record keeps it (``recipe``), so what a run says it used is what it used.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.protocol.spec import TaskSpec

COMPILE_NOTE = "torch.compile: "  # starts the lines announcing the compile (a sweep's driver prints them too)
OPTIMIZER_KEYWORDS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}


@dataclass(frozen=True)
class Recipe:
    device_type: str  # "cuda" or "cpu"
    autocast: torch.dtype | None  # training's autocast dtype (bf16), None: fp32
    sampling_autocast: torch.dtype | None  # DDIM sampling's, from evaluation.precision
    channels_last: bool
    optimizer: str  # AdamW's implementation: fused, foreach or for-loop
    compile: bool  # torch.compile of the training forward

    @property
    def precision(self) -> str:
        """What a record or profile calls the training precision used: "bf16" or "fp32"."""
        return "bf16" if self.autocast else "fp32"

    @property
    def sampling_precision(self) -> str:
        return "bf16" if self.sampling_autocast else "fp32"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def optimizer_options(self) -> dict:
        """The keyword that selects the implementation in torch.optim.AdamW."""
        return OPTIMIZER_KEYWORDS[self.optimizer]

    def to_dict(self) -> dict:
        """The record's ``recipe``."""
        return {"device_type": self.device_type, "precision": self.precision,
                "sampling_precision": self.sampling_precision, "channels_last": self.channels_last,
                "optimizer": self.optimizer, "compile": self.compile,
                # the random states a checkpoint holds (the trainer adds CUDA's on a GPU)
                "rng_states": ["generator", "torch_rng"] + (["cuda_rng"] if self.device_type == "cuda" else [])}


def recipe_for(spec: TaskSpec, device: torch.device | str) -> Recipe:
    """The recipe ``spec`` gets on ``device``."""
    kind = torch.device(device).type
    bf16_here = kind in spec.training.autocast_devices
    mode, chosen = spec.training.channels_last, spec.optimizer.implementation
    return Recipe(
        device_type=kind,
        autocast=torch.bfloat16 if spec.training.precision == "bf16" and bf16_here else None,
        sampling_autocast=torch.bfloat16 if spec.evaluation.precision == "bf16" and bf16_here else None,
        channels_last=mode == "always" or (mode == "cuda" and kind == "cuda"),
        # "auto": one fused kernel for the whole update on a GPU; multi-tensor ops on a CPU (35% faster there
        # than the for-loop)
        optimizer=("fused" if kind == "cuda" else "foreach") if chosen == "auto" else chosen,
        compile=spec.training.compile)
