"""Consensus of seeds: do the directions that several training runs agree on clear the bars?

    python benchmarks/consensus.py target0.02-8seeds step8000-8seeds target0.15-8seeds --group 4 --tag k10

NoiseCLR's seeds find overlapping but different sets of directions.  A user who trains the
recipe with several seeds can keep what the runs agree on, with no labels
(:mod:`noiseclr_lite.consensus`: the most agreeing direction first, its copies in the other
runs dropped, until ``--count`` are kept).  This script asks whether that consensus set edits
more purely, and covers as much, as one seed's set, against random tokens treated the same way.

It reads the rungs of a ladder (two or more quality reports that scored the same directions at
different strengths or windows, as ``benchmarks/ladder.py`` does), splits the reports' seeds
into disjoint groups of ``--group`` seeds (with ``--every-group``, every combination of ``--group``
seeds), and for every domain, token method (NoiseCLR, InfoNCE, random) and group builds the
consensus set from the group's sets: their edits are
compared on 16 of the training images at the six consistency timesteps (a UNet pass per
direction and timestep; about 11 s a set of 10 on 2 CPU cores).  The kept directions were
already scored one by one in the reports (each at its own calibrated scale), so a consensus set
is read from those scores with no new render: its coverage over the ladder and its purity at
the working strength (``benchmarks/ladder.py``'s rules), beside the single seeds' sets, and the
issue's bars with each group standing for a seed.  The words (one run) are read as on the ladder.

Writes ``results/consensus[-tag].md`` and ``.json`` (``.json.gz`` with ``--every-group``, whose
picks are C(seeds, group) groups' worth: 35 times as many for groups of 4 of 8 seeds).  Trained
sets come from the benchmark cache
(``results/cache``, filled by the reports' runs); a set missing there is trained again exactly as
``quality.py`` trained it (give ``--threads`` as the reports ran).  The sets' cosines are kept in
the same cache (:func:`cosines_path`, keyed by the images compared on), so another ``--count``, or
another ``--group`` that uses the same seeds, takes seconds, as ``--picks`` on other rungs does.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/consensus.py` from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.consistency import (DEFAULT_IMAGES, RANKED_METHODS, _staged_latents, add_run_flags,  # noqa: E402
                                    check_samples, consistency_latents, load_model_and_oracle, settings_of,
                                    token_sets, units_of)
from benchmarks.ladder import (KEPT_MIN, _scores, bars_section, keeps_domain, ladder, load_rungs,  # noqa: E402
                               rung_label)
from benchmarks.quality import (BARS, CLEAR_MARGIN, RESULTS, Cache, Stages, _pm, cache_key,  # noqa: E402
                                direction_coverage, domain_start, machine, read_report, report_stem,
                                write_atomically, write_report_json)
from noiseclr_lite.metrics import expected_subset_coverage, images_to_tensor, score_rendered  # noqa: E402
from noiseclr_lite.toyworld.domains import get_domain  # noqa: E402
from noiseclr_lite.consensus import (consensus_picks, mean_edit, pick_copies, run_agreement,  # noqa: E402
                                     run_cosines)
from noiseclr_lite.train import CONSISTENCY_TIMESTEPS, timestep_features  # noqa: E402

TOOL = "benchmarks/consensus.py"


def _fail(message: str):
    raise SystemExit(f"{TOOL}: {message}")


def seed_groups(seeds: list, size: int, every: bool = False) -> list[list]:
    """``seeds`` cut into disjoint groups of ``size`` in their order; seeds left over are left out.
    ``every``: instead every combination of ``size`` seeds (overlapping groups, in lexicographic order):
    which seeds a user happens to train is then averaged over, not fixed by one cut.

    SystemExit unless 2 <= size <= len(seeds): a consensus compares two or more runs."""
    if not 2 <= size <= len(seeds):
        _fail(f"--group {size}: a consensus needs groups of 2 to {len(seeds)} seeds (the reports hold seeds "
              f"{seeds}); give --group between 2 and {len(seeds)}")
    if every:
        return [list(group) for group in itertools.combinations(seeds, size)]
    return [seeds[start:start + size] for start in range(0, len(seeds) - size + 1, size)]


def group_picks(cosines: torch.Tensor, seeds: list, group: list, set_size: int, count: int) -> dict:
    """The consensus of one group, from the [S*K, S*K] signed cosines of every seed's set (in ``seeds``' order;
    ``run_cosines(..., signed=True)``; the picks read their absolute value).

    Returns {"seeds": group, "picked": [[seed, index]], "agreement": [each kept direction's agreement
    within the group]}."""
    rows = torch.tensor([seeds.index(seed) * set_size + k for seed in group for k in range(set_size)])
    within = cosines[rows][:, rows]
    sizes = [set_size] * len(group)
    picks = consensus_picks(within.abs(), sizes, count)
    agreement = run_agreement(within.abs(), sizes)
    return {"seeds": list(group), "picked": [[group[run], k] for run, k in picks],
            "agreement": [agreement[run * set_size + k].item() for run, k in picks],
            "copies": [[[group[run], k, sign] for run, k, sign in copies]
                       for copies in pick_copies(within, sizes, picks)]}


def only_domains(report: dict, domains, path) -> dict:
    """A copy of ``report`` that holds only ``domains``; SystemExit naming any it lacks."""
    missing = [d for d in domains if d not in report["domains"]]
    if missing:
        _fail(f"--domains {' '.join(missing)}: {path} has only {', '.join(report['domains'])}; give some of those")
    kept = copy.deepcopy(report)
    kept["domains"] = {d: kept["domains"][d] for d in report["domains"] if d in domains}
    kept["settings"]["domains"] = list(kept["domains"])
    return kept


def consensus_rungs(rungs: list[tuple[Path, dict]], picks: dict, averaged: list | None = None
                    ) -> list[tuple[Path, dict]]:
    """The rungs as if each group's consensus set were one seed's set: for every method with picks,
    one run per group (its "seed" the group's index) holding the kept directions' scores; the
    methods without picks but the words (h-space) are left out.  ``picks``: {domain: {method: [group_picks]}}.
    ``averaged``: per rung, {domain: {method: [[score dicts] per group]}} (:func:`mean_scores`) read
    instead of the picks' own scores."""
    with_picks = {method for by_method in picks.values() for method in by_method}
    groups = {len(by_group) for by_method in picks.values() for by_group in by_method.values()}
    if len(groups) != 1:
        raise ValueError(f"every domain and method needs the same number of groups; got {sorted(groups)}")
    groups = groups.pop()
    out = []
    for path, report in rungs:
        virtual = copy.deepcopy(report)
        settings = virtual["settings"]
        settings["seeds"] = list(range(groups))
        settings["methods"] = [m for m in settings["methods"] if m == "text" or m in with_picks]
        for domain, by_method in picks.items():
            runs = virtual["domains"][domain]["runs"]
            for method in [m for m in runs if m not in settings["methods"]]:
                del runs[method]
            for method, by_group in by_method.items():
                scores = {run["seed"]: run["scores"] for run in report["domains"][domain]["runs"][method]}
                runs[method] = [{"seed": g, "scores": [scores[seed][k] for seed, k in group["picked"]]
                                 if averaged is None else averaged[len(out)][domain][method][g]}
                                for g, group in enumerate(by_group)]
        out.append((path, virtual))
    return out


def mean_render(pipe, copies: list, scale: float, start, window) -> torch.Tensor:
    """The start images edited by the mean of ``copies``' edits at ``scale`` (``noiseclr_lite.consensus.mean_edit``):
    float [M, 3, H, W] in [-1, 1]; scale 0 = the unedited reconstruction, as in ``quality.render``.
    ``copies``: [(Directions, index, sign)]."""
    from noiseclr_lite.editing import edit

    if scale == 0:
        return start.images
    return images_to_tensor(edit(pipe, mean_edit(copies, scale, tuple(window)), inversion=start.inversion))


def mean_scores(pipe, oracle, sets: dict, method: str, group: dict, start: Callable, domain: str, settings,
                cache: Cache, progress: bool = True) -> list[dict]:
    """Each kept direction of ``group`` (:func:`group_picks`) read as the mean of its copies' edits, calibrated
    and scored as ``quality.py`` scores one direction at ``settings``' target change and window: a list of
    ``DirectionScore`` dicts in the picks' order.  ``sets``: {(method, seed): Directions}; ``start()`` gives the
    ``StartSet`` (called only when the scores are not cached yet).  Kept in the cache
    next to the trained sets, keyed by the copies and everything the reading depends on, so a stopped run
    resumes where it stopped."""
    reading = {key: getattr(settings, key) for key in ("target_change", "window", "min_scale", "max_scale",
                                                       "calibration_images", "calibration_iters", "eval_images",
                                                       "start_seed", "inference_steps")}
    key = hashlib.sha256(json.dumps([group["copies"], reading], default=list).encode()).hexdigest()[:12]
    path = cache.trained / f"consensus-mean_{domain}_{method}_seeds{'-'.join(map(str, group['seeds']))}_{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    window, start = tuple(settings.window), start()
    scores = []
    for copies in tqdm(group["copies"], desc=f"{domain} {method} {group['seeds']}", disable=not progress):
        edits = [(sets[(method, seed)], k, sign) for seed, k, sign in copies]
        token = " + ".join(f"{'-' if sign < 0 else ''}{seed}:{k}" for seed, k, sign in copies)
        score = score_rendered(lambda s, st: mean_render(pipe, edits, s, st, window), oracle, start, domain,
                               f"mean of {token}", token, target_change=settings.target_change,
                               calibration_images=settings.calibration_images, max_scale=settings.max_scale,
                               min_scale=settings.min_scale, calibration_iters=settings.calibration_iters)
        scores.append(dataclasses.asdict(dataclasses.replace(score, window=window)))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(scores))
    return scores


