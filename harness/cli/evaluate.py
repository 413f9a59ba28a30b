"""``harness evaluate``: sample a finished run's kept weights with a sampler grid, without training."""
from __future__ import annotations

from harness.cli.options import RAW


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate a finished run again (a sampler grid, the manifold metrics), without training",
        formatter_class=RAW,
        description="Sample a run's kept weights (its last checkpoint's EMA, and its best evaluation's where that is "
                    "another step) with the sampler grid of its task, or the one --set names, from the same "
                    "per-sample seeds and noise as its evaluations, and add each pair's FID, KID, precision, recall, "
                    "density and coverage to its record, marked as added after training. Only settings that change "
                    "no trained weight may be set: samplers.*, evaluation.manifold_k, evaluation.manifold_samples "
                    "(for the grid's pairs), the FID bootstrap and batch sizes. Pairs the record has already are "
                    "kept unless --again. Refused where this machine's FID reference or sampling precision is not "
                    "the run's (the FIDs would not be comparable).",
        epilog="examples:\n"
               "  python -m harness evaluate results/shapes/standard/demo/seed42 "
               "--set 'samplers.grid=[ddim:10,ddim:20,dpmpp_2m:10,dpmpp_2m:20,unipc:20]'\n"
               "  python -m harness evaluate results/cifar10/dit/small/seed42 --device cuda "
               "--set 'samplers.grid=[dpmpp_2m:10]'",
    )
    p.add_argument("run_folder", metavar="RUN_FOLDER", help="a run's folder (results/<task>/<arch>/<tier>/seed<N>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an evaluation setting, e.g. --set 'samplers.grid=[dpmpp_2m:10,unipc:20]'")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--data-dir", help="the run's data, where its FID reference must be computed on this machine")
    p.add_argument("--arch", help="the architecture file (or name) to build the weights with; needed when the run's "
                                  "record names a file outside the architectures folder")
    p.add_argument("--again", action="store_true", help="compute pairs the record has already again")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def execute(args) -> int:
    from harness.protocol.tasks import parse_override
    from harness.run.reevaluate import evaluate_run
    from harness.world import pick_device

    overrides = dict(parse_override(s) for s in args.set)
    record = evaluate_run(args.run_folder, overrides, device=str(pick_device(args.device)), arch=args.arch,
                          data_dir=args.data_dir, again=args.again, progress=not args.no_progress)
    added = sum("added_after_training" in got for e in record.evaluations for got in e.get("samplers", {}).values())
    print(f"{record.arch}/{record.tier}/seed{record.seed}: the record holds {added} grid result(s) added after "
          f"training; {args.run_folder}/record.json")
    return 0
