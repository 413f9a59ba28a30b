"""``harness run``: train and evaluate one architecture at one tier, print its FIDs and record."""
from __future__ import annotations

from harness.cli.options import RAW, add_run_options, add_trust_option, overrides


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="train and evaluate one architecture at one tier",
        formatter_class=RAW,
        description="Train one architecture under a task's protocol, evaluate FID/KID at the task's evaluation "
                    "points, and write a run record. Re-running the same command resumes from its checkpoint.",
        epilog="example:\n  python -m harness run --task shapes --arch standard --tier smoke\n"
               "  python -m harness run --arch full-attn --tier small --seed 1 --set optimizer.lr=1e-4\n"
               "  python -m harness run --arch standard --tier large --devices 8      # one run on 8 GPUs",
    )
    p.add_argument("--arch", required=True, help="architecture name (see `list`) or a path to a .py file")
    p.add_argument("--tier", required=True, help="width tier: smoke, small, medium, large")
    p.add_argument("--seed", type=int, help="run seed (default: the task's, 42)")
    add_run_options(p)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model for training (same as --set training.compile=true)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start over")
    add_trust_option(p, "the run's")


def trust_run_folder(args) -> None:
    """--trust-checkpoint: the run folder's checkpoints rewritten in the safe form before any process of
    the run reads them (the folder as Run names it)."""
    from harness.protocol import registry
    from harness.protocol.tasks import resolve_task
    from harness.run import checkpoints
    from harness.run.records import run_dir

    seed = {"seed": args.seed} if args.seed is not None else {}
    spec = resolve_task(args.task, args.tier, {**overrides(args), **seed})
    folder = run_dir(args.results_dir, spec.name, registry.find_architecture(args.arch).name, spec.tier, spec.seed)
    checkpoints.trust(folder, print)


def execute(args) -> int:
    from harness.launch import run

    if args.trust_checkpoint and not args.fresh:  # --fresh removes the checkpoints unread
        trust_run_folder(args)
    record = run(args.task, args.arch, args.tier, args.seed, device=args.device, results_dir=args.results_dir,
                 data_dir=args.data_dir, overrides=overrides(args), fresh=args.fresh, progress=not args.no_progress,
                 devices=args.devices)
    from harness.run.records import run_dir

    path = run_dir(args.results_dir, record.task, record.arch, record.tier, record.seed) / "record.json"
    first = record.evaluations[0] if record.evaluations else None
    before = f" (step {first['step']}: {first['fid']:.2f})" if first and first["step"] == 0 and record.best_step else ""
    print(f"{record.arch}/{record.tier} on {record.task}: best FID {record.best_fid:.2f} at step {record.best_step}"
          f"{before}, final FID {record.final_fid:.2f}; wall time {record.timings['wall_seconds']:.0f} s; "
          f"record: {path}")
    return 0