def cosines_path(cache: Cache, domain: str, method: str, seeds: list, latents: torch.Tensor, timesteps) -> Path:
    """Where the pooled signed cosines of ``method``'s sets of ``seeds`` are kept, next to the trained sets
    (the cache's key is their training settings): one file per domain, method, seeds, the latents
    the edits were compared on (a hash of their values, so other images never read them) and
    timesteps."""
    images = hashlib.sha256(latents.float().contiguous().numpy().tobytes()).hexdigest()[:12]
    return cache.trained / (f"consensus-signed-cosines_{domain}_{method}_seeds{'-'.join(map(str, seeds))}"
                            f"_images{images}_t{'-'.join(map(str, timesteps))}.pt")


def _read_cosines(saved: dict, pooled: int) -> dict | None:
    """{method: [pooled, pooled] cosines} from the files ``saved`` names, or None unless every one
    is there with that shape (then they are measured again)."""
    if not all(path.is_file() for path in saved.values()):
        return None
    cosines = {method: torch.load(path) for method, path in saved.items()}
    ok = all(isinstance(c, torch.Tensor) and tuple(c.shape) == (pooled, pooled) for c in cosines.values())
    return cosines if ok else None


def reused_picks(path: str | os.PathLike, weights: str, training_key: str, groups: list, count: int,
                 methods: dict) -> dict:
    """An earlier result (``consensus*.json`` or ``.json.gz``), after checking that it kept ``count``
    directions of the same groups of the same trained sets, for every domain of these rungs and their token methods
    (``methods``: {domain: [methods the rungs scored there that have seeds to pick from]});
    SystemExit naming the difference otherwise."""
    path = Path(path)
    if not path.is_file():
        _fail(f"--picks {path}: no such file; give a consensus-TAG.json[.gz] this script wrote")
    try:
        earlier = read_report(path, TOOL)
    except SystemExit:  # its message asks for a quality report
        _fail(f"--picks {path} is not JSON (or gzip-compressed JSON); give a consensus-TAG.json[.gz] this script "
              f"wrote")
    mine = {"weights": weights, "training_key": training_key, "groups": groups, "count": count}
    for key, value in mine.items():
        if earlier.get(key) != value:
            _fail(f"--picks {path} has {key} {earlier.get(key)!r} and these reports and flags give {value!r}: its "
                  f"picks are of other directions; give the same --group and --count with reports of the same "
                  f"trained sets, or leave --picks out")
    theirs = {domain: sorted(by_method) for domain, by_method in earlier["picks"].items()}
    if theirs != {domain: sorted(m) for domain, m in methods.items()}:
        _fail(f"--picks {path} picked for {theirs} and these rungs score {methods}: give rungs of the same domains "
              f"and methods (all the domains it picked for: no --domains), or leave --picks out")
    return earlier


