"""Inverting real images into the diffusion model's noise space, so they can be edited.

Editing a real image needs a starting point ``x_T`` (and, for DDPM, the per-step noise)
from which the model's own denoising loop gives the image back.  Two ways:

* **DDIM inversion** (:func:`ddim_invert`) runs the deterministic DDIM sampler backwards,
  ``x_0 -> x_T``, with diffusers' ``DDIMInverseScheduler``.  Each step uses the noise
  prediction at the *current* latent for the *next* noise level, an approximation, so
  sampling forwards again returns the image only approximately (good with many steps).
* **Edit-friendly DDPM inversion** (:func:`ddpm_invert`; Huberman-Spiegelglas, Kadosh and
  Michaeli, CVPR 2024, "An Edit Friendly DDPM Noise Space") draws every noisy latent
  ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) n_t`` with its *own* fresh noise ``n_t`` and
  then solves the stochastic (eta = 1) DDPM sampler step ``x_{t-1} = mu_t(x_t) + sigma_t z_t``
  for the noise maps ``z_t``.  Sampling again with the same ``z_t`` reconstructs ``x_0``
  exactly (to float rounding), and edits made along the way keep the image's structure.

Both use the pipeline's noise schedule through a ``DDIMScheduler`` built from
``pipe.scheduler.config`` (so a Stable Diffusion 1.5 pipeline that ships a PNDM scheduler
works too).  The sampler that replays an inversion lives in :mod:`noiseclr_lite.editing`;
the single DDPM step both sides share is :func:`ddpm_step` here.

Latents everywhere are *scaled* VAE latents (``noiseclr_lite.models.encode_images``),
float32 ``[B, 4, h, w]``; results come back on the CPU in float32.  The UNet runs in the
pipeline's dtype (float16 on a GPU), every update is computed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from tqdm.auto import tqdm

from .directions import empty_conditioning

__all__ = [
    "DDIMInversion", "DDPMInversion", "ddim_invert", "ddpm_invert", "ddpm_step", "make_scheduler",
    "encode_prompt", "predict_noise", "reconstruct",
]


# ----------------------------------------------------------------------------- results
@dataclass
class DDIMInversion:
    """The result of :func:`ddim_invert`.

    Attributes:
        latents_T: float32 [B, 4, h, w], the inverted noise at the first sampling timestep.
        trajectory: ``num_inference_steps + 1`` float32 [B, 4, h, w] latents, from the input
            ``x_0`` (index 0) to ``latents_T`` (last).
        timesteps: long [num_inference_steps], the sampling timesteps, noisiest first (the
            order in which :func:`noiseclr_lite.editing.edit` walks them).
        num_inference_steps: the number of DDIM steps.
        prompt_embeds: the text conditioning the inversion used ([1 or B, L, H]), or None
            for the empty prompt; editing reuses it by default.
    """

    latents_T: torch.Tensor
    trajectory: list
    timesteps: torch.Tensor
    num_inference_steps: int
    prompt_embeds: torch.Tensor | None = None


@dataclass
class DDPMInversion:
    """The result of :func:`ddpm_invert`.

    Attributes:
        latents_T: float32 [B, 4, h, w], the noisy latent at ``timesteps[0]``, where sampling starts.
        noise_maps: float32 [S, B, 4, h, w], the edit-friendly noise ``z_t``; ``noise_maps[i]``
            is added at sampling step ``timesteps[i]``.
        timesteps: long [S], the sampling timesteps, noisiest first (``S = num_inference_steps
            - skip``).
        num_inference_steps: the scheduler's step count (sets the step spacing).
        prompt_embeds: the text conditioning used ([1 or B, L, H]), or None for the empty prompt.
        skip: how many of the noisiest steps were left out (start editing from a less noisy
            latent: larger skip = closer to the input image, weaker edits).
    """

    latents_T: torch.Tensor
    noise_maps: torch.Tensor
    timesteps: torch.Tensor
    num_inference_steps: int
    prompt_embeds: torch.Tensor | None = None
    skip: int = 0


# ----------------------------------------------------------------------------- shared helpers
def make_scheduler(pipe, num_inference_steps: int, inverse: bool = False):
    """A fresh ``DDIMScheduler`` (or ``DDIMInverseScheduler``) with the pipeline's noise schedule.

    Built from ``pipe.scheduler.config``, so ``pipe.scheduler`` itself is never touched.
    ``DDIMInverseScheduler`` knows only "leading" and "trailing" timestep spacing; a config
    asking for "linspace" is switched to "leading" in both, so the two walk the same steps.
    """
    overrides = {}
    if pipe.scheduler.config.get("timestep_spacing", "leading") not in ("leading", "trailing"):
        overrides["timestep_spacing"] = "leading"
    cls = DDIMInverseScheduler if inverse else DDIMScheduler
    scheduler = cls.from_config(pipe.scheduler.config, **overrides)
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


@torch.no_grad()
def encode_prompt(pipe, prompt: str = "") -> torch.Tensor:
    """Text-encoder hidden states [1, L, H] for one prompt ("" = the unconditional prompt).

    The empty prompt goes through ``noiseclr_lite.directions.empty_conditioning`` so that
    inversion, editing and training all share one ``c_empty``.
    """
    if prompt == "":
        return empty_conditioning(pipe)
    return pipe.encode_prompt(prompt, pipe.unet.device, 1, False)[0]


def _batch_conditioning(pipe, prompt_embeds: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Conditioning [batch, L, H] on the UNet's device and dtype (None = empty prompt)."""
    cond = encode_prompt(pipe, "") if prompt_embeds is None else prompt_embeds
    if cond.shape[0] == 1:
        cond = cond.expand(batch, -1, -1)
    elif cond.shape[0] != batch:
        raise ValueError(f"prompt_embeds has {cond.shape[0]} rows but there are {batch} latents; "
                         f"give one row (shared) or one per latent")
    return cond.to(pipe.unet.device, pipe.unet.dtype)


