"""Consensus directions: keep the edits that several training runs find again.

NoiseCLR's loss has no single answer: two seeds of the same recipe find overlapping but
different sets of directions, and nothing in one run says which of its directions are the
clean ones.  Stability analyses of ICA and NMF (e.g. Icasso) answer this by running the
method several times and keeping the components that recur.  This module does the same
for edit directions, with no labels:

1. every run's directions are measured on the same noisy images (``train.timestep_features``);
2. a direction's *agreement* is how closely the other runs reproduce its edit: for each
   other run, the best ``|cos|`` between its edit and one of that run's edits (a slider's
   sign is arbitrary), averaged over the other runs (:func:`run_agreement`);
3. the most agreeing direction is kept, its best match in each other run is dropped as a
   copy of it, and so on until ``count`` directions are kept (:func:`consensus_picks`).

    runs = [train_directions(pipe, latents=latents, seed=seed) for seed in range(4)]
    kept = consensus_directions(pipe, runs, latents, count=10)   # a Directions of 10 rows

A kept direction's copies in the other runs (:func:`pick_copies`, each turned the pick's way:
a slider's sign is arbitrary) can also be applied together, as one slider that moves the mean
of their edits (:func:`mean_edit`); ``benchmarks/consensus.py --average`` measures whether that
edits more purely than the pick alone.

What it buys is measured, not assumed (``benchmarks/consensus.py``): on the bundled world,
over every group of four of eight seeds (K = 10, six edit strengths and windows), the consensus
reads purer than the group's own sets in 67 of the 70 groups (0.74 against 0.70 on average),
at a little less coverage (0.69 against 0.72); but random tokens' consensus gains about half
as much purity, and more runs raise both (``--every-group`` over groups of two to eight).
Seeds 4-7, the one group with none of the seeds the idea was first seen on, is one of the
three exceptions.  Agreement says that an edit recurs, more than that it is one attribute.
It costs one training run per seed plus a UNet pass per direction and timestep (about 11 s per
set of 10 on 2 CPU cores).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .directions import Directions
from .editing import DirectionEdit
from .loss import cross_set_cosines
from .train import CONSISTENCY_TIMESTEPS, timestep_features

#: metadata of one training run that a consensus of several does not share
RUN_ONLY = ("seed", "init", "loss_history")


def run_cosines(features_by_run: Sequence[Sequence[torch.Tensor]], signed: bool = False) -> torch.Tensor:
    """``|cos|`` (or, with ``signed``, the cosine) between the edits of every pair of directions of several
    runs, pooled.

    Args:
        features_by_run: R runs, each T tensors [N, K_r, ...]: its edit features on the same N
            noisy images at the same T timesteps (``train.timestep_features``).
        signed: keep the sign (in [-1, 1]): -1 for two sliders that make the same edit in
            opposite directions (what :func:`pick_copies` needs to align copies).
    Returns:
        [P, P] float32, P = sum of K_r, rows and columns in the runs' order:
        ``loss.cross_set_cosines`` averaged over the timesteps, in [-1, 1] when ``signed``, else its
        absolute value in [0, 1] (taken after the average, so an edit that flips sign between
        timesteps scores low).
    """
    if not features_by_run:
        raise ValueError("run_cosines needs the edit features of at least one run; got none")
    counts = {len(run) for run in features_by_run}
    if len(counts) != 1:
        raise ValueError(f"every run must be measured at the same timesteps; got {[len(r) for r in features_by_run]} "
                         f"timesteps per run: measure each with train.timestep_features at the same timesteps")
    shapes = {(f.shape[0], *f.shape[2:]) for run in features_by_run for f in run}
    if len(shapes) != 1:
        raise ValueError(f"every run's edit features must be [N, K_r, ...] on the same N images with one trailing "
                         f"shape; got [N, ...] of {sorted(shapes)}: measure every run on the same latents")
    pooled = [torch.cat(at_timestep, dim=1) for at_timestep in zip(*features_by_run)]  # T x [N, P, ...]
    mean = torch.stack([cross_set_cosines(features, features) for features in pooled]).mean(dim=0)
    return mean if signed else mean.abs()


def _run_slices(run_sizes: Sequence[int], cosines: torch.Tensor) -> list[slice]:
    """Each run's rows in the pooled [P, P] matrix; checks the sizes add up to P."""
    if len(run_sizes) < 2:
        raise ValueError(f"agreement compares two or more runs; got {len(run_sizes)}: train the recipe with at "
                         f"least two seeds")
    if any(size < 1 for size in run_sizes):
        raise ValueError(f"every run needs at least one direction; got run sizes {list(run_sizes)}")
    if cosines.ndim != 2 or cosines.shape[0] != cosines.shape[1] or cosines.shape[0] != sum(run_sizes):
        raise ValueError(f"cosines must be [P, P] with P = sum of the run sizes {list(run_sizes)} = {sum(run_sizes)}; "
                         f"got {tuple(cosines.shape)}: pass run_cosines' result for the same runs")
    starts = [sum(run_sizes[:r]) for r in range(len(run_sizes))]
    return [slice(start, start + size) for start, size in zip(starts, run_sizes)]