def covered_over_ladder(rungs: list[tuple[Path, dict]], domain: str, method: str, seed,
                        kept_min: float | None = None) -> list[set[str]]:
    """For each direction of one seed's set: the attributes it covers at some rung of ``rungs``
    (``quality.direction_coverage`` at each rung, united, as ``benchmarks.ladder`` counts).  With
    ``kept_min``, only at rungs where its edits keep the domain (``benchmarks.ladder.keeps_domain``)."""
    per_rung = [_scores(report, domain, method, seed) for _, report in rungs]
    covered = [set() for _ in per_rung[0]]
    for scores in per_rung:
        for k, (covers, score) in enumerate(zip(direction_coverage(scores, domain), scores)):
            if kept_min is None or keeps_domain(score, kept_min):
                covered[k] |= covers
    return covered


def random_draws(rungs: list[tuple[Path, dict]], methods_by_domain: dict, groups: list, count: int) -> dict:
    """The control for a consensus of ``count``: what ``count`` directions drawn at random from a group's
    pool (every direction of its seeds' sets) cover over the ladder, on average over every draw
    (``metrics.expected_subset_coverage``, exact), and what the whole pool covers.  If a consensus covers
    no more than the draws, its count does the work, not the agreement.  A draw's mean purity is on
    average the pool's, so purity needs no control.

    Returns {method: {"drawn", "drawn_in_domain", "pool", "pool_in_domain": one value per group}}, each
    the mean over ``methods_by_domain``'s domains ({domain: [methods]}) of the share of the attributes
    covered ("in_domain": by edits that keep the domain, :data:`benchmarks.ladder.KEPT_MIN`)."""
    per_method: dict = {}
    seeds = sorted({seed for group in groups for seed in group})
    readings = (("", None), ("_in_domain", KEPT_MIN))
    for domain, methods in methods_by_domain.items():
        names = get_domain(domain).attribute_names
        for method in methods:
            out = per_method.setdefault(method, {key: [[] for _ in groups] for key in
                                                 ("drawn", "drawn_in_domain", "pool", "pool_in_domain")})
            # each seed's sets read once, not once per group it is in (35 times for 70 groups of 4 of 8)
            covered = {(seed, suffix): covered_over_ladder(rungs, domain, method, seed, kept_min)
                       for seed in seeds for suffix, kept_min in readings}
            for g, group in enumerate(groups):
                for suffix, _ in readings:
                    pool = [c for seed in group for c in covered[(seed, suffix)]]
                    out["drawn" + suffix][g].append(expected_subset_coverage(pool, names, min(count, len(pool))))
                    out["pool" + suffix][g].append(expected_subset_coverage(pool, names, len(pool)))
    return {method: {key: [statistics.mean(v) for v in values] for key, values in out.items()}
            for method, out in per_method.items()}


