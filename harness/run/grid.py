"""The sampler grid at a run's kept weights: one loop for the runner (the grid a finished run still lacks) and for
``harness evaluate`` (a grid asked for after training).

A run keeps two sets of weights the grid is computed at: its last checkpoint's EMA weights, and its best
evaluation's (best_ema.safetensors) where that is another step. Each pair's result goes into the record's
evaluation at that step, under ``samplers``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from harness.files import now
from harness.protocol.evaluation import Evaluator
from harness.protocol.samplers import GridPoint
from harness.run import checkpoints
from harness.run.records import RunRecord

LAST = "last checkpoint's EMA weights"


def kept_weights(folder: Path, record: RunRecord, last_step: int) -> list[tuple[int, dict | None, str]]:
    """(step, weights or None for the last checkpoint's EMA, which) of the weights a run keeps: the last
    checkpoint's, and its best evaluation's where that is another step and its file is kept."""
    kept = [(last_step, None, LAST)]
    best = checkpoints.load_best(folder)
    if best is not None and best[1] != last_step and best[1] == record.best_step:
        kept.append((best[1], best[0], f"best evaluation's EMA weights ({checkpoints.BEST_FILE})"))
    return kept


def add_grid(record: RunRecord, evaluator: Evaluator, points: list[GridPoint],
             kept: list[tuple[int, dict | None, str]], model_of: Callable[[dict | None], torch.nn.Module],
             saved: Callable[[], None], log: Callable[[str], None], again: bool = False,
             mark: dict | None = None) -> None:
    """Compute the pairs of ``points`` each kept weights' evaluation lacks (all of them with ``again``) and add them
    to the record, each marked with ``mark`` and the time (None: computed while training); ``saved()`` after each
    set of weights, so that nothing computed is lost to a later failure. ``model_of(weights)``: the model to sample."""
    for step, weights, which in kept:
        entry = next((e for e in record.evaluations if e["step"] == step), None)
        if entry is None:
            log(f"Skipped the {which} (step {step}): the run has no evaluation at that step to add to.")
            continue
        todo = [p for p in points if again or p.key not in entry.get("samplers", {})]
        if not todo:
            if mark is not None:  # asked for by `harness evaluate`: say why nothing happens
                log(f"Step {step} ({which}) has every pair already; pass --again to compute them again.")
            continue
        added = evaluator.evaluate_grid(model_of(weights), step, todo)
        if mark is not None:
            note = {**mark, "at": now(), "weights": which}
            added = {key: {**got, "added_after_training": note} for key, got in added.items()}
        entry["samplers"] = {**entry.get("samplers", {}), **added}
        for key, got in added.items():
            log(f"step {step} ({which}): {key} FID {got['fid']:.2f}")
        saved()
