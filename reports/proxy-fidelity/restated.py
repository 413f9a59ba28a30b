"""The first proxy-fidelity study (2026-12-04, 5 architectures x seeds 42 and 43) restated with the report's
corrected statistics (issue 35): its run folders were not kept, so `harness report` cannot be run on it again.

What this reads, and from where:
- each run's best FID (step 3000), FID at step 500, FID sampling SD and training stream: runs.csv in this
  folder, written by `harness report` from the records on 2026-12-04;
- each run's FID at steps 1000 and 2000: the per-seed table of docs/proxy-fidelity.md (rounded to 0.1 there),
  which that report's records gave; they are in no other committed file.

It runs them through the same functions the report calls (noise.judge for the leaderboard, fidelity.bootstrap
for the tau intervals) and writes restated.md beside this file:

    python reports/proxy-fidelity/restated.py
"""
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from harness.report import fidelity, noise

HERE = Path(__file__).resolve().parent
# docs/proxy-fidelity.md, "The full runs' FIDs": (seed 42, seed 43) at steps 1000 and 2000
STEPS_1000_2000 = {
    "standard": {1000: (146.7, 127.8), 2000: (89.8, 80.8)},
    "no_attn": {1000: (171.6, 152.3), 2000: (113.6, 89.5)},
    "full_attn": {1000: (147.0, 113.2), 2000: (114.9, 84.1)},
    "dilated_convnet": {1000: (147.3, 130.7), 2000: (127.4, 108.9)},
    "convnext_unet": {1000: (183.8, 189.1), 2000: (131.1, 126.1)},
}


def main() -> None:
    runs = pd.read_csv(HERE / "runs.csv")
    runs = runs[(runs["variant"].isna()) & (runs["status"] == "completed")]  # the demo runs, both seeds
    rows = [noise.Row(arch, {int(s): float(f) for s, f in zip(g["seed"], g["best_fid"])},
                      {int(s): st for s, st in zip(g["seed"], g["stream"])}, float(g["best_fid_sampling_std"].mean()))
            for arch, g in runs.groupby("arch")]
    rows.sort(key=lambda r: r.mean)
    judged = noise.judge(rows)
    lines = ["# The first proxy-fidelity study, restated (issue 35's statistics)", "",
             "Made by `python reports/proxy-fidelity/restated.py` (see its docstring for what it reads).", "",
             "## Leaderboard at step 3000 (best FID, 256 samples, seeds 42 and 43)", "",
             "| rank | architecture | best FID (95% interval) | verdict | seed-to-seed SD | FID sampling SD |",
             "|---|---|---|---|---|---|"]
    for row, n, interval, verdict in zip(rows, judged.noises, judged.intervals, judged.verdicts):
        seed_sd, sampling_sd = noise.variance_split(row, n)
        lines.append(f"| {verdict.rank_text} | {row.name} | {row.mean:.2f} ({interval.low:.2f} to {interval.high:.2f}) "
                     f"| {verdict.text} | {seed_sd:.2f} | {sampling_sd:.2f} |")
    top = judged.comparisons[0, 1]
    lines += ["", f"Top two: {rows[0].name} leads {rows[1].name} by {top.gap:.2f} ({top.kind}, 95% interval "
              f"{top.low:+.2f} to {top.high:+.2f}); seeds of each for 80% power at that spread: "
              f"{noise.seeds_for_power(top.gap, top.sd, top.paired, pairs=len(judged.comparisons))} "
              f"(on this board of {len(judged.comparisons)} pairs, at Holm's strictest level).", ""]
    target = {r.name: {s: (f, 1.0) for s, f in r.fids.items()} for r in rows}
    proxies = {500: {a: {int(s): (float(f), 1.0) for s, f in zip(g["seed"], g["early_fid"])}
                     for a, g in runs.groupby("arch")}}
    for step in (1000, 2000):
        proxies[step] = {a: {42: (v[step][0], 1.0), 43: (v[step][1], 1.0)} for a, v in STEPS_1000_2000.items()}
    lines += ["## Proxy fidelity against the best FID (the same runs: seeds resampled with their target)", "",
              "| proxy | Kendall τ (95% interval) | Kendall τ, 2026-12-04's unpaired bootstrap |", "|---|---|---|"]
    archs = sorted(target)
    for step, cheap in proxies.items():
        x = [np.mean([v[0] for v in cheap[a].values()]) for a in archs]
        y = [np.mean([v[0] for v in target[a].values()]) for a in archs]
        rng = np.random.default_rng(fidelity.BOOTSTRAP_SEED)
        (low, high), _, _ = fidelity.bootstrap(cheap, target, archs, True, rng)  # the same runs: paired
        before = {500: "+0.00 (-0.88 to +0.95)", 1000: "+0.40 (-0.71 to +1.00)", 2000: "+0.80 (-0.45 to +1.00)"}[step]
        tau = kendalltau(x, y).statistic
        lines.append(f"| FID at step {step} | {tau:+.2f} ({low:+.2f} to {high:+.2f}) | {before} |")
    (HERE / "restated.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