def group_tally(kept: dict, drawn: dict | None = None, single: dict | None = None, groups: list | None = None
                ) -> dict:
    """Group by group, how many consensus sets meet each goal: NoiseCLR's coverage over the ladder (of all
    edits and of those that keep the domain) at least ``BARS["coverage"]``, its mean purity at the working
    strength at least ``BARS["mean_purity"]``, its coverage margin over random tokens' consensus of the
    same group at least ``CLEAR_MARGIN``, and all of coverage (in domain; "all_edits": of all edits), purity
    and margin at once.  ``kept``: the consensus sets' ladder (:func:`benchmarks.ladder.ladder`, each group
    standing for a seed).  ``drawn``:
    NoiseCLR's :func:`random_draws` of the same groups, to count too where the consensus covers more than
    the same number drawn at random ("above_draws", "above_draws_in_domain").  ``single`` (the ladder of
    the seeds' own sets) and ``groups`` (each group's seeds): to count too where the consensus is purer, and
    covers more, than the mean of its own seeds' sets ("purer_than_own", "covers_more_than_own").

    Returns {"groups": how many, goal: how many met it, "range": {measure: (lowest, highest) over the groups}}."""
    mine, floor = kept["overall"]["NoiseCLR"], kept["overall"]["random"]
    coverage, in_domain, purity = mine["per_seed"], mine["per_seed_in_domain"], mine["per_seed_purity"]
    margin = [c - r for c, r in zip(coverage, floor["per_seed"])]
    met = {"coverage": [c >= BARS["coverage"] for c in coverage],
           "in_domain": [c >= BARS["coverage"] for c in in_domain],
           "purity": [p >= BARS["mean_purity"] for p in purity],
           "margin": [m >= CLEAR_MARGIN for m in margin]}
    met["all"] = [all(row) for row in zip(met["in_domain"], met["purity"], met["margin"])]
    met["all_edits"] = [all(row) for row in zip(met["coverage"], met["purity"], met["margin"])]
    if drawn is not None:  # above by more than float noise: a tie is not agreement adding anything
        met["above_draws"] = [c > d + 1e-9 for c, d in zip(coverage, drawn["drawn"])]
        met["above_draws_in_domain"] = [c > d + 1e-9 for c, d in zip(in_domain, drawn["drawn_in_domain"])]
    if single is not None:
        if groups is None or len(groups) != len(purity):
            raise ValueError(f"group_tally: `single` needs `groups`, one list of seeds per consensus set "
                             f"({len(purity)}); got {groups!r}")
        own = single["overall"]["NoiseCLR"]
        seeds = next(iter(single["domains"].values()))["NoiseCLR"]["seeds"]  # the order of own's per-seed lists
        of_group = lambda values, group: statistics.mean(values[seeds.index(seed)] for seed in group)  # noqa: E731
        met["purer_than_own"] = [p > of_group(own["per_seed_purity"], g) + 1e-9 for p, g in zip(purity, groups)]
        met["covers_more_than_own"] = [c > of_group(own["per_seed"], g) + 1e-9 for c, g in zip(coverage, groups)]
    values = {"coverage": coverage, "in_domain": in_domain, "purity": purity, "margin": margin}
    return {"groups": len(coverage), **{goal: sum(flags) for goal, flags in met.items()},
            "range": {measure: (min(v), max(v)) for measure, v in values.items()}}


