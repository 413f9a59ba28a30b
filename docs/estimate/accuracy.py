"""How close `estimate` comes to real runs on this machine: predicted vs measured wall time, per piece.

For each case, in a fresh FID reference cache (so the estimate has to predict the reference too, as on
a new machine): `python -m harness estimate ... --json`, then the same run with `python -m harness run`,
timed as a whole command; the run's record splits it into training and evaluation. Nothing else should
run on the machine meanwhile. Prints a Markdown table and writes every figure to --out (JSON).

    python docs/estimate/accuracy.py --out docs/estimate/accuracy-cpu.json
    python docs/estimate/accuracy.py --case smoke          # one case
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "smoke": ["--task", "shapes", "--arch", "standard", "--tier", "smoke"],
    "demo": ["--task", "shapes", "--arch", "standard", "--tier", "demo"],
    # the small tier's model and batch, shortened so that it ends in minutes on a CPU
    "small-short": ["--task", "shapes", "--arch", "standard", "--tier", "small", "--device", "cpu", "--steps", "40",
                    "--fid-samples", "256", "--set", "evaluation.reference_images=1024"],
}


def harness(args: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"`harness {' '.join(args)}` failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start, done.stdout


def error(predicted: float, measured: float) -> float:
    return round(100 * (predicted - measured) / measured, 1)


def check(name: str, args: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"accuracy-{name}-") as tmp:
        env = dict(os.environ, HARNESS_CACHE_DIR=str(Path(tmp) / "cache"))
        estimate_seconds, out = harness(["estimate", *args, "--json"], env)
        run = json.loads(out)["runs"][0]
        command_seconds, _ = harness(["run", *args, "--results-dir", str(Path(tmp) / "results"), "--no-progress"], env)
        record = json.loads(next((Path(tmp) / "results").rglob("record.json")).read_text())
    p, timings = run["predicted"], record["timings"]
    evaluation = p["sampling"] + p["features"] + p["scoring"] + p["reference"]
    rows = {"command": (p["total"], command_seconds),
            "run (record wall_seconds)": (p["total"] - p["startup"], timings["wall_seconds"]),
            "training": (p["training"], timings["train_seconds"]),
            "evaluation (incl. reference)": (evaluation, timings["eval_seconds"])}
    return {"case": name, "args": args, "estimate_seconds": round(estimate_seconds, 1), "predicted": p,
            "record_timings": timings, "device": record["device"],
            "rows": {k: {"predicted": round(a, 1), "measured": round(b, 1), "error_percent": error(a, b)}
                     for k, (a, b) in rows.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=list(CASES), help="default: all")
    parser.add_argument("--out", help="write the figures here as JSON")
    args = parser.parse_args()
    results = []
    for name in args.case or list(CASES):
        print(f"{name}: estimate, then the run ...", file=sys.stderr)
        results.append(check(name, CASES[name]))
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("| case | piece | predicted s | measured s | error |\n|---|---|---|---|---|")
    for result in results:
        for piece, row in result["rows"].items():
            print(f"| {result['case']} | {piece} | {row['predicted']} | {row['measured']} | "
                  f"{row['error_percent']:+.1f}% |")
        print(f"| {result['case']} | (the estimate itself) | | {result['estimate_seconds']} | |")


if __name__ == "__main__":
    main()
