"""The report as one static page: no script, no CDN, images as files beside it, so it opens from
the file system offline. Written by hand (html.escape) rather than with pandas' Styler because a
cell holds composite text ("312.4 ± 3.1") whose best value is decided on the number behind it."""
from __future__ import annotations

import json
from html import escape

import pandas as pd

from harness.files import now
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

STYLE = """
body { font: 14px/1.45 "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1500px; color: #222; }
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 10px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; } td:nth-child(2), th:nth-child(2), td:nth-child(3), th:nth-child(3) { text-align: left; }
td.best { font-weight: bold; background: #e3f4e6; }
tr.quoted td { color: #666; font-style: italic; }
.note { background: #fafaf2; border-left: 4px solid #c9b458; padding: 8px 12px; max-width: 1100px; }
.warning { background: #fdf0ef; border-left: 4px solid #d9534f; padding: 8px 12px; max-width: 1100px; }
figure { display: inline-block; margin: 6px 12px 6px 0; } figure img { max-width: 640px; border: 1px solid #eee; }
.scroll { overflow-x: auto; }
table.compact td:nth-child(5) { white-space: normal; min-width: 220px; max-width: 360px; text-align: left; }
table.compact td:nth-child(1) { text-align: center; }
details { margin: 6px 0 14px; } summary { cursor: pointer; color: #345; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; font-size: 12px; }
"""


def table(headers: list[str], rows: list[list[str]], best: set = frozenset(),
          row_class: list[str] | None = None, css: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        cells = "".join(f'<td class="best">{escape(c)}</td>' if (i, j) in best else f"<td>{escape(c)}</td>"
                        for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return (f'<div class="scroll"><table class="{css}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def frame(df: pd.DataFrame) -> str:
    return table(list(map(str, df.columns)), df.astype(str).values.tolist())


def figures_html(paths) -> str:
    return "".join(f'<figure><img src="{escape(p.name)}" alt="{escape(p.stem)}"></figure>' for p in paths)


def page(report: Report, figures: dict) -> str:
    parts = [f"<h1>Leaderboard</h1><p>Generated {escape(now())} by <code>python -m harness report</code> from "
             f"{len(report.runs)} run record(s), {len(report.sweeps)} sweep manifest(s) and {len(report.studies)} "
             f"study(ies).</p>", f'<p class="note">{escape(READING_NOTE)}</p>']
    for warning in report.provenance.get("warnings", []):
        parts.append(f'<p class="warning">{escape(warning)}</p>')
    for key, board in report.boards.items():
        headers, rows, best = display(board)
        quoted = quoted_rows(board, key.tier)
        figures_of = figures.get(key, [])
        parts += [f"<h2>{escape(board_title(key))}</h2>", f"<p>Conditions: {escape(key.conditions)}.</p>",
                  table(headers, rows + quoted, best, row_class=[""] * len(rows) + ["quoted"] * len(quoted),
                        css="compact"),
                  figures_html(figures_of[:1])]  # the forest plot
        parts += [f'<p class="note">{escape(line)}</p>' for line in (tables.top_gap(board),
                                                                      not_quoted_note(board, key.tier)) if line]
        refs = published_vs_reproduced(board, key.tier)
        if not refs.empty:
            parts += [f"<p>{escape(PUBLISHED_NOTE)}</p>", table(list(refs.columns), refs.values.tolist(),
                                                               row_class=["quoted"] * len(refs))]
        headers, rows, best = display(board, DETAILS)
        parts += ["<details><summary>Details: per-seed noise and its split, every gap's test, all measurements"
                  "</summary>", table(headers, rows, best), "</details>", figures_html(figures_of[1:])]
        view = report.samplers.get(key)
        if view is not None:
            parts += ["<h3>Samplers and step counts</h3>", f"<p>{escape(samplers.NOTE)}</p>",
                      table(*samplers.display_rows(view)), table(*samplers.agreement_rows(view)),
                      figures_html(figures.get(("samplers", key), []))]
    others = unfinished(report.runs, report.studies)
    if not others.empty:
        parts += ["<h2>Runs not in the leaderboards</h2><p>Failed, unfinished or interrupted runs (with "
                  "<code>--include-incomplete</code>, unfinished ones with an evaluation count in the tables).</p>",
                  frame(others)]
    if report.unreadable:
        parts += ["<h2>Files that could not be read</h2>", f"<p>{escape(UNREADABLE_NOTE)}</p>",
                  table(["file", "why"], [[u["path"], u["reason"]] for u in report.unreadable])]
    if not report.fidelity.empty or report.fidelity_missing:
        parts += ["<h2>Proxy fidelity</h2>", f"<p>{escape(fidelity.NOTE)}</p>"]
        if not report.fidelity.empty:
            parts.append(table(*fidelity.display_rows(report.fidelity)))
        parts += [f'<p class="note">{escape(line)}</p>' for line in report.fidelity_missing]
        parts.append(figures_html(figures.get("fidelity", [])))
    for study in report.studies:
        parts += [f"<h2>Study {escape(study['name'])}</h2><p>Storage <code>{escape(study['storage'])}</code></p>",
                  f"<pre>{escape(study['text'])}</pre>", figures_html(figures.get(("study", study["name"]), []))]
    sweeps = sweeps_table(report.sweeps)
    if not sweeps.empty:
        parts += ["<h2>Sweeps</h2>", frame(sweeps)]
    parts += ["<h2>Provenance</h2>", f"<pre>{escape(json.dumps(report.provenance, indent=2))}</pre>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Leaderboard</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
