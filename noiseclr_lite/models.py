"""Loading a Stable Diffusion-format pipeline: the bundled model, a local folder or a hub id.

The same call loads the bundled 64 px world model on a laptop CPU and Stable Diffusion
1.5 on a GPU; only the ``model`` string changes.  A local folder loads with
``local_files_only=True``, so nothing reaches the network unless a hub id is named.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch


@contextlib.contextmanager
def _quiet_loading():
    """Silence diffusers' and transformers' loading bars and info/warning logs for a local load.

    A local folder loads in a fraction of a second; its progress bars and the notes about
    optional image-processor backends only clutter notebook outputs.  Errors still show.
    Hub downloads keep their progress bars (they can take minutes).
    """
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers_logging.enable_progress_bar()


# the pipeline module imports CLIPImageProcessor, whose torchvision note is noise here (we never process images with it)
with _quiet_loading():
    from diffusers import StableDiffusionPipeline

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
#: The bundled world model (see data/models/toyworld-sd/README.md); the default everywhere.
BUNDLED_MODEL = str(DATA_DIR / "models" / "toyworld-sd")
#: The attribute oracle that reads the bundled world's images (data/models/oracle/README.md).
ORACLE_DIR = DATA_DIR / "models" / "oracle"
#: One folder of unlabeled sample images per domain: face, cat, car, painting, scene.
SAMPLES_DIR = DATA_DIR / "samples"
#: The shipped directions for the bundled model, one ``<domain>.safetensors`` per domain.
DIRECTIONS_DIR = DATA_DIR / "directions"
#: The model id that the tutorials name for the real thing.
SD15_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def default_device() -> torch.device:
    """CUDA if present, then Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """float16 on a GPU (half the memory, same edits), float32 on the CPU."""
    return torch.float16 if torch.device(device).type in ("cuda", "mps") else torch.float32


def load_pipeline(model: str | os.PathLike | None = None, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None) -> StableDiffusionPipeline:
    """Load a ``StableDiffusionPipeline`` (no safety checker) from a hub id or a local folder.

    Args:
        model: a local folder in diffusers layout (``model_index.json``, ``unet/``, ...) or
            a hub id such as ``"stable-diffusion-v1-5/stable-diffusion-v1-5"``.  ``None``
            means the bundled world model.
        device: where to put it; default CUDA > MPS > CPU.
        dtype: weights dtype; default float16 on a GPU, float32 on the CPU.

    Returns:
        The pipeline on ``device`` with its progress bar disabled; its components are in
        eval mode and frozen (``requires_grad=False``).
    """
    model = BUNDLED_MODEL if model is None else os.fspath(model)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(
                f"{path} is a folder but not a diffusers pipeline (no model_index.json); point --model "
                f"at the folder that holds model_index.json, unet/, vae/, text_encoder/ and tokenizer/")
        with _quiet_loading():
            pipe = StableDiffusionPipeline.from_pretrained(
                path, dtype=dtype, safety_checker=None, requires_safety_checker=False,
                local_files_only=True)
    elif model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise FileNotFoundError(f"model folder {model} does not exist; give an existing folder or a hub id "
                                f"like {SD15_MODEL!r}")
    else:
        pipe = StableDiffusionPipeline.from_pretrained(
            model, dtype=dtype, safety_checker=None, requires_safety_checker=False)
    pipe = pipe.to(device)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def weights_key(*modules: torch.nn.Module) -> str:
    """A short hash of every weight of ``modules`` (e.g. ``pipe.unet, pipe.vae, oracle``).

    Keys caches and checkpoints by what the weights *are*, not where they were loaded from, so a
    model retrained in the same folder never reads back results made with the old one.  Token
    embedding matrices are skipped: learning directions appends rows to them, and the model
    must keep its key.
    """
    import hashlib

    digest = hashlib.sha1()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            if not name.endswith("token_embedding.weight"):
                digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:10]


def image_size(pipe: StableDiffusionPipeline) -> int:
    """The pixel size the pipeline's UNet was trained at: 64 for the bundled model, 512 for SD 1.5."""
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


@torch.no_grad()
def encode_images(pipe: StableDiffusionPipeline, images: torch.Tensor, sample: bool = False,
                  generator: torch.Generator | None = None, batch_size: int = 32) -> torch.Tensor:
    """VAE-encode images to scaled latents, as the UNet sees them.

    Args:
        images: float [N, 3, H, W] in [-1, 1] (see ``noiseclr_lite.data.load_images``).
        sample: draw from the posterior instead of taking its mean (the mean is what
            editing wants: it is deterministic and reconstructs best).
    Returns:
        float32 [N, 4, H/f, W/f] latents times ``vae.config.scaling_factor`` (f = 8 on
        Stable Diffusion, 4 on the bundled model), on the CPU.
    """
    vae = pipe.vae
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size].to(vae.device, vae.dtype)
        dist = vae.encode(chunk).latent_dist
        latents = dist.sample(generator) if sample else dist.mean
        out.append(latents.float().cpu().contiguous() * vae.config.scaling_factor)
    return torch.cat(out)


@torch.no_grad()
def decode_latents(pipe: StableDiffusionPipeline, latents: torch.Tensor, batch_size: int = 32) -> list:
    """Decode scaled latents [N, 4, h, w] to a list of N RGB ``PIL.Image``."""
    from PIL import Image

    vae = pipe.vae
    images = []
    for start in range(0, len(latents), batch_size):
        chunk = latents[start:start + batch_size].to(vae.device, vae.dtype) / vae.config.scaling_factor
        pixels = vae.decode(chunk).sample.float().clamp(-1, 1).add(1).mul(127.5).round().byte()
        images += [Image.fromarray(p.permute(1, 2, 0).cpu().numpy()) for p in pixels]
    return images