@torch.no_grad()
def predict_noise(pipe, latents: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
    """One UNet call: ``eps(latents, t, cond)`` in float32.  latents [N, 4, h, w], cond [N, L, H]."""
    unet = pipe.unet
    # one memory layout for every caller: VAE latents can come channels-last, and the CPU
    # convolutions round differently per layout (~1e-6), which would break exact replays
    latents = latents.to(unet.device, unet.dtype).contiguous()
    out = unet(latents, t, encoder_hidden_states=cond.to(unet.device, unet.dtype).contiguous()).sample
    return out.float()


def _noise_scale(scheduler: DDIMScheduler, t: int) -> torch.Tensor:
    """sigma_t of the eta = 1 (DDPM) step from ``t``; 1.0 where the schedule gives 0.

    sigma_t is 0 only on the last step of a schedule that ends at alpha = 1
    (``set_alpha_to_one=True``); there the noise map simply holds the whole residual.
    """
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    sigma = scheduler._get_variance(t, prev_t) ** 0.5
    return sigma if sigma > 0 else torch.ones_like(sigma)


def ddpm_step(scheduler: DDIMScheduler, noise_pred: torch.Tensor, t: int, latents: torch.Tensor,
              noise_map: torch.Tensor | None) -> torch.Tensor:
    """One stochastic DDPM (DDIM with eta = 1) step ``x_{t-1} = mu_t(x_t, eps) + sigma_t z_t``, float32.

    ``mu_t`` is diffusers' ``DDIMScheduler.step`` with ``eta=1`` and zero noise; ``z_t`` is
    ``noise_map`` (None = 0, which gives the mean).  Inversion and regeneration both call
    this one function, which is why the regeneration is exact.

    ``noise_pred``, ``latents`` and ``noise_map`` are [B, 4, h, w] (latent space, unscaled noise
    ``z_t`` ~ N(0, 1)); returns ``x_{t-1}`` [B, 4, h, w] in float32.
    """
    noise_pred, latents = noise_pred.float(), latents.float()
    mean = scheduler.step(noise_pred, int(t), latents, eta=1.0, variance_noise=torch.zeros_like(latents)).prev_sample
    if noise_map is None:
        return mean
    return mean + _noise_scale(scheduler, int(t)) * noise_map.to(mean.device, torch.float32)


# ----------------------------------------------------------------------------- DDIM inversion
@torch.no_grad()
def ddim_invert(pipe, latents: torch.Tensor, num_inference_steps: int = 50,
                prompt_embeds: torch.Tensor | None = None, progress: bool = False) -> DDIMInversion:
    """Deterministic DDIM inversion ``x_0 -> x_T`` with ``DDIMInverseScheduler``.

    Args:
        pipe: a Stable Diffusion pipeline (see ``noiseclr_lite.models.load_pipeline``).
        latents: float [B, 4, h, w], scaled VAE latents of the images (``encode_images``).
        num_inference_steps: DDIM steps; more steps = a closer round trip, linearly slower.
        prompt_embeds: text conditioning [1 or B, L, H]; None = the empty prompt.
        progress: show a tqdm bar.

    Returns:
        A :class:`DDIMInversion`; DDIM sampling from its ``latents_T`` with the same steps
        and conditioning returns approximately ``latents``.
    """
    device = pipe.unet.device
    scheduler = make_scheduler(pipe, num_inference_steps, inverse=True)
    x = latents.to(device, torch.float32).contiguous()
    cond = _batch_conditioning(pipe, prompt_embeds, x.shape[0])
    trajectory = [x.cpu()]
    # DDIMInverseScheduler.step(eps, t, x) moves x from noise level t - step to level t,
    # with eps predicted at the *target* timestep t (as diffusers' DiffEdit pipeline does).
    for t in tqdm(scheduler.timesteps, desc="DDIM inversion", disable=not progress):
        noise_pred = predict_noise(pipe, x, t, cond)
        x = scheduler.step(noise_pred, int(t), x).prev_sample.float()
        trajectory.append(x.cpu())
    forward = make_scheduler(pipe, num_inference_steps)
    return DDIMInversion(latents_T=x.cpu(), trajectory=trajectory, timesteps=forward.timesteps.clone(),
                         num_inference_steps=num_inference_steps,
                         prompt_embeds=None if prompt_embeds is None else prompt_embeds.detach().cpu())


# ----------------------------------------------------------------------------- DDPM inversion
@torch.no_grad()
def ddpm_invert(pipe, latents: torch.Tensor, num_inference_steps: int = 50,
                prompt_embeds: torch.Tensor | None = None, generator: torch.Generator | None = None,
                skip: int = 0, seed: int = 0, progress: bool = False) -> DDPMInversion:
    """Edit-friendly DDPM inversion (Huberman-Spiegelglas et al., CVPR 2024).

    1. For every sampling timestep t draw ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) n_t``
       with independent noise ``n_t`` (this is what makes the noise maps "edit friendly":
       they carry the image's structure).
    2. Walking t from noisy to clean, solve ``x_{t-1} = mu_t(x_t, eps(x_t, t, c)) + sigma_t z_t``
       for ``z_t`` (:func:`ddpm_step`), then replace ``x_{t-1}`` by ``mu_t + sigma_t z_t`` so the
       next step sees bit-for-bit what the sampler will see.

    Args:
        pipe: a Stable Diffusion pipeline.
        latents: float [B, 4, h, w] scaled VAE latents.
        num_inference_steps: sampler steps (sets the spacing of the timesteps).
        prompt_embeds: text conditioning [1 or B, L, H]; None = the empty prompt.
        generator: CPU ``torch.Generator`` for the noises ``n_t``; None = seeded with ``seed``.
        skip: leave out the ``skip`` noisiest steps; sampling then starts at
            ``timesteps[skip]`` (0 <= skip < num_inference_steps).
        seed: seed used when ``generator`` is None.
        progress: show a tqdm bar.

    Returns:
        A :class:`DDPMInversion`; ``reconstruct(pipe, inversion)`` gives back ``latents``
        (max abs error ~1e-6 in float32).
    """
    if not 0 <= skip < num_inference_steps:
        raise ValueError(f"skip must be in [0, {num_inference_steps}), got {skip}")
    device = pipe.unet.device
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    scheduler = make_scheduler(pipe, num_inference_steps)
    timesteps = scheduler.timesteps[skip:]
    x0 = latents.to(device, torch.float32).contiguous()
    cond = _batch_conditioning(pipe, prompt_embeds, x0.shape[0])

    # 1. independent noisy latents: xs[i] at timesteps[i]; xs[len] = x_0
    abar = scheduler.alphas_cumprod
    xs = []
    for t in timesteps:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(device)
        xs.append(abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * noise)
    xs.append(x0)

    # 2. the noise maps that make the DDPM sampler pass through them
    noise_maps = []
    x = xs[0]
    for i, t in enumerate(tqdm(timesteps, desc="DDPM inversion", disable=not progress)):
        noise_pred = predict_noise(pipe, x, t, cond)
        mean = ddpm_step(scheduler, noise_pred, t, x, None)
        z = (xs[i + 1] - mean) / _noise_scale(scheduler, int(t))
        noise_maps.append(z.cpu())
        x = ddpm_step(scheduler, noise_pred, t, x, z)  # == xs[i + 1] up to rounding
    return DDPMInversion(latents_T=xs[0].cpu(), noise_maps=torch.stack(noise_maps), timesteps=timesteps.clone(),
                         num_inference_steps=num_inference_steps,
                         prompt_embeds=None if prompt_embeds is None else prompt_embeds.detach().cpu(), skip=skip)


def reconstruct(pipe, inversion: DDIMInversion | DDPMInversion, progress: bool = False) -> torch.Tensor:
    """Sample back from an inversion with no edits; float32 [B, 4, h, w] latents on the CPU.

    Exact (to float rounding) for a :class:`DDPMInversion`, approximate for DDIM.
    """
    from .editing import denoise

    return denoise(pipe, [], inversion=inversion, progress=progress)
