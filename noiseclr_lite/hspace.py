"""h-space directions: PCA of the UNet bottleneck, an unsupervised peer of NoiseCLR.

Haas et al. (2023), "Discovering Interpretable Directions in h-space of Diffusion Models"
(arXiv 2303.11073), build on Kwon et al.'s observation that the UNet's bottleneck
activations -- the output of its middle block, "h-space" -- behave like a GAN's latent
space: adding an offset ``delta_h`` to them during sampling edits the image semantically.
Their simplest unsupervised method takes the principal components of h over many images
as the edit directions.  This module is that method, on the same pipelines and the same
samplers as NoiseCLR, so the two can be compared on one protocol
(``benchmarks/quality.py``):

1. :func:`collect_hspace`: noise each image's latent to each chosen timestep t (seeded),
   run the UNet under the empty prompt and record the middle block's output
   ``h = mid_block(...)`` ([C, h', w'] per image and timestep).
2. :func:`hspace_directions`: subtract each timestep's mean, pool every (image, t) sample,
   and keep the top-k principal components.  Each component is scaled to the typical norm
   of a centred h vector, so scale 1 moves h by about as much as h differs between images.
3. :func:`hspace_edit`: a context manager that adds ``scale * direction`` to the middle
   block's output at every UNet call whose timestep lies in ``window`` -- so the ordinary
   :func:`~noiseclr_lite.editing.edit` / :func:`~noiseclr_lite.editing.denoise` sample an
   h-space edit.  :func:`edit_hspace` wraps the two.

    d = hspace_directions(pipe, encode_images(pipe, images), k=8, timesteps=[900, 700, 500])
    inv = ddpm_invert(pipe, encode_images(pipe, image), num_inference_steps=25)
    with hspace_edit(pipe, d[0], scale=1.5, window=(1.0, 0.5)):
        out = edit(pipe, [], inversion=inv)

Simplifications (say so when you compare): Haas et al. treat h as the concatenation over
*all* timesteps of a trajectory and collect it from generated samples; we pool a few
timesteps of noised real images (centred per timestep) into one PCA and add the same
offset at every step of the window.  Unlike a NoiseCLR token, an h-space offset has no
text conditioning and needs no extra UNet row: the edit costs nothing per step.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch

from .directions import empty_conditioning

__all__ = ["collect_hspace", "edit_hspace", "hspace_directions", "hspace_edit", "mid_block_output"]


def _timestep_from_call(args, kwargs):
    """The ``timestep`` argument of a ``UNet2DConditionModel.forward`` call (positional or keyword)."""
    if "timestep" in kwargs:
        return kwargs["timestep"]
    return args[1] if len(args) > 1 else None


class _MiddleBlockReached(Exception):
    """Raised by :func:`mid_block_output`'s hook to leave the UNet once h is known."""

    def __init__(self, output: torch.Tensor):
        super().__init__("the UNet's middle block has run")
        self.output = output


def mid_block_output(unet, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """h, the UNet's middle-block output for one call, without running the up blocks.

    A forward hook on ``unet.mid_block`` hands its output out of the call, so the up blocks
    never run (they work at the highest resolutions: on the bundled model a training step on h
    took about a quarter of a full one's time, ``benchmarks/quality-findings.md``).  Gradients
    flow as in a full call: h depends on the prompt through the down and middle blocks'
    cross-attention.  (What reaches the image only through the up blocks' cross-attention is not
    in h.)

    Args:
        unet: a ``UNet2DConditionModel``.
        sample: [B, 4, h, w] noisy latents.
        timestep: as for the UNet (a number, or a [1] or [B] tensor).
        encoder_hidden_states: [B, L, H] prompt conditioning.
    Returns:
        [B, C, h', w'] in the UNet's dtype (or the autocast dtype inside ``autocast``; C = the last
        down block's channels).
    """
    def leave(module, inputs, output):
        raise _MiddleBlockReached(output)

    if getattr(unet, "mid_block", None) is None:
        raise ValueError(f"this {type(unet).__name__} has no middle block (mid_block_type=None in its config), so it "
                         "has no h-space; use edit_space='eps' or a UNet with a middle block")
    handle = unet.mid_block.register_forward_hook(leave)
    try:
        unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)
    except _MiddleBlockReached as reached:
        return reached.output
    finally:
        handle.remove()
    raise RuntimeError(f"{type(unet).__name__} returned without running its mid_block; mid_block_output needs "
                       "diffusers' UNet2DConditionModel, whose forward runs the middle block")


@torch.no_grad()
def collect_hspace(pipe, latents: torch.Tensor, timesteps: Sequence[int], seed: int = 0,
                   batch_size: int = 32) -> torch.Tensor:
    """The middle block's output for noised latents: float32 [T, N, C, h', w'] on the CPU.

    Args:
        pipe: a Stable Diffusion pipeline.
        latents: [N, 4, h, w] scaled VAE latents (``models.encode_images``).
        timesteps: the T training timesteps (0 .. num_train_timesteps - 1) to noise to.
        seed: seeds the noise ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) n``.
        batch_size: images per UNet call.
    """
    unet, device = pipe.unet, pipe.unet.device
    generator = torch.Generator().manual_seed(seed)
    empty = empty_conditioning(pipe).to(device, unet.dtype)
    per_t = []
    for t in timesteps:
        t = int(t)
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
        noisy = pipe.scheduler.add_noise(latents.float().cpu(), noise, torch.tensor([t]))
        chunks = (noisy[a:a + batch_size].to(device, unet.dtype) for a in range(0, len(noisy), batch_size))
        per_t.append(torch.cat([mid_block_output(unet, chunk, t, empty.expand(len(chunk), -1, -1)).float().cpu()
                                for chunk in chunks]))  # a generator: one chunk on the device at a time
    return torch.stack(per_t)


