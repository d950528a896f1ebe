"""Does the loss know its good directions?  Edit consistency against what the oracle reads.

    python benchmarks/consistency.py k10-tau0.1-with-peers-step8000-6seeds \\
        k10-tau0.1-late-with-peers-step8000-6seeds --tag k10-tau0.1-6seeds

Both contrastive losses ask a direction to do the same thing to every image: their positive term
is the cosine between a direction's edit features on two different images
(:func:`noiseclr_lite.loss.edit_consistency`).  Training raises it, and it needs no labels, so it
is the score a user would rank discovered directions by.  This script asks whether it predicts
what the attribute oracle reads of the same directions in ``benchmarks/quality.py`` reports.

It reads one or more quality reports that scored the *same* trained directions (same weights and
training settings; they may differ in how they were read: ``--target-change``, ``--window``),
rebuilds every token direction they scored -- NoiseCLR and InfoNCE from the ``--resume`` cache
(training, exactly as ``quality.py`` does, any that are missing), random tokens drawn again from
their seed, the attributes' own words -- and measures each one's consistency on ``--images``
training images at ``--timesteps`` (:func:`noiseclr_lite.train.direction_consistency`).  h-space
directions edit the UNet's bottleneck, not the prompt, so they have no edit feature under a prompt
and are left out.  Then, for every report (a *reading*) and method:

* the Spearman rank correlation, within each set of directions (one domain and seed), between
  consistency and the oracle's purity and strength; mean and spread over the sets;
* the set split into its more and its less consistent half: each half's mean strength, share of
  strong directions (strength >= 0.5), mean purity and coverage.

It also measures, per set, how much of its edits every direction makes alike (its shared edit
share, :func:`noiseclr_lite.loss.shared_edit_share`): what ``--center-edits`` takes out of the
contrast.  And where the reports hold two or more seeds of a method, each direction's *agreement*
(:func:`seed_agreement`): how closely the other seeds' sets reproduce its edit.  Another
label-free score a user could rank by (train twice, keep what both runs found), related to the
oracle the same way, and computed from the same UNet passes.  And a third, which looks at the
images' content instead of the edits: how much better each direction's prompt denoises each of
up to ``--gain-images`` training images than the reference prompt
(:func:`noiseclr_lite.train.denoising_gain`, a diffusion classifier's score), and the excess
kurtosis of that gain over the images (:func:`gain_kurtosis`): a direction that stands for one
balanced two-valued attribute splits the images into two equal groups (kurtosis -2), a mixture of attributes
less cleanly.

``--edit-space hspace`` measures the consistency, the shared share and the agreement on the
differences of the UNet's middle-block output instead of the noise prediction's (what
``quality.py --edit-space hspace`` trains on); ``--gain-images 0`` leaves the gain out.

Writes ``results/consistency[-tag].md``, ``.json`` and a ``.png`` of each domain's most and least
consistent NoiseCLR direction.  7 to 11 s per set of 10 directions on 2 CPU cores for the
consistency, about 45 s more for the gain on 64 images, plus training time for directions not in
the cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/consistency.py` from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.quality import (DEFAULT_ORACLE, RESULTS, TRAINED_LOSSES, Cache, Settings, Stages,  # noqa: E402
                                _find_report, _load_directions, _mean_std, _protocol, _seed_order, cache_key,
                                load_or_train, machine, matched_random, read_report, render, report_stem,
                                save_small_png, text_directions, training_latents, write_atomically)
from noiseclr_lite.metrics import STRENGTH_MIN, DirectionScore, balanced_start_images, prepare_start, summary  # noqa: E402
from noiseclr_lite.train import CONSISTENCY_TIMESTEPS, EDIT_SPACES  # noqa: E402

#: the methods whose directions are prompt tokens or phrases (h-space edits the UNet instead)
SCORED_METHODS = ("NoiseCLR", "InfoNCE", "random", "text")
#: the seeded methods, whose sets are compared within themselves (text is one set of 4 phrases per domain)
RANKED_METHODS = ("NoiseCLR", "InfoNCE", "random")
#: what the halves table gives of each half, in order
HALF_COLUMNS = ("strength", "strong", "purity", "coverage")
DEFAULT_IMAGES = 16
#: training images the denoising gain is measured on (its kurtosis needs many)
DEFAULT_GAIN_IMAGES = 64
#: seeds the draw of the images consistency is measured on (the same for every set of a domain)
IMAGE_SEED = 123


TOOL = "benchmarks/consistency.py"


def _fail(message: str):
    raise SystemExit(f"{TOOL}: {message}")


def settings_of(report: dict) -> Settings:
    """The :class:`benchmarks.quality.Settings` a report was measured with (defaults filled in for
    options it predates)."""
    protocol = _protocol(report)
    return Settings(**{key: tuple(value) if key in ("timestep_range", "window", "hspace_timesteps") else value
                       for key, value in protocol.items()})


def load_readings(names, out_dir: str | os.PathLike = RESULTS) -> list[tuple[Path, dict]]:
    """The reports ``names`` (paths or ``--tag`` names) as (path, report); SystemExit unless they
    measured the same weights with the same training settings (so the same trained directions)
    and the same words (``text_phrases``)."""
    if not names:
        _fail("give at least one quality report (a .json.gz path or its --tag)")
    paths = [_find_report(name, Path(out_dir), TOOL) for name in names]
    readings = [(path, read_report(path, TOOL)) for path in paths]
    first_path, first = readings[0]
    ours = settings_of(first)
    key = ours.training_fingerprint(first["weights"])
    for path, report in readings[1:]:
        theirs = settings_of(report)
        if report["weights"] != first["weights"]:
            _fail(f"{path} measured weights {report['weights']} and {first_path} weights {first['weights']}: "
                  f"these are different models or oracles; give reports of one")
        if theirs.text_phrases != ours.text_phrases:
            _fail(f"{path} read the words as --text-phrases {theirs.text_phrases} and {first_path} as "
                  f"{ours.text_phrases}: their text rows are different directions; give reports of one")
        their_key = theirs.training_fingerprint(report["weights"])
        if their_key != key:
            _fail(f"{path} and {first_path} trained their directions with different settings (training key "
                  f"{their_key} against {key}); give reports that read the same trained directions")
    return readings


def report_threads(report: dict) -> int | None:
    """The torch CPU threads a report ran with, from its machine line (None if it does not say)."""
    found = re.search(r"(\d+) torch threads", report.get("machine", ""))
    return int(found.group(1)) if found else None


def check_samples(settings: Settings, domain: str) -> Path:
    """The folder of the domain's training images; SystemExit naming it and the fix when it is not here."""
    folder = Path(settings.samples) / domain
    if not folder.is_dir():
        _fail(f"the report's training images {folder} are not here (reports record the path they ran with); "
              f"give --samples with the folder that holds {domain}/ (data/samples for the shipped images)")
    return folder


