"""The report's model: every record, sweep manifest and study under a results folder, collected into
runs, groups and leaderboards, and each board as display cells. The renderers (markdown.py, html.py,
plots.py) read this and never each other; write.py puts their files in one folder.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.report import fidelity, noise, samplers, tables
from harness.report.studies import find_studies, read_sweeps

# (column, header, format, better): better is "lower", "higher" or None (no best marked).
# The compact table leads each board: the decision and what it cost; the rest is in the details table and CSV.
COMPACT = [
    ("rank", "rank", "{}", None),
    ("arch", "architecture", "{}", None),
    ("seeds", "seeds", "{:d}", None),
    ("best_fid_mean", "best FID ↓ (95% interval)", "{:.2f}", "lower"),
    ("verdict", "verdict (Holm over the board's pairs)", "{}", None),
    ("gflops", "GFLOPs", "{:.3f}", None),
    ("params", "params", "{:,.0f}", None),
    ("train_img_s", "train img/s ↑", "{:.1f}", "higher"),
]
DETAILS = [
    ("arch", "architecture", "{}", None),
    ("source", "source (file, sha256)", "{}", None),
    ("best_fid_std", "best FID std over seeds", "{:.2f}", None),
    ("ci_kind", "per-seed noise", "{}", None),
    ("seed_sd", "seed-to-seed SD", "{:.2f}", None),
    ("sampling_sd", "FID sampling SD", "{:.2f}", None),
    ("gap_to_above", "gap to the row above (95% interval, p)", "{:+.2f}", None),
    ("best_fid_min", "best FID ↓ (min)", "{:.2f}", "lower"),
    ("final_fid_mean", "final FID ↓ (mean ± std)", "{:.2f}", "lower"),
    ("kid_mean", "KID ↓", "{:.4f}", "lower"),
    ("gmacs", "GMACs", "{:.3f}", None),
    ("train_mfu", "MFU ↑", "{:.1%}", "higher"),
    ("sample_img_s", "sample img/s ↑", "{:.2f}", "higher"),
    ("fid_vs_standard", "FID − standard ↓", "{:+.2f}", "lower"),
    ("pareto", "Pareto (FID vs GFLOPs)", "{}", None),
    ("device", "device", "{}", None),
]
COLUMNS = COMPACT  # what quoted (published) rows are laid out in


@dataclass
class Filters:
    task: list[str] = field(default_factory=list)
    tier: list[str] = field(default_factory=list)
    arch: list[str] = field(default_factory=list)
    include_incomplete: bool = False

    def apply(self, runs: pd.DataFrame) -> pd.DataFrame:
        for column in ("task", "tier", "arch"):
            wanted = getattr(self, column)
            if wanted and not runs.empty:
                runs = runs[runs[column].isin(wanted)]
        return runs


def cell(value, fmt: str) -> str:
    """One table cell: "–" for a missing number, "yes"/"" for a flag, else ``fmt``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    return fmt.format(int(value) if fmt == "{:d}" else value)


def _composite(column: str, r: pd.Series, text: str) -> str:
    """Cells that say more than their number: the rank's range, the interval, the gap's test."""
    if column == "rank":
        return r["rank_text"]
    if column == "best_fid_mean" and text != "–":
        return text + (f" ({r['ci_low']:.2f} to {r['ci_high']:.2f})" if pd.notna(r["ci_low"]) else " (no interval)")
    if column == "final_fid_mean" and text != "–" and pd.notna(r["final_fid_std"]):
        return text + f" ± {r['final_fid_std']:.2f}"
    if column == "gap_to_above" and text != "–":
        if pd.isna(r["gap_low"]):
            return text + " (not tested)"
        verdict = "separated" if r["separated_from_above"] else "≈ not separated"
        return text + f" ({r['gap_low']:+.2f} to {r['gap_high']:+.2f}, p {r['gap_p']:.3g}; {r['gap_kind']}) {verdict}"
    return text


