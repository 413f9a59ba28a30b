"""U-ViT, from "All are Worth Words: A ViT Backbone for Diffusion Models" (Bao et al., 2023).

A plain ViT made into a denoiser with three choices: every input is a token (the timestep is one
extra token next to the 2x2 image patches, not a modulation); long skip connections join each
shallow block to its mirrored deep block (the two are concatenated and projected back with a
linear layer), as the skips of a U-Net do; and a 3x3 convolution after un-patchifying smooths
patch seams. Blocks are pre-LayerNorm transformer blocks with learned position embeddings.

Adapted to the contract: 32x32, unconditional, epsilon output, patch size 2 (U-ViT's CIFAR-10
model is U-ViT-S/2 with 13 blocks at width 512).

Widths: hidden size = 2 x max(BLOCK_OUT_CHANNELS) (small 256, medium 512, large 1024);
2 x LAYERS_PER_BLOCK + 1 blocks on each side of the middle block (5 in, 1 mid, 5 out at every real
tier), 64 channels per head, MLP ratio 4: about (2k+1) x 12 x hidden^2 + k x 2 x hidden^2
parameters for k skips, within a few percent of ``standard`` at each tier.
"""
import os

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import PatchEmbed, TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

PATCH = 2


class Block(nn.Module):
    """Pre-LN transformer block; with ``skip`` it first fuses a long skip: linear([x, skip])."""

    def __init__(self, hidden, heads, skip=False):
        super().__init__()
        self.skip_linear = nn.Linear(2 * hidden, hidden) if skip else None
        self.norm1 = nn.LayerNorm(hidden)
        self.attn = Attention(query_dim=hidden, heads=heads, dim_head=hidden // heads, bias=True, out_bias=True)
        self.norm2 = nn.LayerNorm(hidden)
        self.mlp = FeedForward(hidden, mult=4, activation_fn="gelu")

    def forward(self, x, skip=None):
        """x, skip [B,1+N,D]."""
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViT(nn.Module):
    def __init__(self, hidden, side_depth, channels=3, size=32):
        super().__init__()
        self.channels, self.grid = channels, size // PATCH
        heads = max(1, hidden // 64)
        self.patch = PatchEmbed(height=size, width=size, patch_size=PATCH, in_channels=channels, embed_dim=hidden,
                                pos_embed_type=None)
        self.time_proj = Timesteps(hidden, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(hidden, 4 * hidden, out_dim=hidden)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, hidden))  # time token + patches
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.in_blocks = nn.ModuleList(Block(hidden, heads) for _ in range(side_depth))
        self.mid_block = Block(hidden, heads)
        self.out_blocks = nn.ModuleList(Block(hidden, heads, skip=True) for _ in range(side_depth))
        self.norm = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, PATCH * PATCH * channels)
        self.final_conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, timestep):
        b = x.shape[0]
        time_token = self.time_embed(self.time_proj(timestep).to(x.dtype))[:, None]  # [B,1,D]
        h = torch.cat([time_token, self.patch(x)], dim=1) + self.pos_embed  # [B,1+256,D]
        skips = []
        for block in self.in_blocks:
            h = block(h)
            skips.append(h)
        h = self.mid_block(h)
        for block in self.out_blocks:  # deepest skip first: out block i meets in block k-1-i
            h = block(h, skips.pop())
        h = self.proj_out(self.norm(h))[:, 1:]  # drop the time token: [B,256,p*p*C]
        h = h.view(b, self.grid, self.grid, PATCH, PATCH, self.channels)
        h = h.permute(0, 5, 1, 3, 2, 4).reshape(b, self.channels, self.grid * PATCH, self.grid * PATCH)
        return UNet2DOutput(sample=self.final_conv(h))


def build_model(device):
    block_out_channels = [int(c) for c in os.environ.get("BLOCK_OUT_CHANNELS", "128,256,256,256").split(",")]
    layers_per_block = int(os.environ.get("LAYERS_PER_BLOCK", "2"))
    return UViT(hidden=2 * max(block_out_channels), side_depth=2 * layers_per_block + 1).to(device)