def consistency_latents(train_latents: torch.Tensor, num_images: int = DEFAULT_IMAGES) -> torch.Tensor:
    """[M, 4, h, w]: a seeded draw of M = min(num_images, N) of the [N, 4, h, w] training latents
    (``quality.training_latents``), the same draw for every set of a domain."""
    if len(train_latents) < 2:
        _fail(f"the training images give {len(train_latents)} latent(s); consistency compares images in pairs: "
              f"it needs >= 2")
    order = torch.randperm(len(train_latents), generator=torch.Generator().manual_seed(IMAGE_SEED))
    return train_latents[order[:num_images]]


def units_of(readings: list[tuple[Path, dict]]) -> dict[str, list[tuple[str, int | None]]]:
    """{domain: [(method, seed), ...]}: every scored token set in the reports, each once."""
    units: dict[str, list] = {}
    for _, report in readings:
        for domain, scored in report["domains"].items():
            for method, runs in scored["runs"].items():
                for run in runs:
                    unit = (method, run["seed"])
                    if method in SCORED_METHODS and unit not in units.setdefault(domain, []):
                        units[domain].append(unit)
    order = {m: i for i, m in enumerate(SCORED_METHODS)}
    return {d: sorted(u, key=lambda mu: (order[mu[0]], _seed_order(mu[1]))) for d, u in units.items()}


def token_sets(pipe, settings: Settings, domain: str, units, latents: Callable[[], torch.Tensor], stages: Stages,
               cache: Cache | None, progress: bool = True) -> tuple[dict, list]:
    """The directions of ``units`` as ``quality.py`` scored them: trained sets from the cache (or
    trained, exactly as ``quality.py`` trains them), random sets as saved there (or drawn again
    from NoiseCLR's set of the seed), and the words.

    Returns:
        ({(method, seed): directions}, [(method, seed) of every set trained here]).
    """
    sets, trained = {}, []
    random_saved = {seed: _load_directions(cache, domain, "random", seed)
                    for method, seed in units if method == "random"}
    for method, seed in units:
        if method in TRAINED_LOSSES or (method == "random" and random_saved[seed] is None):
            trained_method = method if method in TRAINED_LOSSES else "NoiseCLR"  # random is drawn at its norms
            if (trained_method, seed) not in sets:
                sets[(trained_method, seed)], seconds = load_or_train(pipe, settings, domain, trained_method, seed,
                                                                      latents, stages, cache, progress)
                if seconds is not None:
                    trained.append((trained_method, seed))
    for method, seed in units:
        if method == "random":
            saved = random_saved[seed]
            sets[(method, seed)] = saved if saved is not None else matched_random(
                pipe, sets[("NoiseCLR", seed)], seed, f"{domain}_random{seed}", settings.init)
        elif method == "text":
            sets[(method, seed)] = text_directions(domain, settings.text_phrases)
    return {unit: sets[unit] for unit in units}, trained


