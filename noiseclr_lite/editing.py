"""Editing with NoiseCLR directions: direction-conditioned denoising.

A direction ``k`` is a learned token whose text conditioning ``c_k`` pushes the UNet's
noise prediction away from its reference one ``c_ref(k)``: the unconditional one for a token
used alone (the official NoiseCLR), the context without the token (``"a car"``) for a token
trained in a context (``"a car, {}"``, :attr:`~noiseclr_lite.directions.Directions.context`).
Editing denoises an image while adding each direction's push, scaled by its slider ``s_k``::

    eps_hat(x, t) = eps(x, t, c) + sum_k s_k * (eps(x, t, c_k) - eps(x, t, c_ref(k)))

where ``eps(x, t, c)`` is the ordinary prediction (the unconditional one for the empty
prompt, classifier-free guidance ``eps_u + g (eps_c - eps_u)`` for a prompt with g > 1),
and a direction only acts while ``t / num_train_timesteps`` lies in its ``window``.
Directions from different domains (different :class:`~noiseclr_lite.directions.Directions`
objects) compose by this sum, in one call.

Starting points:

* seeded Gaussian noise (generation, deterministic DDIM sampling; ``eta > 0`` adds noise);
* an explicit ``latents_T``;
* a :class:`~noiseclr_lite.inversion.DDIMInversion` (deterministic DDIM sampling from its
  ``latents_T``: an approximate reconstruction of the real image when all scales are 0);
* a :class:`~noiseclr_lite.inversion.DDPMInversion` (DDPM sampling re-using its noise maps:
  an exact reconstruction when all scales are 0).

Each step makes **one** batched UNet call on the stacked rows ``[empty?, prompt?, active
directions' references other than the empty prompt and the prompt..., active directions...]``; directions
with scale 0 or outside their window are left out of it, so zero scales give bit-for-bit the
unedited result.  The loop is written out step by step
(diffusers style) in :func:`denoise`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .directions import Directions
from .inversion import DDIMInversion, DDPMInversion, ddpm_step, encode_prompt, make_scheduler, predict_noise
from .models import decode_latents

__all__ = ["COMPOSITIONS", "DirectionEdit", "denoise", "edit", "edit_grid", "generate", "split_regions"]

#: how the pushes of several direction sets combine: "sum" (NoiseCLR's), "regions" (see split_regions)
COMPOSITIONS = ("sum", "regions")


@dataclass
class DirectionEdit:
    """One slider: direction ``direction`` of ``directions`` at ``scale``, inside ``window``.

    Attributes:
        directions: the :class:`~noiseclr_lite.directions.Directions` it comes from.
        direction: its index, token (``"<face_3>"``) or name.
        scale: the slider ``s_k``; 0 = off, negative = the opposite edit.  Useful ranges
            depend on the model and direction (typically a few units either side of 0).
        window: ``(start, end)`` as fractions of the diffusion time, 1 = pure noise,
            0 = clean image; the direction acts while ``end <= t / num_train_timesteps <=
            start``.  ``(1.0, 0.0)`` = every step; ``(1.0, 0.5)`` = the early, layout-forming
            steps only (coarse edits); ``(0.5, 0.0)`` = late steps (fine detail, texture).
    """

    directions: Directions
    direction: int | str
    scale: float = 1.0
    window: tuple[float, float] = (1.0, 0.0)

    def __post_init__(self):
        start, end = self.window
        if not (0.0 <= end <= start <= 1.0):
            raise ValueError(f"window must be (start, end) with 1 >= start >= end >= 0, got {self.window}")

    def active(self, t: int, num_train_timesteps: int) -> bool:
        """True when this edit acts at timestep ``t`` (nonzero scale, ``t`` in the window)."""
        start, end = self.window
        return self.scale != 0 and end <= t / num_train_timesteps <= start


def _direction_conditionings(pipe, edits) -> tuple[list, list, dict]:
    """Text conditioning [1, L, H] for each edit's direction (installs each Directions once), each
    edit's reference prompt (``""`` = the empty prompt) and {reference prompt: its conditioning
    [1, L, H]} for the non-empty ones."""
    per_set = {}  # id(Directions) -> its conditioning [K, L, H]
    conds, references, reference_conds = [], [], {}
    for e in edits:
        key = id(e.directions)
        if key not in per_set:
            e.directions.install(pipe)
            per_set[key] = e.directions.conditioning(pipe)
        k = e.directions.index(e.direction)
        conds.append(per_set[key][k:k + 1])
        reference = e.directions.reference_prompt
        if reference and reference not in reference_conds:
            reference_conds[reference] = e.directions.reference_conditioning(pipe)
        references.append(reference)
    return conds, references, reference_conds


def _expand(cond: torch.Tensor, batch: int, pipe) -> torch.Tensor:
    """[1 or B, L, H] -> [B, L, H] on the UNet's device and dtype."""
    if cond.shape[0] not in (1, batch):
        raise ValueError(f"the conditioning (prompt embeddings) has {cond.shape[0]} rows for a batch of "
                         f"{batch} images; give one row (shared by every image) or {batch}")
    return cond.expand(batch, -1, -1).to(pipe.unet.device, pipe.unet.dtype)


