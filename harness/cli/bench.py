"""``harness bench``: the harness against diffusers and clean-fid side by side; the sweep's overhead; scaling."""
from __future__ import annotations

import json
import sys

from harness.cli.options import RAW


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="the harness against diffusers' training loop, DDIMPipeline and clean-fid, side by side",
        formatter_class=RAW,
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
                   help="measure data-parallel scaling instead: img/s of one shapes smoke run with N processes "
                        "over N x img/s with one (one per GPU; with --device cpu, N processes sharing the cores)")


def execute(args) -> int:
    from harness.measure.bench import run_bench
    from harness.world import pick_device

    if args.sweep:
        from harness.measure.sweep_cost import run_sweep_bench

        result = run_sweep_bench(steps=args.steps, progress=lambda msg: print(msg, file=sys.stderr))
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"{len(result['cells'])} {result['task']} smoke runs: {result['run_commands_seconds']:.1f} s as "
                  f"`run` commands one after another, {result['sweep_seconds']:.1f} s as one sweep (--max-parallel 1); "
                  f"ratio {result['ratio']:.3f} (sweep / run commands)\n"
                  f"training: {result['run_commands_train_images_per_sec']:.1f} img/s in run commands, "
                  f"{result['sweep_train_images_per_sec']:.1f} img/s in the sweep; time outside the runs themselves: "
                  f"{result['run_commands_outside_runs_seconds']:.1f} s (4 process starts) vs "
                  f"{result['sweep_outside_runs_seconds']:.1f} s (one start, Ray, scheduling)")
        return 0

    if args.scaling is not None:
        from harness.measure.scaling import run_scaling_bench

        result = run_scaling_bench(args.scaling, args.device, steps=args.steps or 60,
                                   progress=lambda msg: print(msg, file=sys.stderr))
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"{result['arch']}/{result['tier']} on {result['task']}, global batch {result['batch_size']}, "
                  f"{result['steps']} steps, on {result['device']['name']}: "
                  f"{result['one_process_train_images_per_sec']:.1f} img/s with 1 process, "
                  f"{result['processes_train_images_per_sec']:.1f} img/s with {result['devices']}; "
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
         f"{result['pipeline_sampling_images_per_sec']:.2f} img/s (DDIMPipeline); "
         f"max |diff| {result['sampling_max_abs_diff']:.2e}"),
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
