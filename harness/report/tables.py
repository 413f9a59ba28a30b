"""Run records -> tidy DataFrames: one row per run, one row per comparable group, leaderboards.

A group is what may be averaged over seeds: the same task and task version, tier, architecture
file (name and sha256) and every protocol setting that changes a result. Settings that do not
(seed, logging and checkpoint intervals, evaluation points, batch sizes of sampling and feature
extraction, torch.compile) are left out of the key; ``--steps``, ``--fid-samples`` and ``--set``
overrides are in it, and shown as the group's ``variant`` (what differs from the tier's default).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.records import RECORD_FILE
from harness.tasks import complete_config

# config fields that change neither what is trained nor what an FID means
NOT_RESULT_FIELDS = ("seed", "tier", "description", "reference_results", "training.log_every",
                     "training.checkpoint_every", "training.compile", "evaluation.eval_points",
                     "evaluation.feature_batch_size", "sampling.batch_size")
BASELINE = "standard"  # the architecture every FID difference is taken to


def flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def result_settings(config: dict) -> dict:
    return {k: v for k, v in flatten(complete_config(config)).items() if k not in NOT_RESULT_FIELDS}


def variant(config: dict, tier_default: dict | None) -> str:
    """What differs from the tier's default settings, e.g. "training.steps=6, evaluation.num_samples=6"."""
    if tier_default is None:
        return "(task file not found: settings unchecked)"
    plain = lambda d: json.loads(json.dumps(d, default=list))  # noqa: E731  (tuples in a spec, lists in a record)
    ours, theirs = plain(result_settings(config)), plain(result_settings(tier_default))
    changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    return ", ".join(f"{k}={json.dumps(ours.get(k))}" for k in changed)


def _tier_default(task: str, tier: str, cache: dict) -> dict | None:
    from harness.tasks import resolve_task

    if (task, tier) not in cache:
        try:
            cache[task, tier] = resolve_task(task, tier).to_dict()
        except Exception:  # a task file that is gone, or renamed: the runs are still reported
            cache[task, tier] = None
    return cache[task, tier]


def load_runs(results_dir: str | Path) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Every record under ``results_dir``: a tidy frame (one row per run) and the records by path
    (for their curves)."""
    rows, records, defaults = [], {}, {}
    for path in sorted(Path(results_dir).rglob(RECORD_FILE)):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        config, profile = record.get("config") or {}, record.get("profile") or {}
        timings, evaluation = record.get("timings") or {}, config.get("evaluation") or {}
        settings = json.dumps(result_settings(config), sort_keys=True, default=str)
        rows.append({
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
            "precision": record.get("precision"), "fid_samples": evaluation.get("num_samples"),
            "fid_reference": (record.get("reference") or {}).get("source"),
            "inception": (record.get("inception") or {}).get("weights_id"),
            "git_commit": record.get("git_commit"), "torch": (record.get("versions") or {}).get("torch"),
            "variant": variant(config, _tier_default(record["task"], record["tier"], defaults)),
            "settings_key": settings, "failure": (record.get("failure") or {}).get("message"),
            "updated_at": record.get("updated_at"), "record": str(path),
        })
        records[str(path)] = record
    runs = pd.DataFrame(rows)
    if not runs.empty:
        runs = runs.sort_values(["task", "tier", "arch", "variant", "seed"], kind="stable").reset_index(drop=True)
    return runs, records


def _early_fid(record: dict) -> float | None:
    """FID at the first evaluation point after step 0 (the cheap proxy rank agreement checks);
    None when that is the run's only one after step 0 (it would be compared with itself)."""
    later = [e for e in record.get("evaluations") or [] if e["step"] > 0]
    return later[0]["fid"] if len(later) > 1 else None


GROUP_KEY = ["task", "task_version", "tier", "arch", "arch_sha256", "variant", "settings_key"]


def source_name(path: str | None) -> str:
    """An architecture file as the repository names it (architectures/x.py), else its full path."""
    from harness.tasks import REPO_ROOT

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
    """One row per comparable group of usable runs: seeds, mean ± std over seeds, cost."""
    done = runs[usable(runs, include_incomplete)]
    rows = []
    for key, g in done.groupby(GROUP_KEY, dropna=False, sort=True):
        best_mean, best_std = _mean_std(g["best_fid"])
        final_mean, final_std = _mean_std(g["final_fid"])
        rows.append({**dict(zip(GROUP_KEY, key)), "seeds": len(g), "seed_list": ",".join(map(str, sorted(g["seed"]))),
                     "incomplete": int((g["status"] != "completed").sum()),
                     "best_fid_mean": best_mean, "best_fid_std": best_std, "best_fid_min": g["best_fid"].min(),
                     "final_fid_mean": final_mean, "final_fid_std": final_std, "kid_mean": g["final_kid"].mean(),
                     "early_fid_mean": g["early_fid"].mean(), "params": g["params"].iloc[0], "gmacs": g["gmacs"].iloc[0],
                     "gflops": g["gflops"].iloc[0], "train_img_s": g["train_img_s"].mean(),
                     "train_mfu": g["train_mfu"].mean(), "sample_img_s": g["sample_img_s"].mean(),
                     "device": ", ".join(sorted(set(g["device"].dropna()))), "fid_samples": g["fid_samples"].iloc[0],
                     "steps": g["steps"].iloc[0], "arch_file": g["arch_file"].iloc[0],
                     "source": f"{source_name(g['arch_file'].iloc[0])} {key[GROUP_KEY.index('arch_sha256')][:8]}"})
    return pd.DataFrame(rows)


