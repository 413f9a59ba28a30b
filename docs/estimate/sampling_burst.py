"""How close the sampling burst's prediction is to a timed whole sampling batch, side by side in one process.

    python docs/estimate/sampling_burst.py [--width 16] [--batch 64] [--repeats 5]

The burst times 2 and 6 DDIM steps and predicts a batch at the task's 50 steps as fixed + 50 x step
(harness/measure/bursts.py); this times the whole batch too, alternating the two so that a slow spell of a
shared machine hits both, and prints the medians and their ratio. Its figures are in docs/estimate.md.
"""
import argparse
import statistics
import tempfile
import textwrap
import time
import types
from pathlib import Path

import torch

from harness.measure import bursts
from harness.protocol import registry
from harness.protocol.diffusion import ddim_sample, sample_seeds, to_uint8
from harness.protocol.tasks import resolve_task

TINY = textwrap.dedent('''
    import os
    import torch
    from diffusers.models.unets.unet_2d import UNet2DOutput

    class Tiny(torch.nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.inp = torch.nn.Conv2d(3, channels, 3, padding=1)
            self.time = torch.nn.Embedding(1000, channels)
            self.out = torch.nn.Conv2d(channels, 3, 3, padding=1)

        def forward(self, x, timestep):
            h = torch.nn.functional.silu(self.inp(x) + self.time(timestep)[:, :, None, None])
            return UNet2DOutput(sample=self.out(h))

    def build_model(device):
        return Tiny(int(os.environ["BLOCK_OUT_CHANNELS"].split(",")[0])).to(device)
''')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = resolve_task("shapes", "smoke", {"sampling.steps": 50, "sampling.batch_size": args.batch,
                                            "evaluation.num_samples": args.batch})
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tiny.py"
        path.write_text(TINY)
        _, model = registry.load(str(path), {"BLOCK_OUT_CHANNELS": str(args.width)}, device, 0, spec.data.image_size)
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
