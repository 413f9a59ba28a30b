"""``harness report``'s output folder: ``index.html``, ``leaderboard.md``, ``leaderboard.csv``, ``runs.csv``
and PNG plots, each renderer reading the same model.

The Markdown and CSV files depend only on the records (no dates, sorted rows, fixed number
formats), so the same records give byte-identical files; the page adds when it was generated.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.report import plots, samplers
from harness.report.html import page
from harness.report.markdown import markdown
from harness.report.model import Filters, Report, board_slug, board_title, collect


def build_report(results_dir: str | Path, out: str | Path, filters: Filters | None = None,
                 seed_cv: float | None = None) -> tuple[Report, dict]:
    """Read every record under ``results_dir`` (as ``filters`` select) and write the report into ``out``:
    what ``harness report`` and ``harness.report()`` do; ``seed_cv`` is the seed-to-seed CV assumed for a
    one-seed row with no spread to borrow (labelled "assumed"). Returns the report and its files by name."""
    report = collect(Path(results_dir), filters or Filters(), seed_cv)
    return report, write_report(report, Path(out))


def write_report(report: Report, out: Path) -> dict[str, Path]:
    """All files of the report into ``out``; returns them by name."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"runs.csv": out / "runs.csv", "leaderboard.csv": out / "leaderboard.csv",
             "leaderboard.md": out / "leaderboard.md"}
    runs = report.runs.drop(columns=["settings_key"], errors="ignore")
    runs.to_csv(files["runs.csv"], index=False, float_format="%.6g", lineterminator="\n")
    board_rows = pd.concat(list(report.boards.values()), ignore_index=True) if report.boards else pd.DataFrame()
    board_rows.drop(columns=["settings_key"], errors="ignore").to_csv(
        files["leaderboard.csv"], index=False, float_format="%.6g", lineterminator="\n")
    grid = samplers.grid_rows(report.runs, report.records) if not report.runs.empty else pd.DataFrame()
    if not grid.empty:  # every grid result of every run, the protocol's beside them: one tidy row each
        files["grid.csv"] = out / "grid.csv"
        grid.drop(columns=samplers.HIDDEN).to_csv(files["grid.csv"], index=False, float_format="%.6g",
                                                lineterminator="\n")
    figures = make_figures(report, out)
    files["leaderboard.md"].write_text(markdown(report, figures), encoding="utf-8")
    files["index.html"] = out / "index.html"
    files["index.html"].write_text(page(report, figures), encoding="utf-8")
    files.update({p.name: p for paths in figures.values() for p in paths})
    return files


def make_figures(report: Report, out: Path) -> dict:
    """key -> list of PNG paths (leaderboards by their key, studies by ('study', name))."""
    figures = {}
    seen: dict[tuple[str, str], int] = {}
    for key, board in report.boards.items():
        index = seen[key.task, key.tier] = seen.get((key.task, key.tier), -1) + 1  # 0 for the first board of a tier
        slug, title = board_slug(key, index), board_title(key)
        paths = [plots.forest(board, title, out / f"{slug}-forest.png"),
                 plots.fid_vs_gflops(board, title, out / f"{slug}-fid-vs-gflops.png"),
                 plots.fid_vs_step(board, report.runs, report.records, title, out / f"{slug}-fid-vs-step.png"),
                 plots.loss_curves(board, report.runs, report.records, title, out / f"{slug}-loss.png")]
        grid = plots.sample_grids(board, report.runs, title, out / f"{slug}-samples.png")
        figures[key] = paths + ([grid] if grid else [])
        if key in report.samplers:
            figures["samplers", key] = [plots.fid_vs_sampling_steps(report.samplers[key], title,
                                                                    out / f"{slug}-fid-vs-sampling-steps.png")]
    scatter = plots.fidelity_scatter(report.fidelity, out / "fidelity.png")
    if scatter:
        figures["fidelity"] = [scatter]
    for study in report.studies:
        figures["study", study["name"]] = plots.study_plots(study["study"], study["objectives"],
                                                            out / f"study-{study['name']}")
    return figures
