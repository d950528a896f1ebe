"""The NoiseCLR contrastive loss over edit features.

An *edit feature* is what a direction does to the noise prediction of one image:
``D[i, k] = eps(x_t^i, t, c_k) - eps(x_t^i, t, c_ref)``, flattened (``c_ref`` is the reference
prompt: the empty prompt for tokens used alone, as in the official NoiseCLR, or the context
without the token, ``"a car"`` for ``"a car, {}"``, ``train.TrainConfig.context``).  NoiseCLR asks
that the same direction do the same thing to every image (positives) and that different
directions do different things to the same image (negatives).

A slider is used both ways (``-s`` and ``+s``), so a direction and its opposite are *one*
slider.  The official negatives reward ``cos(D_ik, D_il) = -1``, which two directions reach by
becoming the two ends of one attribute (smiling and frowning): two sliders for one thing.
``sign_blind=True`` scores a negative by ``|cos|`` instead, so the loss asks different
directions to do *unrelated* things (orthogonal edits), not opposite ones.  It is our option,
off by default; the official loss is signed.

Any token moves the noise prediction partly the same way, whatever it means: on the bundled
model about 0.58 of the energy of the attribute words' edits is their mean over the set, 0.55 for
random tokens, against 0.10 for trained sets of ten (:func:`shared_edit_share`, about 1/K for
unrelated edits; ``benchmarks/results/consistency-k10-tau0.1-context-noun-seeds4567.md``).  The official
negatives ask every pair of directions for a cosine near -1, which would cancel such a part.
:func:`center_edit_features` removes it before the contrast, so the loss compares only what is
*specific* to each direction (``TrainConfig.center_edits``; off by default).  Measured on the
bundled model it does not bring the part back (0.14 after centred training) and lowers both
coverage and purity (``benchmarks/quality-findings.md``, "Contrasting centred edits"): the
negatives are not what removes it.

Both contrastive losses reward an edit for being alike on every image, and an edit that ignores
the image (every face turned into a cat) is as alike as an edit can be.  :func:`denoising_gain_loss`
(``TrainConfig.gain_weight``; ours, off by default) adds what they cannot see: whether the edit
explains some of the images, i.e. makes the model's noise prediction better on them than the
reference prompt does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_edit_features(features: torch.Tensor) -> None:
    if features.dim() < 3:
        raise ValueError(f"edit features must be [N images, K directions, ...]; got shape {tuple(features.shape)}")


def _cosines_across_images(unit: torch.Tensor) -> torch.Tensor:
    """[N, K, F] unit edit features -> [K, N, N]: ``cos(D_ik, D_jk)`` for every direction k."""
    return torch.einsum("ikf,jkf->kij", unit, unit)


def _anchor_blocks(features: torch.Tensor, tau: float, anchor: int | None, loss_name: str, sign_blind: bool = False):
    """Per anchor direction k: (positives [N, N], negatives [N, K-1], off-diagonal mask [N, N]).

    ``positives[i, j] = cos(D_ik, D_jk) / tau`` (the diagonal i == j is not a pair: mask it);
    ``negatives[i] = cos(D_ik, D_il) / tau`` for the other directions l != k (``|cos|`` when
    ``sign_blind``).
    """
    _check_edit_features(features)
    n, k = features.shape[:2]
    if n < 2 or k < 2:
        raise ValueError(f"the {loss_name} loss needs >= 2 images and >= 2 directions; got N={n}, K={k}")
    if anchor is not None and not 0 <= anchor < k:
        raise ValueError(f"anchor {anchor} is outside the {k} directions in the batch; give an index in "
                         f"[0, {k - 1}] or None (every direction is an anchor)")
    unit = F.normalize(features.flatten(2).float(), dim=-1)               # [N, K, F]
    across_images = _cosines_across_images(unit) / tau                    # [K, N, N]
    across_directions = torch.einsum("ikf,ilf->ikl", unit, unit) / tau    # [N, K, K]
    if sign_blind:  # opposite edits are one two-way slider: as bad a negative as equal ones
        across_directions = across_directions.abs()
    off_diagonal_images = ~torch.eye(n, dtype=torch.bool, device=features.device)
    off_diagonal_directions = ~torch.eye(k, dtype=torch.bool, device=features.device)
    for a in ([anchor] if anchor is not None else range(k)):
        negatives = across_directions[:, a, :][:, off_diagonal_directions[a]]
        yield across_images[a], negatives, off_diagonal_images


def noiseclr_loss(features: torch.Tensor, tau: float = 0.5, anchor: int | None = None,
                  sign_blind: bool = False) -> torch.Tensor:
    r"""The official NoiseCLR objective (the default).

    For an anchor direction k over N images and K directions::

        pos_k = mean_{i != j}        exp(cos(D_ik, D_jk) / tau)   # same direction, other image
        neg_k = mean_{i, l != k}     exp(cos(D_ik, D_il) / tau)   # same image, other direction
        L_k   = -log(pos_k / neg_k)

    and the loss is ``L_k`` for the given ``anchor``, or the mean of ``L_k`` over all K
    directions when ``anchor`` is None.  Computed with log-mean-exp for stability.

    Args:
        features: [N, K, ...] edit features (any trailing shape; flattened), N >= 2, K >= 2.
        tau: temperature (0.5 in the paper's code).
        anchor: index into K of the anchor direction, or None for every direction.
        sign_blind: score negatives by ``|cos|`` (see the module docstring); False is official.
    Returns:
        A scalar tensor; lower is better, and its minimum is -2/tau (all positives
        identical, all negatives opposite), or -1/tau with ``sign_blind`` (negatives orthogonal).
    """
    losses = []
    for positives, negatives, off_diagonal in _anchor_blocks(features, tau, anchor, "NoiseCLR", sign_blind):
        positives = positives[off_diagonal]                  # N(N-1) pairs
        log_pos = torch.logsumexp(positives, 0) - math.log(positives.numel())
        log_neg = torch.logsumexp(negatives.flatten(), 0) - math.log(negatives.numel())
        losses.append(log_neg - log_pos)
    return torch.stack(losses).mean()


def infonce_loss(features: torch.Tensor, tau: float = 0.5, anchor: int | None = None,
                 sign_blind: bool = False) -> torch.Tensor:
    r"""The standard InfoNCE form of the same contrast (an option, for comparison).

    Every positive pair ``(D_ik, D_jk)``, i != j, is a classification among itself and
    the negatives of its anchor image ``{D_il : l != k}``::

        L = mean_{k, i != j}  -log( exp(s_ijk) / (exp(s_ijk) + sum_{l != k} exp(n_ikl)) )

    with ``s = cos/tau`` for positives and ``n = cos/tau`` for negatives (``|cos|/tau`` with
    ``sign_blind``).  Same arguments and shapes as :func:`noiseclr_loss`.
    """
    losses = []
    for positives, negatives, off_diagonal in _anchor_blocks(features, tau, anchor, "InfoNCE", sign_blind):
        negatives_logsumexp = torch.logsumexp(negatives, dim=1, keepdim=True)  # [N, 1]: row i is the anchor image
        log_prob = positives - torch.logaddexp(positives, negatives_logsumexp)
        losses.append(-log_prob[off_diagonal].mean())
    return torch.stack(losses).mean()


def push_strength_loss(features: torch.Tensor) -> torch.Tensor:
    r"""Minus the mean log-norm of the edit features: lower when the directions push harder.

    Both contrastive losses compare *cosines*, so they are blind to how hard a direction
    pushes: a direction whose push is tiny but consistent satisfies them as well as a
    strong one.  On the bundled model half of the trained directions end that way (they
    change fewer pixels at scale 16 than a clear edit needs), so an optional term
    ``strength_weight * push_strength_loss(D)`` (``TrainConfig.strength_weight``; 0, the
    official loss, by default) rewards pushing harder.  The log makes it scale-free: it
    asks every push to grow by the same factor, whatever its size::

        L_push = -mean_{i, k} log ||D_ik||

    Args:
        features: [N, K, ...] edit features (any trailing shape; flattened).
    Returns:
        A scalar tensor (no lower bound: weigh it well below the contrastive loss).
    """
    _check_edit_features(features)
    return -features.flatten(2).float().norm(dim=-1).clamp_min(1e-12).log().mean()


def center_edit_features(features: torch.Tensor) -> torch.Tensor:
    r"""Each edit feature minus the mean over the directions on the same image.

    ``centered[i, k] = D[i, k] - mean_l D[i, l]``: what direction k does to image i beyond what
    every direction of the step does to it (see the module docstring for why).  The contrastive
    losses are then computed on the centred features; the directions, the UNet calls and the
    features' norm term (:func:`push_strength_loss`) are unchanged.

    Args:
        features: [N, K, ...] edit features, K >= 2 (with one direction nothing is left; training
            asks for >= 3 contrasted directions, since two centred edits are always opposite).
    Returns:
        [N, K, ...] in ``features``' dtype, summing to zero over K for every image.
    """
    _check_edit_features(features)
    if features.shape[1] < 2:
        raise ValueError(f"centring over directions needs >= 2 directions; got K={features.shape[1]} "
                         "(with one, every centred feature is zero)")
    return features - features.mean(dim=1, keepdim=True)


def shared_edit_share(features: torch.Tensor) -> torch.Tensor:
    r"""How much of a set's edits every direction of the set makes alike.

    Per image, the energy of the mean edit over the K directions against the mean energy of one::

        share_i = || mean_k D_ik ||^2 / mean_k || D_ik ||^2,      share = mean_i share_i

    It is 1 when every direction does the same thing, about 1/K when their edits are unrelated
    (orthogonal, of one size) and 0 when they cancel.  :func:`center_edit_features` removes the
    numerator's part; ``benchmarks/consistency.py`` reports it for trained, random and word sets.

    Args:
        features: [N, K, ...] edit features (``train.direction_features``), K >= 1.
    Returns:
        A 0-d float32 tensor in [0, 1] (0 for a set whose edits are all zero).
    """
    _check_edit_features(features)
    flat = features.flatten(2).float()                                   # [N, K, F]
    shared = flat.mean(dim=1).pow(2).sum(dim=-1)                         # [N]
    each = flat.pow(2).sum(dim=-1).mean(dim=1)                           # [N]
    return (shared / each.clamp_min(1e-30)).mean()


def denoising_gain_loss(features: torch.Tensor, residual: torch.Tensor, top_share: float = 0.25,
                        two_sided: bool = False) -> torch.Tensor:
    r"""Minus the share of the reference's denoising error each direction removes on the images it
    explains best (ours; ``TrainConfig.gain_weight``, 0 by default: the official loss has no such term).

    Why: the contrastive losses reward an edit that is alike on every image and unlike the other
    directions' edits, and nothing is more alike on every image than an edit that ignores the
    image.  On the bundled model the official loss prefers turning every face into a cat, or hatching
    every picture, to the model's own attribute words (``benchmarks/quality-findings.md``, "Would the
    objective choose the model's own words?").  An attribute is something *some* images have, and
    the model can say which: its prediction of the noise is better under a prompt that describes
    the image (the diffusion-classifier score, :func:`noiseclr_lite.train.denoising_gain`).  With
    ``r_i = n_i - eps(x_t^i, t, c_ref)`` the reference prompt's residual on image i (``n_i`` the
    noise that made ``x_t^i``) and ``D_ik`` the edit feature, the direction's relative gain is::

        g_ik = (|r_i|^2 - |r_i - D_ik|^2) / |r_i|^2 = (2 r_i . D_ik - |D_ik|^2) / |r_i|^2

    and the term is minus its mean over the ``ceil(top_share * N)`` images each direction explains
    best, averaged over the directions::

        L_gain = - mean_k mean_{i in top_k} g_ik

    An edit that is the same on every image gains only as far as it points where the images'
    residuals point; an overwrite towards another domain points where none of them does and loses
    (``-|D|^2``), while an edit towards what a quarter of the images have gains on that quarter.
    ``g <= 1``, so the term is bounded below by -1.  For a fixed set of images it is largest for an
    edit equal to the mean of their residuals weighted by ``1 / |r_i|^2``, so unlike the cosines it
    also weighs how hard the edit pushes (one-sided; two-sided, below, each image takes its own sign).

    ``two_sided=True`` scores each image by the better end of the slider, ``+D`` or ``-D``::

        g_ik = (2 |r_i . D_ik| - |D_ik|^2) / |r_i|^2

    A slider is used (and scored) both ways, and an attribute's two values split the images: an edit
    towards "glasses" explains the images with glasses, its opposite those without.  So a pure
    attribute gains on every image, while an edit that mixes two attributes (glasses and smiling)
    gains only where both agree, a quarter of a balanced set each way: where they disagree the two
    halves of its push cancel.  Scored on every image (``top_share=1``), the pure edit wins; on the
    best half, the mixture's agreeing half is all it is scored on, and it wins.  One-sided, on the
    best quarter (the default), the mixture wins too; on the best half, the pure edit.  (The
    constructed case is ``tests/test_loss.py``.)  All this assumes the reference's prediction sits
    between an attribute's two values; ``benchmarks/quality-findings.md`` measures where it does not.

    Args:
        features: [N, K, ...] edit features in noise-prediction space (``edit_space="eps"``).
        residual: [N, ...] the reference's residual ``noise - eps(x_t, t, c_ref)`` on the same noisy
            latents, with the features' trailing shape (no gradient needed).
        top_share: the share of the images, in (0, 1], each direction is scored on (at least one).
        two_sided: score each image by ``+D`` or ``-D``, whichever explains it better (ours, off by
            default: ``TrainConfig.gain_two_sided``).
    Returns:
        A scalar tensor in [-1, +inf): lower is better.
    """
    _check_edit_features(features)
    if not 0 < top_share <= 1:
        raise ValueError(f"top_share={top_share}: give the share of images each direction is scored on, in (0, 1]")
    if residual.shape[0] != features.shape[0] or residual.shape[1:] != features.shape[2:]:
        raise ValueError(f"the residual must be [N, ...] with the features' N and trailing shape: features "
                         f"{tuple(features.shape)}, residual {tuple(residual.shape)}; pass the reference's "
                         f"residual on the same noisy latents (train.reference_residuals)")
    flat = features.flatten(2).float()                                   # [N, K, F]
    reference = residual.flatten(1).float().unsqueeze(1)                 # [N, 1, F]
    along = (reference * flat).sum(dim=-1)                               # [N, K]: r . D
    if two_sided:  # the better end of the slider: |r|^2 - min(|r - D|^2, |r + D|^2)
        along = along.abs()
    gained = 2 * along - flat.pow(2).sum(dim=-1)     # [N, K]: |r|^2 - |r - D|^2 (two-sided: the min over +-D)
    gains = gained / reference.pow(2).sum(dim=-1).clamp_min(1e-12)       # relative to the reference's error
    top = max(1, math.ceil(top_share * features.shape[0]))
    return -gains.topk(top, dim=0).values.mean()


LOSSES = {"noiseclr": noiseclr_loss, "infonce": infonce_loss}


def similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every edit feature with every other, for looking at the loss.

    Args:
        features: [N, K, ...] edit features (``train.direction_features``).
    Returns:
        [K*N, K*N] in [-1, 1], direction-major: row ``k * N + i`` is direction k on image i.
        The loss wants the K diagonal N x N blocks (same direction, other images: the
        positives) high and, within each image, the entries between directions (the
        negatives) low.
    """
    _check_edit_features(features)
    unit = F.normalize(features.transpose(0, 1).flatten(2).flatten(0, 1).float(), dim=-1)   # [K*N, F]
    return unit @ unit.T


