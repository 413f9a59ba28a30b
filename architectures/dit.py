"""DiT, from "Scalable Diffusion Models with Transformers" (Peebles & Xie, 2023).

The image is cut into 2x2 patches (256 tokens at 32x32) with fixed 2-D sin-cos position
embeddings, processed by a stack of transformer blocks conditioned through adaLN-Zero, and
projected back to patches. adaLN-Zero: the timestep embedding c is mapped, per block, to a shift,
scale and gate for the attention branch and for the MLP branch; the mapping is initialised to
zero, so every block starts as the identity and the final layer starts at zero output.

Adapted to the contract: 32x32, unconditional (the conditioning is the timestep alone, no class
embedding), epsilon output only (DiT also learns the variance), patch size 2 as DiT-*/2.

Widths: hidden size = 2 x max(BLOCK_OUT_CHANNELS) (small 256, medium 512, large 1024),
depth = 4 x LAYERS_PER_BLOCK (8 at every real tier), 64 channels per attention head, MLP ratio 4.
A block has about 18 x hidden^2 parameters (attention 4, MLP 8, adaLN 6), which puts the model
within a few percent of ``standard`` at each tier.
"""
import os

from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import PatchEmbed, TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

PATCH = 2


def modulate(x, shift, scale):
    """x [B,N,D]; shift, scale [B,D]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(query_dim=hidden, heads=heads, dim_head=hidden // heads, bias=True, out_bias=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = FeedForward(hidden, mult=4, activation_fn="gelu-approximate")
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        nn.init.zeros_(self.adaLN[1].weight)  # adaLN-Zero: gates start at 0, the block is the identity
        nn.init.zeros_(self.adaLN[1].bias)

    def forward(self, x, c):
        """x [B,N,D] tokens, c [B,D] conditioning."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN(c).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class DiT(nn.Module):
    def __init__(self, hidden, depth, channels=3, size=32):
        super().__init__()
        self.channels, self.grid = channels, size // PATCH
        self.patch = PatchEmbed(height=size, width=size, patch_size=PATCH, in_channels=channels, embed_dim=hidden)
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, hidden)
        self.blocks = nn.ModuleList(DiTBlock(hidden, max(1, hidden // 64)) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.adaLN_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.proj_out = nn.Linear(hidden, PATCH * PATCH * channels)
        for layer in (self.adaLN_out[1], self.proj_out):  # the model starts by predicting zero noise
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, timestep):
        b = x.shape[0]
        c = self.time_embed(self.time_proj(timestep).to(x.dtype))  # [B,D]
        h = self.patch(x)  # [B,256,D], position embedding included
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.adaLN_out(c).chunk(2, dim=1)
        h = self.proj_out(modulate(self.norm_out(h), shift, scale))  # [B,256,p*p*C]
        h = h.view(b, self.grid, self.grid, PATCH, PATCH, self.channels)
        out = h.permute(0, 5, 1, 3, 2, 4).reshape(b, self.channels, self.grid * PATCH, self.grid * PATCH)
        return UNet2DOutput(sample=out)


def build_model(device):
    block_out_channels = [int(c) for c in os.environ.get("BLOCK_OUT_CHANNELS", "128,256,256,256").split(",")]
    layers_per_block = int(os.environ.get("LAYERS_PER_BLOCK", "2"))
    return DiT(hidden=2 * max(block_out_channels), depth=4 * layers_per_block).to(device)
