"""``harness list``: the architectures with exact parameter counts per tier, the tasks and tiers."""
from __future__ import annotations

import json
import sys

from harness.cli.options import RAW
from harness.errors import HarnessError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "list", help="architectures with exact parameter counts per tier; tasks; tiers",
        description="List the architectures (with exact parameter counts at every tier of the task), the tasks "
                    "and the tiers.",
        epilog="example:\n  python -m harness list\n  python -m harness list --json",
        formatter_class=RAW,
    )
    p.add_argument("--task", default="cifar10", help="task whose tiers set the widths (default: cifar10)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--gmacs", action="store_true", help="also count MACs of one forward pass (attention included)")


def execute(args) -> int:
    from harness.protocol import registry
    from harness.protocol.tasks import resolve_task, task_names, tier_names

    tiers = tier_names(args.task)
    specs = {tier: resolve_task(args.task, tier) for tier in tiers}
    rows = []
    for name in registry.architecture_names():
        arch = registry.find_architecture(name)
        row = {"name": name, "file": str(arch.path), "summary": arch.summary}
        try:  # one broken file is reported on its own row; the others are still listed
            row["param_count"] = {tier: registry.parameter_count(arch, spec.width_env) for tier, spec in specs.items()}
            if args.gmacs:
                from harness.measure.profile import static_profile

                row["gmacs"] = {tier: static_profile(arch, spec)["gmacs"] for tier, spec in specs.items()}
        except Exception as exc:
            row["error"] = str(exc) if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {exc}"
        rows.append(row)
    failed = [r["name"] for r in rows if "error" in r]
    tier_info = {t: {"block_out_channels": list(s.model.block_out_channels),
                     "layers_per_block": s.model.layers_per_block,
                     "batch_size": s.training.batch_size, "steps": s.training.steps} for t, s in specs.items()}
    # tiers that only another task has (the shapes demo tier): named, so that `list` is where one finds them
    other_tiers = {t: [x for x in tier_names(t) if x not in tiers] for t in task_names() if t != args.task}
    if args.json:
        print(json.dumps({"task": args.task, "architectures": rows, "tasks": task_names(), "tiers": tier_info,
                          "tiers_of_other_tasks": other_tiers}, indent=2))
        return 1 if failed else 0
    width = max(len(r["name"]) for r in rows) if rows else 4
    print(f"Architectures (exact parameter counts at each tier of task '{args.task}'):")
    print("  " + "name".ljust(width) + "".join(t.rjust(14) for t in tiers)
          + ("    GMACs per image at " + "/".join(tiers) if args.gmacs else ""))
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