def edit_consistency(features: torch.Tensor) -> torch.Tensor:
    """How much each direction does the same thing to every image.

    ``consistency[k] = mean_{i != j} cos(D_ik, D_jk)``, the mean cosine between what direction k
    does to two different images: the cosines the losses' positive term is built from (as
    ``exp(cos / tau)``).  Both losses raise it for every direction (they ask the same direction to
    do the same thing everywhere), so it is the label-free score a user might rank trained
    directions by.  ``benchmarks/consistency.py`` measures whether it predicts what an oracle
    reads of them.

    Args:
        features: [N, K, ...] edit features (``train.direction_features``), N >= 2.
    Returns:
        [K] float32 in [-1, 1]: 1 when a direction's edit is the same on every image (up to its
        size), 0 when unrelated from image to image.
    """
    _check_edit_features(features)
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"edit consistency compares images in pairs: it needs >= 2 images; got N={n}")
    # the same cosines as the positives of the losses (_anchor_blocks), before the temperature
    across_images = _cosines_across_images(F.normalize(features.flatten(2).float(), dim=-1))  # [K, N, N]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=features.device)
    return across_images[:, off_diagonal].mean(dim=1)


def cross_set_cosines(features: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """How alike two sets' edits are, direction by direction, on the same noisy images.

    ``cosines[k, j] = mean_i cos(D_ik, E_ij)``: what direction k of one set and direction j of
    another do to the same image i, compared as the losses compare edits (flattened, cosine), and
    averaged over the images.  Two training runs (seeds) of one recipe that found the same edit
    give it a pair near +1 or -1 (a slider's sign is arbitrary); ``benchmarks/consistency.py``
    asks whether the directions a second run finds again are the purer ones.

    Args:
        features: [N, K, ...] edit features of one set (``train.direction_features``).
        other: [N, J, ...] edit features of another set on the same N noisy images (the same
            latents, timestep and noise), the same trailing shape.
    Returns:
        [K, J] float32 in [-1, 1].
    """
    _check_edit_features(features)
    _check_edit_features(other)
    if features.shape[0] != other.shape[0] or features.shape[2:] != other.shape[2:]:
        raise ValueError(f"the two sets' edit features must be of the same images: [N, K, ...] and [N, J, ...] "
                         f"with one N and one trailing shape; got {tuple(features.shape)} and {tuple(other.shape)}")
    unit = F.normalize(features.flatten(2).float(), dim=-1)              # [N, K, F]
    other_unit = F.normalize(other.flatten(2).float(), dim=-1)           # [N, J, F]
    return torch.einsum("ikf,ijf->kj", unit, other_unit) / features.shape[0]


def get_loss(name: str):
    """Look up a loss by name ("noiseclr" or "infonce")."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]