def run_agreement(cosines: torch.Tensor, run_sizes: Sequence[int]) -> torch.Tensor:
    """How closely the other runs reproduce each direction's edit.

    Args:
        cosines: [P, P] ``|cos|`` of the pooled directions (:func:`run_cosines`).
        run_sizes: K_r of each run, in the pooled order; at least two runs.
    Returns:
        [P] float32 in [0, 1]: for a direction of run r, the mean over the runs o != r of its
        best ``|cos|`` with one of run o's directions.  1 when every other run holds its edit.
    """
    slices = _run_slices(run_sizes, cosines)
    agreement = torch.empty(cosines.shape[0])
    for mine in slices:
        best = [cosines[mine, other].max(dim=1).values for other in slices if other != mine]
        agreement[mine] = torch.stack(best).mean(dim=0)
    return agreement


def consensus_picks(cosines: torch.Tensor, run_sizes: Sequence[int], count: int) -> list[tuple[int, int]]:
    """Which directions a consensus of the runs keeps, most agreeing first.

    Greedy: take the direction with the highest :func:`run_agreement` that is still in the
    pool, then drop from the pool its best match in each other run (the other runs' copies of
    the same edit; a stable edit is found once per run); repeat.  Ties go to the earlier run
    and direction.  The best match goes even when it is a poor one (a run that lacks the edit
    loses its closest direction), so with ``count`` near K an edit that only one run found may
    not be kept.  A mixture of two stable edits can agree moderately with both and be kept
    early: agreement says an edit recurs, not that it is one attribute.

    Args:
        cosines: [P, P] ``|cos|`` of the pooled directions (:func:`run_cosines`).
        run_sizes: K_r of each run, in the pooled order; at least two runs.
        count: how many to keep, in [1, P].  Up to the smallest K_r is always reached; beyond
            it the pool may run out first, and fewer come back.
    Returns:
        [(run, index in that run)], at most ``count``, in the order they were kept.
    """
    slices = _run_slices(run_sizes, cosines)
    if not 1 <= count <= cosines.shape[0]:
        raise ValueError(f"count must be in [1, {cosines.shape[0]}] (the pooled directions); got {count}")
    agreement = run_agreement(cosines, run_sizes)
    owner = [(run, k) for run, size in enumerate(run_sizes) for k in range(size)]
    order = sorted(range(len(owner)), key=lambda i: -agreement[i].item())  # stable: ties keep the pooled order
    picked, dropped = [], set()
    for i in order:
        if i in dropped:
            continue
        picked.append(owner[i])
        dropped.update(_best_matches(cosines, slices, i, owner[i][0]))
        if len(picked) == count:
            break
    return picked


