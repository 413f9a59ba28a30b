"""Run records -> tidy DataFrames: one row per run, one row per comparable group, leaderboards.

A group is what may be averaged over seeds: the same task and task version, tier, architecture
file (name and sha256), every protocol setting that changes a result, and the conditions the run
really had: training and sampling precision, device type, FID reference source and Inception
weights. Settings that do not change a result (protocol/spec.py declares which: seed, logging and
checkpoint intervals, batch sizes of sampling and feature extraction, torch.compile) are left out of the
key; evaluation points are in it (best FID is the minimum over them);
``--steps``, ``--fid-samples`` and ``--set`` overrides are in it, and shown as the group's
``variant`` (what differs from the tier's settings, which the record keeps). A leaderboard ranks the
groups that share everything but the architecture; its title says the conditions.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.protocol.tasks import complete_config, flatten, result_settings
from harness.report import noise
from harness.run.records import RECORD_FILE, why_unreadable

BASELINE = "standard"  # the architecture every FID difference is taken to


def variant(config: dict, tier_default: dict | None) -> str:
    """What differs from the tier's default settings, e.g. "training.steps=6, evaluation.num_samples=6"."""
    if tier_default is None:  # a record from before records kept their tier, whose task file is gone
        digest = hashlib.sha256(json.dumps(result_settings(config), sort_keys=True, default=str).encode()).hexdigest()
        return f"settings {digest[:8]} (task file not found: what differs from the tier is unknown)"
    plain = lambda d: json.loads(json.dumps(d, default=list))  # noqa: E731  (tuples in a spec, lists in a record)
    ours, theirs = plain(result_settings(config)), plain(result_settings(tier_default))
    changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    return ", ".join(f"{k}={json.dumps(ours.get(k))}" for k in changed)


def _tier_default(task: str, tier: str, cache: dict) -> dict | None:
    from harness.protocol.tasks import resolve_task

    if (task, tier) not in cache:
        try:
            cache[task, tier] = resolve_task(task, tier).to_dict()
        except Exception:  # a task file that is gone, or renamed: the runs are still reported
            cache[task, tier] = None
    return cache[task, tier]


def load_runs(results_dir: str | Path) -> tuple[pd.DataFrame, dict[str, dict], list[dict]]:
    """Every record under ``results_dir``: a tidy frame (one row per run), the records by path (for
    their curves), and the records that could not be read, ``[{"path", "reason"}]``: a damaged file
    is named in the report, never silently left out of a leaderboard."""
    rows, records, defaults, unreadable = [], {}, {}, []
    for path in sorted(Path(results_dir).rglob(RECORD_FILE)):
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError(f"it holds a JSON {type(record).__name__}, not a record")
            rows.append(_row(path, record, defaults))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            unreadable.append({"path": str(path), "reason": why_unreadable(exc)})
            continue
        records[str(path)] = record
    runs = pd.DataFrame(rows)
    if not runs.empty:
        runs = runs.sort_values(["task", "tier", "arch", "variant", "seed"], kind="stable").reset_index(drop=True)
    return runs, records, unreadable


def as_evaluated(record: dict) -> dict:
    """A record's config with, for a completed run, the steps it was really evaluated at as its evaluation
    points: best FID is the minimum over those, and a resumed run's config lists only the points it had
    when it was last started (an extended run's earlier evaluations count in its best FID too)."""
    config = record.get("config") or {}
    steps = sorted({e["step"] for e in record.get("evaluations") or []})
    if record.get("status") != "completed" or not steps:
        return config
    return {**config, "evaluation": {**(config.get("evaluation") or {}), "eval_points": steps}}


