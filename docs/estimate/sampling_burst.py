"""How close the sampling burst's prediction is to a timed whole sampling batch, side by side in one process.

    python docs/estimate/sampling_burst.py [--arch FILE] [--width 16] [--batch 64] [--repeats 5]

The burst times 2 and 6 DDIM steps and predicts a batch at the task's 50 steps as fixed + 50 x step
(harness/measure/bursts.py); this times the whole batch too, alternating the two so that a slow spell of a
shared machine hits both, and prints the medians and their ratio. Its figures are in docs/estimate.md.
"""
import argparse
import statistics
import time
import types
from pathlib import Path

import torch

from harness.measure import bursts
from harness.protocol import registry
from harness.protocol.diffusion import ddim_sample, sample_seeds, to_uint8
from harness.protocol.tasks import resolve_task

REPO = Path(__file__).resolve().parents[2]
# the tests' two-convolution denoiser, its width from BLOCK_OUT_CHANNELS: per-batch fixed costs weigh most there
TINY = REPO / "tests" / "fixtures" / "report" / "archs" / "standard.py"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default=str(TINY), help="an architecture file or name (default: a tiny denoiser)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = resolve_task("shapes", "smoke", {"sampling.steps": 50, "sampling.batch_size": args.batch,
                                            "evaluation.num_samples": args.batch})
    device = torch.device("cpu")
    _, model = registry.load(args.arch, {"BLOCK_OUT_CHANNELS": f"{args.width},{args.width}"}, device, 0,
                             spec.data.image_size)
    seeds = sample_seeds(spec.seed, args.batch)
    trainer = types.SimpleNamespace(ema_model=lambda: model)

    def whole_batch() -> float:
        start = time.perf_counter()
        to_uint8(ddim_sample(model, spec.diffusion, spec.sampling, seeds, device, None, spec.data.image_size))
        return time.perf_counter() - start

    whole_batch()  # warm-up, as the burst has
    predicted, timed = [], []
    for _ in range(args.repeats):
        predicted.append(bursts.sampling_burst(trainer, spec, device)["sampling_batch_seconds"])
        timed.append(whole_batch())
    p, t = statistics.median(predicted), statistics.median(timed)
    print(f"{args.batch} images, width {args.width}, 50 steps, 1 thread: timed {t:.3f} s, predicted {p:.3f} s "
          f"({p / t - 1:+.1%}), medians of {args.repeats}")


if __name__ == "__main__":
    main()