def display(board: pd.DataFrame, columns=COMPACT) -> tuple[list[str], list[list[str]], set[tuple[int, int]]]:
    """A leaderboard as header texts, rows of cell texts, and the (row, column) cells holding a
    column's best value."""
    headers = [header for _, header, _, _ in columns]
    rows, best = [], set()
    for _, r in board.iterrows():
        rows.append([_composite(column, r, cell(r[column], fmt)) for column, _, fmt, _ in columns])
    for j, (column, _, _, better) in enumerate(columns):  # measured rows only: quoted ones are never best
        values = pd.to_numeric(board[column], errors="coerce")
        if better and values.notna().sum() > 1:
            target = values.min() if better == "lower" else values.max()
            best |= {(i, j) for i, v in enumerate(values) if v == target}
    return headers, rows, best


def quoted_rows(board: pd.DataFrame, tier: str) -> list[list[str]]:
    """The task's published best FIDs at this tier as unranked rows under a leaderboard made with the
    exact protocol (none under any other)."""
    if not board["exact_protocol"].all():
        return []
    rows = []
    for _, ref in tables.published(board, tier).iterrows():
        row = [""] * len(COLUMNS)
        row[0], row[1] = "quoted", ref["arch"]
        row[[c for c, *_ in COLUMNS].index("best_fid_mean")] = f"{ref['published_fid']:.2f}"
        row[[c for c, *_ in COLUMNS].index("verdict")] = "published (task reference_results), not ranked"
        rows.append(row)
    return rows


def not_quoted_note(board: pd.DataFrame, tier: str) -> str:
    """One line saying why published FIDs the task has for this tier are absent from this table ("" if none)."""
    if tables.published(board, tier).empty:
        return ""
    return tables.why_not_quoted(board)


@dataclass
class Report:
    """Everything the files are made from."""

    runs: pd.DataFrame
    records: dict
    grouped: pd.DataFrame
    boards: dict  # BoardKey -> leaderboard
    fidelity: pd.DataFrame  # fidelity.fidelity: proxy vs expensive rankings
    fidelity_missing: list  # fidelity.not_compared: why a task with several measures has no comparison
    samplers: dict  # BoardKey -> samplers.SamplerView, for boards whose runs hold a sampler grid
    studies: list  # study summaries
    sweeps: list  # sweep manifests
    provenance: dict
    unreadable: list  # records, sweep manifests and studies that could not be read: [{"path", "reason"}]
    seed_cv: float | None = None  # the seed-to-seed CV assumed for one-seed rows with nothing to borrow


def collect(results_dir: Path, filters: Filters, seed_cv: float | None = None) -> Report:

    if not results_dir.is_dir():
        raise HarnessError(f"The results folder {results_dir} does not exist. Pass --results-dir with the folder that "
                           f"`run`, `sweep` or `search` wrote (default: results).")
    runs, records, unreadable = tables.load_runs(results_dir)
    runs = filters.apply(runs)
    studies = find_studies(results_dir, unreadable)
    if runs.empty and not studies:
        damaged = "".join(f" {u['path']} {u['reason']}." for u in unreadable)
        raise HarnessError(f"No run records (record.json) under {results_dir}" + (" match the filters" if
                           any([filters.task, filters.tier, filters.arch]) else "") + "." + damaged +
                           " Run something first, e.g. `python -m harness run --task shapes --arch standard --tier "
                           "smoke`" + (", or run the damaged records' commands again (a run rewrites its record)."
                                       if unreadable else "."))
    if not runs.empty:
        runs = runs.assign(in_leaderboard=tables.usable(runs, filters.include_incomplete))
    grouped = tables.groups(runs, filters.include_incomplete) if not runs.empty else pd.DataFrame()
    grouped = name_trials(grouped, study_trials(studies))
    boards = {BoardKey(*key): board for key, board in tables.leaderboards(grouped, seed_cv).items()}
    assumed = sum((b["noise_source"] == "assumed").sum() for b in boards.values())
    notes = [f"{assumed} one-seed row(s) have no seed spread measured on their board and assume a seed-to-seed CV "
             f"of {seed_cv:.1%} (--seed-cv): their intervals and ranks rest on that assumption."] if assumed else []
    used = runs[runs["in_leaderboard"]] if not runs.empty else runs
    views = {key: samplers.sampler_view(tables.board_runs(board, runs), records, seed_cv)
             for key, board in boards.items()}
    return Report(runs, records, grouped, boards, fidelity.fidelity(used, records),
                  fidelity.not_compared(used, records), {k: v for k, v in views.items() if v is not None}, studies,
                  read_sweeps(results_dir, unreadable), provenance(runs, records, notes), unreadable, seed_cv)


