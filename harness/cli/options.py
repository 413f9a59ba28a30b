"""Options and parsing shared by the subcommands that start runs (run, sweep, search)."""
from __future__ import annotations

import argparse

from harness.errors import HarnessError

RAW = argparse.RawDescriptionHelpFormatter  # keep the examples' line breaks


def add_run_options(p) -> None:
    """The options of `run` that a sweep shares."""
    p.add_argument("--task", default="cifar10", help="task protocol in tasks/ (default: cifar10)")
    p.add_argument("--steps", type=int, help="training steps (default: the tier's)")
    p.add_argument("--fid-samples", type=int, help="generated images per FID evaluation (default: the tier's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any task field, e.g. --set training.batch_size=64 (recorded in the run record)")
    p.add_argument("--results-dir", default="results", help="where run records go (default: results)")
    p.add_argument("--data-dir", help="folder holding CIFAR-10 (cifar-10-batches-py or cifar-10-python.tar.gz)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--devices", type=int,
                   help="train each run with N DistributedDataParallel processes on one machine, one per GPU (or N "
                        "CPU processes with --device cpu); the global batch is unchanged and split N ways, evaluation "
                        "is sharded by sample, the record says how many processes trained it (default: 1; in a sweep "
                        "or search, the GPUs per run)")
    p.add_argument("--log-with", metavar="TRACKERS",
                   help="experiment trackers to feed live, a comma list of tensorboard, wandb, mlflow, or none "
                        "(default: the task's training.log_with, tensorboard: into the run folder; docs/tracking.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_trust_option(p, whose: str) -> None:
    """--trust-checkpoint (harness/run/checkpoints.py trust): run, sweep and export-model."""
    p.add_argument("--trust-checkpoint", action="store_true",
                   help=f"read {whose} checkpoint although it holds objects the safe loader refuses (the harness "
                        f"says when): once, with Python's unrestricted unpickler, which runs any code the file names, "
                        f"then rewritten in the safe form. Only for a file you trust, e.g. one an older harness "
                        f"wrote (docs/running.md)")


def add_pool_options(p, unit: str) -> None:
    """The options of a study over the Ray pool (sweep: ``unit`` run; search: trial)."""
    p.add_argument("--address", help="Ray cluster to join: auto (one started with `ray start --head`) or HOST:PORT "
                                     "(default: RAY_ADDRESS, else a private instance on this machine)")
    p.add_argument(f"--gpus-per-{unit}", type=float, help=f"GPUs per {unit} (default: 1 where the cluster has GPUs, "
                                                          f"else 0)")
    p.add_argument(f"--cpus-per-{unit}", type=float, help=f"CPUs per {unit}, also its torch threads (default: the "
                                                          f"node's CPUs / GPUs per GPU {unit}; all of a node's CPUs "
                                                          f"on CPUs alone)")
    p.add_argument("--max-parallel", type=int, help=f"{unit}s at once (default: as many as the cluster's resources "
                                                     f"hold)")
    p.add_argument("--max-retries", type=int, default=3, help=f"retries of a {unit} whose worker or node died "
                                                              f"(default: 3)")


def overrides(args) -> dict:
    """--set, --steps, --fid-samples and --compile as dotted task fields."""
    from harness.protocol.tasks import parse_override

    overrides = dict(parse_override(s) for s in args.set)
    if args.steps is not None:
        overrides["training.steps"] = args.steps
    if args.fid_samples is not None:
        overrides["evaluation.num_samples"] = args.fid_samples
    if getattr(args, "compile", False):
        overrides["training.compile"] = True
    if getattr(args, "log_with", None):
        overrides["training.log_with"] = [] if args.log_with == "none" else comma_list(args.log_with, "log-with")
    return overrides


def comma_list(text: str, what: str, cast=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        example = {"arch": "standard,no_attn", "tier": "small,medium", "seed": "42,43", "task": "cifar10,shapes",
                   "log-with": "tensorboard,wandb"}[what]
        raise HarnessError(f"--{what} is empty: give one value or a comma list, e.g. --{what} {example}.")
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise HarnessError(f"--{what} takes a comma list of integers, e.g. --{what} 42,43,44; got {text!r}.") from None


def fraction(text: str, option: str) -> float:
    """"2%" or "0.02" -> 0.02: a relative size (a seed-to-seed CV, a gap as a share of FID)."""
    try:
        value = float(text[:-1]) / 100 if text.strip().endswith("%") else float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise HarnessError(f"--{option} takes a fraction of the FID, as 2% or 0.02 (between 0 and 1), not {text!r}.")
    return value
