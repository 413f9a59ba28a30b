"""The Optuna side of a search: objectives, sampler and pruner, storage, and the study itself.

Only the driver opens the study (ask and tell); the runs never touch the database, so SQLite is
safe. What a study was made with (task, tier, seed, objectives, sampler, pruner, settings, the
space's source) is stored in its user attributes at creation and checked on every later open:
the same command continues the study, a different one is told to use another ``--study``. The
sampler is built and passed on every open, because Optuna does not store it (and would otherwise
fall back to its default, TPE, even for a study begun with NSGA-II).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.search.space_file import SpaceFile

SECOND_OBJECTIVES = {  # --objectives fid,<name>: (trial user attribute, what it measures)
    "gflops": ("gflops", "GFLOPs of one forward pass of one image, attention included"),
    "params": ("param_count", "trainable parameters"),
    "latency": ("latency_ms", "milliseconds of one forward pass of one image on the run's device"),
}
LABELS = {"fid": "best FID", "gflops": "GFLOPs", "params": "parameters", "latency": "latency (ms)"}

SAMPLERS = ("tpe", "nsga2", "random")
PRUNERS = ("median", "hyperband", "none")
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")
COMBINATIONS = ("Allowed: one objective (fid) with any sampler and pruner (default tpe, median); two objectives "
                "(fid,gflops | fid,params | fid,latency) with nsga2 (default), tpe or random and no pruner, since "
                "Optuna cannot prune a multi-objective study.")
# What a study was made with, compared on every later open (the rest of its attributes is information).
IDENTITY = ("task", "task_version", "tier", "seed", "objectives", "sampler", "pruner", "overrides", "space_sha256")


def parse_objectives(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if names == ("fid",) or (len(names) == 2 and names[0] == "fid" and names[1] in SECOND_OBJECTIVES):
        return names
    raise HarnessError(f"--objectives {text!r} is not one of: fid, " +
                       ", ".join(f"fid,{n}" for n in SECOND_OBJECTIVES) +
                       ". FID always comes first; all are minimized.")


def resolve_methods(objectives: tuple[str, ...], sampler: str | None, pruner: str | None) -> tuple[str, str]:
    """The sampler and pruner for these objectives (defaults filled in), or a clear error."""
    multi = len(objectives) > 1
    sampler = sampler or ("nsga2" if multi else "tpe")
    pruner = pruner or ("none" if multi else "median")
    if sampler not in SAMPLERS:
        raise HarnessError(f"--sampler {sampler!r} is not one of {', '.join(SAMPLERS)}. {COMBINATIONS}")
    if pruner not in PRUNERS:
        raise HarnessError(f"--pruner {pruner!r} is not one of {', '.join(PRUNERS)}. {COMBINATIONS}")
    if multi and pruner != "none":
        raise HarnessError(f"--pruner {pruner} with --objectives {','.join(objectives)}: Optuna does not prune "
                           f"multi-objective studies. Pass --pruner none (the default for two objectives). "
                           f"{COMBINATIONS}")
    return sampler, pruner


def make_sampler(name: str, seed: int, n_objectives: int):
    import optuna

    with warnings.catch_warnings():  # constant_liar is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":  # constant_liar: trials running in parallel are not all sampled at the same point
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(name: str, steps: int):
    """Median: stop a trial whose FID at an evaluation point is worse than the median of earlier
    trials there, once 5 trials finished (Optuna's default); never at step 0, where FID measures
    the initialization. Hyperband over training steps, the first evaluation point onwards."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=steps)
    return optuna.pruners.NopPruner()


def storage_url(storage: str | None, results_dir: str | Path, study: str) -> str:
    """--storage as given, or the default SQLite file ``RESULTS_DIR/studies/<study>.db``."""
    if storage:
        return storage
    return f"sqlite:///{(Path(results_dir).expanduser().resolve() / 'studies' / f'{study}.db')}"


def stored_study_url(storage: str | None, results_dir: str | Path, study: str) -> str:
    """Where an existing study is: --storage as given, else its SQLite file, or for a successive-
    halving tier's study (``<study>.<tier>``) the file of the study it was promoted from."""
    if storage:
        return storage
    parts = study.split(".")
    for end in range(len(parts), 0, -1):
        url = storage_url(None, results_dir, ".".join(parts[:end]))
        if Path(url[len("sqlite:///"):]).exists():
            return url
    return storage_url(None, results_dir, study)


def open_storage(url: str, create: bool = True):
    """An RDB URL (``sqlite:///...``, ``postgresql://...``) or a journal file path (for clusters
    with shared storage), as Optuna's CLI reads them; a one-paragraph error when it cannot be
    opened. With ``create=False`` a missing SQLite or journal file is an error, not a new file."""
    import optuna

    local = url[len("sqlite:///"):] if url.startswith("sqlite:///") else None if "://" in url else url
    if not create and local is not None and not Path(local).expanduser().exists():
        raise HarnessError(f"There is no study storage at {local}. "
                           f"Pass the --study, and the --storage or --results-dir, "
                           f"that the search used (its default storage is RESULTS_DIR/studies/<study>.db).")
    try:
        if "://" in url:
            if url.startswith("sqlite:///"):
                Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.RDBStorage(url)
        Path(url).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(Path(url).expanduser())))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise HarnessError(
            f"Cannot open the study storage {url!r} ({type(exc).__name__}: {first}). --storage takes an Optuna RDB URL "
            f"(sqlite:////abs/path/study.db, postgresql://user:pass@host/db, mysql+pymysql://...) with its driver "
            f"installed, or a path to a journal file on shared storage (for several nodes); leave it out for "
            f"RESULTS_DIR/studies/<study>.db."
        ) from None