def consensus(names, pipe, oracle, out_dir: str | os.PathLike = RESULTS, group: int = 4, count: int | None = None,
              images: int = DEFAULT_IMAGES, timesteps=CONSISTENCY_TIMESTEPS, progress: bool = True,
              samples: str | os.PathLike | None = None, log: Callable[[str], None] = print,
              picks_from: str | os.PathLike | None = None, average: bool = False, domains=None,
              every_group: bool = False) -> dict:
    """Build the consensus sets of the reports ``names`` (a ladder's rungs) and read them on the
    ladder; returns {"groups", "count", "picks": {domain: {method: [group_picks]}}, "single": the
    ladder of the groups' seeds' own sets, "consensus": the ladder of the consensus sets
    (:func:`benchmarks.ladder.ladder`'s result for each), "trained_here", ...}.  ``picks_from``: an
    earlier result whose picks are read on these rungs instead (:func:`reused_picks`; no UNet pass).
    ``average``: also read each kept direction as the mean of its copies' edits (:func:`mean_scores`,
    rendered on every rung), as "averaged" (and every mean's score as "averaged_scores": {rung's report:
    {domain: {method: [[score dicts] per group]}}}); one rung is then enough.  ``domains``: read only these of the
    reports' domains (e.g. to split a long ``average`` run over processes that share the cache).
    ``every_group``: every combination of ``group`` seeds instead of disjoint cuts (:func:`seed_groups`;
    the same cached cosines, so only the reading grows).  Every result holds :func:`group_tally` as "tally"."""
    out_dir = Path(out_dir)
    rungs = load_rungs(names, out_dir, at_least=1 if average else 2)
    if domains is not None:
        rungs = [(path, only_domains(report, domains, path)) for path, report in rungs]
    first = rungs[0][1]
    if cache_key(pipe, oracle) != first["weights"]:
        _fail(f"the reports measured weights {first['weights']}, the loaded model and oracle are "
              f"{cache_key(pipe, oracle)}; load the model and oracle they measured (--model, --oracle)")
    seeds = first["settings"]["seeds"]
    groups = seed_groups(seeds, group, every_group)
    used = [seed for seed in seeds if any(seed in g for g in groups)]  # the reports' order: one cosines file
    settings = settings_of(first)
    cache = Cache.for_settings(out_dir / "cache", settings, first["weights"])
    training_key = settings.training_fingerprint(first["weights"])  # the reports' own, as the cache's
    if samples is not None:
        settings = dataclasses.replace(settings, samples=str(samples))
    set_size = settings.num_directions
    count = set_size if count is None else count
    if not 1 <= count <= group * set_size:
        _fail(f"--count {count}: keep between 1 and {group * set_size} directions (a group's pool: {group} sets of "
              f"{set_size}); up to {set_size} is always reached, beyond it the pool may run out first")
    stages = Stages(log)
    picks: dict = {}
    trained_here: list = []
    used_images = None
    loaded: dict = {}
    lazy_latents: dict = {}

    def training_latents(domain: str) -> Callable[[], torch.Tensor]:
        """A call giving the domain's training latents, loaded and encoded on its first use only (shared by
        the picks and the means, so at most once per run); the domain's sample folder is checked now."""
        check_samples(settings, domain)
        if domain not in lazy_latents:
            lazy_latents[domain] = functools.cache(lambda: _staged_latents(pipe, settings, domain, stages))
        return lazy_latents[domain]

    def sets_of(domain: str, ranked: list, train_latents: Callable[[], torch.Tensor]) -> dict:
        """{(method, seed): Directions} of the domain's token sets, loaded (or trained) once."""
        if domain not in loaded:
            loaded[domain], trained = token_sets(pipe, settings, domain, ranked, train_latents, stages, cache, progress)
            trained_here.extend(f"{domain} {method} seed {seed}" for method, seed in trained)
        return loaded[domain]

    if picks_from is not None:
        token_methods = {domain: sorted({m for m, seed in units if m in RANKED_METHODS and seed in used})
                         for domain, units in units_of(rungs).items()}
        earlier = reused_picks(picks_from, first["weights"], training_key, groups, count, token_methods)
        picks, used_images, timesteps = earlier["picks"], earlier["images"], earlier["timesteps"]
        if average and any("copies" not in g or any(len(c) != 3 for copies in g["copies"] for c in copies)
                           for by_method in picks.values() for by_group in by_method.values() for g in by_group):
            _fail(f"--picks {picks_from} predates the signed copies --average reads (each pick's best match in the "
                  f"other seeds, turned its way); leave --picks out, and the cosines give the same picks with them")
    for domain, units in ({} if picks_from is not None else units_of(rungs)).items():
        ranked = [(m, s) for m, s in units if m in RANKED_METHODS and s in used]
        methods = [m for m in RANKED_METHODS if any(unit[0] == m for unit in ranked)]
        if not methods:  # only the words here: nothing to pick from
            continue
        train_latents = training_latents(domain)
        compared_on = consistency_latents(train_latents(), images)
        used_images = len(compared_on)
        saved = {m: cosines_path(cache, domain, m, used, compared_on, timesteps) for m in methods}
        cosines_of = _read_cosines(saved, len(used) * set_size)  # another --count or --group of the same sets
        if cosines_of is not None:
            log(f"{domain}: the sets' cosines read from {cache.trained}")
        else:
            sets = sets_of(domain, ranked, train_latents)
            cosines_of = {}
            for method in methods:
                with stages(f"{domain}: {method}'s edits of seeds {used} compared"):
                    features = [timestep_features(pipe, sets[(method, seed)], compared_on, timesteps) for seed in used]
                    cosines_of[method] = run_cosines(features, signed=True)  # signed: the copies' signs
                saved[method].parent.mkdir(parents=True, exist_ok=True)
                partial = saved[method].with_name(f"{saved[method].name}.{os.getpid()}.tmp")  # no run reads half
                torch.save(cosines_of[method], partial)
                os.replace(partial, saved[method])
        for method in methods:
            picks.setdefault(domain, {})[method] = [group_picks(cosines_of[method], used, g, set_size, count)
                                                    for g in groups]
    averaged = None
    if average:  # every kept direction rendered again as the mean of its copies' edits, on every rung
        averaged = [{} for _ in rungs]
        for domain, by_method in picks.items():
            ranked = [(method, seed) for method in by_method for seed in used]
            sets = sets_of(domain, ranked, training_latents(domain))
            # every rung scores on the same inverted images (one protocol); inverted only if a mean is not cached
            start = functools.cache(lambda domain=domain: domain_start(pipe, settings, domain))
            for i, (path, report) in enumerate(rungs):
                rung = dataclasses.replace(settings_of(report), samples=settings.samples)
                for method, by_group in by_method.items():
                    with stages(f"{domain}: {method}'s consensus as means of copies at {report_stem(path)}"):
                        averaged[i].setdefault(domain, {})[method] = [
                            mean_scores(pipe, oracle, sets, method, group, start, domain, rung, cache, progress)
                            for group in by_group]
    with_picks = {method for by_method in picks.values() for method in by_method}
    kept = ladder(consensus_rungs(rungs, picks))
    draws = random_draws(rungs, {domain: list(by_method) for domain, by_method in picks.items()}, groups, count)
    single = [(path, copy.deepcopy(report)) for path, report in rungs]
    for _, report in single:  # the groups' seeds and methods, for a like-for-like baseline
        report["settings"]["seeds"] = used
        report["settings"]["methods"] = [m for m in report["settings"]["methods"] if m == "text" or m in with_picks]
    own = ladder(single)
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(pipe), "weights": first["weights"],
            "training_key": training_key, "reports": [report_stem(path) for path, _ in rungs], "groups": groups,
            "count": count, "set_size": set_size, "picks_from": None if picks_from is None else Path(picks_from).name,
            "images": used_images,
            "timesteps": list(timesteps), "picks": picks, "trained_here": trained_here,
            "single": own, "consensus": kept, "tally": group_tally(kept, draws.get("NoiseCLR"), own, groups),
            "draws": draws,
            "every_group": every_group,
            **({"averaged": ladder(consensus_rungs(rungs, picks, averaged)),
                "averaged_scores": {report_stem(path): by_domain for (path, _), by_domain in zip(rungs, averaged)}}
               if average else {}),
            "seconds": stages.total}


