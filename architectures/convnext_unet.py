"""A U-Net built from ConvNeXt blocks with channel attention.

ConvNeXt blocks ("A ConvNet for the 2020s", Liu et al., 2022): a 7x7 depthwise convolution,
LayerNorm over channels, a pointwise MLP with 4x expansion and GELU, and a learnable per-channel
residual scale. Each block is gated by squeeze-and-excitation channel attention ("Squeeze-and-
Excitation Networks", Hu et al., 2018): global average pooling, a bottleneck MLP, a sigmoid
gate per channel. The timestep enters every block as a per-channel scale and shift of the
normalised features (before the MLP). The U-Net around them is the usual one: four levels with
skip connections (concatenated, then a 1x1 projection), 2x2 strided convolutions down, nearest
up-sampling plus a 3x3 convolution up, and a middle stage at 4x4. ConvNeXt U-Nets of this kind
are used as diffusion backbones without self-attention.

Adapted to the contract: 32x32, unconditional, epsilon output.

Widths: each level uses its BLOCK_OUT_CHANNELS entry; ConvNeXt blocks hold ~8.5 C^2 parameters
against a ResNet block's ~18 C^2, so each level has 3 x LAYERS_PER_BLOCK of them down and up (6 at
every real tier), two in the middle: within ~10% of ``standard``'s parameters at each tier.
"""
import os

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: a gate in (0, 1) per channel from the globally pooled features."""

    def __init__(self, channels, reduction=8):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, channels // reduction), nn.SiLU(),
                                 nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x):
        """x [B,C,H,W] -> the gate [B,C,1,1]."""
        return self.mlp(x.mean(dim=(2, 3)))[:, :, None, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, channels, time_dim):
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.GroupNorm(1, channels)  # LayerNorm over (C, H, W), as ConvNeXt's channels-first LN
        self.time = nn.Linear(time_dim, 2 * channels)
        self.pw1 = nn.Conv2d(channels, 4 * channels, 1)
        self.pw2 = nn.Conv2d(4 * channels, channels, 1)
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1), 1e-1))
        self.channel_attention = ChannelAttention(channels)

    def forward(self, x, t_emb):
        """x [B,C,H,W], t_emb [B,T]."""
        scale, shift = self.time(nn.functional.silu(t_emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm(self.dwconv(x)) * (1 + scale) + shift
        h = self.pw2(nn.functional.gelu(self.pw1(h)))
        return x + self.gamma * h * self.channel_attention(h)


class Stage(nn.Module):
    """Blocks at one resolution; ``cin`` != ``cout`` adds a 1x1 projection in front."""

    def __init__(self, cin, cout, depth, time_dim):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.blocks = nn.ModuleList(ConvNeXtBlock(cout, time_dim) for _ in range(depth))

    def forward(self, x, t_emb):
        x = self.proj(x)
        for block in self.blocks:
            x = block(x, t_emb)
        return x


class ConvNeXtUNet(nn.Module):
    def __init__(self, widths, depth, channels=3):
        super().__init__()
        time_dim = 4 * widths[0]
        self.time_proj = Timesteps(widths[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(widths[0], time_dim)
        self.conv_in = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        cin = widths[0]
        for i, c in enumerate(widths):  # levels at 32, 16, 8, 4
            self.down.append(Stage(cin, c, depth, time_dim))
            self.downsample.append(nn.Conv2d(c, c, 2, stride=2) if i < len(widths) - 1 else nn.Identity())
            cin = c
        self.mid = Stage(cin, cin, 2, time_dim)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, c in reversed(list(enumerate(widths))):
            self.up.append(Stage(cin + c, c, depth, time_dim))  # concatenated skip from the same level
            self.upsample.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                               nn.Conv2d(c, widths[i - 1], 3, padding=1)) if i > 0 else nn.Identity())
            cin = widths[i - 1] if i > 0 else c
        self.norm_out = nn.GroupNorm(32, widths[0])
        self.conv_out = nn.Conv2d(widths[0], channels, 3, padding=1)

    def forward(self, x, timestep):
        t_emb = self.time_embed(self.time_proj(timestep).to(x.dtype))
        h = self.conv_in(x)
        skips = []
        for stage, down in zip(self.down, self.downsample):
            h = stage(h, t_emb)
            skips.append(h)
            h = down(h)
        h = self.mid(h, t_emb)
        for stage, up in zip(self.up, self.upsample):
            h = up(stage(torch.cat([h, skips.pop()], dim=1), t_emb))
        return UNet2DOutput(sample=self.conv_out(nn.functional.silu(self.norm_out(h))))


def build_model(device):
    block_out_channels = [int(c) for c in os.environ.get("BLOCK_OUT_CHANNELS", "128,256,256,256").split(",")]
    layers_per_block = int(os.environ.get("LAYERS_PER_BLOCK", "2"))
    return ConvNeXtUNet(block_out_channels, depth=3 * layers_per_block).to(device)
