"""Image folders to tensors: what the VAE encoder wants, from whatever a user drops in a folder.

Every image becomes RGB (transparency is composited over white; greyscale, palette and
CMYK are converted), is centre-cropped to a square and resized with LANCZOS, and is scaled
to [-1, 1].  A file that cannot be read is reported by name; it is skipped, with a
warning, only when the caller asks for that (``on_error="warn"``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside ``folder`` (by extension, any case), sorted by name.

    Hidden files (names starting with ".", such as macOS ``._photo.jpg``) are not images
    and are left out.  Raises FileNotFoundError if the folder is missing or holds no image.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist (or is not a folder); "
                                f"give a folder of {', '.join(IMAGE_EXTENSIONS)} files")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no images in {folder}: expected files ending in {', '.join(IMAGE_EXTENSIONS)} "
                                f"(upper or lower case) directly inside it")
    return files


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any PIL mode: alpha over white; L/LA, P, CMYK, 16-bit and float greyscale converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # high bit depth greyscale: rescale to 8 bit
        values = np.asarray(image, dtype=np.float32)
        top = 65535.0 if values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """One image as float32 [3, size, size] in [-1, 1]: RGB, centre-cropped, LANCZOS-resized.

    The EXIF orientation of photos is applied first.  Raises FileNotFoundError if ``path``
    is missing and ValueError naming the file if it is not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist (working directory {Path.cwd()}); "
                                f"check the path, or give an absolute one")
    try:
        with Image.open(path) as image:
            image.load()
            image = _to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"could not read image {path} ({type(e).__name__}: {e}); delete or re-save it, or "
                         f"pass on_error='warn' to load_images to skip bad files with a warning") from e
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    # crop first: resize(box=...) would let the filter read pixels outside the square
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # [size, size, 3]
    return pixels.permute(2, 0, 1).float() / 127.5 - 1.0


def load_images(source: str | os.PathLike | Iterable[str | os.PathLike], size: int,
                on_error: str = "raise") -> torch.Tensor:
    """Load images as one float32 batch [N, 3, size, size] in [-1, 1].

    Args:
        source: a folder (its images, see ``list_images``), one image file, or a list of files.
        size: the side of the square output, in pixels (the model's image size: 64 on the
            bundled model, 512 on SD 1.5).
        on_error: ``"raise"`` (default): a bad file raises ValueError naming it.  ``"warn"``:
            a bad or missing file is skipped with a warning naming it; if every file is bad,
            ValueError.
    """
    if on_error not in ("raise", "warn"):
        raise ValueError(f"on_error must be 'raise' or 'warn'; got {on_error!r}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive number of pixels; got {size!r}")
    if isinstance(source, (str, os.PathLike)):
        source = Path(source).expanduser()
        single = source.is_file() or source.suffix.lower() in IMAGE_EXTENSIONS
        paths = [source] if single else list_images(source)
    else:
        paths = [Path(p) for p in source]
        if not paths:
            raise ValueError("load_images got an empty list of files; give a folder or at least one image")
    images, skipped = [], []
    for path in paths:
        try:
            images.append(load_image(path, size))
        except (ValueError, FileNotFoundError) as e:
            if on_error == "raise":
                raise
            warnings.warn(f"skipping {path}: {e}", stacklevel=2)
            skipped.append(str(path))
    if not images:
        raise ValueError(f"none of the {len(paths)} files could be read as images: {skipped}; the warnings "
                         f"above say why for each; give a folder of PNG or JPEG files")
    return torch.stack(images)


def to_pil(image: torch.Tensor) -> Image.Image:
    """A float [3, H, W] image in [-1, 1] (values outside are clipped) as an RGB ``PIL.Image``."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"to_pil wants one image [3, H, W]; got shape {tuple(image.shape)} (index a batch first)")
    pixels = image.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().byte()
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())
