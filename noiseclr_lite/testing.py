"""A tiny, randomly initialised Stable Diffusion pipeline built in code, for tests.

It has every part of the real thing (CLIP tokenizer and text encoder, AutoencoderKL,
cross-attention UNet, DDIM scheduler) at toy sizes: 32x32 images, 4x16x16 latents,
32-wide text embeddings.  It builds in about a second, needs no download, and is the
same for the same seed, so tests of the library run offline on any CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .toyworld.domains import vocabulary
from .toyworld.model import build_scheduler
from .toyworld.tokenizer import save_word_tokenizer

TINY_IMAGE_SIZE = 32


def tiny_pipeline(seed: int = 0, tokenizer_dir: str | Path | None = None) -> StableDiffusionPipeline:
    """Build the tiny random pipeline (fp32, CPU, eval mode, frozen).

    Args:
        seed: initialises every weight; the same seed gives bit-identical weights.
        tokenizer_dir: where to write its word-level tokenizer (a temporary folder if None).
    """
    tokenizer_dir = Path(tokenizer_dir or tempfile.mkdtemp(prefix="tiny_tokenizer_"))
    tokenizer = save_word_tokenizer(vocabulary() + ["photo", "of", "person"], tokenizer_dir, model_max_length=16)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        projection_dim=32))
    unet = UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 2, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=TINY_IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=16)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=build_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class StatsOracle:
    """A deterministic stand-in for the attribute oracle (``toyworld.oracle.Oracle``), for tests
    of code that reads one: every attribute head reads a different image statistic (a channel's
    mean in one quadrant), squashed by a sigmoid, and the domain logits are uniform (so every
    image reads as the first domain, "face").  Same ``predict`` interface and output keys."""

    def predict(self, images: torch.Tensor) -> dict:
        """images [B, 3, H, W] in [-1, 1] -> {"domain": [B, 5] logits, "attributes": [B, len(HEADS)] in (0, 1)}."""
        from .toyworld.oracle import HEADS

        x = images.float()
        b, _, h, w = x.shape
        quadrants = [x[:, :, :h // 2, :w // 2], x[:, :, :h // 2, w // 2:], x[:, :, h // 2:, :w // 2],
                     x[:, :, h // 2:, w // 2:]]
        stats = torch.cat([q.mean((2, 3)) for q in quadrants], 1)  # [B, 12]
        stats = torch.cat([stats, stats.flip(1)], 1)  # [B, 24]
        return {"domain": torch.full((b, 5), 0.2), "attributes": torch.sigmoid(25 * stats[:, :len(HEADS)])}
