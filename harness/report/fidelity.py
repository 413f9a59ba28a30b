"""Proxy fidelity: does a cheap setting rank architectures as an expensive one does?

A *measure* is a number every run of a setting has: its best FID, or its FID at one evaluation
point before the last. A setting is what a leaderboard's runs share (tables.BOARD_KEY: task,
tier, variant, conditions, settings), so two tiers, two sample counts or two step budgets are two
settings. Every expensive measure is a setting's best FID; every cheaper measure of the same task
(another setting's best FID, or any setting's FID at an earlier step) that shares at least
``MINIMUM`` architectures with it is its proxy. For each such pair:

- Kendall tau and Spearman rho of the per-architecture mean FIDs (scipy.stats);
- their 95% bootstrap intervals over architectures, and over seeds where an architecture has
  several (each resample draws architectures with replacement, then one seed of each setting per
  drawn architecture). Written here rather than with scipy.stats.bootstrap: with five
  architectures about one resample in 600 draws a single architecture five times, whose tau is
  undefined, and scipy then returns no interval at all; these resamples are dropped and counted;
- where the expensive setting's best architecture stands in the proxy's ranking (1: the proxy's
  top 1 holds it), hence top-k recall for every k;
- the cost of each measure from the records' timings: training seconds up to its step plus one
  evaluation, so a proxy's cost is comparable with the full run's.

Runs of a successive-halving search at several tiers are runs of the same architecture files at
several tiers, so its rungs are compared here like any two tiers. Their later rungs hold only the
architectures promoted on the earlier rung's FID: a restricted range, which lowers tau.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.report import tables

MINIMUM = 3  # architectures two measures must share to be compared (tau of 2 is always +-1)
RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # the report is the same for the same records


@dataclass(frozen=True)
class Measure:
    setting: tuple  # tables.BOARD_KEY values
    label: str  # the setting as a reader names it (tier and variant)
    step: int | None  # None: the run's best FID


def setting_label(key: dict) -> str:
    variant = key["variant"] if isinstance(key["variant"], str) else ""
    return f"{key['tier']}" + (f" ({variant})" if variant else "")


def measure_name(m: Measure) -> str:
    return f"{m.label}: " + ("best FID" if m.step is None else f"FID at step {m.step}")


def collect_measures(runs: pd.DataFrame, records: dict) -> dict[Measure, dict[str, dict[int, tuple[float, float]]]]:
    """Measure -> architecture -> seed -> (FID, cost in seconds), from the completed runs."""
    found: dict[Measure, dict] = {}
    done = runs[runs["status"] == "completed"] if not runs.empty else runs
    for _, run in done.iterrows():
        key = {k: run[k] for k in tables.BOARD_KEY}
        setting, label = tuple(key.values()), setting_label(key)
        record = records[run["record"]]
        timings, evaluations = record.get("timings") or {}, record.get("evaluations") or []
        steps = run["steps"]
        train, evaluate = timings.get("train_seconds"), timings.get("eval_seconds")
        if not evaluations or run["best_fid"] is None or pd.isna(run["best_fid"]):
            continue
        one_eval = (evaluate or 0.0) / len(evaluations)

        def cost(step: int) -> float:
            return (train or 0.0) * step / max(steps, 1) + one_eval

        entries = [(None, float(run["best_fid"]), cost(steps))]
        entries += [(e["step"], float(e["fid"]), cost(e["step"])) for e in evaluations if 0 < e["step"] < steps]
        for step, fid, seconds in entries:
            found.setdefault(Measure(setting, label, step), {}).setdefault(run["arch"], {})[int(run["seed"])] = (
                fid, seconds)
    return found


def _means(values: dict[str, dict[int, tuple[float, float]]], archs: list[str], at: int) -> np.ndarray:
    return np.array([np.mean([v[at] for v in values[a].values()]) for a in archs])


def bootstrap(cheap: dict, costly: dict, archs: list[str], rng) -> tuple[tuple, tuple, int]:
    """95% percentile intervals of tau and rho over architectures and seeds, and the resamples dropped."""
    from scipy.stats import kendalltau, spearmanr

    x_seeds = [np.array([v[0] for v in cheap[a].values()]) for a in archs]
    y_seeds = [np.array([v[0] for v in costly[a].values()]) for a in archs]
    taus, rhos = [], []
    for _ in range(RESAMPLES):
        drawn = rng.integers(0, len(archs), len(archs))
        if len(set(drawn)) < 2:
            continue  # one architecture n times: no ranking to compare
        x = [x_seeds[i][rng.integers(len(x_seeds[i]))] for i in drawn]
        y = [y_seeds[i][rng.integers(len(y_seeds[i]))] for i in drawn]
        taus.append(kendalltau(x, y).statistic)
        rhos.append(spearmanr(x, y).statistic)
    taus, rhos = np.array(taus), np.array(rhos)
    dropped = RESAMPLES - int(np.isfinite(taus).sum())

    def interval(values):
        values = values[np.isfinite(values)]
        return tuple(np.percentile(values, [2.5, 97.5])) if len(values) else (np.nan, np.nan)

    return interval(taus), interval(rhos), dropped


def pairs(measures: dict) -> list[tuple[Measure, Measure, list[str]]]:
    """(proxy, expensive, shared architectures): every expensive best FID with every cheaper measure
    of the same task that shares at least MINIMUM architectures."""
    found = []
    for costly, costly_values in measures.items():
        if costly.step is not None:
            continue
        for cheap, cheap_values in measures.items():
            if cheap == costly or cheap.setting[0] != costly.setting[0]:
                continue
            archs = sorted(set(cheap_values) & set(costly_values))
            if len(archs) < MINIMUM:
                continue
            if _means(cheap_values, archs, 1).mean() < _means(costly_values, archs, 1).mean():
                found.append((cheap, costly, archs))
    return sorted(found, key=lambda p: (measure_name(p[1]), measure_name(p[0])))


def fidelity(runs: pd.DataFrame, records: dict) -> pd.DataFrame:
    """One row per (proxy, expensive) pair; empty where no two measures share MINIMUM architectures."""
    from scipy.stats import kendalltau, spearmanr

    measures = collect_measures(runs, records) if not runs.empty else {}
    rows = []
    for cheap, costly, archs in pairs(measures):
        x, y = _means(measures[cheap], archs, 0), _means(measures[costly], archs, 0)
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        (tau_low, tau_high), (rho_low, rho_high), dropped = bootstrap(measures[cheap], measures[costly], archs, rng)
        best = archs[int(np.argmin(y))]
        proxy_order = [archs[i] for i in np.argsort(x, kind="stable")]
        seeds = {len(measures[m][a]) for m in (cheap, costly) for a in archs}
        rows.append({
            "task": cheap.setting[0], "proxy": measure_name(cheap), "expensive": measure_name(costly),
            "archs": len(archs), "seeds per arch": "-".join(map(str, sorted({min(seeds), max(seeds)}))),
            "kendall_tau": kendalltau(x, y).statistic, "tau_low": tau_low, "tau_high": tau_high,
            "spearman_rho": spearmanr(x, y).statistic, "rho_low": rho_low, "rho_high": rho_high,
            "expensive_best": best, "best_rank_by_proxy": proxy_order.index(best) + 1,
            "proxy_cost": _means(measures[cheap], archs, 1).mean() / _means(measures[costly], archs, 1).mean(),
            "resamples_dropped": dropped,
            "points": json.dumps({a: [round(float(u), 4), round(float(v), 4)] for a, u, v in zip(archs, x, y)}),
        })
    return pd.DataFrame(rows)


NOTE = ("Does a cheap setting rank architectures as the expensive one does? Each row compares a proxy (an earlier "
        "evaluation point, fewer FID samples, fewer steps, another tier) with a setting's best FID over the "
        "architectures both have: Kendall τ and Spearman ρ of their mean FIDs (+1: the same order), each with a 95% "
        "bootstrap interval over architectures and seeds; where the expensive setting's best architecture stands in "
        "the proxy's order (1: the proxy's top 1 holds it; k: only its top k does); and the proxy's cost relative "
        "to the expensive run (training to its step plus one evaluation, from the records' timings). With few "
        "architectures the intervals are wide: a τ whose interval includes 0 does not show that the proxy ranks "
        "like the expensive setting.")


def display_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    headers = ["proxy", "expensive", "archs", "seeds per arch", "Kendall τ (95% interval)",
               "Spearman ρ (95% interval)", "expensive best", "its rank by the proxy", "top-1 / top-3 recall",
               "proxy cost"]
    rows = []
    for _, r in table.iterrows():
        recall = " / ".join("yes" if r["best_rank_by_proxy"] <= k else "no" for k in (1, 3))
        rows.append([r["proxy"], r["expensive"], str(r["archs"]), r["seeds per arch"],
                     f"{r['kendall_tau']:+.2f} ({r['tau_low']:+.2f} to {r['tau_high']:+.2f})",
                     f"{r['spearman_rho']:+.2f} ({r['rho_low']:+.2f} to {r['rho_high']:+.2f})",
                     r["expensive_best"], f"{r['best_rank_by_proxy']} of {r['archs']}", recall,
                     f"{r['proxy_cost']:.2f}×"])
    return headers, rows
