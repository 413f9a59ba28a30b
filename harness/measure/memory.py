"""Peak memory while a block runs: the GPU allocator's peak on CUDA, the process's resident set on a CPU.

    with PeakMemory(device) as memory:
        trainer.train_step()
    memory.peak_mb, memory.increase_mb, memory.kind

On CUDA the peak is torch's ``max_memory_allocated`` (tensors only, not the allocator's cache or the
CUDA context: what decides whether a batch fits). On a CPU there is no allocator counter, so a thread
samples the process's RSS every 5 ms; ``increase_mb`` (the peak over the RSS at the start) is the
block's own memory, ``peak_mb`` includes everything the process held before.
"""
from __future__ import annotations

import threading

import torch

KINDS = {"cuda": "torch.cuda.max_memory_allocated", "cpu": "process RSS (sampled every 5 ms)"}


class PeakMemory:
    def __init__(self, device: torch.device):
        self.device = device
        self.kind = KINDS["cuda" if device.type == "cuda" else "cpu"]
        self.baseline = self.peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = self.peak = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        self._process = psutil.Process()
        self.baseline = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):  # 5 ms: fine enough, and light on a 2-core CPU
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device))
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)

    @property
    def increase_mb(self) -> float:
        return round((self.peak - self.baseline) / 2**20, 1)