def split_regions(pushes: list, owners: list) -> list[torch.Tensor]:
    """Settle the latent pixels where two sets' pushes oppose: the set that pushes hardest there wins.

    Args:
        pushes: each edit's push ``s_k * (eps_k - eps_ref(k))``, float [B, C, h, w].
        owners: for each push, its group, any hashable value (e.g. its ``Directions`` object):
            pushes of one group are summed first and move together.

    Returns:
        The pushes, each zeroed where its group loses a conflict.  A group's strength at a pixel
        is the channel norm of its summed push divided by that norm's mean over the image, so a
        face set at scale 16 and a cat set at scale 6 are compared by *where* each pushes, not by
        how hard.  Each pixel's strongest group keeps its push; another group keeps its push there
        only if it does not oppose the winner's (dot product over channels >= 0), so edits that
        agree still add up.  With one group nothing changes.

    Why: two sets learned on different domains can push one scene in nearly opposite
    directions almost everywhere (measured on the bundled scenes: cosine -0.4 to -0.85), so
    their plain sum cancels and the larger edit wins; settled pixel by pixel, each acts where it
    pushes most (``benchmarks/compose.py`` measures it: see ``benchmarks/results/compose.md``).
    """
    groups = list(dict.fromkeys(owners))  # first-seen order; owners need not be orderable
    if len(groups) < 2:
        return pushes
    summed = torch.stack([sum(p for p, o in zip(pushes, owners) if o == g) for g in groups])  # [G, B, C, h, w]
    strength = summed.norm(dim=2)                                                              # [G, B, h, w]
    strength = strength / strength.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    winner = strength.argmax(dim=0)                                                            # [B, h, w]
    winning_push = torch.gather(summed, 0, winner[None, :, None].expand(1, *summed.shape[1:]))[0]  # [B, C, h, w]
    # a group keeps its push where it does not oppose the winner's (the winner itself: dot = |push|^2 >= 0)
    keep = [(summed[g] * winning_push).sum(dim=1) >= 0 for g in range(len(groups))]             # [B, h, w]
    return [p * keep[groups.index(o)].unsqueeze(1).to(p.dtype) for p, o in zip(pushes, owners)]


