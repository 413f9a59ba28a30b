"""``harness report``: leaderboards (HTML, Markdown, CSV) and plots from records, sweeps and studies."""
from __future__ import annotations

import sys

from harness.cli.options import RAW, comma_list, fraction


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="leaderboards (HTML, Markdown, CSV) and plots from the run records, sweeps and studies",
        formatter_class=RAW,
        description="Read every run record, sweep manifest and Optuna study under the results folder and write a "
                    "static page (index.html, opens offline from the file system), leaderboard.md, leaderboard.csv "
                    "(one row per group), runs.csv (one row per run) and PNG plots. A group is (task, task version, "
                    "tier, architecture file, the settings that change a result): runs with --steps/--fid-samples/"
                    "--set overrides are their own groups. Failed and unfinished runs are listed, never dropped.",
        epilog="examples:\n  python -m harness report\n"
               "  python -m harness report --task shapes --tier smoke --name shapes-smoke\n"
               "  python -m harness report --results-dir /shared/results --out /shared/reports/today\n"
               "  python -m harness report --seed-cv 2%   # one-seed rows: assume a 2% seed-to-seed CV",
    )
    p.add_argument("--results-dir", default="results", help="where the records are (default: results)")
    p.add_argument("--name", default="leaderboard",
                   help="report name: written to reports/<name> (default: leaderboard)")
    p.add_argument("--out", help="output folder (default: reports/<name>)")
    p.add_argument("--task", help="only these tasks (comma list)")
    p.add_argument("--tier", help="only these tiers (comma list)")
    p.add_argument("--arch", help="only these architectures (comma list)")
    p.add_argument("--include-incomplete", action="store_true",
                   help="also average running or interrupted runs that have an evaluation (their best FID so far)")
    p.add_argument("--seed-cv", metavar="CV",
                   help="seed-to-seed CV of best FID to assume for a one-seed row when no row of its table has "
                        "several seeds to borrow the spread from, e.g. 2%% (the literature measures 1-2%%); every "
                        "interval and rank that uses it says 'assumed'. Without it such rows are not ranked apart")


def execute(args) -> int:
    from pathlib import Path

    from harness.report.model import Filters
    from harness.report.write import build_report

    filters = Filters(task=comma_list(args.task, "task") if args.task else [],
                      tier=comma_list(args.tier, "tier") if args.tier else [],
                      arch=comma_list(args.arch, "arch") if args.arch else [],
                      include_incomplete=args.include_incomplete)
    out = Path(args.out) if args.out else Path("reports") / args.name
    seed_cv = fraction(args.seed_cv, "seed-cv") if args.seed_cv else None
    report, files = build_report(args.results_dir, out, filters, seed_cv)
    for damaged in report.unreadable:
        print(f"warning: {damaged['path']} {damaged['reason']}; it is listed in the report, and what it holds is "
              f"missing from it.", file=sys.stderr)
    print(f"{len(report.runs)} runs in {len(report.boards)} leaderboard(s), {len(report.studies)} study(ies). "
          f"Wrote {out}/: index.html, leaderboard.md, leaderboard.csv, runs.csv and {len(files) - 4} plot(s). "
          f"Open {(out / 'index.html').resolve().as_uri()}")
    return 0
