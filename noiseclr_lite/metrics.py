"""Scoring edit directions against known attributes (DESIGN.md section 5).

On the bundled world every image's attributes are known and an attribute oracle
(:class:`~noiseclr_lite.toyworld.oracle.Oracle`) reads each one's probability, so what a
direction does can be *measured*.  For a direction k over M held-out starting images:

* **effect** on attribute a: how much the oracle's P(a = value 1) moves, scored both ways,
  ``|mean_i (p_a(edit_i at +s) - p_a(edit_i at -s))|``, in [0, 1];
* **strength**: the largest effect; **purity**: the largest effect over the sum of effects
  (1.0 = the direction changes one attribute only);
* **coverage** of a domain: the share of its attributes that some direction changes with
  strength >= 0.5 and purity >= 0.6;
* **preservation**: how much the other (off-target) attributes and the pixels move;
* **cross-domain interference**: on face+cat scenes, how much a face direction moves the
  cat's attributes (and vice versa).

Why two-sided, on balanced starting images: a one-way score ``mean(p(+s) - p(before))``
on a set where 70% already wear glasses can move glasses by at most 0.3, so it cannot see
an "add glasses" direction.  With starting images balanced over every attribute's values
(:func:`balanced_start_images`) and the +s and -s edits compared with each other, a
direction that only adds glasses (+s: everyone wears them, -s: nothing changes) scores
0.5, one that adds them at +s and removes them at -s scores 1.0, and a direction that does
nothing scores 0.

Why calibrated scales: a raw scale means something different for every direction (and
every method: random tokens, text prompts, learned tokens have different norms), so
methods are compared at a *matched amount of pixel change* (:func:`calibrate_scale`),
not at a matched raw scale.

The module has two halves:

(a) scoring math on oracle probabilities -- :func:`two_sided_effects`, :func:`purity`,
    :func:`strength`, :func:`target_attribute`, :func:`coverage`, :func:`expected_subset_coverage`,
    :func:`preservation`, :func:`cross_domain_interference`, :func:`pixel_change`, :func:`calibrate_scale` --
    plain tensors in, numbers out, testable without any model;
(b) the measurement on a pipeline that produces those probabilities --
    :func:`balanced_start_images`, :func:`prepare_start`, :func:`score_direction`,
    :func:`score_directions`, :func:`summary`, :func:`format_table` -- and
    :class:`PromptDirections`, which lets a text prompt ("smiling") stand in for a learned
    direction (the supervised ceiling of the benchmark).

    start = prepare_start(pipe, balanced_start_images("face", 32, seed=0)[0], num_inference_steps=25)
    scores = score_directions(pipe, oracle, directions, start, "face", target_change=0.05)
    print(format_table([{"method": "NoiseCLR", **summary(scores, "face")}]))
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, field, replace
from typing import Callable, Collection, Mapping, Sequence

import numpy as np
import torch

from .toyworld.domains import DOMAIN_NAMES, get_domain, render
from .toyworld.oracle import HEADS

__all__ = [
    "Calibration", "DirectionScore", "Interference", "Preservation", "PromptDirections", "StartSet",
    "aggregate_summaries", "attribute_probabilities", "balanced_start_images", "calibrate_scale", "coverage",
    "cross_domain_interference", "expected_subset_coverage", "format_table", "images_to_tensor", "pixel_change",
    "prepare_start", "preservation", "purity", "reached_purity", "score_direction", "score_directions", "strength",
    "summary", "target_attribute", "two_sided_effects",
]

#: defaults of the coverage rule (issue 5): a direction "covers" its target attribute when
#: its strength is at least STRENGTH_MIN and its purity at least PURITY_MIN
STRENGTH_MIN = 0.5
PURITY_MIN = 0.6


# ===================================================================================== (a) scoring math
def _effect_vector(effects, names: Sequence[str] | None = None) -> tuple[torch.Tensor, list[str] | None]:
    """A 1-D float tensor of effects and their names from a tensor, a sequence or a {name: effect} dict."""
    if isinstance(effects, Mapping):
        return torch.tensor([float(v) for v in effects.values()]), list(effects)
    vector = torch.as_tensor(effects, dtype=torch.float32).detach().cpu()
    if vector.ndim != 1:
        raise ValueError(f"effects must be one value per attribute, shape [A]; got {tuple(vector.shape)}")
    if names is not None and len(names) != len(vector):
        raise ValueError(f"{len(vector)} effects but {len(names)} attribute names ({list(names)}); give one "
                         f"effect per attribute, in the order of the names")
    return vector, (list(names) if names is not None else None)


def two_sided_effects(probs_plus: torch.Tensor, probs_minus: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """The effect of a direction on each attribute, scored both ways on the same images.

    Args:
        probs_plus: [M, A] the oracle's P(attribute = value 1) for each of M starting images
            edited at scale +s.
        probs_minus: [M, A] the same images edited at -s (row i = the same start image).
        signed: keep the sign: > 0 means +s raises P(value 1) relative to -s ("+ adds
            glasses" when value 1 is "glasses").

    Returns:
        float [A]: ``|mean_i (p_plus - p_minus)|`` in [0, 1] (in [-1, 1] when ``signed``).
        On starting images balanced over the attribute's values, a direction that only adds
        the attribute scores 0.5 and one that adds it at +s and removes it at -s scores 1.
    """
    probs_plus, probs_minus = torch.as_tensor(probs_plus).float(), torch.as_tensor(probs_minus).float()
    if probs_plus.shape != probs_minus.shape or probs_plus.ndim != 2:
        raise ValueError(f"probs_plus and probs_minus must both be [M, A] for the same images; got "
                         f"{tuple(probs_plus.shape)} and {tuple(probs_minus.shape)}")
    diff = (probs_plus - probs_minus).mean(0)
    return diff if signed else diff.abs()


def strength(effects) -> float:
    """The largest effect (|effect| if signed), in [0, 1]; 0 for no attributes.

    ``effects``: one value per attribute, as a [A] tensor, a sequence or a {name: effect} dict.
    """
    vector, _ = _effect_vector(effects)
    return float(vector.abs().max()) if len(vector) else 0.0


def purity(effects) -> float:
    """Largest effect / sum of effects (absolute values), in [1/A, 1]; 1.0 = one attribute only.

    ``effects``: one value per attribute, as a [A] tensor, a sequence or a {name: effect} dict.

    A direction that changes nothing (all effects 0) has purity 0, not 1: doing nothing
    is not a pure edit.
    """
    vector, _ = _effect_vector(effects)
    total = float(vector.abs().sum())
    return float(vector.abs().max()) / total if total > 0 else 0.0


def target_attribute(effects, names: Sequence[str] | None = None) -> str:
    """The name of the attribute with the largest |effect| (the direction's target).

    ``effects`` is [A] with ``names`` (A names), or a {name: effect} dict.
    """
    vector, names = _effect_vector(effects, names)
    if names is None:
        raise ValueError("give the attribute names (or effects as a {name: effect} dict)")
    return names[int(vector.abs().argmax())]


def coverage(effect_table, attribute_names: Sequence[str], strength_min: float = STRENGTH_MIN,
             purity_min: float = PURITY_MIN) -> tuple[float, list[str]]:
    """The share of a domain's attributes that some direction changes strongly and purely.

    Args:
        effect_table: [D, A] effects (two-sided, >= 0) of D directions on the domain's A
            attributes (rows from :func:`two_sided_effects`).
        attribute_names: the A attribute names, in column order.
        strength_min, purity_min: a direction covers its target attribute (its largest
            effect) when its strength >= ``strength_min`` and its purity >= ``purity_min``.
            A strong but impure direction (one that changes two attributes at once) covers
            nothing.

    Returns:
        (share in [0, 1], the covered attribute names in column order).
    """
    table = torch.as_tensor(effect_table, dtype=torch.float32)
    if table.ndim != 2 or table.shape[1] != len(attribute_names):
        raise ValueError(f"effect_table must be [D, A] with A = {len(attribute_names)} attributes; "
                         f"got {tuple(table.shape)}")
    covered = set()
    for row in table:
        if strength(row) >= strength_min and purity(row) >= purity_min:
            covered.add(int(row.abs().argmax()))
    names = [attribute_names[a] for a in sorted(covered)]
    return len(covered) / len(attribute_names), names


def expected_subset_coverage(covered_by_direction: Sequence[Collection[str]], attribute_names: Sequence[str],
                             size: int) -> float:
    """The coverage that ``size`` directions drawn at random from a set reach, on average over every draw.

    Coverage counts what *some* direction of a set covers, so a larger set of anything covers
    more: ten random tokens get more tries than the four words of a domain. This is the fair
    floor for a set of ``size`` directions, computed exactly rather than by sampling: an
    attribute covered by n of the D directions is missed by a draw of ``size`` with probability
    C(D - n, size) / C(D, size).

    Args:
        covered_by_direction: for each of the D directions, the attributes it covers (a
            direction read at one strength covers at most one, its target; read at several, it
            may cover one per strength), e.g. ``coverage([row], names)[1]`` per effect row.
        attribute_names: the domain's A attribute names.
        size: how many directions a draw holds, 1 <= size <= D.

    Returns:
        The expected share of the A attributes covered, in [0, 1]; with ``size`` = D, the set's
        own coverage.
    """
    count = len(covered_by_direction)
    if count == 0:
        raise ValueError("expected_subset_coverage: got no directions to draw from; pass the set's directions "
                         "(one collection of covered attributes each)")
    if not 1 <= size <= count:
        raise ValueError(f"expected_subset_coverage: size={size} directions cannot be drawn from a set of {count}; "
                         f"give a size from 1 to {count}")
    missed = [math.comb(count - sum(name in covered for covered in covered_by_direction), size)
              / math.comb(count, size) for name in attribute_names]
    return 1.0 - statistics.mean(missed) if attribute_names else 0.0


@dataclass
class Preservation:
    """What a direction leaves alone (smaller off_target and pixel_change = better preserved).

    Attributes:
        target: the attribute with the largest effect.
        target_effect: that effect, in [0, 1].
        off_target: the summed effect on every other attribute, in [0, A - 1].
        pixel_change: mean absolute pixel change, in [0, 1] (:func:`pixel_change`).
    """

    target: str
    target_effect: float
    off_target: float
    pixel_change: float


def preservation(effects, pixel_change: float, names: Sequence[str] | None = None) -> Preservation:
    """Off-target attribute change (sum of |effects| except the target's) and the pixel change.

    ``effects`` is [A] with ``names``, or a {name: effect} dict; ``pixel_change`` comes
    from :func:`pixel_change` (or a :class:`DirectionScore`).
    """
    vector, names = _effect_vector(effects, names)
    vector = vector.abs()
    top = int(vector.argmax())
    return Preservation(target=names[top] if names else str(top), target_effect=float(vector[top]),
                        off_target=float(vector.sum() - vector[top]), pixel_change=float(pixel_change))


@dataclass
class Interference:
    """A direction's effect on a two-domain scene, split by the subject it belongs to.

    Attributes:
        own: summed |effect| on the attributes of the direction's own subject (``face_*``
            for a face direction).
        other: summed |effect| on the other subject's attributes (``cat_*``).
        leak: other / (own + other), in [0, 1]; 0 = the edit stays on its own subject
            (0 when nothing changes at all).
    """

    own: float
    other: float
    leak: float


def cross_domain_interference(effects_on_scene, scene_attribute_names: Sequence[str] | None = None,
                              direction_domain: str = "face") -> Interference:
    """How much a direction of one domain moves the *other* subject of a face+cat scene.

    Apply a face direction to scenes (``domain="scene"`` in :func:`score_direction`): its
    effects are over the scene's ``face_*`` and ``cat_*`` attributes.  Ideally it moves the
    face only (``other`` = 0); a cat direction should move ``cat_*`` only.

    Args:
        effects_on_scene: [A] effects on the scene attributes (or a {name: effect} dict).
        scene_attribute_names: the A names ("face_hair", "cat_fur", ...).
        direction_domain: the subject the direction was found in: its attributes are the
            ones named ``f"{direction_domain}_*"``.
    """
    vector, names = _effect_vector(effects_on_scene, scene_attribute_names)
    if names is None:
        raise ValueError("give the scene attribute names (or effects as a {name: effect} dict)")
    mine = torch.tensor([n.startswith(f"{direction_domain}_") for n in names])
    if not mine.any() or mine.all():
        raise ValueError(f"no split of {names} into {direction_domain}_* and other attributes; "
                         f"direction_domain must be a subject of the scene (e.g. 'face' or 'cat')")
    own, other = float(vector.abs()[mine].sum()), float(vector.abs()[~mine].sum())
    return Interference(own=own, other=other, leak=other / (own + other) if own + other > 0 else 0.0)


def pixel_change(images_a: torch.Tensor, images_b: torch.Tensor) -> float:
    """Mean absolute pixel difference in [0, 1] pixel units.

    Both are float [B, 3, H, W] in [-1, 1]; the difference is halved so that 1.0 = every
    channel of every pixel went from black to white, and 0.01 ~ 2.5 grey levels of 255.
    """
    if images_a.shape != images_b.shape:
        raise ValueError(f"pixel_change needs two image batches of one shape; got {tuple(images_a.shape)} vs "
                         f"{tuple(images_b.shape)} (compare an edit with the reconstruction it started from)")
    return float((images_a.float() - images_b.float()).abs().mean() / 2)


@dataclass
class Calibration:
    """The result of :func:`calibrate_scale`.

    Attributes:
        scale: the scale found (``high`` when the target was out of reach).
        change: the measured change at ``scale``.
        reached: False when even ``high`` gives less change than the target.
        evaluations: (scale, change) pairs in the order they were measured.
    """

    scale: float
    change: float
    reached: bool
    evaluations: list = field(default_factory=list)


def calibrate_scale(render_fn: Callable[[float], float], target_change: float, low: float = 0.0,
                    high: float = 16.0, iters: int = 10, rtol: float = 0.05) -> Calibration:
    """Bisection for the scale at which ``render_fn(scale)`` gives ``target_change``.

    So that methods are compared at equal edit strength (the same mean pixel change), not at
    equal raw scale.  Assumes the change grows with the scale between ``low`` and ``high``
    (true of every edit we measured up to saturation).

    With ``low == 0`` the bracket is halved in plain numbers (midpoint ``(low + high) / 2``):
    fine near ``high``, coarse near 0 (4 steps from 16 never try a scale below 1).  With
    ``low > 0`` it is halved in log-scale (midpoint ``sqrt(low * high)``): the same *relative*
    precision at every scale, so a direction that needs 0.3 is found as well as one that
    needs 100.  Use that when the scales the directions need span orders of magnitude, as
    trained tokens (strong) and random ones (faint) do.

    Args:
        render_fn: scale -> change, e.g. the mean :func:`pixel_change` of the edits at +-scale
            (expensive: each call renders; bisection calls it at most ``iters + 1`` times).
        target_change: the change wanted (> 0), in ``render_fn``'s units.
        low, high: the bracket, 0 <= low < high; ``low > 0`` bisects log-spaced.
        iters: bisection steps (the bracket shrinks 2x per step, or by a square root in log-scale).
        rtol: stop early once ``|change - target| <= rtol * target``.

    Returns:
        A :class:`Calibration`: the evaluated scale closest to the target, or ``high``
        with ``reached=False`` when even ``high`` falls short (saturation).
    """
    if target_change <= 0:
        raise ValueError(f"target_change must be > 0; got {target_change}")
    if not 0 <= low < high:
        raise ValueError(f"need 0 <= low < high; got low={low}, high={high}")
    log_spaced = low > 0
    evaluations = []

    def measure(scale):
        change = float(render_fn(scale))
        evaluations.append((scale, change))
        return change

    top = measure(high)
    if top < target_change * (1 - rtol):
        return Calibration(high, top, False, evaluations)
    if top <= target_change * (1 + rtol):
        return Calibration(high, top, True, evaluations)
    for _ in range(iters):
        mid = math.sqrt(low * high) if log_spaced else (low + high) / 2
        change = measure(mid)
        if abs(change - target_change) <= rtol * target_change:
            break
        low, high = (mid, high) if change < target_change else (low, mid)
    scale, change = min(evaluations, key=lambda e: abs(e[1] - target_change))
    return Calibration(scale, change, True, evaluations)


# ===================================================================================== (b) on a pipeline
def balanced_start_images(domain: str, num: int, seed: int = 0, size: int | None = None
                          ) -> tuple[torch.Tensor, list[dict[str, int]]]:
    """Held-out renders of ``domain``, balanced over every attribute's values.

    Each attribute gets a column of values cycling 0, 1, 0, 1, ... (every value equally
    often; off by one when ``num`` is not a multiple of the number of values), shuffled
    independently per attribute with ``seed``, so attributes are balanced one by one and
    uncorrelated on average.  Nuisance variation (background, position, size) is seeded
    from ``seed`` too, in a seed range the bundled model's training renders do not use.

    Args:
        domain: "face", "cat", "car", "painting" or "scene".
        num: M, the number of images (use a multiple of 2).
        seed: the same seed gives the same images.
        size: resize to ``size`` px (default: the renders' 64 px).

    Returns:
        (images float [M, 3, size, size] in [-1, 1], labels: M dicts {attribute: value index}).
    """
    if num < 1:
        raise ValueError(f"num must be at least 1; got {num}")
    rng = random.Random(f"noiseclr-metrics-{domain}-{seed}")
    columns = {}
    for attribute, values in get_domain(domain).attributes.items():
        column = [i % len(values) for i in range(num)]
        rng.shuffle(column)
        columns[attribute] = column
    labels = [{a: columns[a][i] for a in columns} for i in range(num)]
    pictures = [render(domain, lab, seed=10**9 + rng.getrandbits(30)) for lab in labels]
    if size is not None:
        from PIL import Image

        pictures = [p.resize((size, size), Image.LANCZOS) for p in pictures]
    return images_to_tensor(pictures), labels


def images_to_tensor(images) -> torch.Tensor:
    """RGB ``PIL.Image`` list (what :func:`~noiseclr_lite.editing.edit` returns) -> float [B, 3, H, W] in [-1, 1]."""
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).div(127.5).sub(1.0).contiguous()


class PromptDirections:
    """Text prompts used as directions: ``c_k`` = the text encoder's output for prompt k.

    The baseline "the attribute's own word as the direction" (e.g. ``"smiling"``): editing
    with it adds ``s * (eps(x, t, c_"smiling") - eps(x, t, c_empty))``.  It has what
    :func:`~noiseclr_lite.editing.edit` needs of a ``Directions`` (``install``,
    ``conditioning``, ``reference_prompt``, ``reference_conditioning``, ``index``, ``names``,
    ``num_directions``), so it goes into a
    :class:`~noiseclr_lite.editing.DirectionEdit` and into :func:`score_direction`.
    """

    #: prompts are measured from the empty prompt (a ``Directions`` in a context, from that context)
    reference_prompt = ""

    def __init__(self, prompts: Sequence[str], names: Sequence[str] | None = None):
        self.prompts = list(prompts)
        self.tokens = list(self.prompts)
        self.names = list(names or self.prompts)
        if not self.prompts or len(self.names) != len(self.prompts):
            raise ValueError(f"give at least one prompt and one name per prompt; got {self.prompts}, {self.names}")

    @property
    def num_directions(self) -> int:
        """How many prompts, and so directions, this set holds."""
        return len(self.prompts)

    def index(self, key: int | str) -> int:
        """The row of ``key``: an index, a prompt or a name."""
        if isinstance(key, int) and -self.num_directions <= key < self.num_directions:
            return key % self.num_directions
        for labels in (self.prompts, self.names):
            if key in labels:
                return labels.index(key)
        raise KeyError(f"no prompt direction {key!r}; give an index below {self.num_directions}, a prompt "
                       f"{self.prompts} or a name {self.names}")

    def install(self, pipe) -> None:
        """Nothing to install: prompts use the pipeline's own vocabulary."""

    @torch.no_grad()
    def conditioning(self, pipe) -> torch.Tensor:
        """[K, L, H]: each prompt encoded exactly as the editing sampler encodes a prompt."""
        from .inversion import encode_prompt

        return torch.cat([encode_prompt(pipe, p) for p in self.prompts])

    @torch.no_grad()
    def reference_conditioning(self, pipe) -> torch.Tensor:
        """[1, L, H]: the empty prompt's, the reference every prompt's push is measured from."""
        from .inversion import encode_prompt

        return encode_prompt(pipe, "")


def attribute_probabilities(oracle, images: torch.Tensor, domain: str) -> torch.Tensor:
    """The oracle's P(value 1) [M, A] for ``domain``'s A attributes (its heads, in attribute order).

    ``oracle.predict(images [M, 3, H, W] in [-1, 1])["attributes"]`` must be [M, len(HEADS)].
    """
    return oracle_read(oracle, images, domain)[0]


def oracle_read(oracle, images: torch.Tensor, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One oracle pass: (P(value 1) [M, A] for ``domain``'s attributes, in-domain mask [M] bool).

    An image is in its domain when the oracle's most likely domain is ``domain``.  An edit
    that turns a face into a car changes every face attribute at once; the mask lets a
    score say how often that happened instead of reading it as an attribute change.
    """
    predicted = oracle.predict(images)
    columns = [HEADS.index((domain, a)) for a in get_domain(domain).attributes]
    in_domain = predicted["domain"].argmax(1).cpu() == DOMAIN_NAMES.index(domain)
    return predicted["attributes"][:, columns].float().cpu(), in_domain


@dataclass
class StartSet:
    """Starting images made editable once and shared by every direction scored on them.

    Attributes:
        inversion: the edit-friendly DDPM inversion of the M images (scale 0 reproduces them).
        images: float [M, 3, H, W] in [-1, 1], the unedited reconstruction (the decoded
            inversion at scale 0); edits are compared with these, so the VAE's own blur does
            not count as a change.
    """

    inversion: object
    images: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, n: int) -> "StartSet":
        """The first ``n`` images (used to calibrate scales cheaply)."""
        from .inversion import DDPMInversion

        inv = self.inversion
        embeds = inv.prompt_embeds
        if embeds is not None and embeds.shape[0] > 1:
            embeds = embeds[:n]
        sub = DDPMInversion(inv.latents_T[:n], inv.noise_maps[:, :n], inv.timesteps, inv.num_inference_steps,
                            embeds, inv.skip)
        return StartSet(sub, self.images[:n])


def prepare_start(pipe, images_or_latents: torch.Tensor, num_inference_steps: int = 25, seed: int = 0,
                  skip: int = 0) -> StartSet:
    """Invert starting images once (edit-friendly DDPM inversion) and decode the scale-0 result.

    Args:
        images_or_latents: float [M, 3, H, W] images in [-1, 1] (e.g. from
            :func:`balanced_start_images`, at the pipeline's image size), or scaled VAE
            latents [M, 4, h, w] (``encode_images``).
        num_inference_steps: sampler steps of the inversion (and so of every edit).
        seed: seeds the inversion's noise.
        skip: leave out the noisiest steps (weaker, more faithful edits).
    """
    from .editing import edit
    from .inversion import ddpm_invert
    from .models import encode_images

    x = images_or_latents
    latents = encode_images(pipe, x) if x.shape[1] == 3 else x
    inversion = ddpm_invert(pipe, latents, num_inference_steps=num_inference_steps, seed=seed, skip=skip)
    return StartSet(inversion, images_to_tensor(edit(pipe, [], inversion=inversion)))


def _edited(pipe, directions, index, scale: float, start: StartSet, window) -> torch.Tensor:
    """The start images edited by one direction at ``scale``: float [M, 3, H, W] in [-1, 1]."""
    from .editing import DirectionEdit, edit

    if scale == 0:
        return start.images
    return images_to_tensor(edit(pipe, [DirectionEdit(directions, index, scale, window)], inversion=start.inversion))


@dataclass
class DirectionScore:
    """How one direction scores on one domain's starting images (see the module docstring).

    Attributes:
        name, token: the direction's name and token (a prompt for :class:`PromptDirections`).
        domain: the domain of the starting images.
        scale: s, the edits were made at +s and -s.
        effects: {attribute: two-sided effect in [0, 1]}.
        signed_effects: {attribute: mean(p(+s) - p(-s)) in [-1, 1]}; > 0 = +s raises P(value 1).
        plus_effects, minus_effects: {attribute: mean(p(+-s) - p(unedited))}, one side each.
        purity, strength, target: see :func:`purity`, :func:`strength`, :func:`target_attribute`.
        pixel_change: mean of :func:`pixel_change` at +s and at -s against the unedited images.
        off_target: summed effect on every attribute but the target.
        calibrated: the scale came from :func:`calibrate_scale`.
        saturated: calibration hit its upper bound before reaching the target change.
        domain_kept: share of the +s and -s edits the oracle still puts in ``domain``
            (None in scores saved before it was measured).  Low values mean the edit
            leaves the domain (a face becomes a car), which moves every attribute at once.
        window: the edit window ``(start, end)`` the edits were made in (``editing.DirectionEdit``;
            ``(1.0, 0.0)`` = every step, also for scores saved before it was recorded).
    """

    name: str
    token: str
    domain: str
    scale: float
    effects: dict
    signed_effects: dict
    plus_effects: dict
    minus_effects: dict
    purity: float
    strength: float
    target: str
    pixel_change: float
    off_target: float
    calibrated: bool = False
    saturated: bool = False
    domain_kept: float | None = None
    window: tuple[float, float] = (1.0, 0.0)


def score_rendered(render_at: Callable[[float, StartSet], torch.Tensor], oracle, start: StartSet, domain: str,
                   name: str, token: str, scale: float | None = None, target_change: float | None = None,
                   calibration_images: int = 4, max_scale: float = 16.0,
                   calibration_iters: int = 8, min_scale: float = 0.0) -> DirectionScore:
    """:func:`score_direction` for any edit given as ``render_at(scale, start_set) -> images``.

    The adapter for edits that are not a text conditioning (h-space offsets): the same
    calibration (:func:`calibrate_scale` on the first ``calibration_images`` images, to a
    mean pixel change of ``target_change`` at +s and -s), the same two-sided effects, purity,
    strength and preservation, the same :class:`DirectionScore`.
    For a token direction it gives what ``score_direction`` gives (tested).

    ``render_at(scale, start_set)`` must return the edited images [M, 3, H, W] in [-1, 1], one per
    image of ``start_set`` in its order (``start_set.images`` is the unedited "before", same shape).
    """
    if (scale is None) == (target_change is None):
        raise ValueError("give exactly one of scale= (a fixed scale) or target_change= (a calibrated one)")

    def change_at(s: float, images: StartSet):
        plus, minus = render_at(s, images), render_at(-s, images)
        return (pixel_change(plus, images.images) + pixel_change(minus, images.images)) / 2, plus, minus

    calibrated = saturated = False
    if target_change is not None:
        few = start.subset(min(calibration_images, len(start)))
        result = calibrate_scale(lambda s: change_at(s, few)[0], target_change, min_scale, max_scale,
                                 calibration_iters)
        scale, calibrated, saturated = result.scale, True, not result.reached
    scale = float(scale)
    change, plus, minus = change_at(scale, start)
    names = get_domain(domain).attribute_names
    (p_plus, kept_plus), (p_minus, kept_minus) = oracle_read(oracle, plus, domain), oracle_read(oracle, minus, domain)
    p_zero = attribute_probabilities(oracle, start.images, domain)
    effects = two_sided_effects(p_plus, p_minus)
    kept = preservation(effects, change, names)
    as_dict = lambda v: {n: float(x) for n, x in zip(names, v)}  # noqa: E731
    return DirectionScore(
        name=name, token=token, domain=domain, scale=scale, effects=as_dict(effects),
        signed_effects=as_dict(two_sided_effects(p_plus, p_minus, signed=True)),
        plus_effects=as_dict((p_plus - p_zero).mean(0)), minus_effects=as_dict((p_minus - p_zero).mean(0)),
        purity=purity(effects), strength=strength(effects), target=kept.target, pixel_change=change,
        off_target=kept.off_target, calibrated=calibrated, saturated=saturated,
        domain_kept=float(torch.cat([kept_plus, kept_minus]).float().mean()))


def score_direction(pipe, oracle, directions, index: int | str, start, domain: str, scale: float | None = None,
                    target_change: float | None = None, num_inference_steps: int = 25, seed: int = 0,
                    window: tuple[float, float] = (1.0, 0.0), calibration_images: int = 4,
                    max_scale: float = 16.0, calibration_iters: int = 8, min_scale: float = 0.0) -> DirectionScore:
    """Edit the starting images at +s and -s with one direction and score what changed.

    Args:
        pipe: the pipeline (the bundled model, or ``testing.tiny_pipeline``).
        oracle: has ``predict(images [M, 3, H, W] in [-1, 1]) -> {"attributes": [M, 24]}``.
        directions: a ``Directions``, a :class:`PromptDirections`, or anything with
            ``install(pipe)``, ``conditioning(pipe) -> [K, L, H]``, ``index(key)``, ``names``.
        index: which direction (index, token or name).
        start: a :class:`StartSet` (inverted once, reused for every direction), or images /
            latents for :func:`prepare_start` (inverted here with ``num_inference_steps``, ``seed``).
        domain: the starting images' domain; its attributes are scored.
        scale: the edit scale s (>= 0); or give ``target_change`` instead.
        target_change: calibrate s first, on the first ``calibration_images`` images, so that
            the mean pixel change of the +s and -s edits is this (in [0, 1] pixel units).
        window: the direction's step window (see ``DirectionEdit``).
        min_scale, max_scale, calibration_iters: the calibration bracket [min_scale, max_scale]
            (log-spaced when ``min_scale > 0``, see :func:`calibrate_scale`) and its steps.

    Returns:
        A :class:`DirectionScore`.
    """
    if (scale is None) == (target_change is None):
        raise ValueError("give exactly one of scale= (a fixed scale) or target_change= (a calibrated one)")
    if scale is not None and scale < 0:
        raise ValueError(f"scale must be >= 0 (the edits are made at +scale and -scale); got {scale}")
    if not isinstance(start, StartSet):
        start = prepare_start(pipe, start, num_inference_steps=num_inference_steps, seed=seed)
    k = directions.index(index)

    tokens = getattr(directions, "tokens", directions.names)
    score = score_rendered(lambda s, images: _edited(pipe, directions, k, s, images, window), oracle, start, domain,
                           name=str(directions.names[k]), token=str(tokens[k]), scale=scale,
                           target_change=target_change, calibration_images=calibration_images,
                           max_scale=max_scale, calibration_iters=calibration_iters, min_scale=min_scale)
    return replace(score, window=(float(window[0]), float(window[1])))


def score_directions(pipe, oracle, directions, start, domain: str, progress: bool = True,
                     **kwargs) -> list[DirectionScore]:
    """:func:`score_direction` for every direction of a set, on one shared :class:`StartSet`.

    ``start`` is inverted once if it is not a ``StartSet`` yet; ``kwargs`` go to
    :func:`score_direction` (``scale=`` or ``target_change=``, ``window=``, ...).
    """
    from tqdm.auto import tqdm

    if not isinstance(start, StartSet):
        start = prepare_start(pipe, start, num_inference_steps=kwargs.pop("num_inference_steps", 25),
                              seed=kwargs.get("seed", 0))
    return [score_direction(pipe, oracle, directions, k, start, domain, **kwargs)
            for k in tqdm(range(directions.num_directions), desc=f"scoring {domain}", disable=not progress)]


def summary(scores: Sequence[DirectionScore], domain: str, strength_min: float = STRENGTH_MIN,
            purity_min: float = PURITY_MIN) -> dict:
    """One row of a benchmark table for a set of directions scored on ``domain``.

    Returns {"domain", "directions" (D), "coverage" (share in [0, 1]), "covered" (names),
    "mean_purity", "mean_strength", "mean_off_target", "mean_pixel_change", "saturated"
    (how many calibrations fell short), "mean_domain_kept" (None if a score lacks it)}.
    """
    if not scores:
        raise ValueError(f"summary({domain!r}) got no scores; score at least one direction first "
                         f"(score_directions or score_direction)")
    names = get_domain(domain).attribute_names
    wrong = [f"{s.name} ({list(s.effects)})" for s in scores if list(s.effects) != names]
    if wrong:
        raise ValueError(f"every score must be on {domain}'s attributes {names}; these are not: {wrong}. "
                         f"Summarise each domain's scores separately, read by the oracle on that domain")
    share, covered = coverage([[s.effects[n] for n in names] for s in scores], names, strength_min, purity_min)
    return {"domain": domain, "directions": len(scores), "coverage": share, "covered": covered,
            "mean_purity": statistics.mean(s.purity for s in scores),
            "mean_strength": statistics.mean(s.strength for s in scores),
            "mean_off_target": statistics.mean(s.off_target for s in scores),
            "mean_pixel_change": statistics.mean(s.pixel_change for s in scores),
            "saturated": sum(s.saturated for s in scores),
            "mean_domain_kept": (None if any(s.domain_kept is None for s in scores)
                                 else statistics.mean(s.domain_kept for s in scores))}


def reached_purity(scores: Sequence[DirectionScore]) -> tuple[float | None, int]:
    """Mean purity of the directions whose calibration reached the target pixel change.

    A direction that saturates (its largest scale still changes the pixels less than the
    target) is scored on a smaller edit than the others, and a small nudge of one attribute
    reads as "pure"; leaving those out compares methods at the same pixel change.  It also
    leaves out directions that flip a small-area attribute (eye colour) completely without
    reaching the target: read it next to the plain mean purity, not instead of it.

    Returns:
        (mean purity in [0, 1], or None when no direction reached the target; how many did).
    """
    reached = [s.purity for s in scores if not s.saturated]
    return (statistics.mean(reached) if reached else None), len(reached)


def aggregate_summaries(summaries: Sequence[dict]) -> dict:
    """Several seeds' summaries of one method -> one row: numbers become (mean, std) pairs.

    ``covered`` becomes the attributes covered in every run; other fields are kept from
    the first summary.
    """
    first = dict(summaries[0])
    for key, value in summaries[0].items():
        if key in ("directions", "saturated"):
            continue
        if any(s.get(key) is None for s in summaries):
            first[key] = None  # unmeasured in some run (e.g. an older cached score)
        elif isinstance(value, (int, float)):
            values = [float(s[key]) for s in summaries]
            first[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    first["covered"] = [a for a in summaries[0]["covered"] if all(a in s["covered"] for s in summaries)]
    first["runs"] = len(summaries)
    return first


TABLE_COLUMNS = [("method", "method"), ("domain", "domain"), ("directions", "K"), ("coverage", "coverage"),
                 ("mean_purity", "mean purity"), ("mean_strength", "mean strength"),
                 ("mean_off_target", "off-target"), ("mean_pixel_change", "pixel change"),
                 ("covered", "covered attributes")]


def _cell(value) -> str:
    if value is None:
        return "-"
    # a (mean, std) pair; a list when read back from a report's JSON
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return f"{value[0]:.2f} ± {value[1]:.2f}"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 0.1 else f"{value:.2f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]] = TABLE_COLUMNS) -> str:
    """A Markdown table (header + one line per row) for the benchmark README.

    ``rows`` are :func:`summary` (or :func:`aggregate_summaries`) dicts with an added
    ``"method"`` key; (mean, std) pairs (tuples, or lists as read back from JSON) print as
    "0.62 ± 0.05"; missing keys print "-".
    """
    lines = ["| " + " | ".join(title for _, title in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[key]) if key in row else "-" for key, _ in columns) + " |")
    return "\n".join(lines)
