"""The sampler grid in the report: does a board's ranking hold under other samplers and step counts?

For each board whose runs hold a sampler grid (docs/samplers.md), every grid point is compared at the same
weights: the runs' last evaluation, where the protocol's DDIM (the point ``ddim:<steps>``, its headline sampler)
and each grid pair sampled the same seeds. A grid point is one (sampler, steps) with one set of scheduler
arguments; runs whose arguments differ give two points (``dpmpp_2m:10 #2``), never one average. For each point:

- each architecture's mean FID over its seeds and its rank there, as the leaderboard ranks (harness/report/
  noise.py: each row's seed noise, every pair tested under Holm's correction, a range where a row is tied:
  "1–2"), so that two architectures a point cannot tell apart are never shown in an order;
- Kendall tau between the protocol's ranking and the point's, with the 95% two-level bootstrap interval the
  proxy-fidelity table uses (architectures drawn with replacement, then each one's seeds, a run's two values
  drawn together: they are the same runs), harness/report/fidelity.py;
- per sampler with two step counts or more, the area under FID against log10(steps), divided by the log-range
  (a mean FID over the steps, each decade weighted alike: how good a backbone is across the step counts, its
  level and its losses together), and what it loses at the fewest steps (FID at the fewest minus FID at the
  most: lower is a backbone that loses less when sampled fast).

The headline leaderboard stays the protocol's (best FID of DDIM at the task's steps); this view is beside it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.report import fidelity, noise

GRID_COLUMNS = ["task", "tier", "arch", "seed", "step", "point", "sampler", "steps", "fid", "fid_std", "kid",
                "precision", "recall", "density", "coverage", "manifold_k", "manifold_rows", "added_after_training",
                "record"]
SCORES = GRID_COLUMNS[GRID_COLUMNS.index("fid"):GRID_COLUMNS.index("added_after_training")]
HIDDEN = ["arguments", "stream", "last", "arch_sha256"]  # what the view needs that grid.csv leaves out


@dataclass
class SamplerView:
    points: list[str]  # grid points in order: by sampler (the protocol's first), then steps
    fids: pd.DataFrame  # arch x point: mean FID over seeds
    ranks: pd.DataFrame  # arch x point: its rank there as the leaderboard ranks ("1", "1–2"; "?" without noise)
    agreement: pd.DataFrame  # one row per point: Kendall tau with the protocol's ranking and its interval
    areas: pd.DataFrame  # arch x (sampler, measure): mean FID over log-steps, and the loss at the fewest steps
    seeds: dict  # point -> arch -> seed -> FID


def grid_rows(runs: pd.DataFrame, records: dict) -> pd.DataFrame:
    """Every grid result of every run (and the protocol's DDIM at the same evaluations): the tidy grid.csv."""
    rows = []
    for _, run in runs.iterrows():
        record = records[run["record"]]
        sampling = (record.get("config") or {}).get("sampling") or {}
        evaluations = record.get("evaluations") or []
        last = max((e["step"] for e in evaluations), default=None)
        for e in evaluations:
            if not e.get("samplers"):
                continue
            protocol = f"{sampling.get('sampler', 'ddim')}:{sampling.get('steps')}"
            entries = [(protocol, "protocol", e)] + [(k, _arguments_id(v), v) for k, v in e["samplers"].items()]
            for key, arguments, got in entries:
                sampler, _, steps = key.partition(":")
                rows.append({"task": run["task"], "tier": run["tier"], "arch": run["arch"], "seed": run["seed"],
                             "step": e["step"], "point": key, "arguments": arguments, "sampler": sampler,
                             "steps": int(steps), **{c: got.get(c) for c in SCORES},
                             "added_after_training": bool(got.get("added_after_training")),
                             "record": run["record"], "stream": run.get("stream"), "last": e["step"] == last,
                             "arch_sha256": run.get("arch_sha256")})
    return pd.DataFrame(rows, columns=GRID_COLUMNS + HIDDEN)


def _arguments_id(result: dict) -> str:
    arguments = json.dumps((result.get("sampler") or {}).get("arguments"), sort_keys=True)
    return hashlib.sha256(arguments.encode()).hexdigest()[:12]


def sampler_view(board_runs: pd.DataFrame, records: dict, seed_cv: float | None = None) -> SamplerView | None:
    """The view for one board's runs: each run's last evaluation, where it has a grid; None where none has.
    Two versions of one architecture on a board are named by their file's hash, as on the leaderboard."""
    rows = grid_rows(board_runs, records)
    rows = rows[rows["last"].astype(bool)].copy() if not rows.empty else rows
    if rows.empty:
        return None
    versions = rows.groupby("arch")["arch_sha256"].transform("nunique")
    rows["arch"] = [a if n <= 1 else f"{a} ({str(sha)[:8]})"
                    for a, sha, n in zip(rows["arch"], rows["arch_sha256"], versions)]
    named = _point_names(rows)
    rows["point"] = [named[(p, a)] for p, a in zip(rows["point"], rows["arguments"])]
    protocol = rows.loc[rows["arguments"] == "protocol", "point"].iloc[0]
    order = sorted(set(rows["point"]), key=lambda p: (p != protocol, *_sort_key(p)))
    seeds = {p: {a: {int(s): float(f) for s, f in zip(g["seed"], g["fid"])} for a, g in by.groupby("arch")}
             for p, by in rows.groupby("point")}
    fids = rows.pivot_table(index="arch", columns="point", values="fid", aggfunc="mean")[order]
    fids = fids.sort_values(protocol, kind="stable")
    ranks = pd.DataFrame({point: _ranks(rows[rows["point"] == point], seed_cv) for point in order}, index=fids.index)
    return SamplerView(order, fids, ranks, _agreement(seeds, order, protocol), _areas(fids), seeds)


def _ranks(at: pd.DataFrame, seed_cv: float | None) -> dict[str, str]:
    """arch -> its rank at one point, judged as a leaderboard is (seed noise, the FIDs' sampling noise, Holm)."""
    rows = []
    for arch, g in at.groupby("arch"):
        stds = g["fid_std"].dropna()
        rows.append(noise.Row(arch, {int(s): float(f) for s, f in zip(g["seed"], g["fid"])},
                              {int(s): st for s, st in zip(g["seed"], g["stream"])},
                              float(stds.mean()) if len(stds) else None))
    rows.sort(key=lambda r: (r.mean, r.name))
    judged = noise.judge(rows, seed_cv)
    return {r.name: "?" if n.source == "unknown" and len(rows) > 1 else v.rank_text
            for r, n, v in zip(rows, judged.noises, judged.verdicts)}


def _point_names(rows: pd.DataFrame) -> dict:
    """(key, arguments id) -> its name: the key for the set of arguments most runs used, ``key #2`` for the next."""
    named = {}
    for key, g in rows.groupby("point", sort=True):
        counts = g["arguments"].value_counts()
        for i, arguments in enumerate(sorted(counts.index, key=lambda a: (-counts[a], a))):
            named[key, arguments] = key if i == 0 else f"{key} #{i + 1}"
    return named


def _sort_key(point: str) -> tuple:
    sampler, _, rest = point.partition(":")
    steps, _, suffix = rest.partition(" ")
    return sampler, int(steps), suffix


def _agreement(seeds: dict, order: list[str], protocol: str) -> pd.DataFrame:
    """Kendall tau of each point's ranking with the protocol's, over the architectures both have, with the
    proxy-fidelity bootstrap's interval (paired: the same runs)."""
    from scipy.stats import kendalltau

    rows = []
    target = seeds[protocol]
    for point in order[1:]:
        archs = sorted(a for a in seeds[point] if a in target and set(seeds[point][a]) & set(target[a]))
        if len(archs) < fidelity.MINIMUM:
            rows.append({"point": point, "archs": len(archs), "kendall_tau": np.nan, "tau_low": np.nan,
                         "tau_high": np.nan})
            continue
        common = {a: sorted(set(seeds[point][a]) & set(target[a])) for a in archs}
        cheap = {a: {s: (seeds[point][a][s], 0.0) for s in common[a]} for a in archs}
        costly = {a: {s: (target[a][s], 0.0) for s in common[a]} for a in archs}
        x = [np.mean([v[0] for v in cheap[a].values()]) for a in archs]
        y = [np.mean([v[0] for v in costly[a].values()]) for a in archs]
        (low, high), _, dropped = fidelity.bootstrap(cheap, costly, archs, True,
                                                     np.random.default_rng(fidelity.BOOTSTRAP_SEED))
        rows.append({"point": point, "archs": len(archs), "kendall_tau": kendalltau(x, y).statistic,
                     "tau_low": low, "tau_high": high, "resamples_dropped": dropped})
    return pd.DataFrame(rows)


def _areas(fids: pd.DataFrame) -> pd.DataFrame:
    """arch x (sampler, measure): the trapezoid area under mean FID against log10(steps) over the log-range
    ("mean"), and FID at the fewest steps minus FID at the most ("loss")."""
    out = {}
    for sampler in sorted({p.partition(":")[0] for p in fids.columns if " #" not in p}):
        points = sorted((p for p in fids.columns if p.startswith(sampler + ":") and " #" not in p), key=_sort_key)
        if len(points) < 2:
            continue
        x = np.log10([_sort_key(p)[1] for p in points])
        span = f"{sampler} {_sort_key(points[0])[1]}-{_sort_key(points[-1])[1]} steps"
        out[f"{span}: mean"] = [np.trapezoid(fids.loc[a, points].to_numpy(float), x) / (x[-1] - x[0])
                                for a in fids.index]
        out[f"{span}: loss"] = [fids.loc[a, points[0]] - fids.loc[a, points[-1]] for a in fids.index]
    return pd.DataFrame(out, index=fids.index)


NOTE = ("Does the ranking hold under other samplers and step counts? Every point is measured at the same weights "
        "(each run's last evaluation) from the same per-sample noise; a cell is the mean FID over seeds and, in "
        "brackets, the architecture's rank there as the leaderboard ranks (a range where the point cannot separate "
        "it from others; ? where no seed spread is known). Kendall τ compares each point's ranking with the "
        "protocol's sampler at the same weights (+1: the same order), with a 95% bootstrap interval (architectures, "
        "then each one's seeds, drawn with replacement). Per sampler with several step counts, \"mean\" is the "
        "area under FID against log-steps over the log-range (a mean FID across the step counts: level and losses "
        "together) and \"loss\" is FID at the fewest steps minus FID at the most (lower loses less when sampled "
        "fast). The leaderboard above is the protocol's.")


def display_rows(view: SamplerView) -> tuple[list[str], list[list[str]]]:
    headers = ["arch", *view.points, *view.areas.columns]
    rows = [[arch, *(f"{view.fids.loc[arch, p]:.2f} ({view.ranks.loc[arch, p]})" if pd.notna(view.fids.loc[arch, p])
                     else "–" for p in view.points),
             *(f"{v:.2f}" for v in view.areas.loc[arch])] for arch in view.fids.index]
    return headers, rows


def agreement_rows(view: SamplerView) -> tuple[list[str], list[list[str]]]:
    headers = ["point", "against", "archs", "Kendall τ (95% interval)"]
    rows = [[r["point"], view.points[0], str(r["archs"]),
             "–" if pd.isna(r["kendall_tau"]) else
             f"{r['kendall_tau']:+.2f} ({r['tau_low']:+.2f} to {r['tau_high']:+.2f})"]
            for _, r in view.agreement.iterrows()]
    return headers, rows