def provenance(runs: pd.DataFrame, records: dict, notes: list[str] = ()) -> dict:
    if runs.empty:
        return {}
    commits = sorted(set(runs["git_commit"].dropna()))
    warnings = list(notes)
    if len(commits) > 1:
        warnings.append(f"The runs come from {len(commits)} git commits ({', '.join(c[:12] for c in commits)}): "
                        f"code differences may explain result differences.")
    if any(c.endswith("+dirty") for c in commits):
        warnings.append("Some runs were made from a tree with uncommitted changes (+dirty): their code is not "
                        "exactly any commit.")
    from collections import Counter

    substituted = Counter(f"{n['what']}: {n['used']} ({n['why']})" for p in runs["record"]
                          for n in records[p].get("substitutions") or [])
    for line, count in sorted(substituted.items()):
        warnings.append(f"{count} run(s) used a substitute: {line}.")
    protocols = {}
    for path in runs["record"]:
        record = records[path]
        config = record.get("config") or {}
        training, sampling, evaluation = (config.get(k) or {} for k in ("training", "sampling", "evaluation"))
        key = f"{record['task']} v{record.get('task_version')} / {record['tier']}"
        protocols.setdefault(key, set()).add(json.dumps({
            "steps": training.get("steps"), "batch_size": training.get("batch_size"),
            "ema_decay": training.get("ema_decay"),
            "lr": (config.get("optimizer") or {}).get("lr"),
            "sampler": f"{sampling.get('sampler')} {sampling.get('steps')} steps, eta {sampling.get('eta')}",
            "fid_samples": evaluation.get("num_samples"),
            "fid_reference": (record.get("reference") or {}).get("source"),
            "inception_weights": (record.get("inception") or {}).get("weights_id")}, sort_keys=True))
    versions = {}
    for record in (records[p] for p in runs["record"]):
        for library, version in (record.get("versions") or {}).items():
            versions.setdefault(library, set()).add(version)
    return {"protocol": {k: [json.loads(v) for v in sorted(vs)] for k, vs in sorted(protocols.items())},
            "git_commits": commits, "devices": sorted(set(runs["device"].dropna())),
            "library_versions": {k: sorted(v) for k, v in sorted(versions.items())}, "warnings": warnings}


def sweeps_table(manifests: list[dict]) -> pd.DataFrame:
    from collections import Counter

    rows = []
    for m in manifests:
        counts = Counter(c.get("status") for c in m.get("cells", []))
        rows.append({"sweep": m.get("sweep"), "task": m.get("task"), "cells": len(m.get("cells", [])),
                     **{state: counts.get(state, 0) for state in ("completed", "skipped", "failed", "interrupted")},
                     "started": m.get("started_at"), "ended": m.get("ended_at") or "not finished"})
    return pd.DataFrame(rows)


class BoardKey(NamedTuple):
    """What the runs of one leaderboard share (tables.BOARD_KEY)."""

    task: str
    task_version: int
    tier: str
    variant: str
    conditions: str
    settings_key: str


def board_title(key: BoardKey) -> str:
    return f"{key.task} v{key.task_version} / {key.tier}" + (f" — variant: {key.variant}" if key.variant else "")


def board_slug(key: BoardKey, index: int) -> str:
    return f"{key.task}-{key.tier}" + (f"-v{index}" if index else "")


PUBLISHED_NOTE = ("Published best FIDs (quoted from the task's reference_results: for cifar10, the MLS-Bench "
                  "baselines at 50k samples; not ranked) beside the reproduced ones, and whether each published value "
                  "lies inside the reproduced mean's 95% interval:")


