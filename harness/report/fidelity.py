"""Proxy fidelity: does a cheap setting rank architectures as an expensive one does?

A *measure* is a number every run of a setting has: its best FID, or its FID at one evaluation
point before the last. A setting is what a leaderboard's runs share (tables.BOARD_KEY: task,
tier, variant, conditions, settings), so two tiers, two sample counts or two step budgets are two
settings. Every expensive measure is a setting's best FID; every cheaper measure of the same task
(another setting's best FID, or any setting's FID at an earlier step) that shares at least
``MINIMUM`` architectures with it is its proxy. For each such pair:

- Kendall tau and Spearman rho of the per-architecture mean FIDs (scipy.stats);
- their 95% bootstrap intervals from a two-level bootstrap that recomputes what is reported: each
  resample draws architectures with replacement, then, within each drawn architecture, its seeds with
  replacement, and recomputes the per-architecture mean FIDs of both measures and their tau and rho.
  Where both measures come from the same runs (an earlier evaluation point against the same runs' best
  FID) one draw of seeds serves both, so a run's proxy and target stay together; measures of different
  settings are different runs and their seeds are drawn apart. A proxy that is the target plus a
  constant in every run gets [+1, +1]; a reversed one [-1, -1] (tests/test_statistics.py). Written here
  rather than with scipy.stats.bootstrap, which resamples one level only and returns no interval at all
  when a resample draws one architecture every time (tau undefined; about one resample in 600 with five
  architectures): those resamples are dropped and counted;
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


def bootstrap(cheap: dict, costly: dict, archs: list[str], paired: bool, rng) -> tuple[tuple, tuple, int]:
    """95% percentile intervals of tau and rho of the per-architecture means, over architectures and, within
    each, seeds (one draw for both measures when ``paired``: they are the same runs), and the resamples dropped.

    All RESAMPLES resamples at once: ``drawn`` [R,A] names the architecture in each of a resample's A slots; for
    every architecture its seeds are drawn for every slot of every resample ([R,A,n]) and the slot keeps the
    draw of the architecture it holds. Each slot's drawn FIDs are sorted before their mean, so equal draws give
    bit-equal means and ties stay ties. (A loop of scipy calls per resample took about 2 s a pair; this, 20 ms.)"""
    from scipy.stats import rankdata

    count = len(archs)
    drawn = rng.integers(0, count, (RESAMPLES, count))  # [R,A]
    x, y = np.empty((RESAMPLES, count)), np.empty((RESAMPLES, count))
    for i, a in enumerate(archs):
        if paired:
            seeds = sorted(set(cheap[a]) & set(costly[a]))
            values = [np.array([m[a][s][0] for s in seeds]) for m in (cheap, costly)]
            picks = [rng.integers(0, len(seeds), (RESAMPLES, count, len(seeds)))] * 2
        else:
            values = [np.array([v[0] for v in m[a].values()]) for m in (cheap, costly)]
            picks = [rng.integers(0, len(v), (RESAMPLES, count, len(v))) for v in values]
        here = drawn == i
        # each slot's drawn FIDs [R,A,n], sorted: equal draws in another order give bit-equal means
        x[here] = np.sort(values[0][picks[0]], axis=-1).mean(axis=-1)[here]
        y[here] = np.sort(values[1][picks[1]], axis=-1).mean(axis=-1)[here]
    # one architecture in every slot: no ranking to compare (about one resample in 600 with five architectures)
    single = (drawn == drawn[:, :1]).all(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        taus = kendall_tau_b(x, y)
        rhos = spearman_rho(rankdata(x, axis=1), rankdata(y, axis=1))
    taus, rhos = np.where(single, np.nan, taus), np.where(single, np.nan, rhos)
    dropped = RESAMPLES - int(np.isfinite(taus).sum())

    def interval(values):
        values = values[np.isfinite(values)]
        return tuple(np.percentile(values, [2.5, 97.5])) if len(values) else (np.nan, np.nan)

    return interval(taus), interval(rhos), dropped


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row of x and y [R,n] (scipy.stats.kendalltau's default): (concordant - discordant
    pairs) / sqrt(pairs untied in x * pairs untied in y), nan where either row is constant. Written out because
    scipy's batched kendalltau(axis=1) returns 0.9999999999999999 for rows in the same order, where its scalar
    call and this give exactly 1 (tests/test_statistics.py checks the two agree)."""
    i, j = np.triu_indices(x.shape[1], 1)
    sx, sy = np.sign(x[:, i] - x[:, j]), np.sign(y[:, i] - y[:, j])  # [R,pairs]
    return (sx * sy).sum(axis=1) / np.sqrt(np.abs(sx).sum(axis=1) * np.abs(sy).sum(axis=1))


