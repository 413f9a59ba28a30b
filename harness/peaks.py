"""The devices' dense peaks that MFU (model FLOPs utilisation) is rated against, and MFU itself.

A leaf (no harness imports, no torch at import): a run stamps its record with its MFU (harness/run/), the
profile, bench and estimate (harness/measure/) rate the same way, and a report reads records without loading
torch.
"""
from __future__ import annotations

import os

# Dense peak throughput per GPU (TFLOP/s, without the 2:4 sparsity the data sheets quote beside it),
# from the vendors' data sheets: H100/H200 SXM and NVL, H100 PCIe, A100, L40S data sheets; RTX 4090 from
# the Ada architecture whitepaper (tensor ops with fp32 accumulation). "tf32" is the tensor-core rate of
# fp32 matrix work (cuDNN convolutions use it by default on Ampere and later); "fp32" the plain CUDA-core
# rate. The more specific names come first: "H100 NVL" before "H100". Override with HARNESS_PEAK_TFLOPS.
PEAK_TFLOPS = {
    "H100 NVL": {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H200 NVL": {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.05, "tf32": 183.0, "fp32": 91.6},
    "RTX 4090": {"bf16": 165.2, "tf32": 82.6, "fp32": 82.6},
}


def peak_tflops(device_name: str, precision: str) -> float | None:
    """One device's dense peak for ``precision`` ("bf16", "tf32" or "fp32"), or None when unknown."""
    if os.environ.get("HARNESS_PEAK_TFLOPS"):
        return float(os.environ["HARNESS_PEAK_TFLOPS"])
    for key, peaks in PEAK_TFLOPS.items():
        if key in device_name:
            return peaks.get(precision)
    return None


def matmul_precision(precision: str, device_type: str, capability: str | None = None) -> str:
    """The peak a run's matrix work is rated against: bf16 for bf16 autocast; for fp32 on a GPU of compute
    capability 8.0 or later with cuDNN's TF32 on (PyTorch's default), TF32, since convolutions dominate."""
    if precision == "bf16":
        return "bf16"
    if device_type == "cuda" and capability and float(capability) >= 8.0:
        import torch  # here only: reading records (a report) needs no torch

        if torch.backends.cudnn.allow_tf32:
            return "tf32"
    return "fp32"


def mfu(gflops_per_image: float, train_images_per_sec: float, device_name: str, precision: str,
        devices: int = 1) -> float | None:
    """Model FLOPs utilisation of training per device: forward + backward = 3 x the forward FLOPs per
    image, over ``devices`` times one device's peak (``train_images_per_sec`` is the whole run's)."""
    peak = peak_tflops(device_name, precision)
    if not peak or not gflops_per_image:
        return None
    return 3 * gflops_per_image * train_images_per_sec / (peak * 1e3 * devices)
