"""A dilated ConvNet denoiser: no U-Net, no attention, no resampling.

A stack of residual blocks at constant width and full 32x32 resolution whose 3x3 convolutions
are dilated by 3^(i//2) for block i (1, 1, 3, 3, 9, 9, 27, 27, then repeating), so the receptive
field grows geometrically and covers the whole image after eight blocks, as in the context
aggregation network of "Multi-Scale Context Aggregation by Dilated Convolutions" (Yu & Koltun,
2016). It asks whether a U-Net's down/up-sampling is needed at all. The timestep embedding is
added to every block (after its first convolution), as in a DDPM residual block.

Adapted to the contract: 32x32 in and out (the spatial size never changes), epsilon output.

Widths: constant width = 2 x max(BLOCK_OUT_CHANNELS) (small 256, medium 512, large 1024),
4 x LAYERS_PER_BLOCK blocks (8 at every real tier). A block is two dilated 3x3 convolutions
(~18 x width^2 parameters), within ~10% of ``standard``'s parameters at each tier; since every
block runs at full resolution it costs several times ``standard``'s MACs: the trade-off it shows.
"""
import os

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn


class DilatedBlock(nn.Module):
    def __init__(self, width, time_dim, dilation):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)
        self.time = nn.Linear(time_dim, width)
        self.norm2 = nn.GroupNorm(32, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)
        self.act = nn.SiLU()

    def forward(self, x, t_emb):
        """x [B,W,32,32], t_emb [B,T] -> [B,W,32,32]."""
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.time(self.act(t_emb))[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return x + h


class DilatedConvNet(nn.Module):
    def __init__(self, width, depth, channels=3):
        super().__init__()
        time_dim = width
        self.time_proj = Timesteps(width // 2, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(width // 2, time_dim)
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.dilations = [3 ** ((i // 2) % 4) for i in range(depth)]
        self.blocks = nn.ModuleList(DilatedBlock(width, time_dim, d) for d in self.dilations)
        self.norm_out = nn.GroupNorm(32, width)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, timestep):
        t_emb = self.time_embed(self.time_proj(timestep).to(x.dtype))
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, t_emb)
        return UNet2DOutput(sample=self.conv_out(torch.nn.functional.silu(self.norm_out(h))))


def build_model(device):
    block_out_channels = [int(c) for c in os.environ.get("BLOCK_OUT_CHANNELS", "128,256,256,256").split(",")]
    layers_per_block = int(os.environ.get("LAYERS_PER_BLOCK", "2"))
    return DilatedConvNet(width=2 * max(block_out_channels), depth=4 * layers_per_block).to(device)
