"""``harness export``: a search trial written as an ordinary architecture file."""
from __future__ import annotations

from pathlib import Path

from harness.cli.options import RAW


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a search trial as an ordinary architecture file (architectures/<name>.py)",
        formatter_class=RAW,
        description="Write a trial of a search study as a standalone architecture file: no harness import, the "
                    "chosen values as literals, a docstring naming the study, trial, objective values and date. It "
                    "reads BLOCK_OUT_CHANNELS/LAYERS_PER_BLOCK like every architecture file, so it runs at every tier "
                    "and drops into the MLS-Bench task unchanged.",
        epilog="examples:\n  python -m harness export --study cifar10-small-fid --best --name searched_small\n"
               "  python -m harness export --study cifar10-small-fid-gflops --trial 17",
    )
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="Optuna storage the search used (default: sqlite:///RESULTS_DIR/studies/"
                                     "<study>.db; for a tier's study <study>.<tier>, <study>.db)")
    p.add_argument("--results-dir", default="results", help="for the default storage (default: results)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", action="store_true", help="the best trial (one objective); with two, prints the "
                                                           "Pareto set and asks for --trial")
    which.add_argument("--trial", type=int, help="trial number")
    p.add_argument("--name", help="file name without .py (default: <study>_t<trial>)")
    p.add_argument("--out-dir", help="where to write (default: the architectures folder, see `list`)")
    p.add_argument("--force", action="store_true", help="replace an existing file of that name")
    p.add_argument("--space", help="the space file the search used; needed only for a study made before each trial's "
                                   "choices were stored (a study's own copy of the space's code is never run)")


def execute(args) -> int:
    from harness.protocol import registry
    from harness.search.export import ParetoChoice, export_trial
    from harness.search.study import load_study, open_storage, stored_study_url, summary, summary_text

    url = stored_study_url(args.storage, args.results_dir, args.study)
    study = load_study(args.study, open_storage(url, create=False))
    try:
        exported = export_trial(study, None if args.best else args.trial, args.name,
                                args.out_dir or registry.architectures_dir(), force=args.force,
                                space=args.space and Path(args.space))
    except ParetoChoice:
        print(summary_text(summary(study)))
        raise
    path = exported.path
    if not exported.same_as_file:
        print(f"note: {exported.origin}")
    print(f"Wrote {path}. Run it like any architecture: python -m harness run --arch {path.stem} --tier small"
          + ("" if args.out_dir is None else f" (or --arch {path})"))
    return 0
