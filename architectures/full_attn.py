"""The DDPM U-Net with self-attention at every resolution level (32, 16, 8 and 4).

This is diffusers' ``UNet2DModel`` with standard.py's configuration (the ``google/ddpm-cifar10-32``
checkpoint's, with attention heads of 8 channels: see standard.py) but for where attention is.
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
        down_block_types=("AttnDownBlock2D",) * 4,
        up_block_types=("AttnUpBlock2D",) * 4,
        norm_num_groups=32,
        norm_eps=1e-6,
        act_fn="silu",
        time_embedding_type="positional",
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        attention_head_dim=8,  # as standard.py (the checkpoint: one head)
    ).to(device)
