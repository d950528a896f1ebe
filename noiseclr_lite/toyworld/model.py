"""The bundled world model's architecture: a small Stable Diffusion in diffusers' layout.

64x64 RGB images, an ``AutoencoderKL`` with 4x downsampling (4x16x16 latents), a small
``CLIPTextModel`` over the word-level tokenizer, and a ``UNet2DConditionModel`` with
cross-attention, noise-predicting under Stable Diffusion's own scaled-linear schedule.
Everything is an ordinary diffusers/transformers class, so the saved folder loads with
``StableDiffusionPipeline.from_pretrained(path)`` and every code path of the library is
the one that runs on Stable Diffusion 1.5.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .domains import IMAGE_SIZE, vocabulary
from .tokenizer import save_word_tokenizer

LATENT_SIZE = IMAGE_SIZE // 4
TEXT_HIDDEN = 128
MAX_PROMPT_TOKENS = 32


def build_vae(widths: tuple[int, ...] = (16, 32, 64)) -> AutoencoderKL:
    """An AutoencoderKL that maps [B, 3, 64, 64] in [-1, 1] to [B, 4, 16, 16] latents."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=widths, layers_per_block=1, norm_num_groups=16,
    )


def build_text_encoder(vocab_size: int, hidden: int = TEXT_HIDDEN, layers: int = 3) -> CLIPTextModel:
    """A small CLIP text transformer; token ids 0/1 are <|startoftext|>/<|endoftext|>."""
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=MAX_PROMPT_TOKENS,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=hidden,
    )
    return CLIPTextModel(config)


def build_unet(widths: tuple[int, ...] = (64, 128, 128), layers_per_block: int = 1,
               cross_attention_dim: int = TEXT_HIDDEN) -> UNet2DConditionModel:
    """A UNet2DConditionModel over 4x16x16 latents with cross-attention at 16 and 8 px."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=widths, layers_per_block=layers_per_block, cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=32,
    )


def build_scheduler() -> DDIMScheduler:
    """Stable Diffusion 1.5's noise schedule (scaled-linear betas, 1000 steps, epsilon)."""
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )


def build_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """Write the word-level tokenizer for every toyworld caption word into ``folder``."""
    return save_word_tokenizer(vocabulary(), folder, model_max_length=MAX_PROMPT_TOKENS)


def assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler=None) -> StableDiffusionPipeline:
    """Put the parts together as a StableDiffusionPipeline without a safety checker."""
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler or build_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
