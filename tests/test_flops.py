"""MAC counts against hand counts: a single attention block, and the three baselines term by term."""
import pytest
import torch
from diffusers.models.attention_processor import Attention

from harness import peaks
from harness.flops import count_macs
from harness.measure.profile import build_for_counting, static_profile
from harness.protocol import registry
from harness.protocol.tasks import resolve_task


class _AttentionOnly(torch.nn.Module):
    """The contract's call shape around one diffusers attention block over 16x16 tokens."""

    def __init__(self, channels):
        super().__init__()
        self.attn = Attention(query_dim=channels, heads=channels // 8, dim_head=8, bias=True)

    def forward(self, x, timestep):
        b, c, h, w = x.shape
        tokens = x.mean(1, keepdim=True).expand(b, 64, h, w).reshape(b, 64, h * w).transpose(1, 2)  # [B,256,64]
        out = self.attn(tokens)
        return type("Out", (), {"sample": out.transpose(1, 2).reshape(b, 64, h, w)[:, :3]})()


def test_single_attention_block_matches_hand_count():
    # 4 projections (q, k, v, out) of N x C x C, plus QK^T and attention x V: 2 x heads x N x N x head_dim
    n, c = 32 * 32, 64
    macs = count_macs(_AttentionOnly(c), torch.device("cpu"))
    assert macs.by_op["scaled_dot_product_attention"] == 2 * (c // 8) * n * n * 8
    assert macs.by_op["linear"] == 4 * n * c * c
    assert "aten::scaled_dot_product_attention" not in macs.unsupported_ops


def hand_count(channels, layers, down_attn, up_attn):
    """MACs of diffusers' UNet2DModel (the google/ddpm-cifar10-32 layout) by conv, linear and
    attention, from its structure: resolutions 32/16/8/4, ResNet blocks with a time projection,
    attention blocks of 4 C x C projections over N = R^2 tokens, and skip concatenations up."""
    c0, res = channels[0], [32, 16, 8, 4]
    conv = linear = sdpa = 0

    def resnet(cin, cout, r):
        nonlocal conv, linear
        conv += r * r * 9 * cin * cout + r * r * 9 * cout * cout + (r * r * cin * cout if cin != cout else 0)
        linear += 4 * c0 * cout  # time embedding projection

    def attention(c, r):
        nonlocal linear, sdpa
        linear += 4 * (r * r) * c * c
        sdpa += 2 * (r * r) ** 2 * c  # heads x head_dim = C

    linear += c0 * 4 * c0 + 4 * c0 * 4 * c0  # time embedding MLP
    conv += 32 * 32 * 9 * 3 * c0 + 32 * 32 * 9 * c0 * 3  # conv_in, conv_out
    cin = c0
    for i, (c, r) in enumerate(zip(channels, res)):  # down path
        for j in range(layers):
            resnet(cin if j == 0 else c, c, r)
            if down_attn[i]:
                attention(c, r)
        if i < 3:
            conv += (r // 2) ** 2 * 9 * c * c  # strided 3x3 downsample
        cin = c
    top = channels[-1]
    resnet(top, top, 4), attention(top, 4), resnet(top, top, 4)  # mid block
    rev, prev = channels[::-1], channels[-1]
    for i, (c, r) in enumerate(zip(rev, res[::-1])):  # up path
        skip_in = rev[min(i + 1, 3)]
        for j in range(layers + 1):
            resnet((prev if j == 0 else c) + (skip_in if j == layers else c), c, r)
            if up_attn[i]:
                attention(c, r)
        if i < 3:
            conv += (2 * r) ** 2 * 9 * c * c  # 3x3 conv after nearest upsampling
        prev = c
    return {"conv": conv, "linear": linear, "scaled_dot_product_attention": sdpa}


LAYOUTS = {"standard": ([0, 1, 0, 0], [0, 0, 1, 0]), "full_attn": ([1] * 4, [1] * 4), "no_attn": ([0] * 4, [0] * 4)}


def test_baselines_match_hand_counts_at_every_tier():
    for tier in ("smoke", "small", "medium"):
        spec = resolve_task("cifar10", tier)
        for name, (down, up) in LAYOUTS.items():
            counted = count_macs(build_for_counting(registry.find_architecture(name), spec.width_env)).by_op
            expected = hand_count(spec.model.block_out_channels, spec.model.layers_per_block, down, up)
            assert {k: counted[k] for k in expected} == expected, (name, tier)


def test_full_attn_minus_no_attn_is_the_attention_at_every_level():
    spec = resolve_task("cifar10", "small")
    full = count_macs(build_for_counting(registry.find_architecture("full_attn"), spec.width_env)).by_op
    none = count_macs(build_for_counting(registry.find_architecture("no_attn"), spec.width_env)).by_op
    channels, layers = spec.model.block_out_channels, spec.model.layers_per_block
    per_level = [(layers + layers + 1) * 2 * (r * r) ** 2 * c for c, r in zip(channels, [32, 16, 8, 4])]
    assert full["scaled_dot_product_attention"] - none["scaled_dot_product_attention"] == sum(per_level)
    # the 32x32 level alone (N = 1024 tokens) dominates: the cost that placement decides
    assert per_level[0] > sum(per_level[1:])


def test_static_profile_keys():
    spec = resolve_task("cifar10", "smoke")
    result = static_profile(registry.find_architecture("standard"), spec)
    assert result["param_count"] == registry.parameter_count(registry.find_architecture("standard"), spec.width_env)
    assert abs(result["gflops"] - 2 * result["gmacs"]) < 1e-3
    assert "aten::silu" in result["unsupported_ops"]  # element-wise ops are listed, not silently dropped


@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4), ("NVIDIA H100 NVL", "bf16", 835.5), ("NVIDIA H100 PCIe", "tf32", 378.0),
    ("NVIDIA H200", "bf16", 989.4), ("NVIDIA H200 NVL", "tf32", 417.5), ("NVIDIA A100-SXM4-80GB", "tf32", 156.0),
    ("NVIDIA L40S", "bf16", 362.05), ("NVIDIA GeForce RTX 4090", "fp32", 82.6), ("AMD EPYC 7B13", "fp32", None),
])
def test_peaks_are_the_data_sheets_dense_figures_for_the_device_named(name, precision, peak, monkeypatch):
    monkeypatch.delenv("HARNESS_PEAK_TFLOPS", raising=False)
    assert peaks.peak_tflops(name, precision) == peak


def test_mfu_is_per_device_against_the_precision_used(monkeypatch):
    monkeypatch.delenv("HARNESS_PEAK_TFLOPS", raising=False)
    # 10 GFLOPs forward per image, 3x with backward, 4,947 img/s on one H100: 148.4 TFLOP/s of 494.7 (TF32)
    assert peaks.mfu(10.0, 4947.0, "NVIDIA H100 80GB HBM3", "tf32") == pytest.approx(0.3, rel=1e-3)
    # the same img/s from 4 GPUs is a quarter of that per device
    assert peaks.mfu(10.0, 4947.0, "NVIDIA H100 80GB HBM3", "tf32", devices=4) == pytest.approx(0.075, rel=1e-3)
    assert peaks.matmul_precision("bf16", "cuda", "9.0") == "bf16"
    assert peaks.matmul_precision("fp32", "cuda", "9.0") == "tf32"  # cuDNN's TF32 convolutions, PyTorch's default
    assert peaks.matmul_precision("fp32", "cuda", "7.0") == "fp32"  # V100: no TF32
    assert peaks.matmul_precision("fp32", "cpu") == "fp32"
