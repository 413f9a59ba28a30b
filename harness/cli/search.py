"""``harness search``: an Optuna study whose trials are runs on Ray; ``--status`` prints its best trials."""
from __future__ import annotations

import json
import sys

from harness.cli.options import RAW, add_pool_options, add_run_options, overrides
from harness.run.signals import interrupt_exit_code


def add_parser(sub) -> None:
    p = sub.add_parser(
        "search", help="architecture search with Optuna (attention placement, depth, ...); trials are runs on Ray",
        formatter_class=RAW,
        description="Search a space of U-Nets (default: self-attention at each resolution and in the mid-block, "
                    "layers per block, channels per head, GroupNorm groups, time conditioning, resampling) for the "
                    "best FID, or the FID-vs-compute Pareto front. Each trial is a normal run (same protocol, record "
                    "and checkpoint) executed on Ray like sweep cells; the study is kept in Optuna storage "
                    "(default RESULTS_DIR/studies/<study>.db) and the same command continues it after any crash. "
                    "The baselines standard, full_attn and no_attn are the first trials.\n\n"
                    "successive halving: --tier smoke,small,medium runs --trials points at the first tier and promotes "
                    "the best 1/--reduction of each tier's finished points to the next as new runs of the same "
                    "architecture files, each as soon as it ranks there (ASHA), with one study per tier in the same "
                    "storage (<study>, <study>.small, <study>.medium). Two objectives promote by non-dominated rank. "
                    "A one-tier study given more tiers promotes its finished trials.\n\n"
                    "objectives, samplers, pruners: one objective (fid) takes any sampler (default tpe) and pruner "
                    "(default median: a trial whose FID at an evaluation point is worse than the median there is "
                    "stopped). Two objectives (fid,gflops | fid,params | fid,latency; all minimized) take nsga2 "
                    "(default), tpe or random, and no pruner: Optuna does not prune multi-objective studies.",
        epilog="examples:\n"
               "  python -m harness search --task shapes --tier smoke --trials 8 --steps 200\n"
               "  python -m harness search --tier small --trials 64 --address auto --results-dir /shared/results\n"
               "  python -m harness search --tier small --objectives fid,gflops --trials 64\n"
               "  python -m harness search --tier smoke,small,medium --trials 27 --reduction 3\n"
               "  python -m harness search --tier small --status          # the best trials so far\n"
               "  optuna-dashboard sqlite:///$PWD/results/studies/cifar10-small-fid.db",
    )
    p.add_argument("--tier", required=True, help="width tier the trials run at (smoke, small, medium, large), or "
                                                 "several in order: successive halving across them")
    p.add_argument("--reduction", type=int, default=3, help="with several tiers: each tier promotes the best "
                                                           "1/REDUCTION of its finished points (default: 3)")
    p.add_argument("--trials", type=int, default=64, help="finished trials the study ends with, baselines included "
                                                          "(default: 64; infeasible points do not count); with "
                                                          "several tiers, the first tier's")
    p.add_argument("--study", help="study name (default: <task>-<tier>-<objectives>, e.g. cifar10-small-fid; with "
                                   "several tiers, the first tier's, and <study>.<tier> for the others)")
    p.add_argument("--storage", help="Optuna storage: an RDB URL (sqlite:////abs/study.db, postgresql://...) or a "
                                     "journal file path (default: sqlite:///RESULTS_DIR/studies/<study>.db)")
    p.add_argument("--space", help="search space file (default: harness/search/space.py; see README)")
    p.add_argument("--objectives", default="fid", help="fid (default), fid,gflops, fid,params or fid,latency")
    p.add_argument("--sampler", choices=["tpe", "nsga2", "random"], help="default: tpe (one objective), nsga2 (two)")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"],
                   help="default: median (one objective), none (two: not allowed otherwise)")
    p.add_argument("--seed", type=int, help="the trials' run seed, and the sampler's (default: the task's, 42)")
    add_run_options(p)
    add_pool_options(p, "trial")
    p.add_argument("--status", action="store_true", help="print the study's best trials (or Pareto set), each "
                                                         "tier's with several; run nothing")
    p.add_argument("--no-estimate", action="store_true", help="start without first measuring what the trials will "
                                                             "cost (by default `estimate`'s prediction is printed)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (progress goes to stderr)")


def _estimate_printer(args, out):
    """What the trials left will cost, printed once the search's checks pass: the baselines (its first
    trials) measured here at each tier, on the device type and slots of its allocation; with several
    tiers, each tier's planned trials (its share under successive halving) less those finished."""
    def print_estimate(allocation: dict, left: dict[str, int]) -> None:
        from harness.cli.estimate import before_study, estimate_text

        left = {tier: n for tier, n in left.items() if n > 0}
        if not left:
            return
        runs = [(arch, tier, 0) for tier in left for arch in ("standard", "full_attn", "no_attn")]
        trials = left if "," in args.tier else next(iter(left.values()))  # per tier, named, with several
        estimate = before_study(args.task, allocation, overrides(args), args.data_dir, runs, trials=trials,
                                reduction=args.reduction)
        print(estimate_text(estimate) if "runs" in estimate else f"No estimate: {estimate['skipped']}.", file=out)
    return print_estimate


def execute(args) -> int:
    from harness.search.driver import Search, SearchSpec
    from harness.search.study import rung_summaries, search_result, summary_text

    spec = SearchSpec(task=args.task, tier=args.tier, trials=args.trials, study=args.study, storage=args.storage,
                      space=args.space, objectives=args.objectives, sampler=args.sampler, pruner=args.pruner,
                      seed=args.seed, overrides=overrides(args), results_dir=args.results_dir, data_dir=args.data_dir,
                      device=args.device, reduction=args.reduction)
    out = sys.stderr if args.json else sys.stdout
    search = Search(spec, address=args.address, gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
                    devices=args.devices, max_parallel=args.max_parallel, max_retries=args.max_retries,
                    progress=not args.no_progress, stream=out,
                    before_start=None if args.status or args.no_estimate else _estimate_printer(args, out))
    if not args.status:
        try:
            search.execute()
        except KeyboardInterrupt as interrupt:
            print(f"Search stopped. Run the same command to continue study {search.settings.name}: running trials "
                  f"resume from their checkpoints under the same numbers.", file=sys.stderr)
            return interrupt_exit_code(interrupt)
    if args.json:
        print(json.dumps(search_result(search.url, search.rungs), indent=2, default=str))
        return 0
    rungs = rung_summaries(search.url, search.rungs)
    for result in rungs:
        if len(search.rungs) > 1:
            print(f"\nRung {result['rung']}, tier {result['tier']}:", file=out)
        print(summary_text(result), file=out)
    others = f"; the other tiers' studies: {', '.join(r['study'] for r in rungs[1:])}" if len(rungs) > 1 else ""
    print(f"Storage: {search.url}  (optuna trials --storage {search.url} --study-name {rungs[0]['study']}{others})",
          file=out)
    return 0