def _best_matches(cosines: torch.Tensor, slices: list[slice], row: int, own_run: int) -> list[int]:
    """The pooled index of ``row``'s best ``|cos|`` match in every run but its own, in run order."""
    return [other.start + int(cosines[row, other].argmax()) for run, other in enumerate(slices) if run != own_run]


def pick_copies(signed_cosines: torch.Tensor, run_sizes: Sequence[int],
                picks: Sequence[tuple[int, int]]) -> list[list[tuple[int, int, int]]]:
    """Each kept direction with its copies in the other runs (the directions :func:`consensus_picks`
    dropped for it), each with the sign that turns it the pick's way.

    Args:
        signed_cosines: [P, P] signed cosines of the pooled directions (``run_cosines(..., signed=True)``);
            copies are matched on their absolute value, as :func:`consensus_picks` matches them.
        run_sizes: K_r of each run, in the pooled order; at least two runs.
        picks: [(run, index in that run)], e.g. :func:`consensus_picks`' result.
    Returns:
        For each pick, [(run, index, sign)]: the pick first (sign +1), then its best match in each
        other run in run order (one per run, so len(run_sizes) entries), with sign -1 where that
        slider makes the pick's edit backwards.  Two picks can share a copy when one direction of
        a run is the best match of both, and a copy can itself be another pick.
    """
    slices = _run_slices(run_sizes, signed_cosines)
    owner = [(run, k) for run, size in enumerate(run_sizes) for k in range(size)]
    unsigned_cosines = signed_cosines.abs()
    copies = []
    for run, k in picks:
        if not (0 <= run < len(run_sizes) and 0 <= k < run_sizes[run]):
            raise ValueError(f"pick ({run}, {k}) is not a direction of these runs (sizes {list(run_sizes)}); pass "
                             f"picks of the same runs, e.g. consensus_picks' result")
        row = slices[run].start + k
        matches = _best_matches(unsigned_cosines, slices, row, run)
        copies.append([(run, k, 1), *((*owner[i], 1 if signed_cosines[row, i] >= 0 else -1) for i in matches)])
    return copies


def mean_edit(copies: Sequence[tuple], scale: float, window: tuple[float, float] = (1.0, 0.0)) -> list[DirectionEdit]:
    """One slider that applies the mean of several directions' edits (e.g. one edit's copies in
    several runs, :func:`pick_copies`): ``scale * mean_k sign_k (eps(c_k) - eps(c_ref(k)))``.

    Editing sums the pushes of its ``DirectionEdit``s, so the mean is each copy at
    ``sign * scale / n``; pass the list to ``editing.edit`` (alone or with other sliders) with
    the default ``composition="sum"`` ("regions" settles each ``Directions`` object's push
    separately, so copies from several runs would no longer be averaged).  It costs one UNet row
    per copy at every step.

    Args:
        copies: n >= 1 of (a ``Directions``, a direction of it: index, token or name) or
            (``Directions``, direction, sign): sign +1 or -1 turns a copy whose slider runs the
            other way (:func:`pick_copies` gives it); pairs count as +1.
        scale: the slider ``s``; 0 = off.
        window: the step window every copy acts in (``editing.DirectionEdit``).
    Returns:
        n ``DirectionEdit``s, in the order of ``copies``.
    """
    if not copies:
        raise ValueError("mean_edit needs at least one (Directions, direction) pair; got none")
    edits = []
    for copy in copies:
        if len(copy) not in (2, 3):
            raise ValueError(f"each copy is (Directions, direction) or (Directions, direction, sign); got "
                             f"{len(copy)} items: {copy!r}")
        directions, direction, sign = copy if len(copy) == 3 else (*copy, 1)
        if sign not in (1, -1):
            raise ValueError(f"a copy's sign must be 1 or -1; got {sign!r} for direction {direction!r}")
        edits.append(DirectionEdit(directions, direction, sign * scale / len(copies), window))
    return edits


