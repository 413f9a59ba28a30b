"""Diffusion architecture benchmark harness: one fixed protocol, any ``build_model(device)`` file.

The functions a notebook needs, the ones the command line calls (each imports what it needs when called,
so ``import harness`` is instant). Their names are not those of the subpackages (``harness.run``,
``harness.sweep``, ``harness.report`` are modules), so importing one never hides a function:

    import harness

    record = harness.run_one("shapes", "standard", "smoke", device="cpu")  # one run -> its RunRecord
    record.best_fid, record.status, record.evaluations

    manifest = harness.run_sweep(["standard", "no_attn"], ["smoke"], seeds=[42, 43], task="shapes")  # on Ray

    runs = harness.load_runs("results")     # every run under a folder: the report's pandas DataFrame
    runs.groupby(["tier", "arch"]).best_fid.mean()

    report = harness.make_report("results", "reports/notebook")  # writes index.html, leaderboard.md, ... there
    report.boards                           # the leaderboards, one DataFrame per comparable group

    harness.export_model("results/shapes/standard/smoke/seed42", "exported/standard")  # for DDIMPipeline

docs/python-api.md shows each with its options.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"
__all__ = ["run_one", "run_sweep", "load_runs", "make_report", "export_model"]


def run_one(task: str = "cifar10", arch: str = "standard", tier: str = "smoke", seed: int | None = None,
        **options: Any):
    """Train and evaluate one architecture at one tier; return its ``RunRecord``. Resumes from the run
    folder's checkpoint as the CLI does. Options: ``device``, ``results_dir``, ``data_dir``, ``overrides``
    (dotted task fields, e.g. ``{"training.steps": 100}``), ``fresh``, ``progress``, ``devices`` (DDP), ...
    (harness.launch.run, which ``harness run`` calls)."""
    from harness.launch import run as launch_run

    return launch_run(task, arch, tier, seed, **options)


def run_sweep(archs: list[str], tiers: list[str], seeds: list[int] | None = None, task: str = "cifar10", *,
          results_dir: str | Path = "results", overrides: dict[str, Any] | None = None,
          data_dir: str | Path | None = None, device: str = "auto", **pool: Any) -> dict:
    """Run archs x tiers x seeds on Ray (a private instance, or ``address=`` a cluster) exactly as
    ``harness sweep`` does; skips finished cells and resumes partial ones. Returns the manifest. ``pool``:
    ``address``, ``gpus_per_run``, ``cpus_per_run``, ``devices``, ``max_parallel``, ``max_retries``,
    ``progress``, ``stream`` (harness.sweep.Sweep)."""
    from harness.sweep import Sweep, SweepSpec

    spec = SweepSpec(task, list(archs), list(tiers), list(seeds) if seeds else [None], results_dir=results_dir,
                     overrides=dict(overrides or {}), data_dir=data_dir, device=device)
    return Sweep(spec, **pool).execute()


def load_runs(results_dir: str | Path = "results"):
    """Every run record under ``results_dir`` as one pandas DataFrame, a row per run: the frame the report
    ranks (task, tier, arch, seed, status, best_fid, gflops, train_img_s, device, settings, ...). Records that
    cannot be read are left out with a warning naming them."""
    import warnings

    from harness.report import tables

    frame, _, unreadable = tables.load_runs(results_dir)
    for damaged in unreadable:
        warnings.warn(f"{damaged['path']} {damaged['reason']}; it is not in the frame", stacklevel=2)
    return frame


def make_report(results_dir: str | Path = "results", out: str | Path = "reports/latest", *, task: list[str] = (),
           tier: list[str] = (), arch: list[str] = (), include_incomplete: bool = False,
           seed_cv: float | None = None):
    """Write the report (index.html, leaderboard.md/.csv, runs.csv, plots) of the runs under ``results_dir``
    into ``out``, as ``harness report`` does; return it (``.boards``: the leaderboards as DataFrames,
    ``.runs``, ``.studies``, ``.unreadable``). ``seed_cv``: as ``report --seed-cv``."""
    from harness.report.model import Filters
    from harness.report.write import build_report

    filters = Filters(task=list(task), tier=list(tier), arch=list(arch), include_incomplete=include_incomplete)
    return build_report(results_dir, out, filters, seed_cv)[0]


def export_model(run_folder: str | Path, out: str | Path, *, raw: bool = False, force: bool = False,
                 which: str = "best") -> dict:
    """A run's EMA (``raw``: trained) weights as a folder ``DDIMPipeline.from_pretrained`` loads, as
    ``harness export-model`` writes it; returns what its harness_export.json says."""
    from harness.run.export_model import export_model as write

    return write(run_folder, out, raw=raw, force=force, which=which)
