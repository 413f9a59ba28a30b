"""``harness estimate``: how long runs, a sweep or a search will take here, measured in seconds, not hours."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from harness.cli.options import RAW, comma_list, fraction, overrides
from harness.errors import HarnessError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "estimate", help="predict the wall time of runs, a sweep or a search from short timed bursts on this device",
        formatter_class=RAW,
        description="Measure, on this device, a short burst of each piece of a run at its real shapes and settings "
                    "(training steps at the tier's batch, DDIM sampling of one batch, Inception features, the FID "
                    "statistics, a checkpoint, the FID reference where it is not cached) and predict each run's wall "
                    "time split into those pieces, its peak memory, throughput and MFU; and for several runs (archs "
                    "x tiers x seeds, or --trials per tier) the device-hours and the wall time on --gpus devices. "
                    "Takes seconds to a minute; docs/estimate.md gives its measured accuracy.",
        epilog="examples:\n"
               "  python -m harness estimate --task shapes --arch standard --tier smoke,demo\n"
               "  python -m harness estimate --arch all --tier small,medium,large --device cuda --json\n"
               "  python -m harness estimate --arch standard,full_attn --tier small --seed 42,43,44 --gpus 8\n"
               "  python -m harness estimate --tier small --trials 64 --gpus 8   # a search's 64 trials\n"
               "  python -m harness estimate --tier smoke,small,medium --trials 27 --gpus 8   # 27, 9, 3 promoted\n"
               "  python -m harness estimate --arch standard,full_attn --tier small --resolve 2% --seed-cv 1.5%",
    )
    p.add_argument("--arch", default="standard",
                   help="comma list of architectures or `all` (default: standard; with --trials: the baselines)")
    p.add_argument("--tier", required=True, help="comma list of tiers")
    p.add_argument("--task", default="cifar10", help="task protocol in tasks/ (default: cifar10)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--steps", type=int, help="training steps (default: the tier's)")
    p.add_argument("--fid-samples", type=int, help="generated images per FID evaluation (default: the tier's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any task field")
    p.add_argument("--data-dir", help="folder holding CIFAR-10 (its loading is timed when it is there)")
    p.add_argument("--seed", help="comma list of seeds: each is one more run of every (arch, tier)")
    p.add_argument("--trials", type=int, help="a search: this many trials, each at the mean of the measured "
                                              "architectures (default: the three baselines); over several tiers "
                                              "the first tier's, the rest promoted as `search` promotes them")
    p.add_argument("--reduction", type=int, default=3,
                   help="with --trials and several tiers: each tier promotes the best 1/REDUCTION of the one below, "
                        "as `search --reduction` (default: 3)")
    p.add_argument("--gpus", type=int, help="runs at once for the study's wall time (default: this machine's GPUs; "
                                            "1 on a CPU)")
    p.add_argument("--burst-seconds", type=float, default=1.0, help="seconds of timed training steps per (arch, "
                                                                     "tier), after warm-up (default: 1)")
    p.add_argument("--resolve", metavar="GAP",
                   help="size a study before running it: the seeds per architecture that separate a gap of GAP in "
                        "best FID, as a share of it (2%% or 0.02), with 80%% power (two-sided 5%% t test, unpaired), "
                        "and their device-hours here; needs --seed-cv or --results-dir (docs/estimate.md)")
    p.add_argument("--seed-cv", metavar="CV",
                   help="with --resolve: the seed-to-seed CV of best FID to assume, e.g. 2%% (the field measures "
                        "1-2%%); the output calls it assumed")
    p.add_argument("--results-dir", metavar="DIR",
                   help="with --resolve: measure the seed-to-seed CV from the completed runs here of the same task "
                        "and tier (pooled within groups of 2+ seeds; --seed-cv wins when both are given) "
                        "(default: none)")
    p.add_argument("--json", action="store_true", help="print the whole estimate as JSON (progress goes to stderr)")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


# --resolve: the seeds per architecture that separate a gap, at a seed-to-seed CV given or measured, and their cost

SEED_LIMIT = 1000  # seeds past which a gap is called out of reach rather than priced
UNPAIRED = ("unpaired; rows sharing seeds with identical draws are compared paired, which needs fewer "
            "(docs/protocol.md#noise)")


def _percent(share: float) -> str:
    return f"{share * 100:.3g}%"


def measured_seed_cv(results_dir: str, spec) -> dict | str:
    """The seed-to-seed CV of best FID in the completed runs under ``results_dir`` of ``spec``'s task and tier:
    the within-group variance pooled over the groups (harness.report.tables.GROUP_KEY) with 2+ seeds, over the
    square of those runs' mean best FID; only groups at ``spec``'s own settings where any of them has 2+ seeds.
    A sentence saying why not where no group has."""
    from harness.report import noise
    from harness.report.tables import groups, load_runs, result_settings

    if not Path(results_dir).is_dir():
        raise HarnessError(f"--results-dir {results_dir} is not a folder: give the folder holding run records "
                           f"(results by default for `run`), or --seed-cv 2% to assume the spread instead.")
    runs, _, unreadable = load_runs(results_dir)
    for damaged in unreadable:  # as `report` does: a damaged record is named, never silently left out
        print(f"warning: {damaged['path']} {damaged['reason']}; it is left out of the measured seed CV.",
              file=sys.stderr)
    where = f"{spec.name}/{spec.tier} runs in {results_dir}"
    grouped = groups(runs) if not runs.empty else runs
    if grouped.empty:
        return f"{results_dir} holds no completed runs"
    same = grouped[(grouped["task"] == spec.name) & (grouped["tier"] == spec.tier)]
    fids = [{int(seed): fid for seed, fid in json.loads(text).items()} for text in same["seed_fids"]]
    several = [(f, key) for f, key in zip(fids, same["settings_key"]) if len(f) >= 2]
    if not several:
        return f"no group of completed {where} has 2 or more seeds"
    ours = json.dumps(result_settings(spec.to_dict()), sort_keys=True, default=str)
    at_ours = [f for f, key in several if key == ours]  # settings change the spread too: prefer the same ones
    pooled = at_ours or [f for f, _ in several]
    cv2, df, count = noise.pooled_relative_variance([noise.Row(str(i), f) for i, f in enumerate(pooled)])
    values = [fid for f in pooled for fid in f.values()]
    mean = sum(values) / len(values)
    cv = math.sqrt(cv2)  # pooled as the report pools a borrowed spread: on the relative scale
    settings = "at these settings" if at_ours else "at other settings than these (none at these has 2+ seeds)"
    return {"cv": cv, "source": "measured", "df": df, "groups": count, "runs": len(values),
            "mean_best_fid": round(mean, 4), "same_settings": bool(at_ours), "results_dir": str(results_dir),
            "label": f"measured seed CV {_percent(cv)}: pooled within {count} group(s) of {where}, {df} df, "
                     f"{settings}"}


def seed_spread(args, spec) -> dict:
    """The seed-to-seed CV --resolve sizes ``spec``'s tier with: --seed-cv (assumed) wins over --results-dir
    (measured); with both, the measured one is kept beside it."""
    measured = measured_seed_cv(args.results_dir, spec) if args.results_dir else None
    if args.seed_cv:
        cv = fraction(args.seed_cv, "seed-cv")
        spread = {"cv": cv, "source": "assumed", "label": f"assumed seed CV {_percent(cv)}"}
        if measured is not None:
            spread["measured"] = measured if isinstance(measured, dict) else {"reason": measured}
        return spread
    if isinstance(measured, dict):
        return measured
    if measured is None:
        raise HarnessError("--resolve needs the seed-to-seed spread of best FID: pass --seed-cv 2% to assume one "
                           "(the field measures 1-2%), or --results-dir DIR to measure it from completed runs of "
                           "the same task and tier with 2 or more seeds.")
    raise HarnessError(f"--resolve cannot measure the seed-to-seed spread at {spec.tier}: {measured}. Pass "
                       f"--seed-cv 2% to assume one (the field measures 1-2%), or run 2 or more seeds of an "
                       f"architecture at this tier first.")


def resolve_spreads(args, tiers: list[str]) -> dict[str, dict] | None:
    """Each tier's seed spread for --resolve (None without it), checked before anything is measured."""
    if not args.resolve:
        if args.seed_cv or args.results_dir:
            raise HarnessError("--seed-cv and --results-dir give --resolve its seed-to-seed spread: add --resolve "
                               "GAP (e.g. --resolve 2%), or leave them out.")
        return None
    if args.trials:
        raise HarnessError("--resolve sizes the seeds of the --arch architectures; a search's --trials has no "
                           "seeds to size: leave out one of the two.")
    fraction(args.resolve, "resolve")
    from harness.protocol.tasks import resolve_task

    return {tier: seed_spread(args, resolve_task(args.task, tier, overrides(args))) for tier in tiers}


