"""``harness profile``: parameters, MACs, latency, throughput and memory of one architecture or all."""
from __future__ import annotations

import json
import sys

from harness.cli.options import RAW
from harness.errors import HarnessError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "profile", help="parameters, MACs (attention included), latency, throughput, memory",
        formatter_class=RAW,
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


PROFILE_COLUMNS = [("param_count", "params", "{:,}"), ("gmacs", "GMACs", "{:.3f}"),
                   ("infer_latency_ms", "lat ms", "{:.2f}"), ("infer_samples_per_sec", "infer/s", "{:.1f}"),
                   ("train_samples_per_sec", "train/s", "{:.1f}"), ("sample_images_per_sec", "DDIM img/s", "{:.2f}"),
                   ("peak_mem_mb", "mem MB", "{:.0f}")]


def execute(args) -> int:
    from harness.measure.profile import profile, save_profile
    from harness.protocol import registry
    from harness.protocol.tasks import tier_names
    from harness.world import pick_device

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
        print(f"{'arch':<16}{'tier':<8}" + "".join(f"{title:>14}" for _, title, _ in columns)
              + f"  ({results[0]['device']})")
        for r in results:
            cells = "".join(f"{fmt.format(r[key]):>14}" if key in r else f"{'-':>14}" for key, _, fmt in columns)
            print(f"{r['arch']:<16}{r['tier']:<8}{cells}" + (f"  error: {r['error']}" if "error" in r else ""))
        print("GMACs: multiply-accumulates of one forward pass of one image of the task's size (32x32; the shapes "
              "demo tier 16x16), attention included (GFLOPs = 2 x GMACs).")
    if not args.all and "error" in results[0]:
        raise HarnessError(results[0]["error"])
    return 1 if any("error" in r for r in results) else 0
