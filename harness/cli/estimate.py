"""``harness estimate``: how long runs, a sweep or a search will take here, measured in seconds, not hours."""
from __future__ import annotations

import json
import sys

from harness.cli.options import RAW, comma_list, overrides


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
               "  python -m harness estimate --tier small --trials 64 --gpus 8   # a search's 64 trials",
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
    p.add_argument("--trials", type=int, help="a search: this many trials per tier, each at the mean of the "
                                              "measured architectures (default: the three baselines)")
    p.add_argument("--gpus", type=int, help="runs at once for the study's wall time (default: this machine's GPUs; "
                                            "1 on a CPU)")
    p.add_argument("--burst-seconds", type=float, default=1.0, help="seconds of timed training steps per (arch, "
                                                                     "tier), after warm-up (default: 1)")
    p.add_argument("--json", action="store_true", help="print the whole estimate as JSON (progress goes to stderr)")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


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
                       f"{study['slots']} at once.")
    lines += [f"note: {n}" for n in result["notes"]]
    kinds = {run["memory"]["kind"] for run in result["runs"] if "memory" in run}
    lines.append(f"Measured for {result['measured_seconds']:.0f} s; peak memory is {', '.join(sorted(kinds))}. "
                 f"Other = start-up, preparation, FID reference and checkpoints.")
    return "\n".join(lines)


def before_study(task: str, allocation: dict, overrides_: dict, data_dir, runs: list[tuple[str, str, int]],
                 trials: int | dict | None = None) -> dict:
    """The estimate a sweep's dry run and a search print for ``runs`` (arch, tier, step each resumes from),
    measured here on the device type and with the threads the allocation gives each run, for its slots (a
    reason instead where this machine lacks that device: a plan made on a laptop for a GPU cluster)."""
    import torch

    from harness.measure.estimate import estimate

    device = allocation["device_type"]
    if device == "cuda" and not torch.cuda.is_available():
        return {"skipped": "the runs use GPUs and this machine has none: run `python -m harness estimate` on one "
                           "of the cluster's nodes"}
    archs = list(dict.fromkeys(arch for arch, _, _ in runs))
    tiers = list(dict.fromkeys(tier for _, tier, _ in runs))
    threads = allocation.get("torch_threads_per_run") if device == "cpu" else None
    return estimate(archs, tiers, task=task, device=torch.device(device), overrides=overrides_, data_dir=data_dir,
                    trials=trials, left=None if trials else runs, slots=allocation["max_parallel"],
                    threads=threads, progress=lambda msg: print(msg, file=sys.stderr))


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
    result = estimate(archs, comma_list(args.tier, "tier"), task=args.task, device=device, overrides=overrides(args),
                      data_dir=args.data_dir, repeats=len(seeds), trials=args.trials, slots=slots,
                      min_seconds=args.burst_seconds, startup=startup,
                      progress=lambda msg: print(msg, file=sys.stderr))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(estimate_text(result))
    return 1 if any("error" in run for run in result["runs"]) else 0