def _cell(values) -> str:
    return _pm((statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0), sign="")


def markdown(result: dict) -> str:
    """The page ``consensus[-tag].md``."""
    single, mine, averaged = result["single"], result["consensus"], result.get("averaged")
    groups = result["groups"]
    seeds_used = ", ".join(map(str, sorted({seed for group in groups for seed in group})))
    labels = [rung_label(t, w, len({tuple(x) for x in single["windows"]}) > 1)
              for t, w in zip(single["targets"], single["windows"])]
    short = [f"{domain} {method} seeds {'-'.join(map(str, g['seeds']))}: {len(g['picked'])}"
             for domain, by_method in result["picks"].items() for method, by_group in by_method.items()
             for g in by_group if len(g["picked"]) < result["count"]]
    lines = [f"# Consensus of {len(groups[0])} seeds: {result['count']} directions kept from each group", "",
             *([f"Fewer were kept where a group's pool ran out: {'; '.join(short)}.", ""] if short else []),
             *([f"These sets hold {result['count']} directions, more than one run's {result['set_size']}: the bars "
                f"below were set for one run of K, so more sliders meet them more easily.", ""]
               if result["count"] > result.get("set_size", result["count"]) else []),
             f"Made {result['date']} by `{TOOL}` on {result['machine']}, from the rungs "
             + ", ".join(f"[`{name}`]({name}.md)" for name in result["reports"])
             + f" ({', '.join(labels)}), weights {result['weights']}. Seed groups: "
             + ((f"all {len(groups)} combinations of {len(groups[0])} of the seeds {seeds_used} (they overlap: a "
                 "spread over them is over which seeds were trained, not over independent runs)" if len(groups) > 1
                 else f"the one combination of all the seeds, {seeds_used}") if result.get("every_group") else
                "; ".join(", ".join(map(str, g)) for g in groups))
             + (f". The picks are those of [`{result['picks_from']}`]"
                f"({result['picks_from'].removesuffix('.gz').removesuffix('.json')}.md)"
                if result.get("picks_from") else "")
             + f". Each group's sets were compared on {result['images']} training images at timesteps "
             f"{result['timesteps']}; the most agreeing direction was kept, its best match in each other seed of "
             f"the group dropped, and so on ({result['count']} kept; `noiseclr_lite.consensus`). The kept directions "
             "are read from the reports' own scores. Random tokens and the other token methods get the same "
             f"treatment; the words are one run. "
             + ("Means of copies: each kept direction rendered again as the mean of its copies' edits (itself and "
                "its best match in each other seed of the group, `noiseclr_lite.consensus.mean_edit`), calibrated "
                "and scored afresh on every rung. " if averaged else "")
             + f"Sets trained here: {', '.join(result['trained_here']) or 'none'}. "
             f"Wall time {result['seconds'] / 60:.1f} min.", "",
             "## Overall", "",
             "Coverage over the ladder / mean purity at the working strength (`benchmarks/ladder.py`'s rules). "
             "Single seeds: mean ± std over the groups' seeds; consensus: over the groups.", "",
             "| method | single seeds: coverage | purity | consensus: coverage | purity |"
             + (" means of copies: coverage | purity |" if averaged else ""),
             "|---|---|---|---|---|" + ("---|---|" if averaged else "")]
    for method in mine["overall"]:
        readings = [single, mine] + ([averaged] if averaged else [])
        lines.append(f"| {method} | " + " | ".join(f"{_pm(r['overall'][method]['ladder'], sign='')} | "
                                                  f"{_pm(r['overall'][method]['purity'], sign='')}" for r in readings)
                     + " |")
    draws = result.get("draws")
    if draws:  # results written before the control existed have none
        pool = len(groups[0]) * result["set_size"]
        lines += ["", "## Against random draws from the same runs", "",
                  "Coverage over the ladder (in brackets: by edits that keep the domain), mean ± std over the "
                  f"groups: the consensus, {result['count']} directions drawn at random from a group's {pool} "
                  "(the exact mean over every draw, `metrics.expected_subset_coverage`; a draw's purity is on "
                  f"average the pool's) and all {pool}. A consensus that covers no more than the draws owes its "
                  "coverage to its count, not to the agreement.", "",
                  f"| method | consensus | {result['count']} drawn at random | all {pool} |", "|---|---|---|---|"]
        for method in draws:
            overall = mine["overall"][method]
            lines.append(f"| {method} | {_pm(overall['ladder'], sign='')} ({_pm(overall['in_domain'], sign='')}) | "
                         f"{_cell(draws[method]['drawn'])} ({_cell(draws[method]['drawn_in_domain'])}) | "
                         f"{_cell(draws[method]['pool'])} ({_cell(draws[method]['pool_in_domain'])}) |")
    tally = result.get("tally")
    if tally:  # results written before the tally existed have none
        low_high = lambda measure, sign="": "{:{sign}.2f} to {:{sign}.2f}".format(  # noqa: E731
            *tally["range"][measure], sign=sign)
        lines += ["", "## Group by group", "",
                  (f"How many of the {tally['groups']} groups' NoiseCLR consensus sets meet each goal on their own "
                   + "(the lowest and highest group's reading beside it)" if tally["groups"] > 1 else
                   "Whether the one group's NoiseCLR consensus set meets each goal (its reading beside it)")
                  + "; the margin is over random tokens' consensus of the same group.", "",
                  "| goal | groups that meet it | lowest to highest |", "|---|---|---|",
                  f"| coverage over the ladder >= {BARS['coverage']} | {tally['coverage']} | {low_high('coverage')} |",
                  f"| the same, in domain | {tally['in_domain']} | {low_high('in_domain')} |",
                  f"| mean purity >= {BARS['mean_purity']} | {tally['purity']} | {low_high('purity')} |",
                  f"| coverage margin over random >= +{CLEAR_MARGIN:.2f} | {tally['margin']} | "
                  f"{low_high('margin', '+')} |",
                  *([f"| coverage, purity and margin at once | {tally['all_edits']} | |"] if "all_edits" in tally
                    else []),
                  f"| in domain, purity and margin at once | {tally['all']} | |"]
        if "above_draws" in tally:
            lines += [f"| covers more than {result['count']} drawn at random from the group's pool | "
                      f"{tally['above_draws']} | |",
                      f"| the same, in domain | {tally['above_draws_in_domain']} | |"]
        if "purer_than_own" in tally:
            lines += [f"| purer than its own seeds' sets (their mean) | {tally['purer_than_own']} | |",
                      f"| covers more than its own seeds' sets (their mean) | {tally['covers_more_than_own']} | |"]
    lines += ["", "## Per domain", "", "| domain | method | single seeds | consensus |"
              + (" means of copies |" if averaged else ""), "|---|---|---|---|" + ("---|" if averaged else "")]
    for domain in mine["domains"]:
        for method in mine["domains"][domain]:
            readings = [single, mine] + ([averaged] if averaged else [])
            lines.append(f"| {domain} | {method} | " + " | ".join(
                f"{_cell(r['domains'][domain][method]['ladder'])} / {_cell(r['domains'][domain][method]['purity'])}"
                for r in readings) + " |")
    lines += ["", "## The issue's bars, each group's consensus standing for a seed", ""]
    lines += bars_section(mine)[2:]
    lines += ["The single seeds on the same rungs, NoiseCLR's margins over random: "
              + ", ".join(f"{d} {_pm(single['margin'][d])} / {_pm(single['margin_purity'][d])}"
                          + (" (clear)" if single["clear"][d] else "") for d in single["domains"])
              + f"; coverage {single['overall']['NoiseCLR']['ladder'][0]:.2f}, purity "
              f"{single['overall']['NoiseCLR']['purity'][0]:.2f}, {single['text_purity_share']['all']:.2f} of the "
              "words' purity.", ""]
    if averaged:
        lines += ["## The issue's bars, each group's means of copies standing for a seed", ""]
        lines += bars_section(averaged)[2:]
    if result.get("every_group"):  # one line per group would run to pages: the JSON keeps them
        return "\n".join(lines + ["## What was kept", "", f"The picks of all {len(groups)} groups are in "
                                   f"`{result_stem(result.get('tag', ''))}.json.gz` (`picks`).",
                                   ""])
    lines += ["## What was kept", "", "Per domain and method: each group's kept directions as seed:index, with "
              "their agreement within the group (mean over its other seeds of the best |cos| with one of their "
              "edits)" + ("; under them, the copies each mean was made of (-: turned, its slider runs backwards)"
                          if averaged else "") + ".", ""]
    for domain, by_method in result["picks"].items():
        for method, by_group in by_method.items():
            kept = "; ".join(" ".join(f"{seed}:{k} ({a:.2f})" for (seed, k), a in zip(g["picked"], g["agreement"]))
                             for g in by_group)
            lines.append(f"- {domain}, {method}: {kept}")
            if averaged:  # each mean's copies, a turned one marked "-"
                lines.append("  - means of: " + "; ".join(", ".join(" + ".join(
                    f"{'-' if sign < 0 else ''}{seed}:{k}" for seed, k, sign in copies) for copies in g["copies"])
                    for g in by_group))
    return "\n".join(lines) + "\n"


