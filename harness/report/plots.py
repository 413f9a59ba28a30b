"""The report's figures (matplotlib, Agg): each function writes one PNG and returns its path."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness.report.tables import board_runs  # noqa: E402
from harness.run.folder import GRID_FILE  # noqa: E402

SAVE = {"dpi": 110, "bbox_inches": "tight", "metadata": {"Software": None}}  # no version stamp: stable files


def _title(ax, title: str) -> None:
    ax.set_title(textwrap.fill(title, width=80), fontsize=9)


def _save(fig, path: Path, dpi: int = SAVE["dpi"]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, **{**SAVE, "dpi": dpi})
    plt.close(fig)
    return path


def forest(board: pd.DataFrame, title: str, path: Path) -> Path:
    """Each row's mean best FID with its 95% interval, best at the top; the rows no test separates from the
    best are shaded, and a row with no interval (one seed, spread unknown) is a hollow point."""
    height = 1.1 + 0.32 * len(board)
    fig, ax = plt.subplots(figsize=(6.4, height))
    y = np.arange(len(board))[::-1]  # the best row at the top
    for yi, shade in zip(y, board["with_best"]):
        if shade:
            ax.axhspan(yi - 0.45, yi + 0.45, color="#e3f4e6", zorder=0)
    known = board["ci_low"].notna().to_numpy()
    means = board["best_fid_mean"].to_numpy(float)
    ax.errorbar(means[known], y[known], xerr=[means[known] - board["ci_low"].to_numpy(float)[known],
                                              board["ci_high"].to_numpy(float)[known] - means[known]],
                fmt="o", color="#1f77b4", ecolor="#1f77b4", capsize=3, ms=5, label="mean, 95% interval")
    if (~known).any():
        ax.plot(means[~known], y[~known], "o", mfc="white", color="#1f77b4", ms=5,
                label="1 seed: no interval (rank not established)")
    ax.set_yticks(y, [f"{a}  (rank {r})" for a, r in zip(board["arch"], board["rank_text"])], fontsize=8)
    ax.set_xlabel("best FID, mean over seeds (lower is better)")
    ax.set_ylim(-0.6, len(board) - 0.4)
    _title(ax, title + " — shaded: not separated from the best")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.5 / height - 0.12), ncol=2, frameon=False)
    ax.grid(alpha=0.3, axis="x")
    ax.margins(x=0.08)
    return _save(fig, path)


def fid_vs_gflops(board: pd.DataFrame, title: str, path: Path) -> Path:
    """Mean best FID (± std over seeds) against GFLOPs per image, the Pareto front as a line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.errorbar(board["gflops"], board["best_fid_mean"], yerr=board["best_fid_std"].fillna(0), fmt="o", capsize=3,
                color="#1f77b4", ecolor="#9bbbd8")
    for _, row in board.iterrows():
        ax.annotate(row["arch"], (row["gflops"], row["best_fid_mean"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    front = board[board["pareto"]].sort_values("gflops")
    ax.step(front["gflops"], front["best_fid_mean"], where="post", color="#d62728", lw=1.2, label="Pareto front")
    ax.set_xlabel("GFLOPs per image (one forward pass)")
    ax.set_ylabel("best FID, mean over seeds (lower is better)")
    _title(ax, title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def fid_vs_step(board: pd.DataFrame, runs: pd.DataFrame, records: dict, title: str, path: Path) -> Path:
    """FID at each evaluation point: mean over seeds, and the min-max band."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for arch, g in board_runs(board, runs).groupby("arch", sort=True):
        curves = pd.DataFrame([{"seed": r["seed"], "step": e["step"], "fid": e["fid"]}
                               for _, r in g.iterrows() for e in records[r["record"]].get("evaluations") or []])
        if curves.empty:
            continue
        stats = curves.groupby("step")["fid"].agg(["mean", "min", "max"])
        line, = ax.plot(stats.index, stats["mean"], marker="o", ms=3, label=arch)
        ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel("FID (lower is better)")
    _title(ax, title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def loss_curves(board: pd.DataFrame, runs: pd.DataFrame, records: dict, title: str, path: Path) -> Path:
    """Training loss (mean over each log interval), averaged over seeds."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for arch, g in board_runs(board, runs).groupby("arch", sort=True):
        curves = pd.DataFrame([{"step": s, "loss": loss} for _, r in g.iterrows()
                               for s, loss in records[r["record"]].get("loss_curve") or []])
        if not curves.empty:
            mean = curves.groupby("step")["loss"].mean()
            ax.plot(mean.index, mean.values, lw=1.2, label=arch)
    ax.set_xlabel("training step")
    ax.set_ylabel("epsilon-prediction MSE")
    ax.set_yscale("log")
    _title(ax, title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def sample_grids(board: pd.DataFrame, runs: pd.DataFrame, title: str, path: Path) -> Path | None:
    """The latest sample grid of every architecture (its lowest seed), side by side."""
    grids = []
    for arch in board["arch"]:
        g = board_runs(board[board["arch"] == arch], runs).sort_values("seed")
        for _, r in g.iterrows():
            png = Path(r["record"]).parent / GRID_FILE
            if png.exists():
                grids.append((f"{arch} (seed {r['seed']}, step {r['step']})", png))
                break
    if not grids:
        return None
    columns = min(4, len(grids))
    rows = -(-len(grids) // columns)
    # 3.2 in at 80 dpi: each 256-pixel grid (8 x 32 px) at its own resolution
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.45 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, png) in zip(axes.flat, grids):
        ax.imshow(plt.imread(png), interpolation="nearest")
        ax.set_title(label, fontsize=8)
    fig.suptitle(textwrap.fill(title, width=100), fontsize=9)
    return _save(fig, path, dpi=80)


def study_plots(study, objectives: list[str], stem: Path) -> list[Path]:
    """Optuna's own optimization-history (one objective) or Pareto-front (two) plot."""
    import warnings

    import optuna.visualization.matplotlib as ov

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return []
    with warnings.catch_warnings():  # Optuna marks its matplotlib backend experimental
        warnings.simplefilter("ignore")
        if len(objectives) == 1:
            ax = ov.plot_optimization_history(study, target_name="best FID")
            name = "history"
        else:
            ax = ov.plot_pareto_front(study, target_names=["best FID", objectives[1]])
            name = "pareto"
    fig = ax.figure
    fig.set_size_inches(6.4, 4.2)
    return [_save(fig, stem.with_name(f"{stem.name}-{name}.png"))]




def fidelity_scatter(table: pd.DataFrame, path: Path, limit: int = 12) -> Path | None:
    """Each proxy's mean FID against the expensive setting's, one panel per pair (the first ``limit``),
    an architecture per point: a proxy that ranks alike puts the points in a rising line."""
    import json

    if table.empty:
        return None
    shown = table.head(limit)
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (_, r) in zip(axes.flat, shown.iterrows()):
        points = json.loads(r["points"])
        xs, ys = zip(*points.values())
        ax.scatter(xs, ys, color="#1f77b4")
        for arch, (x, y) in points.items():
            ax.annotate(arch, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xlabel(textwrap.fill(r["proxy"], 45), fontsize=8)
        ax.set_ylabel(textwrap.fill(r["expensive"], 40), fontsize=8)
        ax.set_title(f"τ {r['kendall_tau']:+.2f} ({r['tau_low']:+.2f} to {r['tau_high']:+.2f}), "
                     f"{r['archs']} architectures", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle("Proxy fidelity: mean FID per architecture" + (f" (first {limit} of {len(table)} pairs)"
                                                                if len(table) > limit else ""), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def fid_vs_sampling_steps(view, title: str, path: Path) -> Path:
    """Mean FID over seeds against sampling steps (log axis): one colour per architecture, one line style per
    sampler; the protocol's point is a star."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {}
    protocol = view.points[0]
    for point in view.points:
        styles.setdefault(point.partition(":")[0], ["-", "--", ":", "-."][len(styles) % 4])
    for i, arch in enumerate(view.fids.index):
        colour = f"C{i % 10}"
        for sampler, style in styles.items():
            points = sorted((p for p in view.points if p.startswith(sampler + ":") and " #" not in p),
                            key=lambda p: int(p.partition(":")[2]))
            steps = [int(p.partition(":")[2]) for p in points]
            ax.plot(steps, view.fids.loc[arch, points].to_numpy(float), style, marker="o", ms=3,
                    color=colour, label=f"{arch}, {sampler}")
        ax.plot([int(protocol.partition(":")[2].split()[0])], [view.fids.loc[arch, protocol]], marker="*", ms=9,
                color=colour, linestyle="none")
    ax.set_xscale("log")
    ax.set_xlabel("sampling steps (the star: the protocol's sampler)")
    ax.set_ylabel("FID at the last evaluation (lower is better)")
    _title(ax, title)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)
