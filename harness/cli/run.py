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


def request_of(args):
    """The RunRequest the arguments of `run` ask for."""
    from harness.run.request import RunRequest

    return RunRequest(task=args.task, arch=args.arch, tier=args.tier, seed=args.seed, overrides=overrides(args),
                      device=args.device, devices=1 if args.devices is None else args.devices,
                      results_dir=args.results_dir, data_dir=args.data_dir, fresh=args.fresh,
                      progress=not args.no_progress)


def execute(args) -> int:
    from harness.launch import launch
    from harness.run import checkpoints
    from harness.run.request import plan_run

    plan = plan_run(request_of(args))
    if args.trust_checkpoint and not args.fresh:  # --fresh removes the checkpoints unread
        # the folder's checkpoints rewritten in the safe form before any process of the run reads them
        checkpoints.trust(plan.folder, print)
    record = launch(plan)
    first = record.evaluations[0] if record.evaluations else None
    before = f" (step {first['step']}: {first['fid']:.2f})" if first and first["step"] == 0 and record.best_step else ""
    print(f"{record.arch}/{record.tier} on {record.task}: best FID {record.best_fid:.2f} at step {record.best_step}"
          f"{before}, final FID {record.final_fid:.2f}; wall time {record.timings['wall_seconds']:.0f} s; "
          f"record: {plan.record_path}")
    return 0
