"""``python -m harness``: run, list (and the subcommands later issues add).

Every user-facing failure is a HarnessError: it is printed as one paragraph and the command
exits non-zero, with no traceback unless ``--debug`` is given.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
import warnings

from harness.errors import HarnessError

DESCRIPTION = """\
Diffusion architecture benchmark harness: one fixed, versioned CIFAR-10 protocol
(epsilon-prediction MSE, AdamW, EMA, 50-step DDIM, FID with clean-fid) applied to any
architecture file exposing build_model(device), at small/medium/large widths.

examples:
  python -m harness run --task shapes --arch standard --tier smoke   # offline, CPU, < 5 min
  python -m harness run --arch full_attn --tier medium                # the real protocol (GPU)
  python -m harness list --json
  python -m harness sweep --task shapes --arch standard,no_attn --tier smoke --seed 42,43
  python -m harness search --task shapes --tier smoke --trials 8 --steps 200
  python -m harness export --study shapes-smoke-fid --best --name searched\n"""


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run", help="train and evaluate one architecture at one tier",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one architecture under a task's protocol, evaluate FID/KID at the task's evaluation "
                    "points, and write a run record. Re-running the same command resumes from its checkpoint.",
        epilog="example:\n  python -m harness run --task shapes --arch standard --tier smoke\n"
               "  python -m harness run --arch full-attn --tier small --seed 1 --set optimizer.lr=1e-4\n"
               "  python -m harness run --arch standard --tier large --devices 8      # one run on 8 GPUs",
    )
    p.add_argument("--arch", required=True, help="architecture name (see `list`) or a path to a .py file")
    p.add_argument("--tier", required=True, help="width tier: smoke, small, medium, large")
    p.add_argument("--seed", type=int, help="run seed (default: the task's, 42)")
    _add_run_options(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training (same as --set training.compile=true)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start over")


def _add_list(sub) -> None:
    p = sub.add_parser(
        "list", help="architectures with exact parameter counts per tier; tasks; tiers",
        description="List the architectures (with exact parameter counts at every tier of the task), the tasks "
                    "and the tiers.",
        epilog="example:\n  python -m harness list\n  python -m harness list --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", default="cifar10", help="task whose tiers set the widths (default: cifar10)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--gmacs", action="store_true", help="also count MACs of one forward pass (attention included)")


def _add_profile(sub) -> None:
    p = sub.add_parser(
        "profile", help="parameters, MACs (attention included), latency, throughput, memory",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Profile one architecture at one tier (or every one with --all): exact parameters, MACs of one "
                    "forward pass including attention, and measured latency, throughput and peak memory. Results "
                    "are saved under RESULTS_DIR/profiles/<task>/<arch>/<tier>/<device>.json.",
        epilog="examples:\n  python -m harness profile --arch full_attn --tier small\n"
               "  python -m harness profile --all --no-timing          # every architecture x tier, seconds\n"
               "  python -m harness profile --all --device cuda --json",
    )
    p.add_argument("--arch", help="architecture name or path (or --all)")
    p.add_argument("--tier", help="tier (default with --all: every tier)")
    p.add_argument("--all", action="store_true", help="every architecture (x every tier unless --tier is given)")
    p.add_argument("--task", default="cifar10", help="task whose tiers set the widths (default: cifar10)")
    p.add_argument("--batch", type=int, help="batch for the training and throughput timings (default: the tier's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--no-timing", action="store_true", help="parameters and MACs only (no model is run for timing)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--results-dir", default="results", help="where profiles are saved (default: results)")


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench", help="the harness against diffusers' training loop, DDIMPipeline and clean-fid, side by side",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run, in one process on the same model, images and seed: the harness training step against a "
                    "loop written like diffusers' train_unconditional.py; the harness DDIM sampler against "
                    "DDIMPipeline; the harness FID against clean-fid's compute_fid on the same PNGs. Prints "
                    "harness/reference time ratios (below 1: the harness is faster) and how far the outputs differ.",
        epilog="example:\n  python -m harness bench\n  python -m harness bench --device cuda --json\n"
               "  python -m harness bench --sweep          # the sweep's overhead over plain run commands\n"
               "  python -m harness bench --scaling 8      # one run on 8 GPUs against one GPU",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--json", action="store_true", help="print all keys, raw timings, device and versions as JSON")
    p.add_argument("--compile", action="store_true", help="torch.compile the harness model (the bare loop stays eager)")
    p.add_argument("--sweep", action="store_true",
                   help="measure the sweep's overhead instead: 4 shapes smoke runs as one `sweep --max-parallel 1` "
                        "against the same 4 `run` commands one after another (about 20 minutes on a 2-core CPU)")
    p.add_argument("--steps", type=int, help="with --sweep: training steps per run (default: the smoke tier's 120); "
                                             "with --scaling: training steps per side (default: 60)")
    p.add_argument("--scaling", type=int, metavar="N",
                   help="measure data-parallel scaling instead: img/s of one shapes smoke run with N processes over N x "
                        "img/s with one (one per GPU; with --device cpu, N processes sharing the cores)")


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep", help="many runs (archs x tiers x seeds) on Ray: local GPUs/CPUs or a cluster; resumable",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
               "  python -m harness sweep --arch standard,full_attn --tier small --address auto --results-dir /shared/results",
    )
    p.add_argument("--arch", required=True, help="comma list of architecture names or paths, or `all`")
    p.add_argument("--tier", required=True, help="comma list of tiers (smoke, small, medium, large)")
    p.add_argument("--seed", help="comma list of seeds (default: the task's, 42)")
    _add_run_options(p)
    p.add_argument("--address", help="Ray cluster to join: auto (one started with `ray start --head`) or HOST:PORT "
                                     "(default: RAY_ADDRESS, else a private instance on this machine)")
    p.add_argument("--gpus-per-run", type=float, help="GPUs per run (default: 1 where the cluster has GPUs, else 0)")
    p.add_argument("--cpus-per-run", type=float, help="CPUs per run, also its torch threads (default: the node's "
                                                       "CPUs / GPUs per GPU run; all of a node's CPUs on CPUs alone)")
    p.add_argument("--max-parallel", type=int, help="runs at once (default: as many as the cluster's resources hold)")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a run whose worker or node died (default: 3)")
    p.add_argument("--dry-run", action="store_true", help="print the cells, which are skipped or resumed, and the "
                                                          "resources asked for; start nothing")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON (progress goes to stderr)")


def _add_search(sub) -> None:
    p = sub.add_parser(
        "search", help="architecture search with Optuna (attention placement, depth, ...); trials are runs on Ray",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search a space of U-Nets (default: self-attention at each resolution and in the mid-block, "
                    "layers per block, channels per head, GroupNorm groups, time conditioning, resampling) for the "
                    "best FID, or the FID-vs-compute Pareto front. Each trial is a normal run (same protocol, record "
                    "and checkpoint) executed on Ray like sweep cells; the study is kept in Optuna storage "
                    "(default RESULTS_DIR/studies/<study>.db) and the same command continues it after any crash. "
                    "The baselines standard, full_attn and no_attn are the first trials.\n\n"
                    "objectives, samplers, pruners: one objective (fid) takes any sampler (default tpe) and pruner "
                    "(default median: a trial whose FID at an evaluation point is worse than the median there is "
                    "stopped). Two objectives (fid,gflops | fid,params | fid,latency; all minimized) take nsga2 "
                    "(default), tpe or random, and no pruner: Optuna does not prune multi-objective studies.",
        epilog="examples:\n"
               "  python -m harness search --task shapes --tier smoke --trials 8 --steps 200\n"
               "  python -m harness search --tier small --trials 64 --address auto --results-dir /shared/results\n"
               "  python -m harness search --tier small --objectives fid,gflops --trials 64\n"
               "  python -m harness search --tier small --status          # the best trials so far\n"
               "  optuna-dashboard sqlite:///$PWD/results/studies/cifar10-small-fid.db",
    )
    p.add_argument("--tier", required=True, help="width tier the trials run at (smoke, small, medium, large)")
    p.add_argument("--trials", type=int, default=64, help="finished trials the study ends with, baselines included "
                                                          "(default: 64; infeasible points do not count)")
    p.add_argument("--study", help="study name (default: <task>-<tier>-<objectives>, e.g. cifar10-small-fid)")
    p.add_argument("--storage", help="Optuna storage: an RDB URL (sqlite:////abs/study.db, postgresql://...) or a "
                                     "journal file path (default: sqlite:///RESULTS_DIR/studies/<study>.db)")
    p.add_argument("--space", help="search space file (default: harness/search/space.py; see README)")
    p.add_argument("--objectives", default="fid", help="fid (default), fid,gflops, fid,params or fid,latency")
    p.add_argument("--sampler", choices=["tpe", "nsga2", "random"], help="default: tpe (one objective), nsga2 (two)")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"],
                   help="default: median (one objective), none (two: not allowed otherwise)")
    p.add_argument("--seed", type=int, help="the trials' run seed, and the sampler's (default: the task's, 42)")
    _add_run_options(p)
    p.add_argument("--address", help="Ray cluster to join: auto or HOST:PORT (default: RAY_ADDRESS, else a private "
                                     "instance on this machine)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (default: 1 where the cluster has GPUs, else 0)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial, also its torch threads (default as in sweep)")
    p.add_argument("--max-parallel", type=int, help="trials at once (default: as many as the resources hold)")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a trial whose worker or node died (default: 3)")
    p.add_argument("--status", action="store_true", help="print the study's best trials (or Pareto set); run nothing")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (progress goes to stderr)")


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="write a search trial as an ordinary architecture file (architectures/<name>.py)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a trial of a search study as a standalone architecture file: no harness import, the "
                    "chosen values as literals, a docstring naming the study, trial, objective values and date. It "
                    "reads BLOCK_OUT_CHANNELS/LAYERS_PER_BLOCK like every architecture file, so it runs at every tier "
                    "and drops into the MLS-Bench task unchanged.",
        epilog="examples:\n  python -m harness export --study cifar10-small-fid --best --name searched_small\n"
               "  python -m harness export --study cifar10-small-fid-gflops --trial 17",
    )
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="Optuna storage the search used (default: sqlite:///RESULTS_DIR/studies/<study>.db)")
    p.add_argument("--results-dir", default="results", help="for the default storage (default: results)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", action="store_true", help="the best trial (one objective); with two, prints the "
                                                           "Pareto set and asks for --trial")
    which.add_argument("--trial", type=int, help="trial number")
    p.add_argument("--name", help="file name without .py (default: <study>_t<trial>)")
    p.add_argument("--out-dir", help="where to write (default: the architectures folder, see `list`)")
    p.add_argument("--force", action="store_true", help="replace an existing file of that name")


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="leaderboards (HTML, Markdown, CSV) and plots from the run records, sweeps and studies",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read every run record, sweep manifest and Optuna study under the results folder and write a "
                    "static page (index.html, opens offline from the file system), leaderboard.md, leaderboard.csv "
                    "(one row per group), runs.csv (one row per run) and PNG plots. A group is (task, task version, "
                    "tier, architecture file, the settings that change a result): runs with --steps/--fid-samples/"
                    "--set overrides are their own groups. Failed and unfinished runs are listed, never dropped.",
        epilog="examples:\n  python -m harness report\n"
               "  python -m harness report --task shapes --tier smoke --name shapes-smoke\n"
               "  python -m harness report --results-dir /shared/results --out /shared/reports/today",
    )
    p.add_argument("--results-dir", default="results", help="where the records are (default: results)")
    p.add_argument("--name", default="leaderboard", help="report name: written to reports/<name> (default: leaderboard)")
    p.add_argument("--out", help="output folder (default: reports/<name>)")
    p.add_argument("--task", help="only these tasks (comma list)")
    p.add_argument("--tier", help="only these tiers (comma list)")
    p.add_argument("--arch", help="only these architectures (comma list)")
    p.add_argument("--include-incomplete", action="store_true",
                   help="also average running or interrupted runs that have an evaluation (their best FID so far)")


def _add_run_options(p) -> None:
    """The options of `run` that a sweep shares."""
    p.add_argument("--task", default="cifar10", help="task protocol in tasks/ (default: cifar10)")
    p.add_argument("--steps", type=int, help="training steps (default: the tier's)")
    p.add_argument("--fid-samples", type=int, help="generated images per FID evaluation (default: the tier's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any task field, e.g. --set training.batch_size=64 (recorded in the run record)")
    p.add_argument("--results-dir", default="results", help="where run records go (default: results)")
    p.add_argument("--data-dir", help="folder holding CIFAR-10 (cifar-10-batches-py or cifar-10-python.tar.gz)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--devices", type=int,
                   help="train each run with N DistributedDataParallel processes on one machine, one per GPU (or N "
                        "CPU processes with --device cpu); the global batch is unchanged and split N ways, evaluation "
                        "is sharded by sample, the record says how many processes trained it (default: 1; in a sweep "
                        "or search, the GPUs per run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _overrides(args) -> dict:
    """--set, --steps, --fid-samples and --compile as dotted task fields."""
    from harness.tasks import parse_override

    overrides = dict(parse_override(s) for s in args.set)
    if args.steps is not None:
        overrides["training.steps"] = args.steps
    if args.fid_samples is not None:
        overrides["evaluation.num_samples"] = args.fid_samples
    if getattr(args, "compile", False):
        overrides["training.compile"] = True
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(sub)
    _add_list(sub)
    _add_profile(sub)
    _add_bench(sub)
    _add_sweep(sub)
    _add_search(sub)
    _add_export(sub)
    _add_report(sub)
    return parser


def cmd_run(args) -> int:
    from harness.runner import run

    record = run(args.task, args.arch, args.tier, args.seed, device=args.device, results_dir=args.results_dir,
                 data_dir=args.data_dir, overrides=_overrides(args), fresh=args.fresh, progress=not args.no_progress,
                 devices=args.devices)
    from harness.records import run_dir

    path = run_dir(args.results_dir, record.task, record.arch, record.tier, record.seed) / "record.json"
    first = record.evaluations[0] if record.evaluations else None
    before = f" (step {first['step']}: {first['fid']:.2f})" if first and first["step"] == 0 and record.best_step else ""
    print(f"{record.arch}/{record.tier} on {record.task}: best FID {record.best_fid:.2f} at step {record.best_step}{before}, "
          f"final FID {record.final_fid:.2f}; wall time {record.timings['wall_seconds']:.0f} s; record: {path}")
    return 0


def cmd_list(args) -> int:
    from harness import registry
    from harness.tasks import resolve_task, task_names, tier_names

    tiers = tier_names(args.task)
    specs = {tier: resolve_task(args.task, tier) for tier in tiers}
    rows = []
    for name in registry.architecture_names():
        arch = registry.find_architecture(name)
        row = {"name": name, "file": str(arch.path), "summary": arch.summary}
        try:  # one broken file is reported on its own row; the others are still listed
            row["param_count"] = {tier: registry.parameter_count(arch, spec.width_env) for tier, spec in specs.items()}
            if args.gmacs:
                from harness.profiling import static_profile

                row["gmacs"] = {tier: static_profile(arch, spec)["gmacs"] for tier, spec in specs.items()}
        except Exception as exc:
            row["error"] = str(exc) if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {exc}"
        rows.append(row)
    failed = [r["name"] for r in rows if "error" in r]
    tier_info = {t: {"block_out_channels": list(s.model.block_out_channels), "layers_per_block": s.model.layers_per_block,
                     "batch_size": s.training.batch_size, "steps": s.training.steps} for t, s in specs.items()}
    # tiers that only another task has (the shapes demo tier): named, so that `list` is where one finds them
    other_tiers = {t: [x for x in tier_names(t) if x not in tiers] for t in task_names() if t != args.task}
    if args.json:
        print(json.dumps({"task": args.task, "architectures": rows, "tasks": task_names(), "tiers": tier_info,
                          "tiers_of_other_tasks": other_tiers}, indent=2))
        return 1 if failed else 0
    width = max(len(r["name"]) for r in rows) if rows else 4
    print(f"Architectures (exact parameter counts at each tier of task '{args.task}'):")
    print("  " + "name".ljust(width) + "".join(t.rjust(14) for t in tiers) + ("    GMACs per image at " + "/".join(tiers) if args.gmacs else ""))
    for r in rows:
        if "error" in r:
            print("  " + r["name"].ljust(width) + "  error: " + r["error"])
            continue
        gmacs = "    " + " / ".join(f"{r['gmacs'][t]:.3f}" for t in tiers) if args.gmacs else ""
        print("  " + r["name"].ljust(width) + "".join(f"{r['param_count'][t]:>14,}" for t in tiers) + gmacs)
    print(f"\nTasks: {', '.join(task_names())}")
    print("Tiers:")
    for t, info in tier_info.items():
        print(f"  {t:<8} block_out_channels={info['block_out_channels']} layers_per_block={info['layers_per_block']} "
              f"batch={info['batch_size']} steps={info['steps']}")
    for task, extra in other_tiers.items():
        if extra:
            print(f"  task '{task}' also has tier(s) {', '.join(extra)}: python -m harness list --task {task}")
    if failed:
        print(f"\n{len(failed)} architecture file(s) failed to build: {', '.join(failed)} (see the error above).",
              file=sys.stderr)
        return 1
    return 0


PROFILE_COLUMNS = [("param_count", "params", "{:,}"), ("gmacs", "GMACs", "{:.3f}"),
                   ("infer_latency_ms", "lat ms", "{:.2f}"), ("infer_samples_per_sec", "infer/s", "{:.1f}"),
                   ("train_samples_per_sec", "train/s", "{:.1f}"), ("sample_images_per_sec", "DDIM img/s", "{:.2f}"),
                   ("peak_mem_mb", "mem MB", "{:.0f}")]


def cmd_profile(args) -> int:
    from harness import registry
    from harness.profiling import profile, save_profile
    from harness.runner import pick_device
    from harness.tasks import tier_names

    if not args.all and not (args.arch and args.tier):
        raise HarnessError("profile needs --arch and --tier, or --all (optionally with --tier or --arch).")
    device = pick_device(args.device)
    archs = [args.arch] if args.arch else registry.architecture_names()
    tiers = [args.tier] if args.tier else tier_names(args.task)
    if not args.all:
        registry.find_architecture(args.arch)  # a typo is an error, not an `error` row
    results = []
    for arch in archs:
        for tier in tiers:
            result = profile(arch, tier, args.task, device, args.batch, timing=not args.no_timing)
            result["path"] = str(save_profile(args.results_dir, result))
            results.append(result)
            if not args.json and len(archs) * len(tiers) > 1:
                print(f"  {result['arch']}/{tier}: " + ("error" if "error" in result else "done"), file=sys.stderr)
    if args.json:
        print(json.dumps(results if args.all else results[0], indent=2))
    else:
        columns = [c for c in PROFILE_COLUMNS if any(c[0] in r for r in results)]
        print(f"{'arch':<16}{'tier':<8}" + "".join(f"{title:>14}" for _, title, _ in columns) + f"  ({results[0]['device']})")
        for r in results:
            cells = "".join(f"{fmt.format(r[key]):>14}" if key in r else f"{'-':>14}" for key, _, fmt in columns)
            print(f"{r['arch']:<16}{r['tier']:<8}{cells}" + (f"  error: {r['error']}" if "error" in r else ""))
        print("GMACs: multiply-accumulates of one forward pass of one image of the task's size (32x32; the shapes demo tier 16x16), "
              "attention included (GFLOPs = 2 x GMACs).")
    if not args.all and "error" in results[0]:
        raise HarnessError(results[0]["error"])
    return 1 if any("error" in r for r in results) else 0


def cmd_bench(args) -> int:
    from harness.bench import run_bench
    from harness.runner import pick_device

    if args.sweep:
        from harness.bench_sweep import run_sweep_bench

        result = run_sweep_bench(steps=args.steps, progress=lambda msg: print(msg, file=sys.stderr))
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"{len(result['cells'])} {result['task']} smoke runs: {result['run_commands_seconds']:.1f} s as `run` "
                  f"commands one after another, {result['sweep_seconds']:.1f} s as one sweep (--max-parallel 1); "
                  f"ratio {result['ratio']:.3f} (sweep / run commands)\n"
                  f"training: {result['run_commands_train_images_per_sec']:.1f} img/s in run commands, "
                  f"{result['sweep_train_images_per_sec']:.1f} img/s in the sweep; time outside the runs themselves: "
                  f"{result['run_commands_outside_runs_seconds']:.1f} s (4 process starts) vs "
                  f"{result['sweep_outside_runs_seconds']:.1f} s (one start, Ray, node checks, scheduling)")
        return 0

    if args.scaling is not None:
        from harness.bench_scaling import run_scaling_bench

        result = run_scaling_bench(args.scaling, args.device, steps=args.steps or 60,
                                   progress=lambda msg: print(msg, file=sys.stderr))
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"{result['arch']}/{result['tier']} on {result['task']}, global batch {result['batch_size']}, "
                  f"{result['steps']} steps, on {result['device']['name']}: {result['one_process_train_images_per_sec']:.1f} "
                  f"img/s with 1 process, {result['processes_train_images_per_sec']:.1f} img/s with {result['devices']}; "
                  f"speed-up {result['speedup']:.2f}x, scaling efficiency {result['efficiency']:.2f} "
                  f"({result['threads_per_process']} torch thread(s) per process)")
        return 0

    result = run_bench(pick_device(args.device), compile=args.compile, progress=lambda msg: print(msg, file=sys.stderr))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']}, batch {result['batch_size']}, {result['precision']}, on {result['device']['name']}")
    rows = [
        ("training step", result["train_step_ratio"], f"{result['harness_train_images_per_sec']:.1f} vs "
         f"{result['bare_train_images_per_sec']:.1f} img/s (diffusers-style loop)"),
        ("DDIM-50 sampling", result["sampling_ratio"], f"{result['harness_sampling_images_per_sec']:.2f} vs "
         f"{result['pipeline_sampling_images_per_sec']:.2f} img/s (DDIMPipeline); max |diff| {result['sampling_max_abs_diff']:.2e}"),
        ("FID", result["fid_ratio"], f"{result['harness_fid']:.4f} vs {result['cleanfid_fid']:.4f} (clean-fid); "
         f"|diff| {result['fid_abs_diff']:.2e}"),
    ]
    print(f"{'':<18}{'ratio':>8}   (harness time / reference time; < 1 is faster)")
    for name, ratio, detail in rows:
        print(f"{name:<18}{ratio:>8.3f}   {detail}")
    mfu = result.get("harness_train_mfu")
    print(f"{result['gflops_per_image']:.3f} GFLOPs per image forward; training MFU "
          + (f"{mfu:.1%} (harness), {result['bare_train_mfu']:.1%} (bare loop)" if mfu is not None
             else "n/a (no known peak for this device; set HARNESS_PEAK_TFLOPS)"))
    return 0


def _comma_list(text: str, what: str, cast=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        example = {"arch": "standard,no_attn", "tier": "small,medium", "seed": "42,43", "task": "cifar10,shapes"}[what]
        raise HarnessError(f"--{what} is empty: give one value or a comma list, e.g. --{what} {example}.")
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise HarnessError(f"--{what} takes a comma list of integers, e.g. --{what} 42,43,44; got {text!r}.") from None


def cmd_sweep(args) -> int:
    from harness.sweep import FINAL, Sweep, SweepSpec, processes_note

    seeds = _comma_list(args.seed, "seed", int) if args.seed else [None]
    spec = SweepSpec(args.task, _comma_list(args.arch, "arch"), _comma_list(args.tier, "tier"), seeds,
                     results_dir=args.results_dir, overrides=_overrides(args), data_dir=args.data_dir, device=args.device)
    out = sys.stderr if args.json else sys.stdout
    sweep = Sweep(spec, address=args.address, gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run, devices=args.devices,
                  max_parallel=args.max_parallel, max_retries=args.max_retries, progress=not args.no_progress, stream=out)
    if args.dry_run:
        plan = sweep.dry_run()
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
        return 0
    try:
        manifest = sweep.execute()
    except KeyboardInterrupt:
        print(f"Sweep stopped. Run the same command to continue it: every run resumes from its last checkpoint "
              f"(manifest: {sweep.manifest_path}).", file=sys.stderr)
        return 130
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


def _print_sweep_summary(manifest: dict, out) -> None:
    import pandas as pd

    rows = [{"arch": c["arch"], "tier": c["tier"], "seed": c["seed"], "status": c["status"],
             "best FID": c.get("best_fid"), "at step": c.get("best_step"),
             "wall s": c.get("wall_seconds"), "node": c.get("node", "")} for c in manifest["cells"]]
    table = pd.DataFrame(rows).to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.2f}")
    print(f"\nSweep {manifest['sweep']} (manifest: {manifest['results_dir']}/sweeps/{manifest['sweep']}.json)\n{table}",
          file=out)


def cmd_search(args) -> int:
    from harness.search.driver import Search, SearchSpec
    from harness.search.study import load_study, open_storage, summary, summary_text

    spec = SearchSpec(task=args.task, tier=args.tier, trials=args.trials, study=args.study, storage=args.storage,
                      space=args.space, objectives=args.objectives, sampler=args.sampler, pruner=args.pruner,
                      seed=args.seed, overrides=_overrides(args), results_dir=args.results_dir, data_dir=args.data_dir,
                      device=args.device)
    out = sys.stderr if args.json else sys.stdout
    search = Search(spec, address=args.address, gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial, devices=args.devices,
                    max_parallel=args.max_parallel, max_retries=args.max_retries, progress=not args.no_progress,
                    stream=out)
    if args.status:
        study = load_study(search.settings.name, open_storage(search.url, create=False))
    else:
        try:
            study = search.execute()
        except KeyboardInterrupt:
            print(f"Search stopped. Run the same command to continue study {search.settings.name}: running trials "
                  f"resume from their checkpoints under the same numbers.", file=sys.stderr)
            return 130
    result = summary(study)
    result["storage"] = search.url
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(summary_text(result), file=out)
        print(f"Storage: {search.url}  (optuna trials --storage {search.url} --study-name {study.study_name})", file=out)
    return 0


def cmd_export(args) -> int:
    from harness import registry
    from harness.search.export import ParetoChoice, export_trial
    from harness.search.study import load_study, open_storage, storage_url, summary, summary_text

    study = load_study(args.study, open_storage(storage_url(args.storage, args.results_dir, args.study), create=False))
    try:
        path = export_trial(study, None if args.best else args.trial, args.name,
                            args.out_dir or registry.architectures_dir(), force=args.force)
    except ParetoChoice:
        print(summary_text(summary(study)))
        raise
    print(f"Wrote {path}. Run it like any architecture: python -m harness run --arch {path.stem} --tier small"
          + ("" if args.out_dir is None else f" (or --arch {path})"))
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from harness.report.build import Filters, collect, write_report

    filters = Filters(task=_comma_list(args.task, "task") if args.task else [],
                      tier=_comma_list(args.tier, "tier") if args.tier else [],
                      arch=_comma_list(args.arch, "arch") if args.arch else [],
                      include_incomplete=args.include_incomplete)
    out = Path(args.out) if args.out else Path("reports") / args.name
    report = collect(Path(args.results_dir), filters)
    files = write_report(report, out)
    print(f"{len(report.runs)} runs in {len(report.boards)} leaderboard(s), {len(report.studies)} study(ies). "
          f"Wrote {out}/: index.html, leaderboard.md, leaderboard.csv, runs.csv and {len(files) - 4} plot(s). "
          f"Open {(out / 'index.html').resolve().as_uri()}")
    return 0


COMMANDS = {"run": cmd_run, "list": cmd_list, "profile": cmd_profile, "bench": cmd_bench, "sweep": cmd_sweep, "search": cmd_search,
            "export": cmd_export, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    # torch.jit.load/script deprecation notices come from clean-fid's TorchScript Inception and
    # fvcore's tracing, not from anything a user can change
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        if args.debug:
            raise
        print("error: " + textwrap.fill(str(exc), width=100, subsequent_indent="       "), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("Interrupted. Checkpoints written so far are kept; run the same command again to resume.", file=sys.stderr)
        return 130