@torch.no_grad()
def hspace_directions(pipe, latents: torch.Tensor, k: int, timesteps: Sequence[int] = (900, 700, 500),
                      seed: int = 0) -> torch.Tensor:
    """The top-``k`` principal components of h-space over ``latents``: float32 [k, C, h', w'].

    Each timestep's samples are centred on that timestep's mean (else the first components
    would only tell timesteps apart), all (image, timestep) samples are pooled, and the
    right singular vectors of the pooled matrix give the components, strongest first.
    Every component is scaled to the root-mean-square norm of the centred samples, so
    ``scale`` in :func:`hspace_edit` is in units of "a typical difference between images".
    A component's sign is arbitrary (score edits at +s and -s).

    Args:
        latents: [N, 4, h, w] scaled VAE latents of the domain's images.
        k: how many components; at most ``T * (N - 1)``.
        timesteps: where h is read (see :func:`collect_hspace`).
        seed: seeds the noise.
    """
    h = collect_hspace(pipe, latents, timesteps, seed=seed)  # [T, N, C, h', w']
    num_t, n = h.shape[:2]
    shape = h.shape[2:]
    centred = (h - h.mean(1, keepdim=True)).reshape(num_t * n, -1).double()
    rank_bound = num_t * (n - 1)
    if not 1 <= k <= min(rank_bound, centred.shape[1]):
        raise ValueError(f"k={k} principal components asked of {n} images x {num_t} timesteps (rank at most "
                         f"{min(rank_bound, centred.shape[1])}); give fewer directions or more images")
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    typical = centred.norm(dim=1).pow(2).mean().sqrt()
    return (vh[:k] * typical).float().reshape(k, *shape).contiguous()


@contextmanager
def hspace_edit(pipe, direction: torch.Tensor, scale: float = 1.0, window: tuple[float, float] = (1.0, 0.0)):
    """Add ``scale * direction`` to ``pipe.unet.mid_block``'s output while the context is open.

    The offset is added to every row of a UNet call whose timestep ``t`` satisfies
    ``end <= t / num_train_timesteps <= start`` (``window = (start, end)``, the same
    convention as :class:`~noiseclr_lite.editing.DirectionEdit`; a per-row timestep tensor
    is checked row by row), and to nothing outside the window.  With ``scale == 0`` no hook
    is installed at all, so sampling is bit-for-bit the unedited one.  The hooks are
    removed on exit, also after an error.

    Args:
        direction: [C, h', w'], the shape of one row of the middle block's output (e.g. a
            row of :func:`hspace_directions`).
        scale: the slider; negative = the opposite edit.
        window: (start, end) fractions of the diffusion time, 1 = pure noise.
    """
    start, end = window
    if not 0.0 <= end <= start <= 1.0:
        raise ValueError(f"window must be (start, end) with 1 >= start >= end >= 0, got {window}")
    if scale == 0:
        yield
        return
    unet = pipe.unet
    num_train = pipe.scheduler.config.num_train_timesteps
    state = {"t": None}

    def remember_timestep(module, args, kwargs):
        state["t"] = _timestep_from_call(args, kwargs)

    def add_offset(module, inputs, output):
        if tuple(output.shape[1:]) != tuple(direction.shape):
            raise ValueError(f"h-space direction has shape {tuple(direction.shape)} but the middle block outputs "
                             f"{tuple(output.shape[1:])} per image; use directions made for this UNet")
        t = torch.as_tensor(state["t"], dtype=torch.float32).flatten().to(output.device)
        inside = ((t / num_train >= end) & (t / num_train <= start)).to(output.dtype)
        if t.numel() == 1:
            inside = inside.expand(output.shape[0])
        if not bool(inside.any()):
            return output
        offset = (scale * direction).to(output.device, output.dtype)
        return output + inside.view(-1, *([1] * direction.ndim)) * offset

    handles = [unet.register_forward_pre_hook(remember_timestep, with_kwargs=True),
               unet.mid_block.register_forward_hook(add_offset)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def edit_hspace(pipe, direction: torch.Tensor, scale: float, window: tuple[float, float] = (1.0, 0.0),
                **edit_kwargs) -> list:
    """:func:`~noiseclr_lite.editing.edit` with one h-space offset applied; returns PIL images.

    ``direction`` is [C, h', w'], one offset in the UNet middle block's output space (as for
    :func:`hspace_edit`), added ``scale`` times at the steps of ``window``.
    ``edit_kwargs`` go to ``edit`` (``inversion=``, ``seed=``, ``prompt=``, ...).
    """
    from .editing import edit

    with hspace_edit(pipe, direction, scale, window):
        return edit(pipe, [], **edit_kwargs)