def check_study_name(name: str) -> str:
    if not STUDY_NAME.match(name):
        raise HarnessError(f"--study {name!r}: a study name is letters, digits, '_', '-' and '.', "
                           f"starting with a letter or digit (it names files and run folders).")
    return name


@dataclass
class StudySettings:
    """What a study is made with; stored in its user attribute ``harness`` at creation."""

    name: str
    task: str
    task_version: int | None
    tier: str
    seed: int
    objectives: tuple[str, ...]
    sampler: str
    pruner: str
    steps: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    space: SpaceFile
    overrides: dict = field(default_factory=dict)
    # a promoted rung's: the study its points were chosen in, and that tier's widths and depth (its
    # architecture files keep the depth relative to that tier's; export renders them the same way)
    chosen_at: dict | None = None
    resolved: object = field(default=None, repr=False, compare=False)  # the TaskSpec at this tier (not stored)

    def identity(self) -> dict:
        return {"task": self.task, "task_version": self.task_version, "tier": self.tier, "seed": self.seed,
                "objectives": list(self.objectives), "sampler": self.sampler, "pruner": self.pruner,
                "overrides": self.overrides, "space_sha256": self.space.sha256}

    def attributes(self) -> dict:
        return {**self.identity(), "steps": self.steps, "block_out_channels": list(self.block_out_channels),
                "layers_per_block": self.layers_per_block, "space_path": str(self.space.path),
                **({"chosen_at": self.chosen_at} if self.chosen_at else {})}


def open_study(settings: StudySettings, storage):
    """Create the study, or load it and check it was made with the same settings."""
    import optuna

    sampler = make_sampler(settings.sampler, settings.seed, len(settings.objectives))
    pruner = make_pruner(settings.pruner, settings.steps)
    study = optuna.create_study(storage=storage, study_name=settings.name, sampler=sampler, pruner=pruner,
                                directions=["minimize"] * len(settings.objectives), load_if_exists=True)
    made = len(study.get_trials(deepcopy=False))
    if made:  # a continued study: a sampler seeded as at the start would propose its first points again
        study.sampler = make_sampler(settings.sampler, settings.seed + made, len(settings.objectives))
    stored = study.user_attrs.get("harness")
    if stored is None:  # a new study (or one whose first open was killed before this line)
        study.set_user_attr("harness", settings.attributes())
        study.set_user_attr("space_source", settings.space.source)
        return study
    theirs = {k: stored.get(k) for k in IDENTITY}
    ours = settings.identity()
    changed = [k for k in IDENTITY if plain(theirs[k]) != plain(ours[k])]
    if changed:
        diffs = "; ".join(f"{k}: {theirs[k]!r} in the study, {ours[k]!r} now" for k in changed)
        raise HarnessError(f"Study {settings.name!r} was made with other settings ({diffs}). Run it with its own "
                           f"settings to continue it, or pass another --study to start a new one.")
    return study


def load_study(name: str, storage):
    """An existing study, with the sampler it was made with (for --status and export)."""
    import optuna

    try:
        summaries = set(optuna.study.get_all_study_names(storage))
    except Exception as exc:
        raise HarnessError(f"Cannot read the studies in the storage ({type(exc).__name__}: {exc}).") from None
    if name not in summaries:
        raise HarnessError(f"No study named {name!r} in this storage "
                           f"(it has: {', '.join(sorted(summaries)) or 'none'}). "
                           f"Pass --study NAME and the --storage (or --results-dir) the search used.")
    attrs = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()).user_attrs
    stored = attrs.get("harness", {})
    sampler = make_sampler(stored.get("sampler", "tpe"), stored.get("seed", 0), len(stored.get("objectives", ["fid"])))
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler)


