"""ADM U-Net, from "Diffusion Models Beat GANs on Image Synthesis" (Dhariwal & Nichol, 2021).

What distinguishes it from the DDPM U-Net (``standard``), all kept here:
- adaptive group normalisation: each residual block maps the time embedding to a per-channel
  scale and shift applied after its second GroupNorm, h = norm(h) * (1 + scale) + shift;
- multi-head self-attention at several resolutions (here 16x16 and 8x8, as ADM's CIFAR-scale
  models; the mid-block at 4x4 too) with 64 channels per head rather than a fixed head count
  (one head of all its channels where an attention level is narrower than 64, as at the shapes
  demo tier's 32; the tiers from smoke up are all 64 channels per head);
- BigGAN-style residual up- and down-sampling: resolution changes inside a residual block
  instead of with a bare (strided) convolution.

Adapted to the contract: 32x32, unconditional (no class embedding), epsilon output only (ADM
also learns the variance; the protocol's loss is epsilon MSE), no dropout. Built from diffusers'
``UNet2DModel``, which implements all three features.

Widths: ``BLOCK_OUT_CHANNELS`` are the channels of the four resolution levels (32, 16, 8, 4) and
``LAYERS_PER_BLOCK`` the residual blocks per level, exactly as for ``standard``; the extra
attention and residual resampling put it at about +24% parameters (+29% at smoke).
"""
import os

from diffusers import UNet2DModel


def build_model(device):
    block_out_channels = tuple(int(c) for c in os.environ.get("BLOCK_OUT_CHANNELS", "128,256,256,256").split(","))
    layers_per_block = int(os.environ.get("LAYERS_PER_BLOCK", "2"))
    # diffusers takes one head width for every attention level (16x16, 8x8 and the 4x4 mid-block)
    head_dim = min(64, *block_out_channels[1:])
    return UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=layers_per_block,
        block_out_channels=block_out_channels,
        # the Resnet*sample blocks are diffusers' attention-free levels with residual resampling
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"),
        up_block_types=("ResnetUpsampleBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        resnet_time_scale_shift="scale_shift",  # adaptive GroupNorm
        downsample_type="resnet",  # BigGAN-style residual down-sampling in the attention levels
        upsample_type="resnet",  # and up-sampling
        attention_head_dim=head_dim,  # channels per head: heads = channels / head_dim
        norm_num_groups=32,
        norm_eps=1e-6,
        act_fn="silu",
        time_embedding_type="positional",
        flip_sin_to_cos=True,
        freq_shift=0,
    ).to(device)
