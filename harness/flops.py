"""Multiply-accumulates of one forward pass, attention included (the devices' peaks that MFU is rated against are
in harness/peaks.py).

A leaf (no harness imports): a run stamps its record with the counts (harness/run/), and the profile, bench and
estimate (harness/measure/) count the same way.

fvcore counts convolutions, linear layers, matmuls and norms by tracing the model, but skips
``aten::scaled_dot_product_attention`` ("unsupported operator"), and torch's FlopCounterMode
counts 0 for it on the CPU, so the cost of attention, the main axis this harness studies, would
be invisible. We register a handler for it: QK^T and attention x V cost
``B x heads x Nq x Nk x (d_qk + d_v)`` MACs, i.e. ``2 x B x heads x Nq x Nk x head_dim``.

Convention: fvcore's "flop" is one multiply-accumulate (MAC); ``gflops`` is 2 x ``gmacs``.
Element-wise ops (activations, additions, softmax) are not counted, as in fvcore and timm; the
ops nothing counted are reported with their call counts.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape


def sdpa_macs(inputs, outputs) -> int:
    """fvcore handle for aten::scaled_dot_product_attention: q [..., Nq, d], k [..., Nk, d], v [..., Nk, dv]."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch_heads = 1
    for size in q[:-2]:
        batch_heads *= size
    nq, d = q[-2], q[-1]
    nk, dv = k[-2], v[-1]
    return batch_heads * nq * nk * (d + dv)


@dataclass
class MacCount:
    macs: int  # one forward pass of one image
    by_op: dict[str, int]  # MACs per operator kind (conv, linear, scaled_dot_product_attention, ...)
    unsupported_ops: dict[str, int]  # ops nothing counted -> number of calls

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def gflops(self) -> float:
        return 2 * self.macs / 1e9


class _SampleOnly(torch.nn.Module):
    """Tracing needs tensor outputs; the contract returns an object with ``.sample``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, timestep):
        return self.model(x, timestep).sample


def count_macs(model: torch.nn.Module, device: torch.device | None = None, image_size: int = 32) -> MacCount:
    """MACs of ``model(x, timestep)`` for one image x [1,3,S,S] (S = ``image_size``) and timestep [1]."""
    device = device or next(model.parameters()).device
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    t = torch.full((1,), 500, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(_SampleOnly(model), (x, t))
        analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_macs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow in user models
            total = int(analysis.total())
            by_op = {k: int(v) for k, v in analysis.by_operator().items()}
            unsupported = dict(Counter(analysis.unsupported_ops()))
    finally:
        model.train(was_training)
    return MacCount(total, by_op, unsupported)


def record_counts(model: torch.nn.Module, device: torch.device, image_size: int = 32) -> dict:
    """Parameters and MACs (per image of the run's size) for the record, so FID can be read against compute."""
    try:
        macs = count_macs(model, device, image_size)
    except Exception as exc:  # tracing can fail on exotic models; the run itself must not
        return {"error": f"MAC count failed: {type(exc).__name__}: {exc}"}
    return {"param_count": sum(p.numel() for p in model.parameters()), "gmacs": round(macs.gmacs, 4),
            "gflops": round(macs.gflops, 4), "macs_by_op": macs.by_op, "unsupported_ops": macs.unsupported_ops}
