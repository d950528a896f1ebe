"""The NoiseCLR contrastive loss over edit features.

An *edit feature* is what a direction does to the noise prediction of one image:
``D[i, k] = eps(x_t^i, t, c_k) - eps(x_t^i, t, c_empty)``, flattened.  NoiseCLR asks
that the same direction do the same thing to every image (positives) and that different
directions do different things to the same image (negatives).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _similarities(features: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities / tau: across images per direction, and across directions per image.

    Returns (across_images [K, N, N], across_directions [N, K, K]).
    """
    if features.dim() < 3:
        raise ValueError(f"edit features must be [N images, K directions, ...]; got shape {tuple(features.shape)}")
    unit = F.normalize(features.flatten(2).float(), dim=-1)  # [N, K, F]
    across_images = torch.einsum("ikf,jkf->kij", unit, unit) / tau
    across_directions = torch.einsum("ikf,ilf->ikl", unit, unit) / tau
    return across_images, across_directions


def _anchors(num_directions: int, anchor: int | None, device) -> torch.Tensor:
    if anchor is None:
        return torch.arange(num_directions, device=device)
    if not 0 <= anchor < num_directions:
        raise ValueError(f"anchor {anchor} is outside the {num_directions} directions in the batch")
    return torch.tensor([anchor], device=device)


def noiseclr_loss(features: torch.Tensor, tau: float = 0.5, anchor: int | None = None) -> torch.Tensor:
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
    Returns:
        A scalar tensor; lower is better, and its minimum is -2/tau (all positives
        identical, all negatives opposite).
    """
    n, k = features.shape[:2]
    if n < 2 or k < 2:
        raise ValueError(f"the NoiseCLR loss needs >= 2 images and >= 2 directions; got N={n}, K={k}")
    across_images, across_directions = _similarities(features, tau)
    off_diag_images = ~torch.eye(n, dtype=torch.bool, device=features.device)
    off_diag_dirs = ~torch.eye(k, dtype=torch.bool, device=features.device)
    losses = []
    for a in _anchors(k, anchor, features.device).tolist():
        positives = across_images[a][off_diag_images]                 # N(N-1) values
        negatives = across_directions[:, a, :][:, off_diag_dirs[a]]  # N(K-1) values
        log_pos = torch.logsumexp(positives, 0) - math.log(positives.numel())
        log_neg = torch.logsumexp(negatives.flatten(), 0) - math.log(negatives.numel())
        losses.append(log_neg - log_pos)
    return torch.stack(losses).mean()


def infonce_loss(features: torch.Tensor, tau: float = 0.5, anchor: int | None = None) -> torch.Tensor:
    r"""The standard InfoNCE form of the same contrast (an option, for comparison).

    Every positive pair ``(D_ik, D_jk)``, i != j, is a classification among itself and
    the negatives of its anchor image ``{D_il : l != k}``::

        L = mean_{k, i != j}  -log( exp(s_ijk) / (exp(s_ijk) + sum_{l != k} exp(n_ikl)) )

    with ``s = cos/tau`` for positives and ``n = cos/tau`` for negatives.  Same
    arguments and shapes as :func:`noiseclr_loss`.
    """
    n, k = features.shape[:2]
    if n < 2 or k < 2:
        raise ValueError(f"the InfoNCE loss needs >= 2 images and >= 2 directions; got N={n}, K={k}")
    across_images, across_directions = _similarities(features, tau)
    off_diag_images = ~torch.eye(n, dtype=torch.bool, device=features.device)
    off_diag_dirs = ~torch.eye(k, dtype=torch.bool, device=features.device)
    losses = []
    for a in _anchors(k, anchor, features.device).tolist():
        positives = across_images[a]                                  # [N, N]: row i is the anchor image
        negatives = across_directions[:, a, :][:, off_diag_dirs[a]]  # [N, K-1]
        neg_logsumexp = torch.logsumexp(negatives, dim=1, keepdim=True)  # [N, 1]
        log_prob = positives - torch.logaddexp(positives, neg_logsumexp)
        losses.append(-log_prob[off_diag_images].mean())
    return torch.stack(losses).mean()


LOSSES = {"noiseclr": noiseclr_loss, "infonce": infonce_loss}


def get_loss(name: str):
    """Look up a loss by name ("noiseclr" or "infonce")."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]
