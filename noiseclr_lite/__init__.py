"""noiseclr-lite: NoiseCLR (Dalva & Yanardag, CVPR 2024) for learners.

Unsupervised discovery of edit directions in Stable Diffusion from a folder of unlabeled
images, with a contrastive loss; directions compose, even across domains.  Runs on a
laptop CPU with the bundled world model and on Stable Diffusion 1.5 with a GPU.

    from noiseclr_lite import load_pipeline, load_images, train_directions, edit, DirectionEdit
    pipe = load_pipeline()                                   # the bundled model
    directions = train_directions(pipe, load_images("data/samples/face", 64), steps=200)
    edit(pipe, [DirectionEdit(directions, 0, scale=2.0)], seed=0)[0]

Importing this package never imports ipywidgets or matplotlib (see ``widgets``, ``plotting``).
"""

from .data import list_images, load_image, load_images, to_pil
from .directions import Directions, empty_conditioning
from .editing import DirectionEdit, edit, edit_grid, generate
from .inversion import ddim_invert, ddpm_invert, reconstruct
from .loss import infonce_loss, noiseclr_loss
from .models import (BUNDLED_MODEL, DIRECTIONS_DIR, ORACLE_DIR, SAMPLES_DIR, SD15_MODEL, decode_latents,
                     encode_images, image_size, load_pipeline)
from .train import TrainConfig, train_directions

__version__ = "0.1.0"

__all__ = [
    "BUNDLED_MODEL", "DIRECTIONS_DIR", "ORACLE_DIR", "SAMPLES_DIR", "SD15_MODEL", "DirectionEdit", "Directions", "TrainConfig", "ddim_invert", "ddpm_invert",
    "decode_latents", "edit", "edit_grid", "empty_conditioning", "encode_images", "generate", "image_size", "infonce_loss",
    "list_images", "load_image", "load_images", "load_pipeline", "noiseclr_loss", "reconstruct", "to_pil",
    "train_directions",
]
