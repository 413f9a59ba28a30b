"""Evaluate a finished run again, without training: ``harness evaluate RUN_FOLDER``.

Users train once and ask new questions of the weights: another sampler grid (its pairs' manifold metrics with
other settings too). The run's kept weights are sampled from the same per-sample seeds, hence the same noise,
as its evaluations were: its last checkpoint's EMA weights (at the step of its last evaluation), and its best
evaluation's (kept in best_ema.safetensors) where that is another step. Each result is added to the record's
evaluation at that step, under ``samplers``, marked ``added_after_training`` (when, which weights, device,
sampling precision, FID reference), so that a report can tell it from a result computed while training. A
machine whose reference or sampling precision is not the run's is refused (the FIDs would not be comparable),
and a resumed run keeps what was added (run/parts.py keep_added_grid). Only settings that change no trained
weight and no protocol number may be set (``EVALUATION_FIELDS``); the record's own config gives the rest.

The record is a file of data: it is read, and the architecture built from the architectures folder (or the
user's ``--arch``), as export-model does. The run folder is locked while this runs, as training locks it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from harness.errors import HarnessError
from harness.protocol.data import load_images
from harness.protocol.evaluation import Evaluator
from harness.protocol.recipe import recipe_for
from harness.protocol.samplers import grid_points
from harness.protocol.tasks import check_spec, complete_config, spec_from_config
from harness.run.export_model import read_run, trained_model
from harness.run.grid import add_grid, kept_weights
from harness.run.locks import RunLock
from harness.run.records import RECORD_FILE, RunRecord

# what `evaluate --set` may change: nothing trained, nothing the protocol's own numbers depend on
EVALUATION_FIELDS = ("samplers.", "evaluation.manifold_k", "evaluation.manifold_samples",
                     "evaluation.feature_batch_size", "sampling.batch_size", "evaluation.fid_bootstrap")


def evaluate_run(folder: str | Path, overrides: dict | None = None, device: str = "cpu", arch: str | None = None,
                 data_dir: str | None = None, again: bool = False, log: Callable[[str], None] = print,
                 progress: bool = True) -> RunRecord:
    """Add the grid of the run's config with ``overrides`` (e.g. {"samplers.grid": ["dpmpp_2m:10"]}) at its kept
    weights' steps; pairs already in the record are kept unless ``again``. Returns the updated record."""
    folder = Path(folder)
    with RunLock(folder):
        record, state = read_run(folder)
        spec = _spec(record, overrides or {}, folder)
        points = grid_points(spec, "--set")
        if not points:
            raise HarnessError("There is nothing to evaluate: the run's task has no sampler grid. Name one, e.g. "
                               "--set 'samplers.grid=[ddim:10,dpmpp_2m:10,unipc:20]'.")
        where = torch.device(device)
        recipe = recipe_for(spec, where)
        evaluator = Evaluator(spec, where, lambda: load_images(spec.data, data_dir), recipe.sampling_autocast,
                              _bars(progress), log)
        mark = _comparable(record, evaluator, recipe.sampling_precision, where)
        last = state["trainer"]["step"]
        add_grid(record, evaluator, points, kept_weights(folder, record, last),
                 lambda weights: trained_model(record, state, spec, raw=False, best=weights, arch=arch)[0].to(where),
                 lambda: record.save(folder), log, again=again, mark=mark)
    return record


def _spec(record: RunRecord, overrides: dict, folder: Path):
    """The run's task as its record holds it, with ``overrides`` of evaluation-only fields."""
    config = complete_config(record.config)
    for key, value in overrides.items():
        if not key.startswith(EVALUATION_FIELDS):
            allowed = ", ".join(f + "*" if f.endswith(".") else f for f in EVALUATION_FIELDS)
            raise HarnessError(f"`evaluate --set {key}=...` is refused: a finished run is evaluated with its own "
                               f"settings, and only these may change (they change no trained weight and none of its "
                               f"protocol's numbers): {allowed}.")
        section, _, name = key.partition(".")
        if section not in config or not isinstance(config[section], dict) or name not in config[section]:
            raise HarnessError(f"`evaluate --set {key}=...`: the task has no field {key!r}.")
        config[section][name] = value
    spec = spec_from_config(config, where=str(folder / RECORD_FILE))
    check_spec(spec, "--set")
    return spec


def _comparable(record: RunRecord, evaluator: Evaluator, precision: str, device: torch.device) -> dict:
    """What the added results are computed with ({device, sampling precision, reference}), refused where it differs
    from what the run's own evaluations used: their FIDs would not be comparable with the run's."""
    reference, theirs = evaluator.reference, record.reference or {}
    if theirs.get("source") and reference.source != theirs["source"]:
        raise HarnessError(f"This machine's FID reference for the run's task is {reference.source!r}"
                           + (f" ({reference.substitution})" if reference.substitution else "")
                           + f", but the run was evaluated against {theirs['source']!r}, so its new FIDs would not "
                           f"be comparable with its own. Evaluate it where that reference is (its cache file: "
                           f"{theirs.get('cache_file')}), or with the data it was computed from (--data-dir).")
    used = record.eval_precision or record.precision
    if used and precision != used:
        raise HarnessError(f"The run sampled in {used} and would sample in {precision} on {device}, so its new FIDs "
                           f"would not be comparable with its own. Evaluate it on the kind of device it was trained "
                           f"on (--device).")
    return {"device": str(device), "sampling_precision": precision, "reference": reference.source}


def _bars(progress: bool):
    from tqdm.auto import tqdm

    def bar(total: int, description: str):
        return tqdm(total=total, desc=description, unit="img", leave=False, disable=not progress, dynamic_ncols=True)
    return bar
