"""One property per architecture family, and that each file runs with no harness at all."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.protocol import registry
from harness.protocol.tasks import resolve_task

SMALL = resolve_task("cifar10", "small").width_env
SMOKE = resolve_task("cifar10", "smoke").width_env


def build(name, env=SMOKE):
    torch.manual_seed(0)
    return registry.build(registry.find_architecture(name), env, torch.device("cpu"))


def test_every_architecture_runs_outside_the_harness():
    # a plain Python process: set the width variables, exec the file, call build_model, run it
    script = """
import json, os, runpy, sys, torch
os.environ["BLOCK_OUT_CHANNELS"], os.environ["LAYERS_PER_BLOCK"] = "32,64,64,64", "1"
shapes = {}
for path in sys.argv[1:]:
    model = runpy.run_path(path)["build_model"]("cpu")
    out = model(torch.randn(2, 3, 32, 32), torch.tensor([3, 999])).sample
    shapes[path] = [list(out.shape), bool(torch.isfinite(out).all())]
assert not any(m == "harness" or m.startswith("harness.") for m in sys.modules), "an architecture imported the harness"
print(json.dumps(shapes))
"""
    paths = [str(registry.find_architecture(n).path) for n in registry.architecture_names()]
    result = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, cwd="/",
                            timeout=600)
    assert result.returncode == 0, result.stderr
    shapes = json.loads(result.stdout)
    assert len(shapes) == len(paths) >= 8
    assert all(v == [[2, 3, 32, 32], True] for v in shapes.values())


@pytest.mark.parametrize("tier", ["smoke", "small", "medium", "large"])
def test_every_family_is_within_30_percent_of_standard(tier):
    env = resolve_task("cifar10", tier).width_env
    base = registry.parameter_count(registry.find_architecture("standard"), env)
    for name in registry.architecture_names():
        count = registry.parameter_count(registry.find_architecture(name), env)
        assert abs(count / base - 1) <= 0.30, f"{name} at {tier}: {count:,} vs standard {base:,}"


def test_adm_uses_scale_shift_norm_residual_resampling_and_64_channel_heads():
    from diffusers.models.resnet import ResnetBlock2D

    model = build("adm", SMALL)
    resnets = [m for m in model.modules() if isinstance(m, ResnetBlock2D)]
    # adaptive GroupNorm: the time embedding gives a scale and a shift per channel
    assert all(r.time_emb_proj.out_features == 2 * r.out_channels for r in resnets if r.time_emb_proj is not None)
    # BigGAN-style: every resolution change is a residual block with down/up=True
    assert all(isinstance(b.downsamplers[0], ResnetBlock2D) and b.downsamplers[0].down for b in model.down_blocks[:3])
    assert all(isinstance(b.upsamplers[0], ResnetBlock2D) and b.upsamplers[0].up for b in model.up_blocks[:3])
    # attention at 16x16 and 8x8 with 64 channels per head
    heads = [(i, a.heads) for i, b in enumerate(model.down_blocks) for a in getattr(b, "attentions", [])]
    assert {i for i, _ in heads} == {1, 2} and all(h == 128 // 64 for _, h in heads)


def test_a_fresh_dit_block_is_the_identity_and_the_model_starts_at_zero():
    model = build("dit")
    x, c = (torch.randn(2, 256, model.blocks[0].norm1.normalized_shape[0]),
            torch.randn(2, model.blocks[0].norm1.normalized_shape[0]))
    for block in model.blocks:
        assert torch.equal(block(x, c), x)  # adaLN-Zero: both gates are exactly 0
    assert torch.count_nonzero(model(torch.randn(2, 3, 32, 32), torch.tensor([1, 500])).sample) == 0


def test_uvit_time_is_a_token_and_long_skips_join_mirrored_blocks():
    model = build("uvit")
    seen = {}
    for i, block in enumerate(model.in_blocks):
        block.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(("in", i), out))
    for i, block in enumerate(model.out_blocks):
        block.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(("skip", i), args[1]))
    model(torch.randn(2, 3, 32, 32), torch.tensor([1, 500]))
    k = len(model.in_blocks)
    assert seen[("in", 0)].shape[1] == 1 + 16 * 16  # the timestep token plus 2x2 patches
    assert all(seen[("skip", i)] is seen[("in", k - 1 - i)] for i in range(k))


def test_dilated_convnet_keeps_the_spatial_size_and_grows_dilation_as_powers_of_three():
    model = build("dilated_convnet", SMALL)
    assert model.dilations == [1, 1, 3, 3, 9, 9, 27, 27]
    assert [b.conv1.dilation[0] for b in model.blocks] == model.dilations
    sizes = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, args, out: sizes.append(tuple(out.shape[1:])))
    model(torch.randn(2, 3, 32, 32), torch.tensor([1, 500]))
    assert sizes == [(model.conv_in.out_channels, 32, 32)] * len(model.blocks)
    assert not any(isinstance(m, (torch.nn.Upsample, torch.nn.AvgPool2d)) or getattr(m, "stride", (1,))[0] > 1
                   for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Upsample, torch.nn.AvgPool2d)))


def test_convnext_blocks_are_depthwise_7x7_with_a_channel_gate():
    model = build("convnext_unet")
    blocks = [m for m in model.modules() if type(m).__name__ == "ConvNeXtBlock"]
    assert blocks and all(b.dwconv.kernel_size == (7, 7) and b.dwconv.groups == b.dwconv.in_channels for b in blocks)
    gates = []
    for b in blocks:
        b.channel_attention.register_forward_hook(lambda m, args, out: gates.append(out))
    model(torch.randn(2, 3, 32, 32), torch.tensor([1, 500]))
    assert len(gates) == len(blocks)
    for gate, block in zip(gates, blocks):
        assert gate.shape == (2, block.dwconv.in_channels, 1, 1) and (gate > 0).all() and (gate < 1).all()


def test_standard_is_the_ddpm_cifar10_checkpoint_config_but_for_its_documented_head_width():
    checkpoint = json.loads((Path(__file__).parent / "fixtures" / "google-ddpm-cifar10-32-config.json").read_text())
    checkpoint.pop("_comment")
    medium = resolve_task("cifar10", "medium").width_env  # the checkpoint's widths
    ours = {k: v for k, v in dict(build("standard", medium).config).items() if not k.startswith("_")}
    differs = {k: (ours.get(k), v) for k, v in checkpoint.items() if _plain(ours.get(k)) != _plain(v)}
    assert differs == {"attention_head_dim": (8, None)}  # said in standard.py's docstring, and why
    source = registry.find_architecture("standard").path.read_text()
    assert "attention_head_dim=8" in source and "``null`` (one head" in source


@pytest.mark.parametrize("name, attention", [("full_attn", ["AttnDownBlock2D"] * 4), ("no_attn", ["DownBlock2D"] * 4)])
def test_the_other_baselines_are_standard_but_for_where_attention_is(name, attention):
    standard, other = (dict(build(n, SMALL).config) for n in ("standard", name))
    differs = sorted(k for k in standard if not k.startswith("_") and _plain(standard[k]) != _plain(other[k]))
    assert set(differs) <= {"down_block_types", "up_block_types"} and list(other["down_block_types"]) == attention


def _plain(value):
    return list(value) if isinstance(value, tuple) else value
