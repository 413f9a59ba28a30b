"""The default search space: where self-attention goes in diffusers' ``UNet2DModel``, and how deep.

A space is one small file, so that a user can write their own (``--space``). It imports nothing
from the harness (an exported winner carries the file's code) and defines:

    suggest(trial) -> dict         asks an Optuna trial for every choice (trial.suggest_categorical, ...)
    build(choices, block_out_channels, device) -> nn.Module   the model those choices describe
    infeasible(choices, block_out_channels) -> str | None     optional: why a point cannot be built
    baselines(layers_per_block) -> {name: choices}            optional: enqueued as the first trials

The widths are the tier's ``BLOCK_OUT_CHANNELS`` (32x32, 16x16, 8x8, 4x4 levels); everything else
is a choice. The three baselines are points of this space: ``baseline(name, layers_per_block)``
gives their choices, and building them reproduces ``architectures/standard.py``, ``full_attn.py``
and ``no_attn.py`` parameter for parameter (tests/test_search_space.py checks every tier).

diffusers gives a level ``channels // head_channels`` attention heads, so a level with fewer
channels than ``head_channels`` would get none: ``infeasible`` names such choices before a run.
"""
from __future__ import annotations

from diffusers import UNet2DModel

LEVELS = (32, 16, 8, 4)  # the resolution of each entry of BLOCK_OUT_CHANNELS
CHOICES = {
    **{f"attn_{r}": [False, True] for r in LEVELS},  # self-attention in that level's blocks
    "mid_attn": [True, False],  # self-attention in the 4x4 mid-block
    "layers_per_block": [1, 2, 3],
    "head_channels": [8, 32, 64],  # channels per attention head
    "norm_groups": [8, 16, 32],  # GroupNorm groups
    "time_conditioning": ["add", "scale_shift"],  # timestep embedding added, or as GroupNorm scale and shift
    "resample": ["conv", "resnet"],  # down/up-sampling by a strided/nearest conv, or by a residual block
}


def suggest(trial) -> dict:
    return {name: trial.suggest_categorical(name, options) for name, options in CHOICES.items()}


def baseline(name: str, layers_per_block: int) -> dict:
    """The choices of a baseline architecture file at a tier's depth."""
    attention = {"standard": {16}, "full_attn": set(LEVELS), "no_attn": set()}[name]
    return {**{f"attn_{r}": r in attention for r in LEVELS}, "mid_attn": True, "layers_per_block": layers_per_block,
            "head_channels": 8, "norm_groups": 32, "time_conditioning": "add", "resample": "conv"}


def baselines(layers_per_block: int) -> dict[str, dict]:
    return {name: baseline(name, layers_per_block) for name in ("standard", "full_attn", "no_attn")}


def infeasible(choices: dict, block_out_channels: tuple[int, ...]) -> str | None:
    """Why these choices cannot be built at these widths, or None."""
    attended = [c for r, c in zip(LEVELS, block_out_channels) if choices[f"attn_{r}"]]
    attended += [block_out_channels[-1]] if choices["mid_attn"] else []
    narrow = [c for c in attended if c < choices["head_channels"]]
    if narrow:
        return (f"{choices['head_channels']} channels per head at a level of {min(narrow)} channels would give it "
                f"no attention head")
    uneven = [c for c in block_out_channels if c % choices["norm_groups"]]
    if uneven:
        return f"{choices['norm_groups']} GroupNorm groups do not divide {uneven[0]} channels"
    return None


def build(choices: dict, block_out_channels: tuple[int, ...], device="cpu") -> UNet2DModel:
    attn = [choices[f"attn_{r}"] for r in LEVELS]
    return UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3,
        block_out_channels=tuple(block_out_channels), layers_per_block=choices["layers_per_block"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),  # 4x4 first
        add_attention=choices["mid_attn"], attention_head_dim=choices["head_channels"],
        norm_num_groups=choices["norm_groups"],
        resnet_time_scale_shift={"add": "default", "scale_shift": "scale_shift"}[choices["time_conditioning"]],
        downsample_type=choices["resample"], upsample_type=choices["resample"],
        # fixed as in the DDPM CIFAR-10 configuration the baselines use
        norm_eps=1e-6, act_fn="silu", time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1,
        downsample_padding=0,
    ).to(device)
