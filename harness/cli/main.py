"""``harness`` / ``python -m harness``: the parser, and every HarnessError turned into a one-paragraph message.

Each subcommand is one module here with ``add_parser(sub)`` and ``execute(args) -> exit code``; its
heavy imports (torch, Ray, Optuna) are inside ``execute``, so ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
import warnings
from pathlib import Path

from harness.cli import bench, estimate, evaluate, export, export_model, listing, profile, report, run, search, sweep
from harness.errors import HarnessError
from harness.run.signals import interrupt_exit_code

DESCRIPTION = """\
Diffusion architecture benchmark harness: one fixed, versioned CIFAR-10 protocol
(epsilon-prediction MSE, AdamW, EMA, 50-step DDIM, FID with clean-fid) applied to any
architecture file exposing build_model(device), at small/medium/large widths.

examples:
  python -m harness run --task shapes --arch standard --tier smoke   # offline, CPU, < 5 min
  python -m harness run --task shapes --arch standard --tier demo    # learns shapes on a CPU, ~10 min
  python -m harness run --arch full_attn --tier medium                # the real protocol (GPU)
  python -m harness list --json
  python -m harness estimate --task shapes --arch standard --tier smoke,demo
  python -m harness sweep --task shapes --arch standard,no_attn --tier smoke --seed 42,43
  python -m harness search --task shapes --tier smoke --trials 8 --steps 200
  python -m harness export --study shapes-smoke-fid --best --name searched
  python -m harness export-model results/shapes/standard/smoke/seed42 --out exported/standard
  python -m harness evaluate results/shapes/standard/smoke/seed42 --set 'samplers.grid=[dpmpp_2m:10]'\n"""

COMMANDS = {"run": run, "list": listing, "profile": profile, "bench": bench, "estimate": estimate, "sweep": sweep,
            "search": search, "export": export, "export-model": export_model, "evaluate": evaluate, "report": report}


def build_parser(prog: str = "python -m harness") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # torch.jit.load/script deprecation notices come from clean-fid's TorchScript Inception and
    # fvcore's tracing, not from anything a user can change
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
    parser = build_parser("harness" if Path(sys.argv[0]).name == "harness" else "python -m harness")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command].execute(args)
    except HarnessError as exc:
        if args.debug:
            raise
        print("error: " + textwrap.fill(str(exc), width=100, subsequent_indent="       ", break_long_words=False,
                                              break_on_hyphens=False), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as interrupt:
        if args.debug:
            raise
        print("Interrupted. Checkpoints written so far are kept; run the same command again to resume.",
              file=sys.stderr)
        return interrupt_exit_code(interrupt)
