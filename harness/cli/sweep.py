"""``harness sweep``: archs x tiers x seeds as runs on Ray, resumable; a summary table at the end."""
from __future__ import annotations

import json
import sys

from harness.cli.estimate import before_study, estimate_text
from harness.cli.options import RAW, add_pool_options, add_run_options, add_trust_option, comma_list, overrides
from harness.run.signals import interrupt_exit_code


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep", help="many runs (archs x tiers x seeds) on Ray: local GPUs/CPUs or a cluster; resumable",
        formatter_class=RAW,
        description="Run the cross product of --arch x --tier x --seed (comma lists), each cell exactly the run "
                    "`run` makes with the same flags (same folder, record and checkpoint), as Ray tasks: on a "
                    "private Ray instance on this machine by default, or on a cluster with --address. Completed "
                    "cells with the same settings are skipped and partial ones resume, so re-running the same "
                    "command after any crash continues the sweep. A worker or node that dies is retried from the "
                    "run's checkpoint; a run that fails by itself (broken file, non-finite loss, out of memory) is "
                    "not retried, and the sweep exits 1 naming it. Ctrl-C stops every run with a checkpoint.",
        epilog="examples:\n"
               "  python -m harness sweep --task shapes --arch standard,no_attn --tier smoke --seed 42,43\n"
               "  python -m harness sweep --arch all --tier small,medium,large --seed 42,43,44 --dry-run\n"
               "  python -m harness sweep --arch standard,full_attn --tier small --address auto "
               "--results-dir /shared/results",
    )
    p.add_argument("--arch", required=True, help="comma list of architecture names or paths, or `all`")
    p.add_argument("--tier", required=True, help="comma list of tiers (smoke, small, medium, large)")
    p.add_argument("--seed", help="comma list of seeds (default: the task's, 42)")
    add_run_options(p)
    add_pool_options(p, "run")
    add_trust_option(p, "each run's")
    p.add_argument("--dry-run", action="store_true", help="print the cells, which are skipped or resumed, the "
                                                          "resources asked for and the estimate; start no run")
    p.add_argument("--no-estimate", action="store_true", help="with --dry-run: do not measure what the cells will "
                                                             "cost (by default the dry run times seconds of bursts "
                                                             "on this machine and prints `estimate`'s prediction)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON (progress goes to stderr)")


def _print_sweep_summary(manifest: dict, out) -> None:
    import pandas as pd

    rows = [{"arch": c["arch"], "tier": c["tier"], "seed": c["seed"], "status": c["status"],
             "best FID": c.get("best_fid"), "at step": c.get("best_step"),
             "wall s": c.get("wall_seconds"), "node": c.get("node", "")} for c in manifest["cells"]]
    table = pd.DataFrame(rows).to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.2f}")
    print(f"\nSweep {manifest['sweep']} (manifest: {manifest['results_dir']}/sweeps/{manifest['sweep']}.json)\n{table}",
          file=out)


def _estimate(sweep, args, allocation: dict) -> dict:
    """What the cells left to run will cost, in queue order (harness/cli/estimate.py before_study)."""
    left = [(c.arch_ref, c.tier, (c.resume_step or 0) if c.action == "resume" else 0)
            for c in sweep.cells if c.action in ("run", "resume")]
    if not left:
        return {"skipped": "every cell is done or locked"}
    return before_study(args.task, allocation, overrides(args), args.data_dir, left)


def execute(args) -> int:
    from harness.cluster.resources import processes_note
    from harness.studies.sweep import FINAL, Sweep, SweepSpec

    seeds = comma_list(args.seed, "seed", int) if args.seed else [None]
    spec = SweepSpec(args.task, comma_list(args.arch, "arch"), comma_list(args.tier, "tier"), seeds,
                     results_dir=args.results_dir, overrides=overrides(args), data_dir=args.data_dir,
                     device=args.device)
    out = sys.stderr if args.json else sys.stdout
    sweep = Sweep(spec, address=args.address, gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run,
                  devices=args.devices, max_parallel=args.max_parallel, max_retries=args.max_retries,
                  progress=not args.no_progress, stream=out)
    if args.dry_run:
        plan = sweep.dry_run()
        if not args.no_estimate:
            plan["estimate"] = _estimate(sweep, args, plan["allocation"])
        if args.json:
            print(json.dumps(plan, indent=2))
            return 0
        alloc, res = plan["allocation"], plan["resources"]
        print(f"Sweep {plan['sweep']} ({len(plan['cells'])} cells); manifest {plan['manifest']}")
        print(f"Resources: {res['nodes']} node(s), {res['cpus']:g} CPUs, {res['gpus']:g} GPUs. Each run asks for "
              f"{alloc['gpus_per_run']:g} GPU(s) and {alloc['cpus_per_run']:g} CPU(s){processes_note(alloc)} "
              f"({alloc['torch_threads_per_run']} torch threads), on {alloc['device_type']}; up to "
              f"{alloc['max_parallel']} at once.")
        for cell in plan["cells"]:
            what = {"run": "run from step 0", "skip": f"skip: completed ({cell.get('step')} steps, same settings)",
                    "resume": f"resume from its checkpoint (step {cell.get('resume_step', '?')})",
                    "locked": f"locked: {cell.get('message', '')}"}[cell["action"]]
            print(f"  {cell['key']:<36} {what}")
        if "estimate" in plan:
            estimate = plan["estimate"]
            print(estimate_text(estimate) if "runs" in estimate else f"No estimate: {estimate['skipped']}.")
        return 0
    if args.trust_checkpoint:  # here, before any worker reads one
        from harness.run import checkpoints

        for cell in sweep.cells:
            checkpoints.trust(cell.folder, lambda line: print(line, file=out))
    try:
        manifest = sweep.execute()
    except KeyboardInterrupt as interrupt:
        print(f"Sweep stopped. Run the same command to continue it: every run resumes from its last checkpoint "
              f"(manifest: {sweep.manifest_path}).", file=sys.stderr)
        return interrupt_exit_code(interrupt)
    _print_sweep_summary(manifest, out)
    if args.json:
        print(json.dumps(manifest, indent=2))
    unfinished = [c for c in manifest["cells"] if c["status"] not in FINAL]
    for cell in unfinished:
        print(f"{cell['status']}: {cell['key']}: {cell.get('message', '')} (log: {cell['log']})", file=sys.stderr)
    if unfinished:
        print(f"{len(unfinished)} of {len(manifest['cells'])} runs did not complete (above). Fix what they say and run "
              f"the same command again: completed runs are skipped.", file=sys.stderr)
    return 1 if unfinished else 0
