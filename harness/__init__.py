"""Diffusion architecture benchmark harness: one fixed protocol, any ``build_model(device)`` file.

The functions a notebook needs, the ones the command line calls (each imports what it needs when called,
so ``import harness`` is instant). Their names are not those of the subpackages (``harness.run``,
``harness.search``, ``harness.report`` are packages), so importing one never hides a function:

    import harness

    record = harness.run_one("shapes", "standard", "smoke", device="cpu")  # one run -> its RunRecord
    record.best_fid, record.status, record.evaluations

    manifest = harness.run_sweep(["standard", "no_attn"], ["smoke"], seeds=[42, 43], task="shapes")  # on Ray
    result = harness.run_search("shapes", "smoke", trials=8, overrides={"training.steps": 200})  # Optuna on Ray
    result["best"]                          # the best trials: number, FID, choices, run folder, ...

    runs = harness.load_runs("results")     # every run under a folder: the report's pandas DataFrame
    runs.groupby(["tier", "arch"]).best_fid.mean()

    report = harness.make_report("results", "reports/notebook")  # writes index.html, leaderboard.md, ... there
    report.boards                           # the leaderboards, one DataFrame per comparable group

    harness.export_model("results/shapes/standard/smoke/seed42", "exported/standard")  # for DDIMPipeline
    harness.evaluate_run("results/shapes/standard/smoke/seed42", {"samplers.grid": ["dpmpp_2m:10"]})  # no training

docs/python-api.md shows each with its options.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TextIO

__version__ = "0.1.0"
__all__ = ["run_one", "run_sweep", "run_search", "load_runs", "make_report", "export_model", "evaluate_run"]


def _write(line: str) -> None:
    """A run's message above its progress bars (tqdm's write), as ``harness run`` prints it."""
    from tqdm.auto import tqdm

    tqdm.write(line)


def run_one(task: str = "cifar10", arch: str = "standard", tier: str = "smoke", seed: int | None = None, *,
            device: str = "auto", devices: int = 1, results_dir: str | Path = "results",
            data_dir: str | Path | None = None, overrides: dict[str, Any] | None = None, fresh: bool = False,
            progress: bool = True, tags: dict | None = None, log: Callable[[str], None] | None = _write,
            should_stop: Callable[[int], bool] | None = None, on_evaluation: Callable[[dict], None] | None = None):
    """Train and evaluate one architecture at one tier; return its ``RunRecord``. Resumes from the run folder's
    checkpoint as ``harness run`` does. ``overrides``: dotted task fields (``{"training.steps": 100}``, as
    ``--set``); ``devices``: DDP processes on this machine; ``fresh``: start over; ``log``: where the run's
    messages go besides run.log (default: above the progress bars; None: nowhere); ``tags``: what its trackers
    tag it with; ``should_stop(step)``: True checkpoints and stops (raises
    RunInterrupted); ``on_evaluation(evaluation)``: told of each evaluation (its step, FID, ...)."""
    from harness.launch import run

    return run(task, arch, tier, seed, device=device, devices=devices, results_dir=results_dir, data_dir=data_dir,
               overrides=overrides, fresh=fresh, progress=progress, tags=tags, log=log, should_stop=should_stop,
               on_evaluation=on_evaluation)


def run_sweep(archs: list[str], tiers: list[str], seeds: list[int] | None = None, task: str = "cifar10", *,
              results_dir: str | Path = "results", overrides: dict[str, Any] | None = None,
              data_dir: str | Path | None = None, device: str = "auto", address: str | None = None,
              gpus_per_run: float | None = None, cpus_per_run: float | None = None, devices: int | None = None,
              max_parallel: int | None = None, max_retries: int = 3, progress: bool = True,
              stream: TextIO | None = None) -> dict:
    """Run archs x tiers x seeds on Ray exactly as ``harness sweep`` does; skips finished cells and resumes partial
    ones. Returns the manifest (also in ``RESULTS_DIR/sweeps/``). ``address``: a Ray cluster (None: a private
    instance on this machine, or RAY_ADDRESS); ``gpus_per_run``, ``cpus_per_run``, ``devices`` (DDP processes per
    run), ``max_parallel``: as the CLI's flags (None: fitted to the resources); ``max_retries``: reruns of a run
    whose worker died; ``stream``: where its lines go (default stdout). Raises KeyboardInterrupt after a Ctrl-C has
    stopped every run with a checkpoint."""
    from harness.studies.sweep import Sweep, SweepSpec

    spec = SweepSpec(task, list(archs), list(tiers), list(seeds) if seeds else [None], results_dir=results_dir,
                     overrides=dict(overrides or {}), data_dir=data_dir, device=device)
    return Sweep(spec, address=address, gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run, devices=devices,
                 max_parallel=max_parallel, max_retries=max_retries, progress=progress, stream=stream).execute()


def run_search(task: str = "cifar10", tier: str = "small", trials: int = 64, *, study: str | None = None,
               storage: str | None = None, space: str | Path | None = None, objectives: str = "fid",
               sampler: str | None = None, pruner: str | None = None, seed: int | None = None,
               reduction: int = 3, results_dir: str | Path = "results", overrides: dict[str, Any] | None = None,
               data_dir: str | Path | None = None, device: str = "auto", address: str | None = None,
               gpus_per_trial: float | None = None, cpus_per_trial: float | None = None, devices: int | None = None,
               max_parallel: int | None = None, max_retries: int = 3, progress: bool = True,
               stream: TextIO | None = None) -> dict:
    """Run an architecture search exactly as ``harness search`` does (without its estimate): an Optuna study whose
    trials are runs on Ray, continued where the same study stopped. ``tier``: one tier, or several comma-separated
    (successive halving, each keeping 1/``reduction``); ``trials``: finished trials the study ends with;
    ``objectives``: ``fid``, ``fid,gflops``, ``fid,params`` or ``fid,latency``; ``study``, ``storage``, ``space``,
    ``sampler``, ``pruner``, ``seed``: as the CLI's flags (None: their defaults); the pool's options as
    ``run_sweep``'s, per trial. Returns what ``harness search --json`` prints: the study's summary (``best``,
    ``counts``, ``running``, ``failed``, ``settings``; with several tiers ``{"rungs": [...]}``) and its
    ``storage``. Raises KeyboardInterrupt after a Ctrl-C has stopped every trial's run with a checkpoint."""
    from harness.search.driver import Search, SearchSpec
    from harness.search.study import search_result

    spec = SearchSpec(task=task, tier=tier, trials=trials, study=study, storage=storage,
                      space=str(space) if space is not None else None, objectives=objectives, sampler=sampler,
                      pruner=pruner, seed=seed, overrides=dict(overrides or {}), results_dir=results_dir,
                      data_dir=data_dir, device=device, reduction=reduction)
    search = Search(spec, address=address, gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial,
                    devices=devices, max_parallel=max_parallel, max_retries=max_retries, progress=progress,
                    stream=stream)
    search.execute()
    return search_result(search.url, search.rungs)


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
                 which: str = "best", arch: str | None = None) -> dict:
    """A run's EMA (``raw``: trained) weights as a folder ``DDIMPipeline.from_pretrained`` loads, as
    ``harness export-model`` writes it; returns what its harness_export.json says. ``arch``: the file to build
    them with, needed when the record names one outside the architectures folder."""
    from harness.run.export_model import export_model as write

    return write(run_folder, out, raw=raw, force=force, which=which, arch=arch)


def evaluate_run(run_folder: str | Path, overrides: dict[str, Any] | None = None, *, device: str = "auto",
                 arch: str | None = None, data_dir: str | Path | None = None, again: bool = False,
                 progress: bool = True, log: Callable[[str], None] | None = _write):
    """A finished run's kept weights sampled with a sampler grid, without training, as ``harness evaluate`` does
    (``overrides``: e.g. ``{"samplers.grid": ["dpmpp_2m:10", "unipc:20"]}``; only evaluation settings); the
    results are added to its record, which is returned. ``again``: compute pairs the record holds again."""
    from harness.run.reevaluate import evaluate_run as evaluate
    from harness.world import pick_device

    return evaluate(run_folder, overrides, device=str(pick_device(device)), arch=arch,
                    data_dir=None if data_dir is None else str(data_dir), again=again, progress=progress,
                    log=log or (lambda line: None))
