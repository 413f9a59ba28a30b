"""``harness export-model``: a run's trained weights as a folder diffusers loads."""
from __future__ import annotations

from harness.cli.options import RAW, add_trust_option


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export-model", help="write a run's trained model so that diffusers' DDIMPipeline.from_pretrained loads it",
        formatter_class=RAW,
        description="Write the EMA weights of a run (the ones its FIDs were sampled with; --raw: the trained "
                    "weights) to a new folder. A diffusers model is saved as DDIMPipeline.save_pretrained saves "
                    "it (model_index.json, unet/, scheduler/, safetensors) with the protocol's DDIM scheduler, so "
                    "DDIMPipeline.from_pretrained(OUT) generates, from the same noise, the harness's images. Any "
                    "other architecture is saved as model.safetensors beside its file and the scheduler, with "
                    "the few lines that load it in OUT/README.md. OUT/harness_export.json names the run, step "
                    "and weights.",
        epilog="examples:\n"
               "  python -m harness export-model results/shapes/standard/demo/seed42 --out exported/standard-demo\n"
               "  python -m harness export-model results/cifar10/dit/small/seed42 --out exported/dit --raw",
    )
    p.add_argument("run_folder", metavar="RUN_FOLDER", help="a run's folder (results/<task>/<arch>/<tier>/seed<N>)")
    p.add_argument("--out", required=True, help="the folder to write (must not exist, unless --force)")
    p.add_argument("--which", choices=("best", "last"), default="best",
                   help="best: the EMA weights of the run's best evaluation, the ones its leaderboard FID belongs "
                        "to (default); last: its last checkpoint's")
    p.add_argument("--raw", action="store_true", help="the trained weights instead of their EMA (with --which last)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--arch", help="the architecture file (or name) to build the weights with; needed when the run's "
                                  "record names a file outside the architectures folder, which a record alone never "
                                  "makes the harness run")
    add_trust_option(p, "the run's")


def execute(args) -> int:
    from pathlib import Path

    from harness.run import checkpoints
    from harness.run.export_model import export_model

    if args.trust_checkpoint:
        checkpoints.trust(Path(args.run_folder), print)
    meta = export_model(args.run_folder, args.out, raw=args.raw, force=args.force, which=args.which,
                        arch=args.arch)
    unfinished = "" if meta["status"] == "completed" else f" (the run is {meta['status']}: not its last step)"
    fid = f"FID {meta['fid']:.2f}" if meta["fid"] is not None else "no FID measured"
    print(f"Wrote {args.out}: {meta['arch']}/{meta['tier']}/seed{meta['seed']}, {meta['weights']} weights at step "
          f"{meta['step']} ({meta['which']}: {fid}){unfinished}, as {meta['layout']}.")
    if meta["layout"].startswith("diffusers"):
        print(f"  from diffusers import DDIMPipeline; pipe = DDIMPipeline.from_pretrained({str(args.out)!r})")
    else:
        print(f"  load it with the lines in {args.out}/README.md")
    return 0
