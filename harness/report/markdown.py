"""The report as Markdown (leaderboard.md): the same boards, notes and tables as the page, as text that
depends only on the records, so the same records give the same file."""
from __future__ import annotations

import json

from harness.report import fidelity, samplers, tables
from harness.report.model import (
    DETAILS,
    PUBLISHED_NOTE,
    READING_NOTE,
    UNREADABLE_NOTE,
    Report,
    board_title,
    display,
    not_quoted_note,
    published_vs_reproduced,
    quoted_rows,
    sweeps_table,
    unfinished,
)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers)] + [line(row) for row in rows])


def markdown(report: Report, figures: dict) -> str:
    parts = ["# Leaderboard", "", READING_NOTE, ""]
    for key, board in report.boards.items():
        headers, rows, _ = display(board)
        rows += quoted_rows(board, key.tier)
        figures_of = figures.get(key, [])
        parts += [f"## {board_title(key)}", "", f"Conditions: {key.conditions}.", "", markdown_table(headers, rows), ""]
        parts += [f"![{p.name}]({p.name})" for p in figures_of[:1]] + [""]  # the forest plot
        parts += [line for line in (tables.top_gap(board), not_quoted_note(board, key.tier)) if line]
        refs = published_vs_reproduced(board, key.tier)
        if not refs.empty:
            parts += ["", PUBLISHED_NOTE, "", markdown_table(list(refs.columns), refs.astype(str).values.tolist())]
        headers, rows, _ = display(board, DETAILS)
        parts += ["", "Details:", "", markdown_table(headers, rows), ""]
        parts += [f"![{p.name}]({p.name})" for p in figures_of[1:]] + [""]
        view = report.samplers.get(key)
        if view is not None:
            parts += ["### Samplers and step counts", "", samplers.NOTE, "",
                      markdown_table(*samplers.display_rows(view)), "", markdown_table(*samplers.agreement_rows(view)),
                      ""] + [f"![{p.name}]({p.name})" for p in figures.get(("samplers", key), [])] + [""]
    others = unfinished(report.runs, report.studies)
    if not others.empty:
        parts += ["## Runs not in the leaderboards", "", markdown_table(list(others.columns),
                                                                         others.astype(str).values.tolist()), ""]
    if report.unreadable:
        parts += ["## Files that could not be read", "", UNREADABLE_NOTE, "",
                  markdown_table(["file", "why"], [[u["path"], u["reason"]] for u in report.unreadable]), ""]
    if not report.fidelity.empty or report.fidelity_missing:
        parts += ["## Proxy fidelity", "", fidelity.NOTE, ""]
        if not report.fidelity.empty:
            parts += [markdown_table(*fidelity.display_rows(report.fidelity)), ""]
        parts += [line + "\n" for line in report.fidelity_missing]
        parts += [f"![{p.name}]({p.name})" for p in figures.get("fidelity", [])] + [""]
    for study in report.studies:
        parts += [f"## Study {study['name']}", "", "```", study["text"], "```", ""]
        parts += [f"![{p.name}]({p.name})" for p in figures.get(("study", study["name"]), [])] + [""]
    sweeps = sweeps_table(report.sweeps)
    if not sweeps.empty:
        parts += ["## Sweeps", "", markdown_table(list(sweeps.columns), sweeps.astype(str).values.tolist()), ""]
    parts += ["## Provenance", "", "```", json.dumps(report.provenance, indent=2), "```", ""]
    return "\n".join(parts)