def _row(path: Path, record: dict, defaults: dict) -> dict:
    """One run's row of the tidy frame (KeyError when a field every record has is missing)."""
    config, profile = as_evaluated(record), record.get("profile") or {}
    timings, evaluation = record.get("timings") or {}, config.get("evaluation") or {}
    settings = json.dumps(result_settings(config), sort_keys=True, default=str)
    tier_default = record.get("tier_config") or _tier_default(record["task"], record["tier"], defaults)
    conditions = run_conditions(record)
    return {
        "task": record["task"], "task_version": record.get("task_version"), "tier": record["tier"],
        "arch": record["arch"], "arch_sha256": (record.get("arch_sha256") or "")[:12],
        "arch_file": record.get("arch_file"), "seed": record["seed"], "status": record["status"],
        "step": record.get("step"), "steps": (config.get("training") or {}).get("steps"),
        "best_fid": record.get("best_fid"), "best_step": record.get("best_step"),
        "final_fid": record.get("final_fid"), "final_kid": record.get("final_kid"),
        "early_fid": _early_fid(record), "params": record.get("param_count"),
        "gmacs": profile.get("gmacs"), "gflops": profile.get("gflops"),
        "train_img_s": timings.get("train_images_per_sec"), "train_mfu": timings.get("train_mfu"),
        "sample_img_s": timings.get("sampling_images_per_sec"), "device": (record.get("device") or {}).get("name"),
        **conditions, "conditions": conditions_label(conditions), "fid_samples": evaluation.get("num_samples"),
        "best_fid_sampling_std": _sampling_std(record), "stream": record.get("stream_sha256"),
        "git_commit": record.get("git_commit"), "torch": (record.get("versions") or {}).get("torch"),
        "variant": variant(config, tier_default), "exact_protocol": exact_protocol(config, tier_default),
        "reference_results": json.dumps(config.get("reference_results"), sort_keys=True),
        "substitutions": "; ".join(f"{n['what']}: {n['used']}" for n in record.get("substitutions") or []),
        "settings_key": settings, "failure": (record.get("failure") or {}).get("message"),
        "updated_at": record.get("updated_at"), "record": str(path),
    }


def run_conditions(record: dict) -> dict:
    """What a run really used beyond its settings: each changes an FID, so runs that differ in any are
    never averaged or ranked together. Records from before sampling had its own precision sampled in the
    training precision."""
    return {"precision": record.get("precision"),
            "eval_precision": record.get("eval_precision") or record.get("precision"),
            "device_type": (record.get("device") or {}).get("type"),
            "fid_reference": (record.get("reference") or {}).get("source"),
            "inception": (record.get("inception") or {}).get("weights_id"), "images": _folder_identity(record)}


def _folder_identity(record: dict) -> str | None:
    """For a folder task, which files it read: its FID reference's cache file is named by a hash of a key that
    holds the folder's listing (every file's path, size and modification time; protocol/folder_data.py), so
    two runs over different contents of one data.path never share it. None for the built-in datasets."""
    if ((record.get("config") or {}).get("data") or {}).get("dataset") != "folder":
        return None
    cache = (record.get("reference") or {}).get("cache_file")
    return f"folder contents {Path(cache).stem.split('-', 1)[-1]}" if cache else "folder contents unknown"


CONDITIONS = ["precision", "eval_precision", "device_type", "fid_reference", "inception", "images"]


def conditions_label(c: dict) -> str:
    """e.g. "trained in fp32, sampled in fp32, on cpu; FID reference computed from 256 training images;
    Inception inception-2015-12-05.pt:7ff4a85c3a6378f0"."""
    return (f"trained in {c['precision']}, sampled in {c['eval_precision']}, on {c['device_type']}; FID reference "
            f"{c['fid_reference'] or 'not yet computed'}; Inception {c['inception'] or '?'}"
            + (f"; images: {c['images']}" if c.get("images") else ""))


# What published FIDs were measured with, unless a task's reference_results says otherwise (measured_with):
# the full 50,000-sample FID against the whole training set, with the tier's settings unchanged.
PUBLISHED_PROTOCOL = {"evaluation.num_samples": 50000, "evaluation.reference_images": None}


def exact_protocol(config: dict, tier_default: dict | None) -> bool:
    """Whether a run is the tier exactly (no --steps, --fid-samples or --set) and its FID is measured as the
    task's published ones were (``reference_results.measured_with``, default PUBLISHED_PROTOCOL)."""
    if tier_default is None or variant(config, tier_default):
        return False
    wanted = (config.get("reference_results") or {}).get("measured_with") or PUBLISHED_PROTOCOL
    settings = flatten(complete_config(config))
    return all(settings.get(k) == v for k, v in wanted.items())


def _sampling_std(record: dict) -> float | None:
    """The FID sampling noise (bootstrap std) of the run's best evaluation, if the record has it."""
    best = [e for e in record.get("evaluations") or [] if e["step"] == record.get("best_step")]
    value = best[0].get("fid_std") if best else None
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _early_fid(record: dict) -> float | None:
    """FID at the first evaluation point after step 0: a cheap proxy of the best FID, in runs.csv (``early_fid``)
    and leaderboard.csv (``early_fid_mean``), which reports/proxy-fidelity/restated.py reads; None when that is
    the run's only one after step 0 (it would be a proxy of itself)."""
    later = [e for e in record.get("evaluations") or [] if e["step"] > 0]
    return later[0]["fid"] if len(later) > 1 else None