def spearman_rho(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row of the average ranks rx and ry [R,n] (scipy.stats.rankdata): their Pearson
    correlation, nan where either row is constant. By hand for the reason kendall_tau_b gives: scipy's batched
    pearsonr returns 0.9999999999999998 for some equal rows (ranks centred here are exact half-integers, so
    equal rows give exactly 1), warns on constant rows and needs scipy 1.13 for ``axis``."""
    dx, dy = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    return (dx * dy).sum(axis=1) / np.sqrt((dx * dx).sum(axis=1) * (dy * dy).sum(axis=1))


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
        proxy, target = measures[cheap], measures[costly]
        # an earlier evaluation of the same runs: both measures over the seeds both hold, as the bootstrap draws
        paired = cheap.setting == costly.setting and all(set(proxy[a]) & set(target[a]) for a in archs)
        if paired:
            proxy = {a: {s: v for s, v in proxy[a].items() if s in target[a]} for a in archs}
            target = {a: {s: v for s, v in target[a].items() if s in proxy[a]} for a in archs}
        x, y = _means(proxy, archs, 0), _means(target, archs, 0)
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        (tau_low, tau_high), (rho_low, rho_high), dropped = bootstrap(proxy, target, archs, paired, rng)
        best = archs[int(np.argmin(y))]
        proxy_order = [archs[i] for i in np.argsort(x, kind="stable")]
        seeds = {len(m[a]) for m in (proxy, target) for a in archs}
        rows.append({
            "task": cheap.setting[0], "proxy": measure_name(cheap), "expensive": measure_name(costly),
            "archs": len(archs), "seeds per arch": "-".join(map(str, sorted({min(seeds), max(seeds)}))),
            "kendall_tau": kendalltau(x, y).statistic, "tau_low": tau_low, "tau_high": tau_high,
            "spearman_rho": spearmanr(x, y).statistic, "rho_low": rho_low, "rho_high": rho_high,
            "expensive_best": best, "best_rank_by_proxy": proxy_order.index(best) + 1,
            "proxy_cost": _means(proxy, archs, 1).mean() / _means(target, archs, 1).mean(),
            "resamples_dropped": dropped, "paired": paired,
            "points": json.dumps({a: [round(float(u), 4), round(float(v), 4)] for a, u, v in zip(archs, x, y)}),
        })
    return pd.DataFrame(rows)


def not_compared(runs: pd.DataFrame, records: dict) -> list[str]:
    """Why a task whose runs hold several measures has no fidelity row (see explain_missing)."""
    return explain_missing(collect_measures(runs, records) if not runs.empty else {})


def explain_missing(measures: dict) -> list[str]:
    """One sentence per two settings of a task whose best FIDs share some architectures but fewer than MINIMUM
    (a successive-halving search that promoted two points, say), and per task whose measures share enough but
    show none cheaper: why no fidelity row compares them, and what would."""
    paired = {(p[0].setting, p[1].setting) for p in pairs(measures)} | {(p[1].setting, p[0].setting)
                                                                       for p in pairs(measures)}
    bests = sorted((m for m in measures if m.step is None), key=measure_name)
    lines = []
    for i, a in enumerate(bests):
        for b in bests[i + 1:]:
            shared = sorted(set(measures[a]) & set(measures[b]))
            if a.setting[0] != b.setting[0] or not 0 < len(shared) < MINIMUM or (a.setting, b.setting) in paired:
                continue
            lines.append(f"Task {a.setting[0]}: {measure_name(a)} ({len(measures[a])} architecture(s)) and "
                         f"{measure_name(b)} ({len(measures[b])}) share {len(shared)} ({', '.join(shared)}), fewer "
                         f"than the {MINIMUM} a comparison needs, so neither is compared as the other's proxy. It "
                         f"needs {MINIMUM} or more architectures measured under both: every architecture run at both "
                         f"settings, or, in a successive-halving search, a reduction that promotes {MINIMUM} or more "
                         f"points to the next tier.")
    found = {p[0].setting[0] for p in pairs(measures)}
    for task in sorted({m.setting[0] for m in bests} - found):
        mine = [m for m in measures if m.setting[0] == task]
        if any(len(set(measures[a]) & set(measures[b])) >= MINIMUM for a in bests if a.setting[0] == task
               for b in mine if b != a):  # shared enough, but no measure was cheaper by the records' timings
            lines.append(f"Task {task}: its measures share {MINIMUM} or more architectures, but their records' "
                         f"timings show none cheaper than another (records without timings count as 0 s), so none "
                         f"is a proxy.")
    return lines


NOTE = ("Does a cheap setting rank architectures as the expensive one does? Each row compares a proxy (an earlier "
        "evaluation point, fewer FID samples, fewer steps, another tier) with a setting's best FID over the "
        "architectures both have: Kendall τ and Spearman ρ of their mean FIDs (+1: the same order), each with a 95% "
        "bootstrap interval (architectures drawn with replacement, then each one's seeds, a run's proxy and target "
        "value drawn together where they come from the same runs; the means and τ recomputed each time); "
        "where the expensive setting's best architecture stands in "
        "the proxy's order (1: the proxy's top 1 holds it; k: only its top k does); and the proxy's cost relative "
        "to the expensive run (training to its step plus one evaluation, from the records' timings). With few "
        "architectures the intervals are wide: a τ whose interval includes 0 does not show that the proxy ranks "
        "like the expensive setting. With one seed per architecture the resamples hold no seed noise: such an "
        "interval says only how the order depends on which architectures are compared.")


def display_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    headers = ["proxy", "expensive", "archs", "seeds per arch", "Kendall τ (95% interval)",
               "Spearman ρ (95% interval)", "expensive best", "its rank by the proxy", "top-1 / top-3 recall",
               "proxy cost"]
    rows = []
    for _, r in table.iterrows():
        # top-k recall says something only where the proxy could miss: k below the architectures compared
        recall = " / ".join(("yes" if r["best_rank_by_proxy"] <= k else "no") if k < r["archs"] else "–"
                            for k in (1, 3))
        seeds = r["seeds per arch"] + (" (no seed noise in the intervals)" if r["seeds per arch"] == "1" else "")
        rows.append([r["proxy"], r["expensive"], str(r["archs"]), seeds,
                     f"{r['kendall_tau']:+.2f} ({r['tau_low']:+.2f} to {r['tau_high']:+.2f})",
                     f"{r['spearman_rho']:+.2f} ({r['rho_low']:+.2f} to {r['rho_high']:+.2f})",
                     r["expensive_best"], f"{r['best_rank_by_proxy']} of {r['archs']}", recall,
                     f"{r['proxy_cost']:.2f}×"])
    return headers, rows