def resolve_tier(runs: list[dict], tier: str, gap: float, spread: dict, slots: int) -> dict:
    """The seeds that separate ``gap`` at ``spread`` (both shares of FID, so their ratio is exact at any FID), and
    those seeds of every architecture measured at ``tier`` as a study: the estimate's own per-run predictions."""
    from harness.measure.estimate import study_totals
    from harness.report.noise import ALPHA, seeds_for_power

    measured = [run for run in runs if run["tier"] == tier and "predicted" in run]
    pairs = max(1, len(measured) * (len(measured) - 1) // 2)  # the board's Holm family: its pairs
    seeds = seeds_for_power(gap, spread["cv"], paired=False, limit=SEED_LIMIT, pairs=pairs)
    out = {"tier": tier, "spread": spread, "architectures": [run["arch"] for run in measured], "pairs": pairs,
           "alpha": ALPHA / pairs}
    if seeds > SEED_LIMIT:
        return {**out, "seeds": None, "more_than": SEED_LIMIT}
    return {**out, "seeds": seeds,
            **study_totals([(run, run["predicted"]) for _ in range(seeds) for run in measured], slots)}


def resolve(runs: list[dict], gap: float, spreads: dict[str, dict], slots: int) -> dict:
    from harness.report.noise import ALPHA, POWER

    return {"gap": gap, "power": POWER, "alpha": ALPHA, "test": "two-sided t, unpaired", "note": UNPAIRED,
            "tiers": [resolve_tier(runs, tier, gap, spread, slots) for tier, spread in spreads.items()]}


def resolve_text(plan: dict, device: dict) -> list[str]:
    """Per tier: the seeds a gap needs and what they cost here."""
    hours = "device-hours (GPU-hours)" if device["type"] == "cuda" else "device-hours"
    lines = []
    for tier in plan["tiers"]:
        family = "" if tier["pairs"] == 1 else f" / {tier['pairs']} pairs, Holm's strictest step"
        test = f"{plan['power']:.0%} power, two-sided {plan['alpha']:.0%}{family}, unpaired"
        head = f"To separate a {_percent(plan['gap'])} gap at {tier['tier']} ({tier['spread']['label']}): "
        if tier["seeds"] is None:
            lines.append(head + f"more than {tier['more_than']} seeds per architecture ({test}): a gap this small "
                                f"is out of reach at this spread.")
        elif not tier["architectures"]:
            lines.append(head + f"{tier['seeds']} seeds per architecture ({test}); no architecture was measured "
                                f"at this tier, so they are not priced.")
        else:
            lines.append(head + f"{tier['seeds']} seeds per architecture ({test}) = {tier['runs']} runs of "
                                f"{len(tier['architectures'])} architecture(s), {tier['device_hours']:.2f} {hours} "
                                f"on {device['name']}, {_clock(tier['wall_seconds'])} wall on {tier['slots']} at "
                                f"once.")
        measured = tier["spread"].get("measured")
        if measured:
            lines.append(f"  --results-dir: {measured.get('label') or 'not measured: ' + measured['reason']} "
                         f"(--seed-cv is used instead)")
    return lines + [f"note: {plan['note']}"]


def estimate_text(result: dict) -> str:
    """The estimate as a table (one row per arch and tier) and the study's totals."""
    import pandas as pd

    rows, failed = [], []
    for run in result["runs"]:
        if "error" in run:
            failed.append(f"{run['arch']}/{run['tier']}: {run['error']}")
            continue
        p, t = run["predicted"], run["throughput"]
        rows.append({"arch": run["arch"], "tier": run["tier"], "total": _clock(p["total"]),
                     "training": _clock(p["training"]), "sampling": _clock(p["sampling"]),
                     "features": _clock(p["features"]), "scoring": _clock(p["scoring"]),
                     **({"sampler grid": _clock(p["grid"])} if p.get("grid") else {}),
                     "other": _clock(p["startup"] + p["prepare"] + p["reference"] + p["checkpoints"]),
                     "train img/s": f"{t['train_images_per_sec']:.4g}",
                     "MFU": f"{t['train_mfu']:.1%}" if t["train_mfu"] is not None else "-",
                     "peak MB": f"{run['memory']['train_peak_mb']:.0f}"})
    device = result["device"]
    lines = [f"Predicted wall time of each run on {device['name']} ({device['type']}), task {result['task']}:"]
    if rows:
        lines.append(pd.DataFrame(rows).to_string(index=False))
    lines += [f"not measured: {f}" for f in failed]
    study = result["study"]
    if study["runs"] > 1 or "trials" in study:
        trials = study.get("trials")
        per_tier = (", ".join(f"{n} at {tier}" for tier, n in trials.items()) + " as planned by successive halving"
                    if isinstance(trials, dict) else f"{trials} trials per tier")
        lines.append(f"{study['runs']} runs" + (f" ({per_tier}; {study['note']})" if "trials" in study else "")
                     + f": {study['device_hours']:.2f} device-hours, {_clock(study['wall_seconds'])} wall on "
                       f"{study['slots']} at once" + (f" ({study['schedule']})." if "schedule" in study else "."))
    if "resolve" in result:
        lines += resolve_text(result["resolve"], device)
    lines += [f"note: {n}" for n in result["notes"]]
    kinds = {run["memory"]["kind"] for run in result["runs"] if "memory" in run}
    lines.append(f"Measured for {result['measured_seconds']:.0f} s; peak memory is {', '.join(sorted(kinds))}. "
                 f"Other = start-up, preparation, FID reference and checkpoints.")
    return "\n".join(lines)


def devices_note(devices: int | None) -> list[str]:
    """What an estimate does not model about ``run --devices N`` (N processes per run)."""
    if not devices or devices <= 1:
        return []
    return [f"each run is estimated as one process: the {devices} processes per run (--devices {devices}) are not "
            f"modelled, so a run's training may take up to {devices}x less than this (less the gradient all-reduce "
            f"and the launcher: `python -m harness bench --scaling {devices}` measures that) and its slots count "
            f"runs, not devices"]


def before_study(task: str, allocation: dict, overrides_: dict, data_dir, runs: list[tuple[str, str, int]],
                 trials: int | dict | None = None, reduction: int | None = None) -> dict:
    """The estimate a sweep's dry run and a search print for ``runs`` (arch, tier, step each resumes from),
    measured here on the device type and with the threads the allocation gives each run, for its slots (a
    reason instead where this machine lacks that device: a plan made on a laptop for a GPU cluster).
    ``trials`` per tier over several tiers is successive halving with ``reduction`` (inferred from the
    counts when not given)."""
    import torch

    from harness.measure.estimate import estimate

    device = allocation["device_type"]
    if device == "cuda" and not torch.cuda.is_available():
        return {"skipped": "the runs use GPUs and this machine has none: run `python -m harness estimate` on one "
                           "of the cluster's nodes"}
    archs = list(dict.fromkeys(arch for arch, _, _ in runs))
    tiers = list(dict.fromkeys(tier for _, tier, _ in runs))
    threads = allocation.get("torch_threads_per_run") if device == "cpu" else None
    result = estimate(archs, tiers, task=task, device=torch.device(device), overrides=overrides_, data_dir=data_dir,
                      trials=trials, left=None if trials else runs, slots=allocation["max_parallel"],
                      threads=threads, progress=lambda msg: print(msg, file=sys.stderr), reduction=reduction)
    result["notes"] += devices_note(allocation.get("devices_per_run"))
    return result


def execute(args) -> int:
    import harness.launch  # noqa: F401  (imported before the clock is read: a run imports it too)
    from harness.measure.estimate import estimate, startup_seconds

    startup = startup_seconds()
    import torch

    from harness.protocol.registry import architecture_names
    from harness.world import pick_device

    device = pick_device(args.device)
    archs = comma_list(args.arch, "arch")
    if archs == ["all"]:
        archs = architecture_names()
    elif args.trials and args.arch == "standard":
        archs = ["standard", "full_attn", "no_attn"]
    slots = args.gpus or (torch.cuda.device_count() if device.type == "cuda" else 1)
    seeds = comma_list(args.seed, "seed", int) if args.seed else [None]
    tiers = comma_list(args.tier, "tier")
    spreads = resolve_spreads(args, tiers)  # before anything is measured: a bad --resolve costs no bursts
    trials = args.trials
    if trials and len(tiers) > 1:  # several tiers: the search's successive halving, e.g. 27, 9, 3
        from harness.search.rungs import check_reduction, planned

        trials = dict(zip(tiers, planned(trials, len(tiers), check_reduction(args.reduction))))
    result = estimate(archs, tiers, task=args.task, device=device, overrides=overrides(args),
                      data_dir=args.data_dir, repeats=len(seeds), trials=trials, slots=slots,
                      min_seconds=args.burst_seconds, startup=startup,
                      progress=lambda msg: print(msg, file=sys.stderr), reduction=args.reduction)
    if spreads is not None:
        result["resolve"] = resolve(result["runs"], fraction(args.resolve, "resolve"), spreads, slots)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(estimate_text(result))
    return 1 if any("error" in run for run in result["runs"]) else 0