GROUP_KEY = ["task", "task_version", "tier", "arch", "arch_sha256", "variant", "settings_key", "conditions"]
BOARD_KEY = ["task", "task_version", "tier", "variant", "conditions", "settings_key"]  # a group's, but the arch


def source_name(path: str | None) -> str:
    """An architecture file as the repository names it (architectures/x.py), else its full path."""
    from harness.files import REPO_ROOT

    if not path:
        return "?"
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna()
    if values.empty:
        return np.nan, np.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else np.nan


def usable(runs: pd.DataFrame, include_incomplete: bool = False) -> pd.Series:
    """The runs a leaderboard uses: completed ones; with ``include_incomplete`` also running or
    interrupted ones with at least one evaluation (their best FID so far)."""
    mask = runs["status"] == "completed"
    if include_incomplete:
        mask |= runs["status"].isin(["running", "interrupted"]) & runs["best_fid"].notna()
    return mask


def groups(runs: pd.DataFrame, include_incomplete: bool = False) -> pd.DataFrame:
    """One row per comparable group of usable runs: seeds, mean ± std over seeds, its 95% interval, cost."""
    done = runs[usable(runs, include_incomplete)]
    rows = []
    for key, g in done.groupby(GROUP_KEY, dropna=False, sort=True):
        best_mean, best_std = _mean_std(g["best_fid"])
        final_mean, final_std = _mean_std(g["final_fid"])
        sampling = g["best_fid_sampling_std"].dropna()
        rows.append({**dict(zip(GROUP_KEY, key)), "seeds": int(g["best_fid"].notna().sum()),
                     "seed_list": ",".join(map(str, sorted(g["seed"]))),
                     "incomplete": int((g["status"] != "completed").sum()),
                     "best_fid_mean": best_mean, "best_fid_std": best_std, "best_fid_min": g["best_fid"].min(),
                     "sampling_std": sampling.mean() if len(sampling) else np.nan,
                     "seed_fids": json.dumps({int(s): float(f) for s, f in zip(g["seed"], g["best_fid"])
                                              if pd.notna(f)}),
                     "seed_streams": json.dumps({int(s): st for s, st in zip(g["seed"], g["stream"])}),
                     "final_fid_mean": final_mean, "final_fid_std": final_std, "kid_mean": g["final_kid"].mean(),
                     "early_fid_mean": g["early_fid"].mean(), "params": g["params"].iloc[0],
                     "gmacs": g["gmacs"].iloc[0],
                     "gflops": g["gflops"].iloc[0], "train_img_s": g["train_img_s"].mean(),
                     "train_mfu": g["train_mfu"].mean(), "sample_img_s": g["sample_img_s"].mean(),
                     "device": ", ".join(sorted(set(g["device"].dropna()))), "fid_samples": g["fid_samples"].iloc[0],
                     "steps": g["steps"].iloc[0], "arch_file": g["arch_file"].iloc[0],
                     "exact_protocol": bool(g["exact_protocol"].all()),
                     "reference_results": g["reference_results"].iloc[0],
                     "source": f"{source_name(g['arch_file'].iloc[0])} {key[GROUP_KEY.index('arch_sha256')][:8]}"})
    return pd.DataFrame(rows)