def plain(value):
    import json

    return json.loads(json.dumps(value, default=list))


def trial_row(trial, objectives: tuple[str, ...]) -> dict:
    """One trial as the tables show it (and --json prints it)."""
    attrs = trial.user_attrs
    row = {"trial": trial.number, "state": trial.state.name, "baseline": attrs.get("baseline", ""),
           "fid": trial.values[0] if trial.values else attrs.get("best_fid"),
           "params": attrs.get("param_count"), "gflops": attrs.get("gflops")}
    for name, value in zip(objectives[1:], (trial.values or [None, None])[1:]):
        row[name] = value  # the objective's value as told (params and gflops: the same numbers)
    row.update(best_step=attrs.get("best_step"), choices=dict(trial.params), run_folder=attrs.get("run_folder"))
    if attrs.get("failure"):
        row["failure"] = attrs["failure"]
    return row


def summary(study, limit: int = 10) -> dict:
    """The study at a glance: trials by state and the best trials (one objective) or the Pareto set."""
    from collections import Counter

    objectives = tuple(study.user_attrs.get("harness", {}).get("objectives", ["fid"]))
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if len(objectives) == 1:
        best, kind = sorted(complete, key=lambda t: t.value)[:limit], "best"
    else:
        best, kind = sorted(study.best_trials, key=lambda t: t.values), "pareto"
    return {"study": study.study_name, "objectives": list(objectives), "settings": study.user_attrs.get("harness", {}),
            "counts": dict(Counter(t.state.name for t in trials)), "kind": kind,
            "best": [trial_row(t, objectives) for t in best],
            "running": [t.number for t in trials if t.state.name == "RUNNING"],
            "failed": [trial_row(t, objectives) for t in trials if t.state.name == "FAIL"]}


def rung_summaries(url: str, rungs: list[StudySettings]) -> list[dict]:
    """The summary of each rung's study in storage ``url`` (its tier and rung added): rung 0's, and each other
    rung's that has been made."""
    import optuna

    storage = open_storage(url, create=False)
    names = set(optuna.study.get_all_study_names(storage))
    return [dict(summary(load_study(s.name, storage)), tier=s.tier, rung=k) for k, s in enumerate(rungs)
            if k == 0 or s.name in names]


def search_result(url: str, rungs: list[StudySettings]) -> dict:
    """What ``harness search --json`` prints: the study's summary (with several tiers, ``{"rungs": [...]}``, each
    rung's) and its ``storage``."""
    summaries = rung_summaries(url, rungs)
    return dict(summaries[0] if len(rungs) == 1 else {"rungs": summaries}, storage=url)


def summary_text(result: dict) -> str:
    import pandas as pd

    counts = ", ".join(f"{n} {state}" for state, n in sorted(result["counts"].items())) or "no trials"
    what = "Best trials" if result["kind"] == "best" else "Pareto set (FID against " + result["objectives"][1] + ")"
    lines = [f"Study {result['study']}: {counts}.", f"{what}:"]
    if result["best"]:
        rows = [{k: v for k, v in r.items() if k not in ("run_folder", "failure", "choices")}
                | {"choices": describe(r["choices"])} for r in result["best"]]
        table = pd.DataFrame(rows)
        table["choices"] = table["choices"].str.ljust(table["choices"].str.len().max())  # left-aligned
        table = table.rename(columns={"fid": "FID", "gflops": "GFLOPs", "latency": "latency ms"})
        lines.append(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}",
                                     formatters={"params": lambda v: "-" if pd.isna(v) else f"{int(v):,}"}))
    else:
        lines.append("  (no completed trial yet)")
    return "\n".join(lines)


def describe(choices: dict) -> str:
    """A short line for a point: true flags by name, other choices as name=value."""
    return " ".join(k if v is True else f"{k}={v}" for k, v in choices.items() if v is not False)


def objective_values(objectives: tuple[str, ...] | list[str], attrs: dict) -> list[float] | None:
    """A finished trial's values, from its user attributes (the run's best FID, then the second objective's
    attribute); None when one is missing."""
    values = [attrs.get("best_fid")] + [attrs.get(SECOND_OBJECTIVES[name][0]) for name in objectives[1:]]
    return None if any(v is None for v in values) else [float(v) for v in values]