def published_vs_reproduced(board: pd.DataFrame, tier: str) -> pd.DataFrame:
    """Published vs reproduced best FIDs, for a leaderboard made with the exact protocol (else empty)."""
    if not board["exact_protocol"].all():
        return pd.DataFrame()
    rows = []
    for _, ref in tables.published(board, tier).iterrows():
        ours = board[board["arch"] == ref["arch"]]
        reproduced, low, high = (ours[c].iloc[0] if len(ours) else math.nan
                                 for c in ("best_fid_mean", "ci_low", "ci_high"))
        inside = "–" if math.isnan(low) else ("yes" if low <= ref["published_fid"] <= high else "no")
        rows.append({"architecture": ref["arch"], "published best FID (quoted)": f"{ref['published_fid']:.2f}",
                     "reproduced best FID": cell(reproduced, "{:.2f}"),
                     "reproduced 95% interval": "–" if math.isnan(low) else f"{low:.2f} to {high:.2f}",
                     "published inside it": inside,
                     "reproduced − published": cell(reproduced - ref["published_fid"], "{:+.2f}")})
    return pd.DataFrame(rows)


def study_trials(studies: list[dict]) -> dict[str, tuple[str, int, str]]:
    """The resolved path of each trial's architecture file and run folder -> (study, trial number, state)."""
    found = {}
    for study in studies:
        for trial in study["study"].get_trials(deepcopy=False):
            for attr in ("arch_file", "run_folder"):
                if attr in trial.user_attrs:
                    found[str(Path(trial.user_attrs[attr]).resolve())] = (study["name"], trial.number, trial.state.name)
    return found


def name_trials(grouped: pd.DataFrame, trials: dict) -> pd.DataFrame:
    """A search trial's architecture file has a generated name (<study>_t0003.py): its source says
    which trial of which study it is, so a reader can find it with `optuna` or `harness export`."""
    def source(row) -> str:
        found = trials.get(str(Path(row["arch_file"]).resolve())) if isinstance(row["arch_file"], str) else None
        return f"trial {found[1]} of study {found[0]}: {row['source']}" if found else row["source"]

    return grouped.assign(source=grouped.apply(source, axis=1)) if not grouped.empty else grouped


def unfinished(runs: pd.DataFrame, studies: list[dict]) -> pd.DataFrame:
    """The runs no leaderboard uses, with why: a failure's message, or the study that pruned it."""
    rest = runs[~runs["in_leaderboard"]] if not runs.empty else runs
    if rest.empty:
        return pd.DataFrame()
    trials = study_trials(studies)

    def why(row) -> str:
        if isinstance(row["failure"], str):
            return row["failure"]
        name, number, state = trials.get(str(Path(row["record"]).parent.resolve()), (None, None, None))
        return f"trial {number} of study {name}: {state}" if name else ""

    return pd.DataFrame({"task": rest["task"], "tier": rest["tier"], "architecture": rest["arch"], "seed": rest["seed"],
                         "status": rest["status"], "step": rest["step"].astype("Int64"), "of": rest["steps"],
                         "why": rest.apply(why, axis=1), "record": rest["record"]})


UNREADABLE_NOTE = ("These files under the results folder could not be read, so what they hold is missing from "
                   "everything above. A run rewrites its record when its command is run again (it resumes from its "
                   "checkpoint); a sweep rewrites its manifest the same way.")

READING_NOTE = (
    "How to read this: FIDs compare only within a table (the same task, tier, protocol settings, number of "
    "generated samples and reference statistics); smoke-tier FIDs use 64 samples and are far above 50k-sample "
    "values. Best FID is the minimum over a run's evaluation points, selected on the metric itself, so it is "
    "optimistic; final FID is the last point. Each table leads with the decision: a row's mean best FID over its "
    "seeds with a 95% interval that includes the training-seed variation (measured over its seeds; with one seed, "
    "borrowed from the table's rows with several seeds, or assumed from --seed-cv, as the details say; with none "
    "of these the row has no interval and is ranked apart from nothing), and its verdict against every other row. "
    + noise.PROCEDURE + " A rank such as 2–4 is the range the tests allow. The details table splits each row's "
    "per-seed noise into its seed-to-seed and FID-sampling parts (the sampling part from bootstrap resamples of the "
    "generated images' features). ↓ lower is better, ↑ higher is better.")