def board_runs(board: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The runs behind the rows of a leaderboard (``in_leaderboard``: the ones it averages)."""
    key = ["task", "tier", "arch", "arch_sha256", "settings_key", "conditions"]
    wanted = set(map(tuple, board[key].to_numpy()))
    mask = np.array([tuple(row) in wanted for row in runs[key].to_numpy()], dtype=bool)
    return runs[mask & runs["in_leaderboard"].to_numpy(dtype=bool)]


def noise_row(row: pd.Series, unique: bool = True) -> noise.Row:
    """A leaderboard row as noise.judge reads it (named by its file's hash too where ``unique`` is False: two
    versions of one architecture on a board)."""
    return noise.Row(row["arch"] if unique else f"{row['arch']} ({row['arch_sha256'][:8]})",
                     {int(k): v for k, v in json.loads(row["seed_fids"]).items()},
                     {int(k): v for k, v in json.loads(row["seed_streams"]).items()},
                     None if pd.isna(row["sampling_std"]) else float(row["sampling_std"]))


def leaderboards(grouped: pd.DataFrame, seed_cv: float | None = None) -> dict[tuple, pd.DataFrame]:
    """BOARD_KEY values -> its ranked leaderboard, ordered by mean best FID. noise.judge gives each row its
    per-seed noise (measured, borrowed from the board, assumed from ``seed_cv``, or unknown) and 95% interval,
    tests every pair and ranks under Holm's correction (``rank``: 1 + rows separated ahead; ``rank_high``);
    each row's gap to the row above is shown with its interval and whether that pair is separated. Also the
    FID difference to ``standard`` and whether the row is on the Pareto front of FID vs GFLOPs."""
    boards = {}
    if grouped.empty:
        return boards
    for key, g in grouped.groupby(BOARD_KEY, sort=True, dropna=False):
        g = g.sort_values(["best_fid_mean", "arch"], kind="stable").reset_index(drop=True)
        unique = ~g["arch"].duplicated(keep=False)
        judged = noise.judge([noise_row(r, u) for (_, r), u in zip(g.iterrows(), unique)], seed_cv)
        splits = [noise.variance_split(r, n) for r, n in zip(judged.rows, judged.noises)]
        g["ci_low"] = [i.low for i in judged.intervals]
        g["ci_high"] = [i.high for i in judged.intervals]
        g["ci_kind"] = [i.kind for i in judged.intervals]
        g["noise_source"] = [n.source for n in judged.noises]
        g["seed_sd"], g["sampling_sd"] = [s[0] for s in splits], [s[1] for s in splits]
        above = [None] + [judged.comparisons[i - 1, i] for i in range(1, len(g))]
        g["gap_sd"] = [np.nan if d is None else d.sd for d in above]  # what the seeds-needed sentence sizes with
        g["gap_paired"] = [d is not None and d.paired for d in above]
        g["pairs_tested"] = sum(c.known for c in judged.comparisons.values())
        g["gap_to_above"] = [np.nan if d is None else d.gap for d in above]
        g["gap_low"] = [np.nan if d is None else d.low for d in above]
        g["gap_high"] = [np.nan if d is None else d.high for d in above]
        g["gap_p"] = [np.nan if d is None else d.p for d in above]
        g["gap_kind"] = ["" if d is None else d.kind for d in above]
        g["separated_from_above"] = [False if d is None else (i - 1, i) in judged.separated
                                     for i, d in enumerate(above)]
        g["tied"] = [i > 0 and not g["separated_from_above"].iloc[i] for i in range(len(g))]
        verdicts = judged.verdicts
        # no rank is claimed for these (a row alone on its board is first of one)
        unknown = [n.source == "unknown" and len(g) > 1 for n in judged.noises]
        g.insert(0, "rank", [np.nan if u else v.rank for v, u in zip(verdicts, unknown)])
        g.insert(1, "rank_high", [np.nan if u else v.rank_high for v, u in zip(verdicts, unknown)])
        g["rank_text"] = ["not established" if u else v.rank_text for v, u in zip(verdicts, unknown)]
        g["with_best"] = [(0, i) not in judged.separated for i in range(len(g))]  # no test separates it from row 1
        g["verdict"] = [v.text for v in verdicts]
        g["ahead_of"] = [", ".join(v.ahead_of) for v in verdicts]
        g["behind"] = [", ".join(v.behind) for v in verdicts]
        g["tied_with"] = [", ".join(v.tied_with) for v in verdicts]
        g["not_tested_against"] = [", ".join(v.untested) for v in verdicts]
        base = g.loc[g["arch"] == BASELINE, "best_fid_mean"]
        g["fid_vs_standard"] = g["best_fid_mean"] - base.iloc[0] if len(base) == 1 else np.nan
        g["pareto"] = pareto_front(g["gflops"].to_numpy(float), g["best_fid_mean"].to_numpy(float))
        boards[key] = g
    return boards


def top_gap(board: pd.DataFrame) -> str | None:
    """One sentence on the two best rows: their gap with its interval, whether the board separates them, and
    if not, how many seeds of each would give 80% power to separate a gap of that size on this board."""
    if len(board) < 2:
        return None
    first, second = board.iloc[0], board.iloc[1]
    names = (first["arch"], second["arch"]) if first["arch"] != second["arch"] else tuple(
        f"{r['arch']} ({r['arch_sha256'][:8]})" for r in (first, second))
    gap = float(second["gap_to_above"])
    if not gap > 0:
        return (f"Top two: {names[0]} and {names[1]} have the same mean best FID ({first['best_fid_mean']:.2f}): "
                f"no gap to separate.")
    head = f"Top two: {names[0]} leads {names[1]} by {gap:.2f} FID"
    pairs = max(1, len(board) * (len(board) - 1) // 2)
    board_note = "" if pairs == 1 else f" on this board of {pairs} pairs (at Holm's strictest level)"
    if pd.isna(second["gap_low"]):
        mean = float(first["best_fid_mean"])
        fewest, most = (noise.seeds_for_power(gap, cv * mean, False, pairs=pairs) for cv in noise.FIELD_SEED_CV)
        seeds = str(fewest) if fewest == most else f"{fewest} to {most}"
        return (head + ": not tested, since a row has one seed and no seed-to-seed spread to borrow or assume "
                "(rank not established). At the seed-to-seed CV the literature reports for FID (1-2%, an assumption, "
                f"not measured here), about {seeds} seeds of each would give 80% power to separate a gap this size"
                f"{board_note}; or pass --seed-cv to assume one.")
    head += f" (95% interval {second['gap_low']:+.2f} to {second['gap_high']:+.2f}; {second['gap_kind']})"
    if second["separated_from_above"]:
        return head + ": separated from noise (Holm over the board's pairs)."
    excludes_zero = second["gap_low"] > 0 or second["gap_high"] < 0
    within = "within noise" if not excludes_zero else "not separated once the board's other pairs are counted (Holm)"
    needed = noise.seeds_for_power(gap, float(second["gap_sd"]), bool(second["gap_paired"]), pairs=pairs)
    if needed is None:
        return head + f": {within}."
    more = f"more than {needed - 1}" if needed > 1000 else f"about {needed}"
    return (head + f": {within}. At the spread seen ({second['gap_sd']:.2f} FID per seed"
            + (" in the paired differences" if second["gap_paired"] else "")
            + f"), {more} seeds of each would give 80% power to separate a gap this size{board_note} (the observed "
              "gap; the top gap is biased upward by being the top, so that is a lower bound).")


def pareto_front(cost: np.ndarray, fid: np.ndarray) -> np.ndarray:
    """True where no other point has both lower-or-equal cost and FID with one strictly lower."""
    front = np.zeros(len(cost), dtype=bool)
    for i in range(len(cost)):
        if np.isnan(cost[i]) or np.isnan(fid[i]):
            continue
        dominated = (cost <= cost[i]) & (fid <= fid[i]) & ((cost < cost[i]) | (fid < fid[i]))
        front[i] = not dominated.any()
    return front


def published(board: pd.DataFrame, tier: str) -> pd.DataFrame:
    """The published best FIDs (quoted from the task's reference_results, as the runs' records hold them,
    not produced here) at this tier: arch, published_fid."""
    quoted = json.loads(board["reference_results"].iloc[0]) if len(board) else None
    rows = [{"arch": arch, "published_fid": by_tier[tier]}
            for arch, by_tier in ((quoted or {}).get("best_fid") or {}).items() if tier in (by_tier or {})]
    return pd.DataFrame(rows, columns=["arch", "published_fid"]).sort_values("published_fid", kind="stable")


def why_not_quoted(board: pd.DataFrame) -> str:
    """Why a table with published FIDs for its tier does not show them ("" when it does)."""
    if board["exact_protocol"].all():
        return ""
    quoted = json.loads(board["reference_results"].iloc[0]) or {}
    wanted = quoted.get("measured_with") or PUBLISHED_PROTOCOL
    variant_text = board["variant"].iloc[0]
    settings = json.loads(board["settings_key"].iloc[0])
    measured = ", ".join(f"{k}={json.dumps(v)}" for k, v in wanted.items())
    ours = ", ".join(f"{k}={json.dumps(settings.get(k))}" for k, v in wanted.items()
                     if settings.get(k) != v and f"{k}=" not in variant_text)  # (a changed field is said once)
    differ = "; ".join(x for x in (f"changed from the tier: {variant_text}" if variant_text else "", ours) if x)
    return (f"The task's published FIDs for this tier are not quoted beside this table: they were measured with "
            f"the tier's own settings and {measured}, and these runs differ ({differ}).")
