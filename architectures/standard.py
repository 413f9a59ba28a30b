"""The original DDPM U-Net (Ho et al., 2020) for CIFAR-10: self-attention at 16x16 (and in the 4x4 mid-block).

This is diffusers' ``UNet2DModel`` with the configuration of the ``google/ddpm-cifar10-32``
checkpoint (its config.json), every constructor argument the same but one:
``attention_head_dim=8`` (32 heads of 8 channels at 256 channels) where the checkpoint has
``null`` (one head as wide as the block). The heads change neither the parameter count nor the
FLOPs, only how attention splits its channels; 8 is kept so that standard, full_attn, no_attn and
the search space's points (harness/search/space.py, heads of 8, 32 or 64 channels) differ only
in where attention is. tests/test_families.py compares every argument with the checkpoint's.
Widths come from the environment, as in the MLS-Bench cv-diffusion-architecture task, so the same
file runs at every tier:

    BLOCK_OUT_CHANNELS  comma-separated channels per resolution level (32, 16, 8, 4),
                        e.g. "128,256,256,256"
    LAYERS_PER_BLOCK    residual blocks per level (default 2)

The file imports nothing from the harness: copy it into any training script.
"""
import os

from diffusers import UNet2DModel


def build_model(device):
    block_out_channels = tuple(int(c) for c in os.environ.get("BLOCK_OUT_CHANNELS", "128,256,256,256").split(","))
    layers_per_block = int(os.environ.get("LAYERS_PER_BLOCK", "2"))
    return UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=layers_per_block,
        block_out_channels=block_out_channels,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        norm_eps=1e-6,
        act_fn="silu",
        time_embedding_type="positional",
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        center_input_sample=False,
        mid_block_scale_factor=1,
        attention_head_dim=8,  # the checkpoint: None (one head); see the docstring
    ).to(device)