def result_stem(tag: str) -> str:
    """The name of a result's files without their suffix: ``consensus-TAG``, or ``consensus`` with no tag."""
    return "consensus" + (f"-{tag}" if tag else "")


def consensus_report(names, pipe, oracle, out_dir: str | os.PathLike = RESULTS, tag: str = "", **options) -> dict:
    """:func:`consensus`, written to ``consensus[-tag].md`` and ``.json`` in ``out_dir`` (gzip-compressed
    ``.json.gz`` for ``every_group``, whose picks would fill megabytes); returns the result."""
    result = consensus(names, pipe, oracle, out_dir, **options)
    result["tag"] = tag
    stem = result_stem(tag)
    out_dir = Path(out_dir)
    if options.get("every_group"):
        write_report_json(result, out_dir / f"{stem}.json.gz")
        (out_dir / f"{stem}.json").unlink(missing_ok=True)  # no earlier record under the tag reads as current
    else:
        write_atomically(out_dir / f"{stem}.json", json.dumps(result, indent=1, default=list))
        (out_dir / f"{stem}.json.gz").unlink(missing_ok=True)
    write_atomically(out_dir / f"{stem}.md", markdown(result))
    options.get("log", print)(f"wrote {out_dir / stem}.md and .json{'.gz' if options.get('every_group') else ''}")
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="the ladder's rungs: quality reports (.json.gz paths or --tag "
                                                   "names) that scored the same directions")
    parser.add_argument("--group", type=int, default=4, help="seeds per consensus (default 4)")
    parser.add_argument("--count", type=int, default=None,
                        help="directions kept per consensus (default: K; at most a group's pool, --group x K)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="training images the edits are compared on")
    parser.add_argument("--picks", default=None, help="read the picks of an earlier consensus-TAG.json[.gz] (same "
                                                      "groups, count and trained sets) on these rungs: no UNet "
                                                      "pass; its --images and timesteps are the ones recorded")
    parser.add_argument("--average", action="store_true",
                        help="also read each kept direction as the mean of its copies' edits (its best match in each "
                             "other seed of the group), rendered, calibrated and scored on every rung (one rung "
                             "is enough); about 44 s a direction and rung with one torch thread (four copies)")
    parser.add_argument("--every-group", action="store_true",
                        help="every combination of --group seeds instead of disjoint cuts (e.g. 70 groups of 4 of 8 "
                             "seeds): the cosines are the same, so it takes seconds more; the page's 'Group by group' "
                             "counts the groups that meet each goal (as on every page)")
    parser.add_argument("--domains", nargs="+", default=None,
                        help="read only these of the reports' domains (split a long --average run over processes; "
                             "a last run without it reads everything back from the cache)")
    parser.add_argument("--tag", default="", help="writes results/consensus-TAG.md and .json (.json.gz with "
                                                   "--every-group)")
    add_run_flags(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Run what ``argv`` asks; returns the result (the record written to ``consensus*.json[.gz]``)."""
    args = parse_args(argv)
    pipe, oracle = load_model_and_oracle(args)
    return consensus_report(args.reports, pipe, oracle, args.out, tag=args.tag, group=args.group, count=args.count,
                            images=args.images, progress=not args.no_progress, samples=args.samples,
                            picks_from=args.picks, average=args.average, domains=args.domains,
                            every_group=args.every_group)


if __name__ == "__main__":
    main()