@torch.no_grad()
def denoise(pipe, edits=(), *, latents_T: torch.Tensor | None = None,
            inversion: DDIMInversion | DDPMInversion | None = None, prompt: str = "",
            prompt_embeds: torch.Tensor | None = None, guidance_scale: float = 1.0,
            num_inference_steps: int = 50, seed: int = 0, batch_size: int = 1, height: int | None = None,
            width: int | None = None, eta: float = 0.0, progress: bool = False,
            composition: str = "sum") -> torch.Tensor:
    """The editing sampler; returns float32 latents [B, 4, h, w] on the CPU.  See :func:`edit`."""
    if composition not in COMPOSITIONS:
        raise ValueError(f"composition must be one of {COMPOSITIONS}, got {composition!r}")
    device = pipe.unet.device
    num_train = pipe.scheduler.config.num_train_timesteps
    generator = torch.Generator().manual_seed(seed)  # CPU: the same noise on every device

    # 1. where to start, and which timesteps to walk (noisiest first)
    noise_maps = None
    if inversion is not None:
        if latents_T is not None:
            raise ValueError("give either latents_T or inversion, not both")
        num_inference_steps = inversion.num_inference_steps
        x = inversion.latents_T
        timesteps = inversion.timesteps
        if isinstance(inversion, DDPMInversion):
            noise_maps = inversion.noise_maps  # [S, B, 4, h, w]
        if prompt == "" and prompt_embeds is None:
            prompt_embeds = inversion.prompt_embeds  # edit under the conditioning it was inverted with
    scheduler = make_scheduler(pipe, num_inference_steps)
    if inversion is None:
        timesteps = scheduler.timesteps
        if latents_T is None:
            factor = pipe.vae_scale_factor
            h = height // factor if height else pipe.unet.config.sample_size
            w = width // factor if width else pipe.unet.config.sample_size
            shape = (batch_size, pipe.unet.config.in_channels, h, w)
            x = torch.randn(shape, generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma
        else:
            x = latents_T
    x = x.to(device, torch.float32).contiguous()
    batch = x.shape[0]

    # 2. conditionings: c_empty, the prompt's c, each edit's c_k and its reference  (all [B, L, H])
    if prompt and prompt_embeds is None:
        prompt_embeds = encode_prompt(pipe, prompt)
    has_prompt = prompt_embeds is not None
    use_cfg = has_prompt and guidance_scale > 1.0
    empty = _expand(encode_prompt(pipe, ""), batch, pipe)
    cond_prompt = _expand(prompt_embeds, batch, pipe) if has_prompt else None
    edits = [e for e in edits if e.scale != 0]
    cond_edits, references, reference_conds = _direction_conditionings(pipe, edits)
    cond_edits = [_expand(c, batch, pipe) for c in cond_edits]
    reference_conds = {prompt: _expand(c, batch, pipe) for prompt, c in reference_conds.items()}
    # a reference that is the prompt itself (editing under "a face" with "a face, {}" directions)
    # reuses the prompt's row rather than predicting the same noise twice
    references_at_prompt = {r for r, c in reference_conds.items() if has_prompt and torch.equal(c, cond_prompt)}

    # 3. the loop
    for i, t in enumerate(tqdm(timesteps, desc="editing", disable=not progress)):
        t = int(t)
        live = [k for k, e in enumerate(edits) if e.active(t, num_train)]
        # 3a. one batched UNet call on the rows [empty?, prompt?, live references..., live directions...]
        live_references = list(dict.fromkeys(references[k] for k in live
                                             if references[k] and references[k] not in references_at_prompt))
        need_empty = not has_prompt or use_cfg or any(not references[k] for k in live)
        rows = (([empty] if need_empty else []) + ([cond_prompt] if has_prompt else [])
                + [reference_conds[r] for r in live_references] + [cond_edits[k] for k in live])
        eps = predict_noise(pipe, x.repeat(len(rows), 1, 1, 1), t, torch.cat(rows)).split(batch)
        eps_empty = eps[0] if need_empty else None
        eps_prompt = eps[int(need_empty)] if has_prompt else None
        first_reference = int(need_empty) + int(has_prompt)
        eps_references = {"": eps_empty, **dict.fromkeys(references_at_prompt, eps_prompt),
                          **dict(zip(live_references, eps[first_reference:]))}
        eps_dirs = eps[first_reference + len(live_references):]

        # 3b. eps_hat = eps(x, t, c) + sum_k s_k (eps(x, t, c_k) - eps(x, t, c_ref(k)))
        if not has_prompt:
            noise_pred = eps_empty
        elif use_cfg:
            noise_pred = eps_empty + guidance_scale * (eps_prompt - eps_empty)
        else:
            noise_pred = eps_prompt
        pushes = [edits[k].scale * (eps_k - eps_references[references[k]]) for k, eps_k in zip(live, eps_dirs)]
        if composition == "regions":
            pushes = split_regions(pushes, [id(edits[k].directions) for k in live])
        for push in pushes:
            noise_pred = noise_pred + push

        # 3c. the sampler step x_t -> x_{t-1}, in float32
        if noise_maps is not None:
            x = ddpm_step(scheduler, noise_pred, t, x, noise_maps[i])
        elif eta > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(device)
            x = scheduler.step(noise_pred, t, x, eta=eta, variance_noise=noise).prev_sample
        else:
            x = scheduler.step(noise_pred, t, x).prev_sample
    return x.float().cpu()


def edit(pipe, edits=(), *, latents_T: torch.Tensor | None = None,
         inversion: DDIMInversion | DDPMInversion | None = None, prompt: str = "",
         prompt_embeds: torch.Tensor | None = None, guidance_scale: float = 1.0, num_inference_steps: int = 50,
         seed: int = 0, batch_size: int = 1, height: int | None = None, width: int | None = None,
         eta: float = 0.0, return_latents: bool = False, progress: bool = False, composition: str = "sum"):
    """Denoise with NoiseCLR directions applied; returns PIL images (and latents).

    Args:
        pipe: a Stable Diffusion pipeline (``noiseclr_lite.models.load_pipeline``).
        edits: :class:`DirectionEdit` sliders, from one or several ``Directions`` objects;
            empty (or all scales 0) = plain generation / reconstruction.
        latents_T: float [B, 4, h, w] start noise; default seeded Gaussian noise.
        inversion: start from an inverted real image instead (:func:`~noiseclr_lite.inversion.ddim_invert`
            or :func:`~noiseclr_lite.inversion.ddpm_invert`); its steps, noise maps and (unless a
            prompt is given) conditioning are used, and ``num_inference_steps``, ``batch_size``,
            ``height``, ``width`` and ``eta`` are ignored.
        prompt: text prompt, "" = unconditional (the NoiseCLR default).
        prompt_embeds: precomputed prompt conditioning [1 or B, L, H] instead of ``prompt``.
        guidance_scale: classifier-free guidance g (used when there is a prompt and g > 1).
        num_inference_steps: DDIM steps.
        seed: seeds the start noise (and the sampler noise when ``eta > 0``).
        batch_size: images from noise (B).
        height, width: pixel size from noise; default the UNet's ``sample_size`` times the
            VAE factor.
        eta: DDIM stochasticity in [0, 1] when starting from noise or ``latents_T``
            (0 = deterministic DDIM, 1 = DDPM).
        return_latents: also return the final latents.
        progress: show a tqdm bar.
        composition: ``"sum"`` (NoiseCLR's: every push everywhere) or ``"regions"``: where
            edits from different ``Directions`` sets push against each other, only the set that
            pushes hardest there acts (:func:`split_regions`): a face edit and a cat edit on one scene.

    Returns:
        A list of B ``PIL.Image`` (RGB, height x width), or ``(images, latents)`` with
        latents float32 [B, 4, h, w] on the CPU when ``return_latents``.
    """
    latents = denoise(pipe, edits, latents_T=latents_T, inversion=inversion, prompt=prompt,
                      prompt_embeds=prompt_embeds, guidance_scale=guidance_scale,
                      num_inference_steps=num_inference_steps, seed=seed, batch_size=batch_size,
                      height=height, width=width, eta=eta, progress=progress, composition=composition)
    images = decode_latents(pipe, latents)
    return (images, latents) if return_latents else images


def edit_grid(pipe, directions, indices, scales, window: tuple[float, float] = (1.0, 0.0),
              **edit_kwargs) -> list:
    """Images edited by each direction at each scale: rows = ``indices``, columns = images x ``scales``.

    Args:
        directions: a ``Directions`` object.
        indices: the directions to show (indices, tokens or names).
        scales: the slider values, e.g. ``[-4, -2, 0, 2, 4]``.
        window: the step window for every edit (see :class:`DirectionEdit`).
        **edit_kwargs: passed to :func:`edit` (``inversion=``, ``seed=``, ``prompt=``, ...).
            An inversion of B images (or ``batch_size=B``) edits all B at once.

    Returns:
        ``grid[row][col]``, a ``PIL.Image`` per direction (row) and per image and scale
        (column ``b * len(scales) + s``: image b at ``scales[s]``); with one image, simply
        one column per scale.  Scale 0 is computed once and shared by every row.
    """
    edit_kwargs.pop("return_latents", None)
    unedited = None
    grid = []
    for index in indices:
        per_scale = []                                   # per_scale[s][b]
        for scale in scales:
            if scale == 0:
                if unedited is None:
                    unedited = edit(pipe, [], **edit_kwargs)
                per_scale.append(unedited)
            else:
                per_scale.append(edit(pipe, [DirectionEdit(directions, index, scale, window)], **edit_kwargs))
        grid.append([per_scale[s][b] for b in range(len(per_scale[0])) for s in range(len(scales))])
    return grid


def generate(pipe, prompt: str = "", seed: int = 0, num_inference_steps: int = 50, guidance_scale: float = 7.5,
             batch_size: int = 1, **edit_kwargs) -> list:
    """Plain text-to-image generation with deterministic DDIM (``edit`` with no edits).

    ``guidance_scale`` only matters for a non-empty prompt.  The same arguments given to
    :func:`edit` produce the same images, so a generated image can then be edited by
    calling ``edit`` with its seed and prompt.
    """
    return edit(pipe, [], prompt=prompt, seed=seed, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, batch_size=batch_size, **edit_kwargs)