def leaderboards(grouped: pd.DataFrame) -> dict[tuple[str, str, str], pd.DataFrame]:
    """(task, tier, variant) -> its ranked leaderboard: rank by mean best FID, FID difference to
    ``standard`` in the same table, and whether the row is on the Pareto front of FID vs GFLOPs."""
    boards = {}
    if grouped.empty:
        return boards
    for (task, tier, var), g in grouped.groupby(["task", "tier", "variant"], sort=True):
        g = g.sort_values(["best_fid_mean", "arch"], kind="stable").reset_index(drop=True)
        g.insert(0, "rank", range(1, len(g) + 1))
        base = g.loc[g["arch"] == BASELINE, "best_fid_mean"]
        g["fid_vs_standard"] = g["best_fid_mean"] - base.iloc[0] if len(base) == 1 else np.nan
        g["pareto"] = pareto_front(g["gflops"].to_numpy(float), g["best_fid_mean"].to_numpy(float))
        boards[task, tier, var] = g
    return boards


def pareto_front(cost: np.ndarray, fid: np.ndarray) -> np.ndarray:
    """True where no other point has both lower-or-equal cost and FID with one strictly lower."""
    front = np.zeros(len(cost), dtype=bool)
    for i in range(len(cost)):
        if np.isnan(cost[i]) or np.isnan(fid[i]):
            continue
        dominated = (cost <= cost[i]) & (fid <= fid[i]) & ((cost < cost[i]) | (fid < fid[i]))
        front[i] = not dominated.any()
    return front


def references(task_name: str) -> pd.DataFrame:
    """The task's published best FIDs (quoted, not produced here): arch, tier, best_fid."""
    from harness.tasks import resolve_task, tier_names

    try:
        tiers = tier_names(task_name)
        published = resolve_task(task_name, tiers[0]).reference_results or {}
    except Exception:
        return pd.DataFrame(columns=["arch", "tier", "published_fid"])
    rows = [{"arch": arch, "tier": tier, "published_fid": fid}
            for arch, by_tier in (published.get("best_fid") or {}).items() for tier, fid in by_tier.items()]
    return pd.DataFrame(rows, columns=["arch", "tier", "published_fid"])


def rank_agreement(grouped: pd.DataFrame, minimum: int = 3) -> pd.DataFrame:
    """Kendall tau and Spearman rho of architecture rankings: between every two tiers of a task
    (mean best FID), and within a tier between the early evaluation and the best FID. Shown
    only where at least ``minimum`` architectures have both numbers."""
    from scipy.stats import kendalltau, spearmanr

    rows = []
    if grouped.empty:
        return pd.DataFrame(rows)
    # across tiers: runs with the same deviations from each tier's settings (usually none)
    for (task, var), g in grouped.groupby(["task", "variant"]):
        by_tier = {tier: t.groupby("arch")["best_fid_mean"].mean() for tier, t in g.groupby("tier")}
        tiers = sorted(by_tier)
        for i, a in enumerate(tiers):
            for b in tiers[i + 1:]:
                common = by_tier[a].index.intersection(by_tier[b].index)
                if len(common) >= minimum:
                    x, y = by_tier[a][common], by_tier[b][common]
                    rows.append({"task": task, "compared": f"tier {a} vs tier {b}", "variant": var,
                                 "archs": len(common), "kendall_tau": kendalltau(x, y).statistic,
                                 "spearman_rho": spearmanr(x, y).statistic})
    for (task, tier, var), g in grouped.groupby(["task", "tier", "variant"]):
        g = g.dropna(subset=["early_fid_mean", "best_fid_mean"])
        if g["arch"].nunique() >= minimum and len(g) == g["arch"].nunique():
            rows.append({"task": task, "compared": f"tier {tier}: first evaluation after step 0 vs best FID",
                         "variant": var, "archs": len(g),
                         "kendall_tau": kendalltau(g["early_fid_mean"], g["best_fid_mean"]).statistic,
                         "spearman_rho": spearmanr(g["early_fid_mean"], g["best_fid_mean"]).statistic})
    return pd.DataFrame(rows)
