"""Learning K directions with the NoiseCLR loss: the training loop.

One step, in words: take ``batch_size`` cached image latents, noise them all to one
random timestep t, ask the frozen UNet for its noise prediction under the reference
prompt (the empty one; with ``TrainConfig.context`` such as ``"a car, {}"``, the context
without the token, ``"a car"``) and under each direction's token in that context, and
contrast the differences ``D[i, k]`` (see ``noiseclr_lite.loss``).  Only the K token embeddings receive gradients; the UNet,
the VAE and every other row of the text encoder stay untouched.  With
``TrainConfig.edit_space="hspace"`` (ours, off by default) the differences are taken of the UNet's
middle-block output instead of its noise prediction.  With ``TrainConfig.parameterization=
"vocab-mixture"`` (ours, off by default) each direction trains as logits over the tokenizer's own
vocabulary, its row being their softmax mixture of the vocabulary's rows (``PARAMETERIZATIONS``).

It runs the same on a laptop CPU (the bundled model) and on one or several GPUs
(``accelerate launch``), checkpoints atomically every ``checkpoint_every`` steps, and
resumes bit-exactly: all randomness comes from one ``torch.Generator`` whose state is
saved with the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .directions import Directions, check_context
from .hspace import mid_block_output
from .loss import center_edit_features, denoising_gain_loss, edit_consistency, get_loss, push_strength_loss
from .models import encode_images

CHECKPOINT_NAME = "checkpoint.pt"
#: what the loss compares edits in (``TrainConfig.edit_space``): the UNet's noise prediction (the
#: official NoiseCLR) or its middle-block output, h-space (Kwon et al. 2023: the bottleneck where
#: diffusion models' semantics live; ``hspace.mid_block_output``)
EDIT_SPACES = ("eps", "hspace")
#: what is trained for a direction (``TrainConfig.parameterization``): ``"embedding"``, its token row
#: itself (the official NoiseCLR), or ``"vocab-mixture"`` (ours): logits over the text encoder's own
#: vocabulary, the row being their softmax mixture of the vocabulary's rows.  A mixture stays in the
#: span, and within the norm, of the words the model was trained on, and reads as its heaviest words
#: (``metadata["vocab_mixture"]``); a free row drifts far outside both (on the bundled model trained
#: rows reach about 5x a word's norm).
PARAMETERIZATIONS = ("embedding", "vocab-mixture")
#: the std of the starting logits of a vocabulary mixture: 3 puts a third to a half of each direction's
#: weight on one random piece (about 5 pieces weigh in), so the K directions start apart; near-uniform
#: logits would start every direction at the same vocabulary mean
MIXTURE_LOGIT_STD = 3.0


@dataclass
class TrainConfig:
    """Every setting of a direction-training run (saved in the directions' metadata)."""

    num_directions: int = 8
    steps: int = 200
    learning_rate: float = 1e-2
    tau: float = 0.5
    loss: str = "noiseclr"                   # "noiseclr" (official) or "infonce"
    batch_size: int = 6                      # images per step (per process)
    negatives_per_step: int | None = 20      # directions contrasted with the anchor; None = all K
    anchors: str = "one"                     # "one" (official: the step's anchor only) or "all" (every
                                             # direction in the step, at no extra UNet cost)
    timestep_range: tuple[int, int] = (0, 1000)  # t is drawn uniformly from [low, high)
    strength_weight: float = 0.0             # > 0 adds strength_weight * loss.push_strength_loss (0: official);
                                             # the logged loss then includes that term
    sign_blind_negatives: bool = False       # True: negatives scored by |cos| (loss module docstring; False: official)
    center_edits: bool = False               # True: contrast loss.center_edit_features(D), what is specific to each
                                             # direction (False: official)
    gain_weight: float = 0.0                 # > 0 adds gain_weight * loss.denoising_gain_loss (0: official): each
                                             # direction should explain some images better than the reference
    gain_top_share: float = 0.25             # the share of a step's images each direction's gain is scored on
    gain_two_sided: bool = False             # True: each image's gain from +D or -D, the better (ours; the loss's
                                             # docstring says why a share of 1 then favours pure directions)
    grad_accum: int = 1
    chunk_size: int | None = None            # max images x directions per UNet call; None = one call
    grad_cache: bool = True                  # with chunks: recompute them for a bounded-memory backward
    mixed_precision: str = "no"              # "no", "fp16" or "bf16" (GPU)
    gradient_checkpointing: bool = False
    weight_decay: float = 0.0
    seed: int = 0
    prefix: str = "d"
    init: str = "random"
    context: str = "{}"                      # the prompt each token is used in ("{}": alone, official;
                                             # "a car, {}": after the domain's noun, as the captions put words)
    edit_space: str = "eps"                  # what an edit feature is a difference of: "eps", the noise prediction
                                             # (official), or "hspace", the UNet's middle-block output (EDIT_SPACES)
    parameterization: str = "embedding"      # what is trained: "embedding", each token's row (official), or
                                             # "vocab-mixture", logits over the vocabulary's rows (PARAMETERIZATIONS)
    checkpoint_every: int = 50
    extra: dict = field(default_factory=dict)


class _DirectionParameters(torch.nn.Module):
    """The trainable K x H embeddings, as a module so Accelerate/DDP can synchronise them."""

    def __init__(self, embeddings: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(embeddings.clone().float())

    def forward(self) -> torch.Tensor:
        return self.weight


class _VocabMixtureParameters(torch.nn.Module):
    """Trainable K x V logits; the K x H embeddings are ``softmax(logits) @ vocabulary_rows``."""

    def __init__(self, logits: torch.Tensor, vocabulary_rows: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(logits.clone().float())
        # a plain attribute, not a buffer: the rows are frozen and the same in every process, and
        # DDP would send a buffer (150 MB on SD 1.5) from rank 0 on every forward pass
        self.vocabulary_rows = vocabulary_rows.clone().float()

    def forward(self) -> torch.Tensor:
        if self.vocabulary_rows.device != self.weight.device:   # moved once, with the module's first call
            self.vocabulary_rows = self.vocabulary_rows.to(self.weight.device)
        # in float32 under fp16/bf16 autocast too, so the rows trained are the rows saved
        with torch.autocast(device_type=self.weight.device.type, enabled=False):
            return self.weight.softmax(dim=-1) @ self.vocabulary_rows   # both float32 (made so in __init__)


def vocabulary_rows(pipe) -> tuple[list[int], torch.Tensor]:
    """The ids and float rows [V, H] of ``pipe.tokenizer``'s own vocabulary, special tokens left out:
    what a ``"vocab-mixture"`` direction mixes (rows of direction tokens installed earlier are not
    part of it)."""
    weight = pipe.text_encoder.get_input_embeddings().weight.detach().float().cpu()
    special = set(pipe.tokenizer.all_special_ids)
    ids = [i for i in range(pipe.tokenizer.vocab_size) if i not in special]
    return ids, weight[ids]


def heaviest_words(pipe, logits: torch.Tensor, ids: list[int], top: int = 3) -> list:
    """Per direction, ``[[vocabulary piece, weight], ...]``: the ``top`` heaviest pieces of its
    mixture, from ``logits`` [K, V] over the vocabulary ``ids`` (:func:`vocabulary_rows`); weights
    rounded to 3 places."""
    weights = logits.detach().float().softmax(dim=-1)
    values, order = weights.topk(min(top, weights.shape[1]), dim=-1)
    return [[[pipe.tokenizer.convert_ids_to_tokens(ids[int(i)]), round(float(v), 3)] for v, i in zip(vs, idx)]
            for vs, idx in zip(values, order)]


def _make_accelerator(mixed_precision: str, cpu: bool):
    """An ``Accelerator`` for this run.

    Accelerate keeps one global state per process and refuses a second Accelerator with
    other settings; in a notebook that trains twice (fp32, then bf16) that would fail, so
    in a single process we reset the state.  Under ``accelerate launch`` we never reset.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    try:
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    except ValueError:
        if PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill mid-write never corrupts the last good checkpoint


def check_edit_space(edit_space: str, what: str = "edit_space") -> None:
    """Raise a ``ValueError`` naming ``what`` unless ``edit_space`` is one of :data:`EDIT_SPACES`."""
    if edit_space not in EDIT_SPACES:
        raise ValueError(f"{what}={edit_space!r}; use 'eps' (the official loss: noise predictions) or 'hspace' "
                         "(the UNet's middle-block output)")


def unet_features(unet, noisy_latents: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor,
                  edit_space: str = "eps") -> torch.Tensor:
    """What the UNet gives that edits are compared in, for one call.

    Args:
        unet: a ``UNet2DConditionModel`` (``pipe.unet``).
        noisy_latents: [B, 4, h, w]; timestep: a 0-d, [1] or [B] tensor; cond: [B, L, H].
        edit_space: ``"eps"``: the noise prediction, [B, 4, h, w]; ``"hspace"``: the middle block's
            output, [B, C, h', w'] (the up blocks are not run).
    Returns:
        In the UNet's dtype (the autocast dtype inside ``autocast``), differentiable w.r.t. ``cond``.
    """
    check_edit_space(edit_space)
    timesteps = timestep.expand(len(noisy_latents))
    if edit_space == "hspace":
        return mid_block_output(unet, noisy_latents, timesteps, cond)
    return unet(noisy_latents, timesteps, cond).sample


def edit_features(unet, noisy_latents: torch.Tensor, timestep: torch.Tensor, direction_cond: torch.Tensor,
                  reference: torch.Tensor, chunk_size: int | None = None, edit_space: str = "eps") -> torch.Tensor:
    """The edit features ``D[i, k] = eps(x_t^i, t, c_k) - eps(x_t^i, t, c_ref)`` (with
    ``edit_space="hspace"``, the same difference of the middle block's output h).

    Args:
        noisy_latents: [N, 4, h, w] the images' latents noised to ``timestep``.
        timestep: a 0-d or [1] long tensor, shared by all images.
        direction_cond: [S, L, H] the text-encoder states of S direction prompts.
        reference: [N, ...] :func:`unet_features` under the reference prompt ``c_ref`` in the
            same ``edit_space``: the empty prompt, or the directions' context without the token
            (no grad needed).
        chunk_size: at most this many (image, direction) pairs per UNet call
            (direction-major, so ``chunk_size=N`` is one call per direction).
        edit_space: ``"eps"`` (official) or ``"hspace"`` (:data:`EDIT_SPACES`).
    Returns:
        [N, S, ...] float32 (``...`` = [4, h, w] for eps, [C, h', w'] for h), differentiable
        w.r.t. ``direction_cond``.
    """
    n, s = noisy_latents.shape[0], direction_cond.shape[0]
    # direction-major layout: row r is (direction r // n, image r % n)
    latents = noisy_latents.repeat(s, 1, 1, 1)
    cond = direction_cond.repeat_interleave(n, dim=0)
    step = chunk_size or len(latents)
    outputs = torch.cat([unet_features(unet, latents[a:a + step], timestep, cond[a:a + step], edit_space)
                         for a in range(0, len(latents), step)])
    outputs = outputs.float().view(s, n, *outputs.shape[1:]).transpose(0, 1)
    return outputs - reference.float().unsqueeze(1)


@torch.no_grad()
def direction_features(pipe, directions: Directions, latents: torch.Tensor, timestep: int = 500,
                       seed: int = 0, chunk_size: int | None = None, edit_space: str = "eps") -> torch.Tensor:
    """The edit features of every direction on every image at one timestep (no gradients).

    What the loss sees in one training step, for plots and analysis
    (``loss.similarity_matrix(direction_features(...))``).  By default all N x K (image, direction)
    pairs go through the UNet in one call; on a large model (SD 1.5 at 512 x 512) give
    ``chunk_size`` to bound the memory of that call.

    Args:
        directions: a ``Directions`` for ``pipe``'s model (or anything with ``conditioning(pipe)``
            and ``reference_conditioning(pipe)``, such as ``metrics.PromptDirections``).
        latents: [N, 4, h, w] scaled VAE latents (``encode_images``).
        timestep: the diffusion timestep in [0, num_train_timesteps) the latents are noised to.
        seed: seeds the noise.
        chunk_size: at most this many (image, direction) pairs per UNet call (``edit_features``);
            ``None`` = all in one call.  The result does not depend on it.
        edit_space: ``"eps"`` (what the official loss sees) or ``"hspace"`` (:data:`EDIT_SPACES`).
    Returns:
        [N, K, 4, h, w] float32: ``eps(x_t, t, c_k) - eps(x_t, t, c_ref)``; with ``"hspace"``,
        [N, K, C, h', w'], the same difference of the middle block's output.
    """
    return _features_and_residual(pipe, directions, latents, timestep, seed, chunk_size, edit_space)[0]


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be a positive number of (image, direction) pairs, "
                         "or None for one UNet call")


def _features_and_residual(pipe, directions, latents: torch.Tensor, timestep: int, seed: int,
                           chunk_size: int | None, edit_space: str = "eps") -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`direction_features`, and the reference prompt's denoising residual on the same noisy
    latents: ``noise - eps(x_t, t, c_ref)`` [N, 4, h, w] float32 (what :func:`denoising_gain` needs;
    None in h-space, where there is no noise prediction to compare with the noise)."""
    _check_chunk_size(chunk_size)
    noise, noisy, t = _noised(pipe, latents, timestep, seed)
    reference_cond = directions.reference_conditioning(pipe).expand(len(noisy), -1, -1)
    reference = unet_features(pipe.unet, noisy, t, reference_cond, edit_space)
    features = edit_features(pipe.unet, noisy, t, directions.conditioning(pipe), reference, chunk_size, edit_space)
    residual = noise - reference.float().cpu() if edit_space == "eps" else None
    return features.cpu(), residual


def _check_predicts_noise(pipe, what: str) -> None:
    """ValueError unless ``pipe``'s UNet predicts the noise: the denoising gain compares its output with the noise."""
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ValueError(f"{what} compares the UNet's output with the noise, so it needs a model that predicts "
                         f"the noise; this scheduler's prediction_type is {prediction!r}")


def _noised(pipe, latents: torch.Tensor, timestep: int, seed: int):
    """(noise [N, 4, h, w] on the CPU, the latents noised to ``timestep`` on the UNet's device and dtype,
    the timestep as a [1] tensor there): the noise drawn from ``seed``, the same on every machine.
    ValueError for a timestep outside the scheduler's training schedule."""
    num_train_timesteps = pipe.scheduler.config.num_train_timesteps
    if not 0 <= timestep < num_train_timesteps:
        raise ValueError(f"timestep={timestep} is outside [0, {num_train_timesteps})")
    latents = latents.float().cpu()
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    t = torch.tensor([timestep])
    noisy = pipe.scheduler.add_noise(latents, noise, t).to(pipe.device, pipe.unet.dtype)
    return noise, noisy, t.to(pipe.device)


#: the timesteps :func:`direction_consistency` averages over by default: the whole range, both edit windows
CONSISTENCY_TIMESTEPS = (50, 150, 300, 500, 700, 900)


@torch.no_grad()
def timestep_features(pipe, directions, latents: torch.Tensor, timesteps: Sequence[int] = CONSISTENCY_TIMESTEPS,
                      chunk_size: int | None = None, edit_space: str = "eps") -> list[torch.Tensor]:
    """The edit features of every direction at each timestep: ``direction_features`` per timestep.

    The latents are noised to each timestep with noise seeded by the timestep alone, so a
    direction meets the same noisy images whichever directions share its set, and two sets
    measured here are compared on the same images (``loss.cross_set_cosines``).

    Args:
        directions: a ``Directions`` (or anything with ``conditioning(pipe)``, such as
            ``metrics.PromptDirections``) for ``pipe``'s model.
        latents: [N, 4, h, w] scaled VAE latents (``encode_images``).
        timesteps: diffusion timesteps in [0, num_train_timesteps).
        chunk_size: at most this many (image, direction) pairs per UNet call (``direction_features``).
        edit_space: ``"eps"`` or ``"hspace"`` (``direction_features``).
    Returns:
        One [N, K, 4, h, w] float32 tensor per timestep, in the order of ``timesteps``
        ([N, K, C, h', w'] in h-space).
    """
    if not timesteps:
        raise ValueError("measuring over timesteps needs at least one timestep; got none")
    return [direction_features(pipe, directions, latents, timestep=t, seed=t, chunk_size=chunk_size,
                               edit_space=edit_space) for t in timesteps]


@torch.no_grad()
def reference_residuals(pipe, directions, latents: torch.Tensor,
                        timesteps: Sequence[int] = CONSISTENCY_TIMESTEPS) -> torch.Tensor:
    """What the reference prompt's noise prediction misses, at each timestep:
    ``noise - eps(x_t, t, c_ref)``, with the latents noised as :func:`timestep_features` noises them
    (noise seeded by the timestep), so it pairs with those features in
    :func:`noiseclr_lite.loss.denoising_gain_loss`.

    Args:
        pipe: the pipeline whose UNet and scheduler predict and add the noise.
        directions: a ``Directions`` (anything with ``reference_conditioning(pipe)``): its context
            sets the reference prompt.
        latents: [N, 4, h, w] scaled VAE latents (``encode_images``).
        timesteps: diffusion timesteps in [0, num_train_timesteps).
    Returns:
        [T, N, 4, h, w] float32 on the CPU.
    Raises:
        ValueError: no timesteps, one outside the schedule, or a model that does not predict the
            noise (``prediction_type`` other than ``"epsilon"``).
    """
    if not timesteps:
        raise ValueError("reference_residuals measures at given timesteps: give at least one; got none")
    _check_predicts_noise(pipe, "reference_residuals")
    reference_cond = directions.reference_conditioning(pipe).expand(len(latents), -1, -1)   # once: no timestep in it
    residuals = []
    for timestep in timesteps:
        noise, noisy, t = _noised(pipe, latents, timestep, timestep)
        residuals.append(noise - unet_features(pipe.unet, noisy, t, reference_cond, "eps").float().cpu())
    return torch.stack(residuals)


def over_timesteps(measure: Callable[[torch.Tensor], torch.Tensor], pipe, directions, latents: torch.Tensor,
                   timesteps: Sequence[int] = CONSISTENCY_TIMESTEPS, chunk_size: int | None = None,
                   edit_space: str = "eps") -> torch.Tensor:
    """``measure`` of the edit features at each timestep (:func:`timestep_features`), averaged
    over the timesteps.

    Args:
        measure: [N, K, ...] edit features -> a tensor (``loss.edit_consistency``: [K];
            ``loss.shared_edit_share``: 0-d).
        directions, latents, timesteps, chunk_size, edit_space: as for :func:`timestep_features`.
    Returns:
        The mean over ``timesteps`` of ``measure``'s value, in its shape.
    """
    features = timestep_features(pipe, directions, latents, timesteps, chunk_size, edit_space)
    return torch.stack([measure(f) for f in features]).mean(dim=0)


def direction_consistency(pipe, directions, latents: torch.Tensor,
                          timesteps: Sequence[int] = CONSISTENCY_TIMESTEPS,
                          chunk_size: int | None = None, edit_space: str = "eps") -> torch.Tensor:
    """Each direction's edit consistency (``loss.edit_consistency``), averaged over timesteps
    (:func:`over_timesteps`).

    Args:
        directions: a ``Directions`` (or anything with ``conditioning(pipe)``, such as
            ``metrics.PromptDirections``) for ``pipe``'s model.
        latents: [N, 4, h, w] scaled VAE latents (``encode_images``), N >= 2.
        timesteps: diffusion timesteps in [0, num_train_timesteps).
        chunk_size: at most this many (image, direction) pairs per UNet call (``direction_features``).
        edit_space: ``"eps"`` (what the official loss sees) or ``"hspace"`` (:data:`EDIT_SPACES`).
    Returns:
        [K] float32 in [-1, 1]: the mean over ``timesteps`` of ``mean_{i != j} cos(D_ik, D_jk)``.
    """
    return over_timesteps(edit_consistency, pipe, directions, latents, timesteps, chunk_size, edit_space)


@torch.no_grad()
def denoising_gain(pipe, directions, latents: torch.Tensor, timesteps: Sequence[int] = CONSISTENCY_TIMESTEPS,
                   chunk_size: int | None = None) -> torch.Tensor:
    """How much better each direction's prompt denoises each image than the reference prompt.

    ``gain[k, i] = mean_t (|n - eps(x_t^i, t, c_ref)|^2 - |n - eps(x_t^i, t, c_k)|^2)``, with the
    squares averaged over the latent's elements and ``n`` the noise that made ``x_t^i``: the
    diffusion-classifier score (Li et al., ICCV 2023, "Your Diffusion Model is Secretly a Zero-Shot
    Classifier") of prompt ``c_k`` against ``c_ref``.  > 0 where the direction's prompt explains the
    image better than the reference.  Unlike the edit features it looks at the images' content (the
    noise to be predicted), so it tells *which* images a direction speaks of: a direction that stands
    for one two-valued attribute splits the images into two groups.  It needs no labels.

    The latents are noised to each timestep with noise seeded by the timestep, as in
    :func:`timestep_features`, so every set meets the same noisy images.

    Args:
        directions: a ``Directions`` (or anything with ``conditioning(pipe)`` and
            ``reference_conditioning(pipe)``, such as ``metrics.PromptDirections``) for ``pipe``'s model.
        latents: [N, 4, h, w] scaled VAE latents (``encode_images``).
        timesteps: diffusion timesteps in [0, num_train_timesteps).
        chunk_size: at most this many (image, direction) pairs per UNet call (``direction_features``).
    Returns:
        [K, N] float32: each direction's gain on each image, in squared-noise units (0 = no better
        than the reference).  With one noise draw per timestep it is a noisy estimate: noise pulls
        a statistic of it over images towards that of a Gaussian.
    Raises:
        ValueError: no timesteps, one outside the schedule, or a model that does not predict the
            noise (``prediction_type`` other than ``"epsilon"``).
    """
    if not timesteps:
        raise ValueError("the denoising gain is averaged over timesteps: give at least one; got none")
    _check_predicts_noise(pipe, "denoising_gain")
    gains = []
    for t in timesteps:
        features, residual = _features_and_residual(pipe, directions, latents, t, t, chunk_size)
        # |r|^2 - |r - D|^2 = 2 r.D - |D|^2, with r the reference's residual and D the edit feature
        residual = residual.unsqueeze(1)
        gains.append((2 * residual * features - features ** 2).flatten(2).mean(dim=2))  # [N, K]
    return torch.stack(gains).mean(dim=0).T.contiguous()


def _sample_step(generator, num_images, num_directions, cfg, num_train_timesteps):
    """Draw one step's images, timestep, anchor and contrasted directions (all from ``generator``)."""
    batch = min(cfg.batch_size, num_images)
    image_idx = torch.randperm(num_images, generator=generator)[:batch]
    low, high = cfg.timestep_range
    high = min(high, num_train_timesteps)
    t = torch.randint(low, high, (1,), generator=generator)
    anchor = int(torch.randint(0, num_directions, (1,), generator=generator))
    others = torch.tensor([k for k in range(num_directions) if k != anchor])
    others = others[torch.randperm(len(others), generator=generator)]
    if cfg.negatives_per_step is not None:
        others = others[:cfg.negatives_per_step]
    return image_idx, t, [anchor] + others.tolist()


def _check_finite(value: float, what: str, step: int, ckpt_path, cfg: TrainConfig) -> None:
    """Stop on NaN/inf before anything is checkpointed, so the last checkpoint stays good."""
    if not math.isfinite(value):
        raise FloatingPointError(
            f"NoiseCLR {what} became {value} at step {step}; the last good checkpoint "
            f"({ckpt_path or 'none: pass output_dir'}) is intact. Lower learning_rate "
            f"(now {cfg.learning_rate}) or use mixed_precision='bf16' or 'no' instead of 'fp16'.")


def check_config(cfg: TrainConfig) -> None:
    """Refuse a ``TrainConfig`` that cannot train, before any model or image is loaded.

    The settings ``train_directions`` would refuse are checked here, so that front ends (the CLI,
    ``benchmarks/quality.py``) can turn a bad option into a usage error at once instead of
    after a minute of loading; ``train_directions`` calls it too (through ``_check_config``,
    which also refuses fewer than 2 images).

    Raises:
        ValueError: naming the field, its value and the fix.
    """
    if cfg.num_directions < 2:
        raise ValueError(f"num_directions={cfg.num_directions}: the contrastive loss needs at least 2 directions")
    if cfg.batch_size < 2:
        raise ValueError(f"batch_size={cfg.batch_size}: need >= 2 images per step; positives are the same direction "
                         "on two different images")
    get_loss(cfg.loss)   # an unknown name is refused with the names there are
    low, high = cfg.timestep_range
    if not 0 <= low < high:
        raise ValueError(f"timestep_range={tuple(cfg.timestep_range)}: t is drawn from [low, high), so give "
                         "0 <= low < high, e.g. (0, 1000)")
    if cfg.grad_accum < 1:
        raise ValueError(f"grad_accum={cfg.grad_accum}: give the number of micro-steps per update, 1 or more")
    _check_chunk_size(cfg.chunk_size)
    if cfg.anchors not in ("one", "all"):
        raise ValueError(f"anchors={cfg.anchors!r}; use 'one' (the official loss: one anchor per step) or 'all'")
    if not (cfg.strength_weight >= 0 and math.isfinite(cfg.strength_weight)):
        raise ValueError(f"strength_weight={cfg.strength_weight}; use 0 (the official loss) or a small positive "
                         "weight such as 0.25")
    if not (cfg.gain_weight >= 0 and math.isfinite(cfg.gain_weight)):
        raise ValueError(f"gain_weight={cfg.gain_weight}; use 0 (the official loss) or a positive weight such as 10")
    if not 0 < cfg.gain_top_share <= 1:
        raise ValueError(f"gain_top_share={cfg.gain_top_share}; give the share of a step's images each direction's "
                         "gain is scored on, in (0, 1]")
    if not cfg.gain_weight and (cfg.gain_two_sided or cfg.gain_top_share != TrainConfig.gain_top_share):
        raise ValueError(f"gain_two_sided={cfg.gain_two_sided}, gain_top_share={cfg.gain_top_share} with "
                         f"gain_weight=0: they shape the denoising-gain term, which is off; give gain_weight too, "
                         f"or leave them at their defaults (False, {TrainConfig.gain_top_share})")
    if cfg.gain_weight and cfg.edit_space != "eps":
        raise ValueError(f"gain_weight={cfg.gain_weight} with edit_space={cfg.edit_space!r}: the denoising gain "
                         "compares noise predictions with the noise, so it needs edit_space='eps'")
    contrasted = cfg.num_directions if cfg.negatives_per_step is None else min(cfg.num_directions,
                                                                                1 + cfg.negatives_per_step)
    if cfg.center_edits and contrasted < 3:
        raise ValueError(f"center_edits=True with {contrasted} directions per step (num_directions="
                         f"{cfg.num_directions}, negatives_per_step={cfg.negatives_per_step}): two centred edits are "
                         "always opposite, so nothing would keep them apart; contrast >= 3 directions per step")
    check_context(cfg.context, "TrainConfig.context")
    check_edit_space(cfg.edit_space, "TrainConfig.edit_space")
    if cfg.parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"TrainConfig.parameterization={cfg.parameterization!r}; use one of "
                         f"{', '.join(map(repr, PARAMETERIZATIONS))}")
    if cfg.parameterization == "vocab-mixture" and cfg.init != "random":
        raise ValueError(f"TrainConfig.init={cfg.init!r} with parameterization='vocab-mixture': a mixture starts "
                         "from logits drawn from the seed (MIXTURE_LOGIT_STD), not from a row; leave init='random'")
    if cfg.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision={cfg.mixed_precision!r}; use 'no', 'fp16' or 'bf16'")


def _check_config(cfg: TrainConfig, num_images: int) -> None:
    check_config(cfg)
    if num_images < 2:
        raise ValueError(f"need >= 2 images per step (got {num_images} images, batch_size={cfg.batch_size}); "
                         "positives are the same direction on two different images")


def train_directions(pipe, images: torch.Tensor | None = None, config: TrainConfig | None = None, *,
                     latents: torch.Tensor | None = None, output_dir: str | os.PathLike | None = None,
                     resume: bool = False, accelerator=None, progress: bool = True,
                     callback: Callable[[int, float], None] | None = None, **overrides) -> Directions:
    """Discover ``num_directions`` edit directions in ``pipe`` from unlabeled images.

    Args:
        pipe: a ``StableDiffusionPipeline`` (``noiseclr_lite.load_pipeline``).
        images: float [N, 3, H, W] in [-1, 1] (``noiseclr_lite.data.load_images``); they
            are VAE-encoded once and cached.  Or give ``latents`` [N, 4, h, w] directly.
        config: a ``TrainConfig``; keyword ``overrides`` replace its fields
            (``train_directions(pipe, images, steps=300, num_directions=8)``).
        output_dir: where ``checkpoint.pt`` is written every ``checkpoint_every`` steps.
        resume: continue from ``output_dir/checkpoint.pt`` if it exists.
        accelerator: an ``accelerate.Accelerator``; one is made from the config if None.
            Under ``accelerate launch`` each process draws its own images and the
            gradients are averaged, so every process ends with the same directions.
        callback: called as ``callback(step, loss)`` after every step (live loss curves).
    Returns:
        The trained ``Directions`` (also installed in ``pipe``), with the settings, the
        loss history and ``train_seconds`` in ``metadata``: seconds spent in training steps,
        summed over every resumed run (None if an older checkpoint did not record it).
    Raises:
        FloatingPointError: the loss became NaN/inf; the last checkpoint is left intact.
    """
    cfg = TrainConfig(**{**asdict(config or TrainConfig()), **overrides})
    cfg.timestep_range = tuple(cfg.timestep_range)
    if accelerator is None:
        accelerator = _make_accelerator(cfg.mixed_precision, cpu=pipe.device.type == "cpu")
    device = pipe.device
    if latents is None:
        if images is None:
            raise ValueError("give images ([N, 3, H, W] in [-1, 1]) or latents ([N, 4, h, w])")
        latents = encode_images(pipe, images)
    latents = latents.float().cpu()
    _check_config(cfg, len(latents))
    if cfg.gain_weight:
        _check_predicts_noise(pipe, f"gain_weight={cfg.gain_weight} (the denoising-gain term)")
    loss_fn = get_loss(cfg.loss)
    unet, scheduler = pipe.unet, pipe.scheduler
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    directions = Directions.create(pipe, cfg.num_directions, prefix=cfg.prefix, init=cfg.init, seed=cfg.seed,
                                   context=cfg.context)
    if cfg.parameterization == "vocab-mixture":
        vocabulary_ids, rows = vocabulary_rows(pipe)
        start = torch.randn(cfg.num_directions, len(vocabulary_ids),
                            generator=torch.Generator().manual_seed(cfg.seed)) * MIXTURE_LOGIT_STD
        params = _VocabMixtureParameters(start, rows)
        directions.embeddings = params().detach().clone()
    else:
        params = _DirectionParameters(directions.embeddings)
    directions.install(pipe)
    optimizer = torch.optim.AdamW(params.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    params, optimizer = accelerator.prepare(params, optimizer)
    # every process gets its own stream of images and timesteps; the init is shared (same seed)
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + accelerator.process_index)
    start_step, history = 0, []
    # seconds spent in training steps, summed over every resumed run: what "how long did these
    # directions take" means (a run that resumes a finished checkpoint takes no time at all).
    # None when resuming a checkpoint written before this was recorded.
    earlier_seconds: float | None = 0.0

    ckpt_path = Path(output_dir) / CHECKPOINT_NAME if output_dir is not None else None
    if resume and ckpt_path is not None and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved_cfg = json.loads(state["config"])
        saved_cfg.setdefault("anchors", "one")  # checkpoints from before the option trained one anchor
        saved_cfg.setdefault("init", "random")
        saved_cfg.setdefault("strength_weight", 0.0)
        saved_cfg.setdefault("sign_blind_negatives", False)
        saved_cfg.setdefault("center_edits", False)
        saved_cfg.setdefault("gain_weight", 0.0)
        saved_cfg.setdefault("gain_top_share", 0.25)
        saved_cfg.setdefault("gain_two_sided", False)
        saved_cfg.setdefault("context", "{}")
        saved_cfg.setdefault("edit_space", "eps")
        saved_cfg.setdefault("parameterization", "embedding")
        # the learning rate too: the optimizer state loaded below would silently bring back the saved one
        for key in ("num_directions", "seed", "prefix", "loss", "batch_size", "anchors", "init", "strength_weight",
                    "sign_blind_negatives", "center_edits", "gain_weight", "gain_top_share", "gain_two_sided",
                    "learning_rate", "context", "edit_space", "parameterization"):
            if saved_cfg[key] != getattr(cfg, key):
                raise ValueError(f"{ckpt_path} was written with {key}={saved_cfg[key]!r} but this run has "
                                 f"{key}={getattr(cfg, key)!r}; use the same settings or another output folder")
        accelerator.unwrap_model(params).weight.data.copy_(state["embeddings"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"][accelerator.process_index])
        start_step, history = int(state["step"]), state["history"].tolist()
        earlier_seconds = float(state["train_seconds"]) if "train_seconds" in state else None

    with torch.no_grad():  # the empty prompt, or the context without the token
        reference_cond = directions.reference_conditioning(pipe)
    num_train_timesteps = scheduler.config.num_train_timesteps
    bar = tqdm(total=cfg.steps, initial=start_step, desc="NoiseCLR", disable=not (progress and accelerator.is_main_process))
    began = time.perf_counter()
    # Read the clock once per step, so the checkpoint and the metadata agree and a resumed, already
    # finished run reports the first run's time rather than adding the time spent saving.
    spent = earlier_seconds

    for step in range(start_step, cfg.steps):
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(cfg.grad_accum):
            image_idx, t, chosen = _sample_step(generator, len(latents), cfg.num_directions, cfg, num_train_timesteps)
            x0 = latents[image_idx]
            noise = torch.randn(x0.shape, generator=generator)
            noisy = scheduler.add_noise(x0, noise, t).to(device, unet.dtype)
            t = t.to(device)
            try:
                with accelerator.autocast():
                    with torch.no_grad():
                        reference = unet_features(unet, noisy, t, reference_cond.expand(len(noisy), -1, -1),
                                                  cfg.edit_space)
                    # what the reference misses: the denoising-gain term's target (none without the term)
                    residual = noise.to(device) - reference.float() if cfg.gain_weight else None
                    loss = _contrast(pipe, directions, params(), chosen, noisy, t, reference, loss_fn, cfg,
                                     accelerator, residual)
            except torch.cuda.OutOfMemoryError as error:
                pairs = len(noisy) * len(chosen)
                raise torch.cuda.OutOfMemoryError(
                    f"out of GPU memory at step {step + 1} with {pairs} image x direction pairs per UNet call. "
                    f"Try --chunk-size {max(1, pairs // 4)} (chunk_size=...), --mixed-precision fp16 or bf16, "
                    f"--gradient-checkpointing, or fewer --negatives / a smaller --batch-size. ({error})") from error
            step_loss += loss.item() / cfg.grad_accum
        _check_finite(step_loss, "loss", step + 1, ckpt_path, cfg)
        optimizer.step()
        weights = accelerator.unwrap_model(params).weight
        _check_finite(float(weights.detach().abs().max()), "direction embeddings", step + 1, ckpt_path, cfg)
        history.append(round(step_loss, 6))
        if earlier_seconds is not None:
            spent = earlier_seconds + time.perf_counter() - began
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if callback is not None:
            callback(step + 1, step_loss)
        done = step + 1
        if ckpt_path is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            generators = accelerator.gather(generator.get_state().unsqueeze(0).to(accelerator.device)).cpu()
            if accelerator.is_main_process:
                ckpt_path.parent.mkdir(parents=True, exist_ok=True)
                _atomic_save({"embeddings": accelerator.unwrap_model(params).weight.detach().cpu(),
                              "optimizer": optimizer.state_dict(), "generator": generators,
                              "step": torch.tensor(done), "history": torch.tensor(history, dtype=torch.float64),
                              "config": json.dumps(asdict(cfg)),
                              **({} if spent is None else {"train_seconds": spent})}, ckpt_path)
    bar.close()
    if cfg.gradient_checkpointing:   # the pipeline is the caller's: leave it as it came (fast inference)
        unet.disable_gradient_checkpointing()

    trained = accelerator.unwrap_model(params)
    directions.embeddings = trained().detach().cpu().clone()
    if cfg.parameterization == "vocab-mixture":
        directions.metadata["vocab_mixture"] = json.dumps(dict(zip(
            directions.tokens, heaviest_words(pipe, trained.weight, vocabulary_ids))))
    directions.metadata.update({"training": json.dumps(asdict(cfg)), "loss_history": json.dumps(history),
                                "num_images": len(latents), "num_processes": accelerator.num_processes,
                                "train_seconds": None if spent is None else round(spent, 1)})
    directions.install(pipe)
    return directions


def _contrast(pipe, directions, embeddings, chosen, noisy, t, reference, loss_fn, cfg, accelerator, residual=None):
    """Loss for one micro-batch, back-propagated into ``embeddings``; returns the loss value.

    ``chosen[0]`` is the step's anchor.  With ``cfg.anchors == "all"`` every chosen direction
    is an anchor in turn (the mean of its ``L_k``): the features are the same, so it costs no
    extra UNet call, and each direction gets a pull towards itself every step instead of once
    in K steps.  ``residual`` [N, 4, h, w], the reference's ``noise - eps(x_t, c_ref)``, is the
    target of the denoising-gain term (``cfg.gain_weight``; None without it).
    """
    anchor = 0 if cfg.anchors == "one" else None
    def features_for(emb):
        cond = directions.conditioning(pipe, embeddings=emb)[chosen]
        return edit_features(pipe.unet, noisy, t, cond, reference, cfg.chunk_size, cfg.edit_space)

    def objective(features):
        contrasted = center_edit_features(features) if cfg.center_edits else features
        loss = loss_fn(contrasted, cfg.tau, anchor=anchor, sign_blind=cfg.sign_blind_negatives)
        if cfg.gain_weight:
            loss = loss + cfg.gain_weight * denoising_gain_loss(features, residual, cfg.gain_top_share,
                                                                 cfg.gain_two_sided)
        return loss + cfg.strength_weight * push_strength_loss(features) if cfg.strength_weight else loss

    chunked = cfg.chunk_size is not None and cfg.chunk_size < len(noisy) * len(chosen)
    if not (chunked and cfg.grad_cache):
        loss = objective(features_for(embeddings))
        accelerator.backward(loss / cfg.grad_accum)
        return loss.detach()
    # Gradient caching: a no-grad pass gives the features, the loss gives d(loss)/d(features),
    # then each chunk is recomputed with grad and back-propagated alone, so memory holds one
    # chunk's activations instead of all of them.
    with torch.no_grad():
        features = features_for(embeddings.detach())
    features.requires_grad_(True)
    loss = objective(features)
    # fp16 training scales the loss so that small gradients survive; do the same by hand.
    # scaler.scale() (not loss * get_scale()) also initialises the scaler's scale tensor, without
    # which the optimizer's scaler.step() raises "Attempted step but _scale is None".
    scaler = getattr(accelerator, "scaler", None)
    scaled = scaler.scale(loss) if scaler is not None else loss
    (feature_grad,) = torch.autograd.grad(scaled / cfg.grad_accum, features)
    # the chunks back-propagate into a detached copy; one final backward goes through the
    # (possibly DDP-wrapped) parameters, so multi-process gradient averaging happens once
    leaf = embeddings.detach().requires_grad_(True)
    cond_all = directions.conditioning(pipe, embeddings=leaf)[chosen]
    n = len(noisy)
    if cfg.chunk_size >= n:  # whole directions per call
        per_call = cfg.chunk_size // n
        pieces = [(slice(None), slice(k, k + per_call)) for k in range(0, len(chosen), per_call)]
    else:  # a chunk smaller than one direction's images: split the images too
        pieces = [(slice(a, a + cfg.chunk_size), slice(k, k + 1))
                  for k in range(len(chosen)) for a in range(0, n, cfg.chunk_size)]
    for images, dirs in pieces:
        part = edit_features(pipe.unet, noisy[images], t, cond_all[dirs], reference[images],
                             edit_space=cfg.edit_space)
        torch.autograd.backward((part * feature_grad[images, dirs]).sum(), inputs=[leaf], retain_graph=True)
    embeddings.backward(leaf.grad)
    return loss.detach()