def _check_runs(runs: Sequence[Directions]) -> None:
    """ValueError unless the runs can share one Directions: one model, tokenizer and context."""
    if len(runs) < 2:
        raise ValueError(f"a consensus needs two or more runs' Directions; got {len(runs)}: train the recipe with "
                         f"another seed")
    first = runs[0]
    for index, run in enumerate(runs[1:], start=1):
        where = f"run {index}" + (f" ({run.source})" if run.source else "")
        if run.hidden_size != first.hidden_size:
            raise ValueError(f"{where} has hidden size {run.hidden_size}, run 0 {first.hidden_size}: every run must "
                             f"be trained for the same model")
        if run.context != first.context:
            raise ValueError(f"{where} was trained in context {run.context!r}, run 0 in {first.context!r}: a "
                             f"consensus mixes only directions used the same way; train every run in one context")
        for key in ("base_model", "tokenizer_fingerprint"):
            if run.metadata.get(key) != first.metadata.get(key):
                raise ValueError(f"{where} has {key} {run.metadata.get(key)!r}, run 0 {first.metadata.get(key)!r}: "
                                 f"every run must be trained for the same model and tokenizer")


def consensus_directions(pipe, runs: Sequence[Directions], latents: torch.Tensor, count: int | None = None,
                         timesteps: Sequence[int] = CONSISTENCY_TIMESTEPS, chunk_size: int | None = None,
                         prefix: str = "consensus") -> Directions:
    """The directions several training runs agree on, as one ``Directions``.

    Args:
        pipe: the pipeline the runs were trained for.
        runs: two or more ``Directions`` of one recipe (e.g. seeds), same model and context.
        latents: [N, 4, h, w] scaled VAE latents (``encode_images``), N >= 1: the images the
            edits are compared on (the training images serve; 16 suffice on the bundled model).
        count: how many directions to keep (default: the first run's K).  See :func:`consensus_picks`.
        timesteps: where the edits are compared, each with noise seeded by the timestep.
        chunk_size: at most this many (image, direction) pairs per UNet call.
        prefix: the kept directions' tokens are ``<{prefix}_0>`` .. in the order they were kept.
    Returns:
        A ``Directions`` whose rows are the kept runs' rows, unchanged.  Names are carried over
        where a run's direction was renamed (the first of two equal names; a later one gets its
        token).  ``metadata`` is run 0's (the recipe: model, tokenizer, context, training
        settings) less what belongs to that run alone (``RUN_ONLY``), plus ``"consensus"``:
        ``{"runs": each run's source or seed, "picked": [[run, index]], "agreement": [each kept
        direction's agreement]}``.
    """
    _check_runs(runs)
    features = [timestep_features(pipe, run, latents, timesteps, chunk_size) for run in runs]
    cosines = run_cosines(features)
    sizes = [run.num_directions for run in runs]
    picks = consensus_picks(cosines, sizes, count if count is not None else sizes[0])
    agreement = run_agreement(cosines, sizes)
    start = [sum(sizes[:r]) for r in range(len(runs))]
    tokens = [f"<{prefix}_{i}>" for i in range(len(picks))]
    names = []
    for (r, k), token in zip(picks, tokens):
        renamed = runs[r].names[k] != runs[r].tokens[k] and runs[r].names[k] not in names
        names.append(runs[r].names[k] if renamed else token)  # a name picks one slider, so it stays unique
    # run 0's record of the recipe, less what belongs to that one run
    metadata = {key: value for key, value in runs[0].metadata.items() if key not in RUN_ONLY}
    metadata["consensus"] = {"runs": [run.source or run.metadata.get("seed") for run in runs],
                             "picked": [list(pick) for pick in picks],
                             "agreement": [agreement[start[r] + k].item() for r, k in picks]}
    embeddings = torch.stack([runs[r].embeddings[k] for r, k in picks])
    return Directions(embeddings, tokens, names, metadata)
