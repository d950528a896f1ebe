"""The shipped directions: one trained set per domain in ``data/directions/``, named by the oracle.

NoiseCLR's directions come out unnamed (``<face_0>`` .. ``<face_7>``); a person names them
by looking at an edit grid.  On the bundled world the oracle can look for us, so naming is
reproducible: each direction is scored two-sided on balanced held-out images
(``metrics.score_directions``) and named after the attribute value its ``+`` side moves
towards ("smiling", "blond_hair"), or ``mixed_<a>+<b>`` when no single attribute dominates.
The oracle's reading is saved in the file's metadata and in ``data/directions/README.md``.
With ``--pool N`` it also chooses: N sets are trained and the oracle keeps the cleanest K
(:func:`select_cleanest`), as the paper's authors keep the directions they can name.  With
``--scale-ladder`` it also chooses each direction's slider scale: the one of a ladder
(1, 2, 4, ..., 64) at which it reads cleanest (:func:`read_on_ladder`), as a person sets a
slider's range by moving it; the kept set is then read again at those scales on other renders.
With ``--window-ladder`` it also chooses each direction's edit window (``editing.DirectionEdit``):
a texture edit applied only in the later steps can stay in its domain where the same edit at every
step turns some paintings into cars (:func:`slider_windows`).

    python -m noiseclr_lite.toyworld directions --domains face cat car painting --pool 3 \
        --scale-ladder 1 2 4 8 16 32 64 [--window-ladder 1:0 0.55:0]
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

from .domains import get_domain

#: A direction is named after one attribute when it is at least this pure and this strong.
NAME_PURITY_MIN = 0.5
NAME_STRENGTH_MIN = 0.2
#: the reading's calibration bracket, bisected log-spaced (``metrics.calibrate_scale``) so that a
#: direction needing 0.3 is found as well as one needing 12.  A direction that changes fewer pixels
#: than the target even at the top is read (and shown) there, "saturated".  The top stays 16: pushed
#: to 64 to reach the target, the clean cat directions also change the fur (benchmarks/quality-findings.md,
#: "The shipped sets are read at each direction's own slider scale").
READING_MIN_SCALE = 0.125
READING_MAX_SCALE = 16.0
#: a pooled set (``pool > 1``) is read again for its card on renders drawn with this seed offset,
#: so the numbers a kept direction is named by are not those it was selected on
CONFIRMATION_SEED_OFFSET = 100
#: at most this many kept directions per attribute value (e.g. two "red" car directions)
POOL_SAME_VALUE_MAX = 2
#: an edit that leaves its domain (a face becomes a cat) moves every attribute at once and is no
#: slider anyone wants: a visible direction keeps at least this share of its edits in the domain
DOMAIN_KEPT_MIN = 0.9
#: a candidate's ladder reading is kept next to its training checkpoint under this name (the whole
#: window's; another window's reading under :func:`ladder_cache_name`)
LADDER_CACHE_NAME = "ladder-reading.json"
#: the edit window of a direction that acts at every step (``editing.DirectionEdit``'s default)
WHOLE_WINDOW = (1.0, 0.0)


def _slug(text: str) -> str:
    return "_".join(text.lower().replace("-", " ").split())


def name_by_oracle(scores: Sequence, domain: str, purity_min: float = NAME_PURITY_MIN,
                   strength_min: float = NAME_STRENGTH_MIN) -> list[str]:
    """One name per scored direction, from what the oracle reads it changes.

    A direction whose purity >= ``purity_min`` and strength >= ``strength_min`` is named after
    the value of its target attribute that the ``+`` side moves towards (``signed_effects``
    > 0: value 1, "smiling"; < 0: value 0, "frowning").  Others are ``mixed_<a>+<b>`` (their
    two largest effects) or ``weak_<a>`` when nothing moves by ``strength_min``.  Repeated
    names get ``_2``, ``_3``, ...

    Args:
        scores: ``metrics.DirectionScore`` objects, one per direction, in order.
        domain: their domain ("face", "cat", "car", "painting" or "scene").
    """
    attributes = get_domain(domain).attributes
    names, seen = [], {}
    for score in scores:
        ranked = sorted(score.effects, key=score.effects.get, reverse=True)
        top = ranked[0]
        if score.strength < strength_min:
            name = f"weak_{top}"
        elif score.purity < purity_min:
            name = f"mixed_{top}+{ranked[1]}"
        else:
            name = _slug(attributes[top][1 if score.signed_effects[top] > 0 else 0])
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


def ranked_names(directions) -> list[str]:
    """A shipped set's direction names, cleanest first by the oracle's reading.

    The ranking :func:`select_cleanest` uses: visible directions first (:func:`is_visible`),
    then purity x strength.  Reads the ``oracle_reading`` that :func:`train_shipped_set` saved
    in the metadata; a set without one (trained elsewhere) keeps its own order.
    """
    reading = directions.metadata.get("oracle_reading")
    if not reading:
        return list(directions.names)
    rank = {row["name"]: _cleanliness(row) for row in reading}
    return sorted(directions.names, key=lambda name: rank.get(name, (False, 0.0)), reverse=True)


def is_visible(row: dict) -> bool:
    """Whether one reading (an ``oracle_reading`` row, ``asdict(DirectionScore)``) is a visible edit.

    The benchmark's coverage test (strength >= ``metrics.STRENGTH_MIN``, purity >=
    ``metrics.PURITY_MIN``), and the edits stay in their domain (``domain_kept`` >=
    :data:`DOMAIN_KEPT_MIN`; a reading that did not measure it counts as kept).
    """
    from ..metrics import PURITY_MIN, STRENGTH_MIN

    kept = row.get("domain_kept")
    return (row["strength"] >= STRENGTH_MIN and row["purity"] >= PURITY_MIN
            and (kept is None or kept >= DOMAIN_KEPT_MIN))


def _cleanliness(row: dict) -> tuple[bool, float]:
    """How the oracle ranks readings (of candidates, or of one candidate's scales): visible, then purity x strength."""
    return is_visible(row), row["purity"] * row["strength"]


def select_cleanest(rows: Sequence[dict], keep: int, same_value_max: int = POOL_SAME_VALUE_MAX) -> list[int]:
    """Which ``keep`` of a pool of oracle-read candidates to ship, cleanest first.

    The oracle stands in for the person who, in the paper, looks at the K discovered
    directions and keeps the interpretable ones.  Candidates are ranked by visible first
    (:func:`is_visible`: the benchmark's coverage test, in the domain), then by purity x
    strength; at most ``same_value_max`` are kept per
    attribute value (target and the sign of its effect: two "red" are fine, six are not),
    unless too few others are left to fill the set.

    Args:
        rows: one reading per candidate (``oracle_reading`` rows / ``asdict(DirectionScore)``:
            "strength", "purity", "target", "signed_effects").
        keep: how many to keep (<= len(rows)).

    Returns:
        The kept candidates' indices into ``rows``, best first.
    """
    if not 0 < keep <= len(rows):
        raise ValueError(f"keep must be in 1..{len(rows)} (the pool's size); got {keep}")
    order = sorted(range(len(rows)), key=lambda i: _cleanliness(rows[i]), reverse=True)
    kept, per_value = [], {}
    for i in order:
        value = (rows[i]["target"], rows[i]["signed_effects"][rows[i]["target"]] > 0)
        if per_value.get(value, 0) < same_value_max:
            kept.append(i)
            per_value[value] = per_value.get(value, 0) + 1
    kept += [i for i in order if i not in kept]  # too few distinct values: fill with the best of the rest
    return kept[:keep]


def slider_scales(directions, default: float = 4.0) -> dict[str, float]:
    """``{name: scale}``: for each direction of a shipped set, the scale at which the oracle scored it.

    That scale is the direction's slider scale, chosen by measurement: the rung of the ladder
    it read cleanest at on the selection renders (a set made with ``--scale-ladder``), or
    else the scale calibrated so that every direction changes the same share of pixels
    (``target_change``).  A grid at ``-scale, 0, +scale`` shows each direction at its best.
    Directions without an ``oracle_reading`` (a set trained elsewhere) get ``default``.
    """
    reading = {row["name"]: row["scale"] for row in directions.metadata.get("oracle_reading") or []}
    return {name: float(reading.get(name, default)) for name in directions.names}


def slider_windows(directions) -> dict[str, tuple[float, float]]:
    """``{name: (start, end)}``: for each direction of a shipped set, the edit window it was read with.

    A set made with ``--window-ladder`` keeps, per direction, the window of that ladder it read
    cleanest in (``editing.DirectionEdit``'s ``window``: a texture edit that skips the noisiest
    steps leaves the layout, and so the domain, alone).  Pass it with the slider scale:
    ``DirectionEdit(directions, name, scale, slider_windows(directions)[name])``.  Directions read
    without one (a set made without ``--window-ladder``, or trained elsewhere) act at every step:
    :data:`WHOLE_WINDOW`.
    """
    reading = {row["name"]: row.get("window") or WHOLE_WINDOW
               for row in directions.metadata.get("oracle_reading") or []}
    return {name: tuple(float(x) for x in reading.get(name, WHOLE_WINDOW)) for name in directions.names}


def reading_start(pipe, domain: str, seed: int = 0, eval_images: int = 12, inference_steps: int = 10):
    """The held-out renders a reading scores on: ``eval_images`` balanced renders of ``domain``
    drawn with seed ``seed + 1``, inverted once (``metrics.StartSet``) with ``inference_steps`` steps."""
    from ..metrics import balanced_start_images, prepare_start
    from ..models import image_size

    return prepare_start(pipe, balanced_start_images(domain, eval_images, seed=seed + 1, size=image_size(pipe))[0],
                         num_inference_steps=inference_steps, seed=seed)


def read_by_oracle(pipe, oracle, directions, domain: str, seed: int = 0, eval_images: int = 12,
                   inference_steps: int = 10, target_change: float = 0.06,
                   max_scale: float = READING_MAX_SCALE, min_scale: float = READING_MIN_SCALE,
                   start=None, scales: Sequence[float] | None = None,
                   windows: Sequence[Sequence[float]] | None = None) -> None:
    """Score every direction of a set with the oracle, then name it and record the reading, in place.

    Each direction is scored two-sided on ``eval_images`` balanced held-out renders (drawn
    with seed ``seed + 1``, inverted with ``inference_steps`` steps) at a scale calibrated
    to a mean pixel change of ``target_change`` (searched log-spaced in [``min_scale``,
    ``max_scale``]; ``min_scale=0``: halving [0, ``max_scale``], as sets read before
    2026-11-30 were), or at its own fixed scale ``scales[k]`` (slider scales chosen by
    :func:`read_on_ladder`), each in its own edit window ``windows[k]`` (default: every step), and
    named by :func:`name_by_oracle`.
    ``directions.metadata`` gets ``oracle_reading`` (one row per direction), ``reading``
    (these settings) and ``reading_weights``: ``models.weights_key`` of the text encoder,
    UNet, VAE and oracle that made the reading, so a stale reading can be told apart.
    ``start``: :func:`reading_start` of the same settings, to share one inversion between sets.
    """
    from ..metrics import score_direction, score_directions
    from ..models import weights_key

    if scales is not None and len(scales) != directions.num_directions:
        raise ValueError(f"scales gives {len(scales)} slider scales for {directions.num_directions} directions; "
                         "give one per direction, in order")
    if windows is not None and (scales is None or len(windows) != len(scales)):
        raise ValueError(f"windows ({len(windows)}) go with slider scales, one per direction, in order; got "
                         f"{'no scales' if scales is None else f'{len(scales)} scales'}")
    windows = [tuple(float(x) for x in w) for w in windows] if windows is not None else None
    if start is None:
        start = reading_start(pipe, domain, seed, eval_images, inference_steps)
    if scales is None:
        scores = score_directions(pipe, oracle, directions, start, domain, target_change=target_change,
                                  calibration_images=4, calibration_iters=5, max_scale=max_scale, min_scale=min_scale)
        how = {"target_change": target_change, "max_scale": max_scale, "min_scale": min_scale}
    else:
        scores = [score_direction(pipe, oracle, directions, k, start, domain, scale=float(scale),
                                  window=windows[k] if windows else WHOLE_WINDOW)
                  for k, scale in enumerate(scales)]
        how = {"scales": [float(scale) for scale in scales]}
        if windows and any(w != WHOLE_WINDOW for w in windows):
            how["windows"] = [list(w) for w in windows]
    directions.names = name_by_oracle(scores, domain)
    directions.metadata.update({
        "oracle_reading": [{**asdict(s), "name": n} for s, n in zip(scores, directions.names)],
        "reading": {"seed": seed, "eval_images": eval_images, "inference_steps": inference_steps, **how},
        "reading_weights": weights_key(pipe.text_encoder, pipe.unet, pipe.vae, oracle),
    })


def read_on_ladder(pipe, oracle, directions, domain: str, start, scales: Sequence[float],
                   window: Sequence[float] = WHOLE_WINDOW) -> list[dict]:
    """Each direction's slider scale: the one of ``scales`` at which the oracle reads it cleanest.

    Every direction is scored two-sided at every scale (fixed, not calibrated) in the edit
    ``window`` (``editing.DirectionEdit``; default: every step) on ``start``
    (:func:`reading_start`), and the cleanest reading is kept by the ranking
    :func:`select_cleanest` uses (visible and in the domain first, then purity x strength).
    Pixel change is not equalised here: a slider is as long as its direction needs, and a
    scale that pushes the images out of their domain is not visible.

    Returns:
        One row per direction, in order: its cleanest reading (``asdict(DirectionScore)``;
        ``scale`` is the chosen slider scale, ``window`` the window as ``[start, end]``) with
        ``ladder``: ``[scale, purity, strength, domain_kept]`` at every scale tried.
    """
    from ..metrics import score_direction

    if not scales or min(scales) <= 0:
        raise ValueError(f"slider scales must be positive (e.g. 1 2 4 8 16 32 64); got {list(scales)}")
    window = tuple(float(x) for x in window)
    rows = []
    for k in range(directions.num_directions):
        readings = [asdict(score_direction(pipe, oracle, directions, k, start, domain, scale=float(scale),
                                           window=window))
                    for scale in scales]
        # the window as a list, as it reads back from a cache or a saved set's JSON metadata
        rows.append({**max(readings, key=_cleanliness), "window": list(window),
                     "ladder": [[r["scale"], round(r["purity"], 3), round(r["strength"], 3),
                                 None if r["domain_kept"] is None else round(r["domain_kept"], 3)] for r in readings]})
    return rows


def ladder_cache_name(window: Sequence[float] = WHOLE_WINDOW) -> str:
    """The file a candidate's ladder reading in ``window`` is cached in: :data:`LADDER_CACHE_NAME` for
    the whole window (the name readings had before windows were read), else e.g.
    ``ladder-reading-window0.55-0.json``."""
    window = tuple(float(x) for x in window)
    if window == WHOLE_WINDOW:
        return LADDER_CACHE_NAME
    return LADDER_CACHE_NAME.replace(".json", f"-window{window[0]:g}-{window[1]:g}.json")


def cached_ladder_reading(cache_dir: str | Path, pipe, oracle, directions, domain: str, start,
                          scales: Sequence[float], start_settings: dict,
                          windows: Sequence[Sequence[float]] = (WHOLE_WINDOW,)) -> list[dict]:
    """:func:`read_on_ladder` in each of ``windows``, kept in ``cache_dir`` so that a larger pool (or one
    more window) reads only what is new; each direction keeps its cleanest reading over the windows.

    A ladder reading costs about 35 s per direction and window on 2 CPU cores (7 two-sided scores),
    and a pool of 10 sets of 6 would re-read 60 directions to add 6.  Each window's reading is a
    JSON file in ``cache_dir`` (:func:`ladder_cache_name`) keyed by everything it depends on: the
    renders (``start_settings``, the ``seed``, ``eval_images`` and ``inference_steps`` that
    :func:`reading_start` made ``start`` with), ``domain``, the ladder, ``models.weights_key`` of
    the text encoder, UNet, VAE and oracle, and a hash of the directions' embeddings.  A cache made
    with any other of these is read again and overwritten.

    Returns:
        One row per direction: its cleanest :func:`read_on_ladder` row over ``windows`` (ties go to
        the earlier window), with ``ladder`` the ladder of the window it was chosen in.
    """
    from ..models import weights_key

    if not windows:
        raise ValueError("windows is empty: give at least one edit window, e.g. (1.0, 0.0) for every step")
    cache_dir = Path(cache_dir)
    key = {**start_settings, "domain": domain, "scales": [float(scale) for scale in scales],
           "weights": weights_key(pipe.text_encoder, pipe.unet, pipe.vae, oracle),
           "embeddings": hashlib.sha1(directions.embeddings.detach().float().cpu().numpy().tobytes()).hexdigest()[:10]}
    per_window = []
    for window in windows:
        cache_path = cache_dir / ladder_cache_name(window)
        cached = json.loads(cache_path.read_text()) if cache_path.exists() else {}
        if cached.get("key") == key:
            # readings cached before windows were read were all made in the whole window
            rows = [{"window": list(WHOLE_WINDOW), **row} for row in cached["rows"]]
        else:
            rows = read_on_ladder(pipe, oracle, directions, domain, start, scales, window)
            cache_dir.mkdir(parents=True, exist_ok=True)
            cache_path.write_text(json.dumps({"key": key, "rows": rows}, indent=1))
        per_window.append(rows)
    return [max(readings, key=_cleanliness) for readings in zip(*per_window)]


def train_shipped_set(domain: str, out_dir: str | Path, *, model: str | None = None, oracle_dir: str | None = None,
                      samples_dir: str | Path | None = None, num_directions: int = 6, steps: int = 200,
                      learning_rate: float = 1e-2, batch_size: int = 6, seed: int = 0, init: str = "random",
                      strength_weight: float = 0.0, pool: int = 1, eval_images: int = 12,
                      inference_steps: int = 10, target_change: float = 0.06,
                      max_scale: float = READING_MAX_SCALE, min_scale: float = READING_MIN_SCALE,
                      scale_ladder: Sequence[float] | None = None,
                      window_ladder: Sequence[Sequence[float]] | None = None, confirmation_images: int | None = None,
                      checkpoint_dir: str | Path | None = None) -> Path:
    """Train one domain's directions on its sample folder, name them by the oracle and save them.

    The same training as ``python -m noiseclr_lite train`` (``train.train_directions``) on
    ``data/samples/<domain>``; then :func:`read_by_oracle` scores and names every direction.
    Training checkpoints go to ``checkpoint_dir/<domain>-k<K>-<init>[-w<strength weight>][-lr<learning
    rate, if not the default 0.01>][-s<seed>]-<weights key>`` (default ``checkpoints/directions``), so an
    interrupted run resumes (a run with more ``steps`` continues it), and another K, init, strength
    weight, learning rate, seed or model starts afresh.  With ``scale_ladder`` each candidate's
    reading is cached there too (:func:`cached_ladder_reading`).

    With ``pool > 1`` it trains ``pool`` sets of K (seeds ``seed``, ``seed + 1``, ...), reads
    every candidate on the same held-out renders, keeps the K that :func:`select_cleanest`
    picks (the oracle doing what the paper's authors do by eye) and reads those again on other
    renders (seed + :data:`CONFIRMATION_SEED_OFFSET`) for their names and card, so the shipped
    numbers are not the ones the selection saw.  The metadata's ``pool`` records every candidate's
    selection reading.

    With ``scale_ladder`` (e.g. ``(1, 2, 4, ..., 64)``) every candidate is read at each of those
    scales instead of at one calibrated scale (:func:`read_on_ladder`, on the selection renders),
    ranked by its cleanest, and the kept K are read again at their chosen scales on the other
    renders; this holds for ``pool=1`` too (the set is then only re-ordered, cleanest first).
    ``window_ladder`` (with ``scale_ladder``; e.g. ``((1.0, 0.0), (0.55, 0.0))``) reads every
    candidate in each of these edit windows as well and ships it in the window it reads cleanest in
    (:func:`slider_windows`): a texture edit that skips the noisiest steps, where this model decides
    the domain, can stay in it at a scale where the whole-window edit does not.
    ``confirmation_images`` (default ``eval_images``): how many renders that second reading of a
    chosen set scores on; more than the selection's make the card's numbers more precise (on 12
    images one flipped attribute moves a strength by 0.08).

    Returns:
        The written ``out_dir/<domain>.safetensors``.
    """
    from ..data import load_images
    from ..directions import Directions
    from ..models import ORACLE_DIR, REPO_ROOT, SAMPLES_DIR, image_size, load_pipeline, weights_key
    from ..train import TrainConfig, train_directions
    from .oracle import Oracle

    if pool < 1:
        raise ValueError(f"pool must be >= 1 (how many sets of K to train and choose from); got {pool}")
    if window_ladder and not scale_ladder:
        raise ValueError("window_ladder needs scale_ladder: windows are read on the slider-scale ladder "
                         "(e.g. scale_ladder=(1, 2, 4, 8, 16, 32, 64))")
    windows = [tuple(float(x) for x in w) for w in (window_ladder or [WHOLE_WINDOW])]
    if confirmation_images and not (pool > 1 or scale_ladder):
        raise ValueError(f"confirmation_images={confirmation_images} needs a chosen set (pool > 1 or a scale "
                         "ladder): only a chosen set is read a second time")
    out_dir = Path(out_dir)
    pipe = load_pipeline(model)
    oracle = Oracle.load(oracle_dir or ORACLE_DIR)
    images = load_images(Path(samples_dir or SAMPLES_DIR) / domain, size=image_size(pipe))
    reading = {"eval_images": eval_images, "inference_steps": inference_steps, "target_change": target_change,
               "max_scale": max_scale, "min_scale": min_scale}
    # the settings one varies between shipped recipes name the folder, so another of them starts afresh;
    # another batch size in the same folder is refused by train_directions' resume check
    run_name = (f"{domain}-k{num_directions}-{init}" + (f"-w{strength_weight:g}" if strength_weight else "")
                # the library's default rate adds nothing, so folders made before the rate was named still resume
                + (f"-lr{learning_rate:g}" if learning_rate != TrainConfig.learning_rate else ""))
    candidates, train_seconds = [], 0.0
    # the VAE in the key too: training reads latents from its encoder
    model_key = weights_key(pipe.text_encoder, pipe.unet, pipe.vae)
    # every candidate is read on the same renders (the first seed's), inverted once, so they are ranked alike
    selection_start = reading_start(pipe, domain, seed, eval_images, inference_steps)
    for set_seed in range(seed, seed + pool):
        set_dir = (Path(checkpoint_dir or REPO_ROOT / "checkpoints" / "directions")
                   / f"{run_name}{f'-s{set_seed}' if set_seed else ''}-{model_key}")
        trained = train_directions(pipe, images, num_directions=num_directions, steps=steps, init=init,
                                   strength_weight=strength_weight,
                                   learning_rate=learning_rate, batch_size=batch_size, seed=set_seed, prefix=domain,
                                   output_dir=set_dir, resume=True)
        if scale_ladder:
            trained.metadata["oracle_reading"] = cached_ladder_reading(
                set_dir, pipe, oracle, trained, domain, selection_start, scale_ladder,
                {"seed": seed, "eval_images": eval_images, "inference_steps": inference_steps}, windows)
        else:
            read_by_oracle(pipe, oracle, trained, domain, seed=seed, start=selection_start, **reading)
        candidates.append(trained)
        train_seconds += trained.metadata.get("train_seconds") or 0.0
    directions = candidates[0]
    if pool > 1 or scale_ladder:
        rows = [dict(row, seed=c.metadata["seed"], index=k) for c in candidates
                for k, row in enumerate(c.metadata["oracle_reading"])]
        kept = select_cleanest(rows, num_directions)
        embeddings = torch.stack([candidates[rows[i]["seed"] - seed].embeddings[rows[i]["index"]] for i in kept])
        directions = Directions(embeddings, [f"<{domain}_{k}>" for k in range(num_directions)],
                                metadata={**candidates[0].metadata, "seed": seed,
                                          "pool": {"seeds": list(range(seed, seed + pool)),
                                                   "kept": [[rows[i]["seed"], rows[i]["index"]] for i in kept],
                                                   "selection_reading": rows,
                                          **({"scale_ladder": [float(x) for x in scale_ladder]}
                                             if scale_ladder else {}),
                                          **({"window_ladder": [list(w) for w in windows]}
                                             if window_ladder else {})}})
        read_by_oracle(pipe, oracle, directions, domain, seed=seed + CONFIRMATION_SEED_OFFSET,
                       **{**reading, "eval_images": confirmation_images or eval_images},
                       scales=[rows[i]["scale"] for i in kept] if scale_ladder else None,
                       windows=[rows[i].get("window", WHOLE_WINDOW) for i in kept] if window_ladder else None)
    directions.metadata.update({
        # a path relative to the repository, not this machine's absolute path
        "base_model": "data/models/toyworld-sd" if model is None else str(model),
        "domain": domain,
        "images": f"data/samples/{domain} ({len(images)} images, unlabeled)",
        # summed over resumed runs (and over the pool) by train_directions: wall time here would be
        # ~0 s when this run only re-reads finished checkpoints
        "train_seconds": round(train_seconds, 1) if train_seconds else None,
        # every setting that changes the result, so that the command remakes this very file
        "command": f"python -m noiseclr_lite.toyworld directions --domains {domain} --steps {steps} "
                   f"--num-directions {num_directions} --lr {learning_rate} --batch-size {batch_size} "
                   f"--seed {seed} --eval-images {eval_images}"
                   + (f" --pool {pool}" if pool > 1 else "")
                   + (f" --confirmation-images {confirmation_images}"
                      if confirmation_images and confirmation_images != eval_images else "")
                   + (f" --init {init}" if init != "random" else "")
                   + (f" --strength-weight {strength_weight:g}" if strength_weight else "")
                   + (f" --max-scale {max_scale:g}" if max_scale != READING_MAX_SCALE else "")
                   + (f" --scale-ladder {' '.join(f'{x:g}' for x in scale_ladder)}" if scale_ladder else "")
                   + (f" --window-ladder {' '.join(f'{a:g}:{b:g}' for a, b in windows)}" if window_ladder else ""),
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{domain}.safetensors"
    directions.save(path)
    return path


def _reading_settings(meta: dict) -> dict:
    """The settings a saved set was read with: its ``reading``, or those on its ``command``."""
    if "reading" in meta:
        return meta["reading"]
    found = dict(re.findall(r"--(seed|eval-images) (\d+)", meta.get("command", "")))
    return {"seed": int(found.get("seed", 0)), "eval_images": int(found.get("eval-images", 12))}


def reread_shipped_set(path: str | Path, *, model: str | None = None, oracle_dir: str | None = None,
                       max_scale: float | None = None) -> dict:
    """Read a saved set again with the oracle (no training): after a new decoder or a new oracle.

    The embeddings stay as they are; the scores, the names and the card's numbers follow the
    current model and oracle.  The reading's settings come from the file (its ``reading``
    metadata, or for older files the ``--seed``/``--eval-images`` of its ``command``): a set
    read at slider scales is read at the same scales again; ``max_scale`` replaces a
    calibrated reading's bracket when given.

    Returns:
        ``{old name: new name}`` (the names can change, e.g. a direction that got stronger).
    """
    from ..directions import Directions
    from ..models import ORACLE_DIR, load_pipeline
    from .oracle import Oracle

    directions = Directions.load(path)
    meta = directions.metadata
    old_names = list(directions.names)
    settings = _reading_settings(meta)
    if max_scale and "scales" in settings:
        raise ValueError(f"{path} was read at each direction's own slider scale (`--scale-ladder`); max_scale "
                         f"({max_scale:g}) bounds a calibrated reading. Reread without it, or remake the set.")
    settings.update({"max_scale": max_scale} if max_scale else {})
    read_by_oracle(load_pipeline(model), Oracle.load(oracle_dir or ORACLE_DIR), directions, meta["domain"],
                   **settings)
    directions.save(path)
    return dict(zip(old_names, directions.names))


def write_directions_card(out_dir: str | Path) -> Path:
    """Write ``out_dir/README.md``: every shipped set, how it was made and what the oracle reads."""
    from ..directions import Directions

    out_dir = Path(out_dir)
    lines = ["# Shipped directions for the bundled model", "",
             "One NoiseCLR direction set per domain, discovered without labels in `data/samples/<domain>` and",
             "named after what the attribute oracle reads each direction changes (two-sided, on balanced",
             "held-out renders).  `mixed_a+b`: no single attribute dominates (purity < 0.5); `weak_a`: nothing",
             "moves much.  A set made with `--pool N` is the K directions the oracle read cleanest out of N sets",
             "of K trained with seeds seed .. seed+N-1 (the selection a person makes by eye in the paper).  With",
             "`--scale-ladder` each direction is read at every scale of that ladder and keeps the one it reads",
             "cleanest at as its slider scale (`scale`); without, at a scale calibrated to the same pixel change.",
             "With `--window-ladder` it is also read in each of those edit windows and keeps the one it reads",
             "cleanest in (`window`, `high:low` as fractions of the diffusion time, `1:0` = every step; pass it",
             "as `DirectionEdit(..., window=slider_windows(directions)[name])`).",
             "A chosen set's table is a second reading on other renders, not the one it was selected on.",
             "`pixels`: mean pixel change of the edits (0-1); `in domain`: share of edits the oracle still puts",
             "in the domain.  Each set is remade by the command under its heading.", ""]
    for path in sorted(out_dir.glob("*.safetensors")):
        directions = Directions.load(path)
        meta = directions.metadata
        reading = meta["oracle_reading"]
        lines += [f"## {meta['domain']} (`{path.name}`)", "",
                  f"{directions.num_directions} directions; `{meta['command']}`; "
                  + (f"training took {meta['train_seconds']} s." if meta.get("train_seconds") is not None
                     else "training time not recorded.")
                  + (f" Read by the oracle with weights `{meta['reading_weights']}` (`models.weights_key` of the "
                     "text encoder, UNet, VAE and oracle)." if meta.get("reading_weights") else "")
                  + (f" Kept {directions.num_directions} of {len(meta['pool']['selection_reading'])} candidates "
                     f"(seed, index: {', '.join(f'{a}/{b}' for a, b in meta['pool']['kept'])})"
                     + (f" at the slider scales they read cleanest at among "
                        f"{', '.join(f'{x:g}' for x in meta['pool']['scale_ladder'])}"
                        if meta["pool"].get("scale_ladder") else "")
                     + (" and the edit windows among "
                        + ", ".join(f"{a:g}:{b:g}" for a, b in meta["pool"]["window_ladder"])
                        if meta["pool"].get("window_ladder") else "")
                     + f"; read again on {meta['reading']['eval_images']} renders of seed "
                       f"{meta['reading']['seed'] + 1}." if meta.get("pool") else ""),
                  "", "| direction | token | target | purity | strength | scale | window | pixels | in domain "
                      "| effects |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in reading:
            effects = ", ".join(f"{a} {v:+.2f}" for a, v in r["signed_effects"].items())
            kept = "" if r.get("domain_kept") is None else f"{r['domain_kept']:.2f}"
            high, low = r.get("window") or WHOLE_WINDOW
            lines.append(f"| {r['name']} | `{r['token']}` | {r['target']} | {r['purity']:.2f} | "
                         f"{r['strength']:.2f} | {r['scale']:.3g} | {high:g}:{low:g} | {r['pixel_change']:.3f} | "
                         f"{kept} | {effects} |")
        lines.append("")
    card = out_dir / "README.md"
    card.write_text("\n".join(lines))
    return card