# ===================================================================================== statistics
def ranks(values) -> list[float]:
    """Ranks 0..n-1 of ``values``, ties given their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            result[order[position]] = (start + end) / 2
        start = end + 1
    return result


def spearman(a, b) -> float | None:
    """Spearman's rank correlation of two equal-length sequences; None when either is constant
    (or has fewer than 3 values), where it is undefined."""
    if len(a) != len(b):
        raise ValueError(f"spearman needs sequences of one length; got {len(a)} and {len(b)}")
    if len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    covariance = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    spread = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return covariance / spread if spread > 0 else None


def halves(values: list[float], scores: list[DirectionScore], domain: str, score: str = "consistency") -> dict:
    """The set split by each direction's consistency, or another per-direction ``score`` (named so
    in the result), given as ``values``: ``{"more": ..., "less": ...}``, each half's mean score,
    mean strength, share of strong directions, mean purity and coverage (an odd set leaves its
    middle one out)."""
    order = sorted(range(len(scores)), key=lambda i: -values[i])
    half = len(order) // 2
    result = {}
    for name, picked in (("more", order[:half]), ("less", order[len(order) - half:])):
        chosen = [scores[i] for i in picked]
        summed = summary(chosen, domain)
        result[name] = {score: statistics.fmean(values[i] for i in picked),
                        "strength": summed["mean_strength"], "purity": summed["mean_purity"],
                        "strong": sum(s.strength >= STRENGTH_MIN for s in chosen) / len(chosen),
                        "coverage": summed["coverage"]}
    return result


def _defined_mean_std(values) -> tuple[float | None, float]:
    """(mean, std) of the values that are not None; (None, 0.0) when none is."""
    defined = [v for v in values if v is not None]
    return _mean_std(defined) if defined else (None, 0.0)


def analyse(readings: list[tuple[Path, dict]], values_by_set: dict, score: str = "consistency") -> list[dict]:
    """Per reading and ranked method: the within-set correlations and the halves, as (mean, std)
    over the sets.  ``values_by_set``: {domain: {method: {seed: [K floats]}}}, each direction's
    consistency or another per-direction ``score`` (:func:`seed_agreement`'s agreement,
    :func:`gain_kurtosis`); a set it has no values for is left out."""
    measures = (score, "strength", "strong", "purity", "coverage")
    result = []
    for path, report in readings:
        methods = {}
        for method in RANKED_METHODS:
            rho_purity, rho_strength, split = [], [], {"more": [], "less": []}
            for domain, scored in report["domains"].items():
                for run in scored["runs"].get(method, []):
                    values = values_by_set.get(domain, {}).get(method, {}).get(str(run["seed"]))
                    if values is None:  # e.g. no agreement for a method with one seed
                        continue
                    scores = [DirectionScore(**s) for s in run["scores"]]
                    if len(values) != len(scores):
                        _fail(f"{path}: {domain} {method} seed {run['seed']} scored {len(scores)} directions "
                              f"but the set has {len(values)}; the trained cache does not match the report")
                    rho_purity.append(spearman(values, [s.purity for s in scores]))
                    rho_strength.append(spearman(values, [s.strength for s in scores]))
                    for name, half in halves(values, scores, domain, score).items():
                        split[name].append(half)
            if not split["more"]:
                continue
            methods[method] = {
                "sets": len(split["more"]),
                "rho_sets": sum(r is not None for r in rho_purity),
                "rho_purity": _defined_mean_std(rho_purity),
                "rho_strength": _defined_mean_std(rho_strength),
                "halves": {name: {m: _mean_std([h[m] for h in rows]) for m in measures}
                           for name, rows in split.items()}}
        settings = report["settings"]
        result.append({"report": report_stem(path), "target_change": settings["target_change"],
                       "window": settings["window"], "methods": methods})
    return result


def seed_agreement(features_by_seed: dict) -> dict:
    """How closely the other seeds' sets of one method reproduce each direction of a set.

    For direction k of seed s and another seed's set o: ``max_j |c_kj|``, where ``c`` is the
    [K, J] ``loss.cross_set_cosines`` of the two sets averaged over the timesteps (a slider's sign
    is arbitrary, hence ``|.|``); then the mean over the other seeds.  It needs no labels: a user
    who trains twice can keep what both runs found, as stability analyses of ICA and NMF do.

    Args:
        features_by_seed: {seed: [T tensors [N, K, ...]]}, every set's edit features on the same
            images at the same T timesteps (``train.timestep_features``), at least two seeds.
    Returns:
        {seed: [K floats in [0, 1]]}.
    """
    from noiseclr_lite.consensus import run_agreement, run_cosines

    if len(features_by_seed) < 2:
        raise ValueError(f"agreement compares sets of two or more seeds; got {len(features_by_seed)}: pass the "
                         f"features of at least two seeds' sets of one method and domain")
    sizes = [features[0].shape[1] for features in features_by_seed.values()]
    pooled = run_agreement(run_cosines(list(features_by_seed.values())), sizes).tolist()
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return {seed: pooled[start:start + size] for seed, start, size in zip(features_by_seed, starts, sizes)}


def gain_kurtosis(gains: torch.Tensor) -> list[float]:
    """Each direction's excess kurtosis of its denoising gain over the images.

    ``mean(z^4) - 3`` of the gains standardised over the images (population moments): -2 when a
    direction's gain takes two values equally often (it splits the images into two equal groups, as
    one balanced two-valued attribute does), -1 for the sum of two independent, equally weighted
    such splits, 0 for a Gaussian, > 0 when a few images stand out.  An unbalanced split reads
    higher: ``(1 - 6pq) / pq`` for groups of shares p and q (+5.1 at 10% / 90%), so it suits
    attributes that are about balanced over the images, as in the bundled world's sample folders.

    Args:
        gains: [K, N] (``noiseclr_lite.train.denoising_gain``), N >= 4 images.
    Returns:
        K floats, each >= -2.
    """
    if gains.ndim != 2 or gains.shape[1] < 4:
        raise ValueError(f"gain_kurtosis needs [K, N] gains over N >= 4 images; got shape {tuple(gains.shape)}")
    if not bool(torch.isfinite(gains).all()):
        raise ValueError("gain_kurtosis got NaN or infinite gains; measure them again (a NaN comes from the model)")
    gains = gains.double()
    centred = gains - gains.mean(dim=1, keepdim=True)
    spread = centred.pow(2).mean(dim=1)
    if bool((spread == 0).any()):
        flat = [k for k, v in enumerate(spread.tolist()) if v == 0]
        raise ValueError(f"directions {flat} gain exactly the same on every image: their kurtosis is undefined; "
                         f"leave out directions that do nothing")
    return (centred.pow(4).mean(dim=1) / spread.pow(2) - 3).tolist()


def set_table(values: dict) -> dict:
    """{method: {domain or "all": (mean, std) over the method's sets}} of the mean of each set's values.

    ``values``: {domain: {method: {seed: [floats] or a float}}}: each direction's consistency,
    agreement or gain kurtosis, or one number for the whole set (its shared edit share)."""
    table: dict[str, dict] = {}
    for method in SCORED_METHODS:
        per_domain = {d: [statistics.fmean(v) if isinstance(v, list) else v
                          for v in by_method.get(method, {}).values()]
                      for d, by_method in values.items()}
        if any(per_domain.values()):
            table[method] = {d: _mean_std(v) for d, v in per_domain.items() if v}
            table[method]["all"] = _mean_std([x for v in per_domain.values() for x in v])
    return table


# ===================================================================================== the figure
def figure(pipe, report: dict, consistency: dict, sets: dict, settings: Settings, method: str = "NoiseCLR",
           images: int = 3):
    """Per domain, the most and the least consistent direction of ``method``'s first seed in
    ``report``, on ``images`` of its held-out starting images at -s, 0 and +s (its calibrated
    scale in that report); rows labelled with consistency, target, purity, strength and scale.
    ``sets``: {domain: {(method, seed): directions}} (:func:`token_sets`).  None when ``report``
    has no set of ``method``."""
    from noiseclr_lite.data import to_pil
    from noiseclr_lite.grid import image_grid
    from noiseclr_lite.models import image_size

    rows, labels = [], []
    for domain, scored in report["domains"].items():
        runs = scored["runs"].get(method)
        if not runs:
            continue
        run = runs[0]
        values = consistency[domain][method][str(run["seed"])]
        directions = sets[domain][(method, run["seed"])]
        # the report's held-out images, of which only the shown ones are inverted (as the report did
        # them all together, the reconstructions may differ from its own in the last digits)
        shown, _ = balanced_start_images(domain, settings.eval_images, seed=settings.start_seed,
                                         size=image_size(pipe))
        few = prepare_start(pipe, shown[:images], num_inference_steps=settings.inference_steps,
                            seed=settings.start_seed)
        ordered = sorted(range(len(values)), key=lambda k: -values[k])
        for label, k in (("most", ordered[0]), ("least", ordered[-1])):
            score = run["scores"][k]
            scales = (-score["scale"], 0.0, score["scale"])
            pictures = {s: render(pipe, directions, k, s, few, tuple(settings.window))
                        for s in scales}
            rows.append([to_pil(pictures[s][i]) for i in range(len(few)) for s in scales])
            labels.append(f"{domain} {label} consistent: c={values[k]:.2f} {score['target']} p={score['purity']:.2f} "
                          f"st={score['strength']:.2f} s={score['scale']:.2g}")
    if not rows:
        return None
    columns = [f"img{i} {c}" for i in range(len(rows[0]) // 3) for c in ("-s", "0", "+s")]
    return image_grid(rows, labels, columns, cell=80)


# ===================================================================================== the page
def _cell(value, digits: int = 2) -> str:
    mean, std = value
    return "-" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _signed(value) -> str:
    mean, std = value
    return "-" if mean is None else f"{mean:+.2f} ± {std:.2f}"


def _images(used: dict) -> str:
    counts = sorted(set(used.values()))
    return str(counts[0]) if len(counts) == 1 else ", ".join(f"{n} ({d})" for d, n in used.items())


def _space_words(result: dict) -> str:
    """"" for the noise prediction's edit features (the default), else what they are differences of."""
    if result.get("edit_space", "eps") == "eps":
        return ""
    return (" -- here the differences of the UNet's middle-block output h (`--edit-space hspace`), not of the "
            "noise prediction; the shared share and the agreement below are measured on them too")


def _set_sizes(result: dict) -> str:
    """"10 tokens, 4 words": how many directions the sets of ``result['consistency']`` hold."""
    sizes = {}
    for by_method in result["consistency"].values():
        for method, by_seed in by_method.items():
            for values in by_seed.values():
                sizes.setdefault("words" if method == "text" else "tokens", set()).add(len(values))
    return ", ".join(f"{'/'.join(map(str, sorted(n)))} {kind}" for kind, n in sizes.items())


def _agreement_seeds(result: dict) -> str:
    """"4, 5, 6, 7": every seed whose sets the agreement compared."""
    seeds = {int(seed) for by_method in result["agreement"].values() for by_seed in by_method.values()
             for seed in by_seed}
    return ", ".join(map(str, sorted(seeds)))


def _reading_tables(readings: list[dict], adjective: str) -> list[str]:
    """One table per reading of :func:`analyse`'s result: the correlations and the two halves."""
    lines = []
    for reading in readings:
        window = reading["window"]
        lines += [f"### [`{reading['report']}`]({reading['report']}.md): target change "
                  f"{reading['target_change']:g}, window {window[0]:g}:{window[1]:g}", "",
                  f"| method | sets | ρ with purity | ρ with strength | more {adjective} half "
                  f"| less {adjective} half |",
                  "|---|---|---|---|---|---|"]
        for method, row in reading["methods"].items():
            cells = [" / ".join(f"{row['halves'][name][m][0]:.2f}" for m in HALF_COLUMNS) for name in ("more", "less")]
            sets = str(row["sets"]) + (f" ({row['rho_sets']} with ρ)" if row["rho_sets"] != row["sets"] else "")
            lines.append(f"| {method} | {sets} | {_signed(row['rho_purity'])} | {_signed(row['rho_strength'])} "
                         f"| {cells[0]} | {cells[1]} |")
        lines.append("")
    return lines


def markdown(result: dict) -> str:
    """The ``consistency[-tag].md`` page of a :func:`consistency_report` result."""
    domains = list(next(iter(result["table"].values())))
    lines = [f"# Edit consistency against the oracle{' (' + result['tag'] + ')' if result['tag'] else ''}", "",
             f"{result['date']} · {result['machine']} · weights {result['weights']} · "
             f"{result['seconds'] / 60:.1f} min. Written by `benchmarks/consistency.py` (what it measures and why: its "
             f"docstring and [`benchmarks/README.md`](../README.md#edit-consistency-benchmarksconsistencypy)).", "",
             f"Consistency of a direction: the mean cosine between its edit features on two different images "
             f"(the cosines the losses' positive term is built from){_space_words(result)}, on "
             f"{_images(result['images'])} training "
             f"images per domain at timesteps "
             f"{', '.join(map(str, result['timesteps']))}. Readings: "
             + ", ".join(f"[`{r['report']}`]({r['report']}.md)" for r in result["readings"]) + ". "
             + ("Every trained set was read from the cache the reports were measured with."
                if not result["trained_here"] else
                f"Not in the cache, so trained here as `quality.py` trains them (the same directions only on "
                f"the same torch build and threads): {', '.join(result['trained_here'])}."), "",
             "## How consistent each method's edits are", "",
             "Mean consistency of a set, mean ± std over its sets (seeds).", "",
             "| method | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
    for method, row in result["table"].items():
        lines.append(f"| {method} | " + " | ".join(_cell(row[d]) for d in domains) + " |")
    if result.get("shared_table"):  # reports written before it was measured have none
        lines += ["", "## How much of its edits a set makes alike", "",
                  "Shared edit share of a set: per image, the energy of the mean edit over the set's directions "
                  "against the mean energy of one edit (`noiseclr_lite.loss.shared_edit_share`), averaged over the "
                  "images and the same timesteps; 1 when every direction does the same thing, about 1/K when "
                  f"their edits are unrelated (K directions in the set: {_set_sizes(result)}), 0 when they "
                  "cancel. Mean ± std over the sets (seeds).", "",
                  "| method | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
        for method, row in result["shared_table"].items():
            lines.append(f"| {method} | " + " | ".join(_cell(row[d]) for d in domains) + " |")
    lines += ["", "## Does consistency predict what the oracle reads?", "",
              "Per reading: the Spearman correlation of consistency with purity and with strength within each set "
              "of directions (mean ± std over the sets), and each set's more and less consistent half "
              "(strength / share of strong directions / purity / coverage of the attributes).", ""]
    lines += _reading_tables(result["readings"], "consistent")
    if any(r["methods"] for r in result.get("agreement_readings", [])):  # older reports and one seed have none
        lines += ["## Does another seed find the same directions?", "",
                  "Agreement of a direction: its closest match, |cos| of the edit features on the same images and "
                  "timesteps (`noiseclr_lite.loss.cross_set_cosines`), in the set another seed trained (or drew) "
                  "for the same domain, averaged over the other seeds (`seed_agreement`; seeds here: "
                  f"{_agreement_seeds(result)}). Mean of a set, mean ± std over its sets:", "",
                  "| method | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
        for method, row in result["agreement_table"].items():
            lines.append(f"| {method} | " + " | ".join(_cell(row[d]) if d in row else "-" for d in domains) + " |")
        lines += ["", "Per reading, as above, with the set split by agreement instead of consistency:", ""]
        lines += _reading_tables(result["agreement_readings"], "agreeing")
    if any(r["methods"] for r in result.get("gain_readings", [])):  # reports written before it was measured
        lines += ["## Does a direction split the images? The kurtosis of its denoising gain", "",
                  "Denoising gain of a direction on an image: how much better its prompt predicts the noise than "
                  "the reference prompt does (`noiseclr_lite.train.denoising_gain`, a diffusion classifier's score), "
                  f"on {_images(result['gain_images'])} training images per domain at the same timesteps. Its excess "
                  "kurtosis over the images (`gain_kurtosis`) is -2 when the direction splits the images into two "
                  "equal groups, as one balanced two-valued attribute would, -1 for two such splits added with equal "
                  "weights, 0 for a Gaussian spread, and above 0 when a few images stand out (or a split is "
                  "unbalanced). Mean of a set, mean ± std over its sets:", "",
                  "| method | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
        for method, row in result["gain_table"].items():
            lines.append(f"| {method} | " + " | ".join(_cell(row[d]) if d in row else "-" for d in domains) + " |")
        lines += ["", "Per reading, as above, with the set split by the gain's kurtosis. Its expected sign is the "
                  "opposite of the scores above: if the directions that split the images cleanly are the pure ones, "
                  "ρ with purity is negative and the less kurtotic half is the purer:", ""]
        lines += _reading_tables(result["gain_readings"], "kurtotic")
    if result.get("figure"):
        first = result["readings"][0]
        lines += ["## The most and the least consistent direction", "",
                  f"NoiseCLR's first seed in [`{first['report']}`]({first['report']}.md), per domain: its most and its "
                  f"least consistent direction on three held-out images at -s, 0 and +s (its calibrated scale "
                  f"there; c = consistency, p = purity, st = strength).", "",
                  f"![the most and the least consistent direction per domain]({result['figure']})", ""]
    lines += ["## Settings", "", "```json", json.dumps(result["settings"], indent=1, default=list), "```", ""]
    return "\n".join(lines)


def _staged_latents(pipe, settings: Settings, domain: str, stages: Stages) -> torch.Tensor:
    with stages(f"{domain}: load + encode {settings.samples}/{domain}"):
        return training_latents(pipe, settings, domain)


def _consistency_and_share(features: torch.Tensor) -> torch.Tensor:
    """[N, K, ...] edit features -> [K + 1]: each direction's edit consistency, then the set's shared edit share."""
    from noiseclr_lite.loss import edit_consistency, shared_edit_share

    return torch.cat([edit_consistency(features), shared_edit_share(features).view(1)])


def consistency_report(names, pipe, oracle, out_dir: str | os.PathLike = RESULTS, tag: str = "",
                       images: int = DEFAULT_IMAGES, timesteps=CONSISTENCY_TIMESTEPS, progress: bool = True,
                       log: Callable[[str], None] = print, samples: str | os.PathLike | None = None,
                       gain_images: int = DEFAULT_GAIN_IMAGES, edit_space: str = "eps") -> dict:
    """Measure the consistency, the agreement and the denoising gain's kurtosis of every token
    direction the reports ``names`` scored, relate them to their scores and write
    ``consistency[-tag].md``, ``.json`` and ``.png`` (:func:`figure`) into ``out_dir``; returns the
    result.  ``samples``: where the training images are on this machine, when not at the path the
    reports recorded.  ``gain_images``: how many training images the gain is measured on (0: not
    measured).  ``edit_space``: what the edit features behind the consistency, the shared share and
    the agreement are differences of, ``"eps"`` (what the official loss sees) or ``"hspace"`` (the
    UNet's middle-block output, ``train.EDIT_SPACES``); the gain is always the noise's."""
    from tqdm.auto import tqdm

    from noiseclr_lite.train import denoising_gain, timestep_features

    if gain_images < 0:
        raise ValueError(f"gain_images={gain_images}: give 0 (no gain) or 4 or more training images")
    out_dir = Path(out_dir)
    readings = load_readings(names, out_dir)
    weights = readings[0][1]["weights"]
    if cache_key(pipe, oracle) != weights:
        _fail(f"the reports measured weights {weights}, the loaded model and oracle are {cache_key(pipe, oracle)}; "
              f"load the model and oracle they measured (--model, --oracle)")
    settings = settings_of(readings[0][1])
    cache = Cache.for_settings(out_dir / "cache", settings, weights)  # keyed by the report's own settings
    if samples is not None:  # where the images are here: reading them elsewhere changes no cache key
        settings = dataclasses.replace(settings, samples=str(samples))
    stages = Stages(log)
    trained_in = settings.edit_space
    if edit_space != trained_in:
        log(f"{TOOL}: note: the reports' directions were trained on {trained_in} edit features; this run measures "
            f"their {edit_space} ones")
    for path, report in readings:
        threads_then = report_threads(report)
        if threads_then is not None and threads_then != torch.get_num_threads():
            # float sums in another order drift apart over 150 steps: another draw of the recipe
            log(f"{TOOL}: warning: {path.name} ran with {threads_then} torch threads and this run has "
                f"{torch.get_num_threads()}; any set missing from the cache would be trained into other directions "
                f"than the scored ones; give --threads {threads_then} to train the same")
            break
    consistency: dict = {}
    shared: dict = {}
    agreement: dict = {}
    kurtosis: dict = {}
    sets_by_domain: dict = {}
    trained_here: list = []
    used_images, used_gain_images = {}, {}
    for domain, units in units_of(readings).items():
        check_samples(settings, domain)
        train_latents = functools.cache(lambda domain=domain: _staged_latents(pipe, settings, domain, stages))
        sets, trained = token_sets(pipe, settings, domain, units, train_latents, stages, cache, progress)
        sets_by_domain[domain] = sets
        trained_here += [f"{domain} {method} seed {seed}" for method, seed in trained]
        scored_on = consistency_latents(train_latents(), images)  # the images training learns from
        used_images[domain] = len(scored_on)
        gained_on = None  # with --gain-images 0 the gain is not measured
        if gain_images:
            gained_on = consistency_latents(train_latents(), gain_images)  # the same draw, more of it
            if len(gained_on) < 4:
                _fail(f"{domain}: the training images give {len(gained_on)} latents; the gain's kurtosis needs >= 4 "
                      f"images: add images to {settings.samples}/{domain}")
            used_gain_images[domain] = len(gained_on)
        kept: dict = {}  # {method: {seed: per-timestep features}} for the seeds' agreement
        measured = "consistency" + (" and gain" if gained_on is not None else "")
        with stages(f"{domain}: {measured} of {len(sets)} sets"):
            for (method, seed), directions in tqdm(sets.items(), desc=domain, disable=not progress):
                # one UNet pass per timestep for all three: [K] consistencies, the set's shared share,
                # and (below) how well other seeds' sets reproduce each direction
                features = timestep_features(pipe, directions, scored_on, timesteps, edit_space=edit_space)
                both = torch.stack([_consistency_and_share(f) for f in features]).mean(dim=0)
                consistency.setdefault(domain, {}).setdefault(method, {})[str(seed)] = both[:-1].tolist()
                shared.setdefault(domain, {}).setdefault(method, {})[str(seed)] = both[-1].item()
                if method in RANKED_METHODS:
                    kept.setdefault(method, {})[str(seed)] = features
                if gained_on is not None:
                    gains = denoising_gain(pipe, directions, gained_on, timesteps)
                    kurtosis.setdefault(domain, {}).setdefault(method, {})[str(seed)] = gain_kurtosis(gains)
        for method, by_seed in kept.items():
            if len(by_seed) >= 2:
                agreement.setdefault(domain, {})[method] = seed_agreement(by_seed)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(pipe), "weights": weights, "tag": tag,
              "images": used_images, "timesteps": list(timesteps), "edit_space": edit_space,
              "settings": _protocol(readings[0][1]),
              "trained_here": trained_here,
              "table": set_table(consistency), "shared_table": set_table(shared),
              "readings": analyse(readings, consistency), "consistency": consistency,
              "shared": shared,
              "agreement_table": set_table(agreement), "agreement_readings": analyse(readings, agreement, "agreement"),
              "agreement": agreement,
              "gain_images": used_gain_images, "gain_table": set_table(kurtosis),
              "gain_readings": analyse(readings, kurtosis, "gain kurtosis"), "gain_kurtosis": kurtosis,
              "figure": None}
    # an untagged h-space run must not overwrite the untagged eps page
    if tag:
        stem = f"consistency-{tag}"
    else:
        stem = "consistency" + ("" if edit_space == "eps" else f"-{edit_space}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # the first reading's protocol (its edit window) renders the figure, at that report's scales
    with stages("figure"):
        picture = figure(pipe, readings[0][1], consistency, sets_by_domain, settings)
    if picture is not None:
        save_small_png(picture, out_dir / f"{stem}.png")
        result["figure"] = f"{stem}.png"
    result["seconds"] = stages.total
    write_atomically(out_dir / f"{stem}.json", json.dumps(result, indent=1, default=list))
    write_atomically(out_dir / f"{stem}.md", markdown(result))
    log(f"wrote {out_dir / stem}.md and .json in {stages.total / 60:.1f} min")
    return result


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a script that re-reads quality reports with the model: --model, --oracle,
    --out, --samples, --threads and --no-progress (``consensus.py`` shares them)."""
    parser.add_argument("--model", default=None, help="the model folder or hub id (default: the bundled model)")
    parser.add_argument("--oracle", default=DEFAULT_ORACLE, help="the oracle folder (default: %(default)s)")
    parser.add_argument("--out", default=str(RESULTS), help="where the reports, the cache and the outputs are")
    parser.add_argument("--samples", default=None,
                        help="the folder of training images (one subfolder per domain) when it is not at the path "
                             "the reports recorded, e.g. in a clone at another path")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")


def load_model_and_oracle(args: argparse.Namespace):
    """(pipeline, oracle) as ``args`` name them (:func:`add_run_flags`), after setting ``--threads``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    from noiseclr_lite.models import BUNDLED_MODEL, load_pipeline
    from noiseclr_lite.toyworld.oracle import Oracle

    pipe = load_pipeline(args.model or BUNDLED_MODEL)
    return pipe, Oracle.load(args.oracle).to(pipe.device)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="quality reports (.json.gz paths or --tag names) that scored "
                                                   "the same trained directions")
    parser.add_argument("--tag", default="", help="writes results/consistency-TAG.md and .json")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="training images per domain")
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(CONSISTENCY_TIMESTEPS))
    parser.add_argument("--gain-images", type=int, default=DEFAULT_GAIN_IMAGES,
                        help="training images per domain the denoising gain and its kurtosis are measured on "
                             "(0: not measured, which saves about 45 s a set)")
    parser.add_argument("--edit-space", choices=EDIT_SPACES, default="eps",
                        help="what the edit features are differences of: eps, the noise prediction (what the "
                             "official loss sees), or hspace, the UNet's middle-block output (default: %(default)s)")
    add_run_flags(parser)
    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error(f"--images {args.images}: consistency compares images in pairs; give 2 or more")
    if 0 < args.gain_images < 4 or args.gain_images < 0:
        parser.error(f"--gain-images {args.gain_images}: a kurtosis needs at least 4 images (0: no gain)")
    return args


def main(argv=None) -> dict:
    """Run what ``argv`` asks; returns the result (the record written to ``consistency*.json``)."""
    args = parse_args(argv)
    pipe, oracle = load_model_and_oracle(args)
    return consistency_report(args.reports, pipe, oracle, args.out, tag=args.tag, images=args.images,
                              timesteps=args.timesteps, progress=not args.no_progress, samples=args.samples,
                              gain_images=args.gain_images, edit_space=args.edit_space)


if __name__ == "__main__":
    main()
