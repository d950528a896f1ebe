"""Coverage over a ladder of edit strengths: is the coverage ceiling the model's or the protocol's?

    python benchmarks/ladder.py target0.02 seeds01 target0.15 --tag seeds01

``benchmarks/quality.py`` compares methods at one edit strength: every direction's scale is
calibrated so that it changes the pixels by the same mean amount (``--target-change``, 0.05 by
default).  That is fair between methods, but the attributes of the bundled world take very
different amounts of pixels: flipping a cat's eye colour changes under 1% of the pixels, a
pair of glasses under 2%, a night sky half of them (:func:`noiseclr_lite.toyworld.domains.attribute_pixel_change`
measures each on the renderer).  At one strength, some attributes cannot be flipped cleanly by
any direction: too little change for the night sky, too much for the eyes.

This script reads two or more quality reports that scored the *same* directions (same weights,
seeds and settings) at different ``--target-change`` values, the rungs of a ladder, and asks:
does some direction, at some rung, cover each attribute (strength >= 0.5 and purity >= 0.6, as in
``noiseclr_lite.metrics.coverage``)?  Every method climbs the same rungs, so methods are still
compared at equal edit strengths; a slider user does the same when they move the slider until
the attribute flips.  Renders nothing (seconds).  Writes ``results/ladder[-tag].md`` and ``.json``:
coverage at each rung and over the ladder, per domain and overall (mean ± std over seeds), NoiseCLR's
coverage margin over random seed by seed, which attributes each method covers in how many seeds,
and how many pixels each attribute takes on the renderer.

Purity needs one strength per direction, since every direction is purer at a weaker edit.  The
ladder reads each direction at its *working strength* (:func:`working_strength_scores`): the
weakest rung at which its largest effect reaches 0.5, as a slider user stops where the edit
shows, or its strongest rung when it never does.  With that purity and the coverage over the
ladder, the page judges the issue's "clear margin over random in every domain" bar.

Rungs may also differ in the edit window (``quality.py --window``): the same directions read at
0.02, 0.05 and 0.15 in the whole window and in the late one make a ladder of six rungs, as a
slider user sets each slider's strength and the window it acts in (the shipped directions are
chosen so, ``--window-ladder``).  At one strength the two windows change the pixels equally, so a
direction is then read at the weakest strength at which it shows in some window, in the purer of
those windows.

    python benchmarks/ladder.py target0.02 seeds01 target0.15 late-target0.02 late-seeds01 late-target0.15 --tag both
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/ladder.py` from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.quality import (BARS, CLEAR_MARGIN, METHODS, POOLED_FREELY, REQUIRED_METHODS,  # noqa: E402
                                RESULTS, SEEDED, _find_report, _mean_std, _pm, _scale_bracket, check_one_protocol,
                                direction_coverage, is_clear, margin_over_each, read_report, report_stem,
                                words_rule_lines, words_sized_floor, write_atomically)
from noiseclr_lite.metrics import STRENGTH_MIN, DirectionScore, coverage, summary  # noqa: E402
from noiseclr_lite.toyworld.domains import attribute_pixel_change, get_domain  # noqa: E402

#: the calibration bracket, which each rung may set for its own target
BRACKET = {"min_scale", "max_scale", "hspace_min_scale", "hspace_max_scale"}
#: a covering edit "keeps the domain" when the oracle reads at least this share of its +s and -s
#: edits as the starting domain (at most 1 of 16 edits of 8 images leaves it)
KEPT_MIN = 0.9
#: renders per attribute for the pixel-size table (seconds on a CPU)
SIZE_IMAGES = 256
#: peers trained from NoiseCLR's own starting rows and image draws for a seed (``quality.py`` passes
#: the same seed to both losses), so their gap to NoiseCLR can also be read seed by seed
SAME_INIT_PEERS = {"InfoNCE"}


def _fail(message: str):
    raise SystemExit(f"benchmarks/ladder.py: {message}")


def load_rungs(names, out_dir: str | os.PathLike = RESULTS, at_least: int = 2) -> list[tuple[Path, dict]]:
    """The reports ``names`` (paths or ``--tag`` names) as (path, report), ordered by target change
    and, at one target change, by edit window (the whole window first).

    They must be one protocol but for ``target_change`` and ``window`` (and where the model, oracle and samples
    lie, and the scale bracket the calibration searched for that target): the same weights, domains,
    seeds and other settings (the h-space ones only when every report ran h-space), each NoiseCLR,
    random and text, and no (target change, window) twice; otherwise SystemExit names the reports, the setting and the fix.
    ``at_least``: the fewest reports accepted (one rung is a reading at one strength).
    """
    out_dir = Path(out_dir)
    if len(names) < at_least:
        _fail(f"got {len(names)} report(s); a ladder needs {at_least} or more (the same directions scored at "
              f"different --target-change values)" + ("; consensus.py --average reads one" if at_least > 1 else ""))
    paths = [_find_report(n, out_dir, "benchmarks/ladder.py") for n in names]
    rungs = [(path, read_report(path, "benchmarks/ladder.py")) for path in paths]
    first_path, first = rungs[0]
    for path, report in rungs:
        missing = [m for m in REQUIRED_METHODS if m not in report["settings"]["methods"]]
        if missing:
            _fail(f"{path} lacks {', '.join(missing)}; re-run it with --methods {' '.join(REQUIRED_METHODS)}, or "
                  f"pool it with a report of the same rung that has them (benchmarks/quality.py --merge)")
    # the scenes and the figures do not enter a domain's scores; the scale bracket is how a rung is
    # found (a rung of 0.005 needs smaller scales than one of 0.15), not what it measures
    free = ((set(POOLED_FREELY) - {"seeds"}) | {"target_change", "window", "methods", "interference_images",
                                                 "grid_images"} | BRACKET)
    check_one_protocol([path for path, _ in rungs], [report for _, report in rungs], free, "benchmarks/ladder.py",
                       f"the rungs must score the same directions on the same images; re-run it with "
                       f"{report_stem(first_path)}'s flags and only --target-change (or --window) changed")
    keys = [rung_key(report) for _, report in rungs]
    if len(set(keys)) != len(keys):
        _fail(f"two reports have the same target change and window ({[rung_label(*k) for k in keys]} from "
              f"{[report_stem(p) for p, _ in rungs]}); each rung is one --target-change value in one --window: leave the "
              f"repeated one out")
    return sorted(rungs, key=lambda rung: _rung_order(rung_key(rung[1])))


def rung_key(report: dict) -> tuple[float, tuple[float, float]]:
    """A report's rung: (its target change, its edit window as (start, end) fractions of the schedule)."""
    settings = report["settings"]
    return settings["target_change"], tuple(settings.get("window", (1.0, 0.0)))


def _rung_order(key: tuple[float, tuple[float, float]]) -> tuple[float, float, float]:
    """Sort key of a rung: by target change, then the window that starts earliest (the whole one) first."""
    target, (start, end) = key
    return target, -start, end


def rung_label(target: float, window, several_windows: bool = True) -> str:
    """``0.05`` or, on a ladder of several windows, ``0.05 in 0.55:0`` (the sweep table's window notation)."""
    return f"{target:g}" + (f" in {window[0]:g}:{window[1]:g}" if several_windows else "")


def _scores(report: dict, domain: str, method: str, seed) -> list[DirectionScore]:
    runs = [run for run in report["domains"][domain]["runs"][method] if run["seed"] == seed]
    return [DirectionScore(**s) for s in runs[0]["scores"]]


def working_strength_scores(rung_scores: list[list[DirectionScore]], strength_min: float = STRENGTH_MIN,
                            targets: list[float] | None = None) -> tuple[list[DirectionScore], list[int]]:
    """Each direction read at its working strength: the weakest rung at which its largest effect
    (``DirectionScore.strength``) reaches ``strength_min``, or the strongest rung if none does.

    With several rungs at one strength (``targets``: the rungs' target changes, equal for the same
    strength in different edit windows), the direction is read at the weakest strength at which it
    shows in some window, in the purest of the windows where it shows there; if it never shows, at
    the strongest target in the window where its largest effect is largest.

    Args:
        rung_scores: one list of the same D directions' scores per rung, rungs ordered from the
            weakest target change to the strongest (:func:`load_rungs` orders them so).
        targets: each rung's target change (default: every rung its own strength).
    Returns:
        (D scores, one per direction, in the rungs' order of directions; D rung indices, where each was read).

    Why not the purest rung: the weakest edit is always the purest (a nudge of the most sensitive
    attribute), so the purest rung would reward directions that barely move anything.  Why not one
    rung for all: attributes take 0.7% to 52% of the pixels, so no one strength suits every direction.
    """
    sizes = {len(scores) for scores in rung_scores}
    if len(sizes) != 1:
        raise ValueError(f"working_strength_scores got {[len(s) for s in rung_scores]} directions per rung; every "
                         f"rung must score the same directions (re-run the rungs with the same -k and seeds)")
    strengths = targets if targets is not None else list(range(len(rung_scores)))
    picked, read_at = [], []
    for position in range(sizes.pop()):
        per_rung = [scores[position] for scores in rung_scores]
        if len({score.name for score in per_rung}) != 1:
            raise ValueError(f"working_strength_scores: direction {position} is {[s.name for s in per_rung]} on the "
                             f"rungs; every rung must list the same directions in the same order")
        shows = [k for k, score in enumerate(per_rung) if score.strength >= strength_min]
        if shows:
            weakest = [k for k in shows if strengths[k] == strengths[shows[0]]]
            rung = max(weakest, key=lambda k: per_rung[k].purity)  # the first of equally pure ones
        else:
            strongest = [k for k in range(len(per_rung)) if strengths[k] == strengths[-1]]
            rung = max(strongest, key=lambda k: per_rung[k].strength)
        picked.append(per_rung[rung])
        read_at.append(rung)
    return picked, read_at


def keeps_domain(score: DirectionScore, kept_min: float = KEPT_MIN) -> bool:
    """Whether a direction's +s and -s edits stay in their domain at least ``kept_min`` of the time
    (a score measured before ``domain_kept`` existed counts as kept)."""
    return score.domain_kept is None or score.domain_kept >= kept_min


def in_domain_coverage(scores: list[DirectionScore], domain: str, kept_min: float = KEPT_MIN) -> tuple[float, list[str]]:
    """``metrics.coverage`` of the directions whose +s and -s edits the oracle still reads as
    ``domain`` at least ``kept_min`` of the time (a score without that reading counts as kept;
    :func:`ladder` counts those and :func:`markdown` names them).

    A strong edit can cover an attribute by leaving the domain (the 0.15 figures show paintings
    turned into cars and cats): the oracle then reads a painting attribute on a car.  Scores
    measured before ``domain_kept`` existed count as kept, so on such reports this equals the
    plain coverage.  At the default strength few covering edits leave the
    domain; at 0.15 some covering edits leave it in up to 44% of the images.
    """
    kept = [s for s in scores if keeps_domain(s, kept_min)]
    if not kept:
        return 0.0, []
    names = get_domain(domain).attribute_names
    return coverage([[s.effects[n] for n in names] for s in kept], names)


def ladder(rungs: list[tuple[Path, dict]]) -> dict:
    """Coverage of every method, domain and seed at each rung and over the whole ladder.

    Returns {"targets": [T], "windows": [[start, end]], "labels": [each rung's name], "domains": {domain: {method: {"seeds": [...], "rungs": [[coverage per
    seed] per rung], "ladder" and "in_domain": [coverage per seed over the ladder, of every
    direction and of those that keep the domain (:func:`in_domain_coverage`)], "covered" and
    "covered_in_domain": {attribute: seeds covering it over the ladder}, "unread": how many of its
    "scores" (every rung and seed) predate the domain reading and count as kept, "purity": [mean purity
    per seed at the working strength (:func:`working_strength_scores`)], "read_purity": [[purity of
    every direction read at that rung, over every seed] per rung]}}}, "overall": {method: {"rungs": [(mean, std)], "ladder", "in_domain",
    "purity": (mean, std) over seeds of the mean over domains, "per_seed", "per_seed_in_domain",
    "per_seed_purity": those means seed by seed}}, "margin", "margin_in_domain" and "margin_purity":
    NoiseCLR's ladder coverage (or working-strength purity) minus random's, seed by seed, (mean, std)
    overall ("all") and per domain, "text_purity_share": {"all" and per domain: NoiseCLR's mean
    working-strength purity over the text ceiling's}, "clear": {domain: whether both the coverage
    and the purity margin are at least CLEAR_MARGIN and above their spread}, "text_margin": {"ladder" |
    "purity": {domain: the text ceiling's value minus random's, for each of random's seeds, (mean,
    std), and "sized": the coverage margin against random sets of the words' size}}, "text_clear" and
    "text_sized_clear": {domain: the same rule applied to the words, against either floor}; per domain
    "directions" for text and random and random's "words_sized_floor" per seed, "peer_gap": {peer:
    {"ladder" | "in_domain" | "purity": {"all" and per domain: NoiseCLR's mean over seeds minus the
    peer's}}} for every method beyond NoiseCLR, random and text on every rung, "peer_margin": the same
    gaps seed by seed, (mean, std), for the peers in SAME_INIT_PEERS}.  The text ceiling has one
    run (seed None).
    """
    report = rungs[0][1]
    methods = [m for m in METHODS if all(m in r["settings"]["methods"] for _, r in rungs)]
    seeds = report["settings"]["seeds"]
    keys = [rung_key(r) for _, r in rungs]
    several = len({window for _, window in keys}) > 1
    out = {"targets": [target for target, _ in keys], "windows": [list(window) for _, window in keys],
           "labels": [rung_label(target, window, several) for target, window in keys], "domains": {}, "overall": {}}
    for domain in report["settings"]["domains"]:
        names = get_domain(domain).attribute_names
        out["domains"][domain] = {}
        scores_of = {}
        for method in methods:
            method_seeds = seeds if method in SEEDED else [None]
            rung_scores = scores_of[method] = [[_scores(r, domain, method, seed) for _, r in rungs]
                                               for seed in method_seeds]
            per_rung = [[summary(per_seed[k], domain)["coverage"] for per_seed in rung_scores] for k in range(len(rungs))]
            climbed = [[s for scores in per_seed for s in scores] for per_seed in rung_scores]
            working = [working_strength_scores(per_seed, targets=out["targets"]) for per_seed in rung_scores]
            every = [summary(scores, domain) for scores in climbed]
            kept = [in_domain_coverage(scores, domain) for scores in climbed]
            unread = sum(s.domain_kept is None for scores in climbed for s in scores)
            out["domains"][domain][method] = {
                "seeds": method_seeds, "rungs": per_rung,
                "ladder": [c["coverage"] for c in every], "in_domain": [share for share, _ in kept],
                "covered": {a: sum(a in c["covered"] for c in every) for a in names},
                "covered_in_domain": {a: sum(a in covered for _, covered in kept) for a in names},
                "unread": unread, "scores": sum(map(len, climbed)),
                "purity": [statistics.mean(s.purity for s in picked) for picked, _ in working],
                "read_purity": [[s.purity for picked, at in working for s, rung in zip(picked, at) if rung == k]
                                for k in range(len(rungs))]}
        # the floor for a set as small as the words: what that many of random's tokens cover over
        # the ladder on average (a token covers an attribute if it does at some rung)
        n_words = len(scores_of["text"][0][0])
        over_ladder = [[set().union(*covers)
                        for covers in zip(*(direction_coverage(scores, domain) for scores in per_seed))]
                       for per_seed in scores_of["random"]]
        out["domains"][domain]["text"]["directions"] = n_words
        out["domains"][domain]["random"]["directions"] = len(scores_of["random"][0][0])
        out["domains"][domain]["random"]["words_sized_floor"] = words_sized_floor(over_ladder, n_words, domain)
    domains = list(out["domains"])
    for method in methods:
        rows = [out["domains"][d][method] for d in domains]
        runs = range(len(rows[0]["seeds"]))
        per_seed = {key: [statistics.mean(row[key][i] for row in rows) for i in runs]
                    for key in ("ladder", "in_domain", "purity")}
        out["overall"][method] = {
            "rungs": [_mean_std([statistics.mean(row["rungs"][k][i] for row in rows) for i in runs])
                      for k in range(len(rungs))],
            "ladder": _mean_std(per_seed["ladder"]), "in_domain": _mean_std(per_seed["in_domain"]),
            "purity": _mean_std(per_seed["purity"]), "per_seed": per_seed["ladder"],
            "per_seed_in_domain": per_seed["in_domain"], "per_seed_purity": per_seed["purity"]}
    paired = lambda a, b: _mean_std([x - y for x, y in zip(a, b)])  # noqa: E731

    def minus_seed_by_seed(other: str) -> dict:
        """NoiseCLR minus ``other``, seed by seed, (mean, std): {measure: {"all" and per domain}}."""
        return {key: {"all": paired(out["overall"]["NoiseCLR"][seed_key], out["overall"][other][seed_key]),
                      **{d: paired(out["domains"][d]["NoiseCLR"][key], out["domains"][d][other][key])
                         for d in domains}}
                for key, seed_key in (("ladder", "per_seed"), ("in_domain", "per_seed_in_domain"),
                                      ("purity", "per_seed_purity"))}

    over_random = minus_seed_by_seed("random")
    out["margin"], out["margin_in_domain"], out["margin_purity"] = (
        over_random["ladder"], over_random["in_domain"], over_random["purity"])
    share = lambda mine, text: mine / text if text > 0 else float("nan")  # noqa: E731
    out["text_purity_share"] = {
        "all": share(out["overall"]["NoiseCLR"]["purity"][0], out["overall"]["text"]["purity"][0]),
        **{d: share(statistics.mean(out["domains"][d]["NoiseCLR"]["purity"]), out["domains"][d]["text"]["purity"][0])
           for d in domains}}
    out["clear"] = {d: is_clear(out["margin"][d], out["margin_purity"][d]) for d in domains}
    # The same rule for the words against the same floor: where even the supervised ceiling cannot
    # clear it, the bar is measuring how high random tokens reach on this model, not a method. The
    # words' one run (seed None) is paired with each of random's seeds, so the spread is random's.
    out["text_margin"] = {key: {d: margin_over_each(out["domains"][d]["text"][key][0], out["domains"][d]["random"][key])
                                for d in domains}
                          for key in ("ladder", "purity")}
    out["text_clear"] = {d: is_clear(out["text_margin"]["ladder"][d], out["text_margin"]["purity"][d]) for d in domains}
    # and against random sets of the words' size (a subset's mean purity is the set's: the same purity margin)
    out["text_margin"]["sized"] = {d: margin_over_each(out["domains"][d]["text"]["ladder"][0],
                                                       out["domains"][d]["random"]["words_sized_floor"])
                                   for d in domains}
    out["text_sized_clear"] = {d: is_clear(out["text_margin"]["sized"][d], out["text_margin"]["purity"][d])
                               for d in domains}
    # the unsupervised peers on the same rungs (h-space, InfoNCE): differences of the means over
    # seeds for every peer, and seed by seed for InfoNCE, whose seed s starts from NoiseCLR's
    # seed-s rows on the same image draws (h-space's seed only draws the images its PCA reads)
    out["peer_gap"] = {
        peer: {key: {"all": out["overall"]["NoiseCLR"][key][0] - out["overall"][peer][key][0],
                     **{d: statistics.mean(out["domains"][d]["NoiseCLR"][key])
                        - statistics.mean(out["domains"][d][peer][key]) for d in domains}}
               for key in ("ladder", "in_domain", "purity")}
        for peer in methods if peer not in REQUIRED_METHODS}
    out["peer_margin"] = {peer: minus_seed_by_seed(peer) for peer in out["peer_gap"] if peer in SAME_INIT_PEERS}
    return out


def attribute_sizes(domains, images: int = SIZE_IMAGES) -> dict:
    """{domain: {attribute: (median, 10th percentile, 90th percentile)}} of
    :func:`attribute_pixel_change`, in [0, 1] pixel units."""
    sizes = {}
    for domain in domains:
        sizes[domain] = {}
        for attribute in get_domain(domain).attribute_names:
            changes = sorted(attribute_pixel_change(domain, attribute, images=images))
            sizes[domain][attribute] = (statistics.median(changes), changes[len(changes) // 10],
                                        changes[(9 * len(changes)) // 10])
    return sizes


def _cells(values) -> str:
    return _pm(_mean_std(values), sign="")


PURITY_HEAD = "mean purity at the working strength"


def _read_at_sentence(result: dict) -> str:
    # The purity of the directions read at each rung shows where a method's working-strength
    # purity comes from: a rung that one method reaches and another does not (late-window edits
    # at 0.15) compares a strong edit with a faint, purer one.
    parts = []
    for method in result["overall"]:
        read = [[p for d in result["domains"] for p in result["domains"][d][method]["read_purity"][k]]
                for k in range(len(result["targets"]))]
        counts = " / ".join(str(len(purities)) for purities in read)
        purities = " / ".join(f"{statistics.mean(p):.2f}" if p else "-" for p in read)
        parts.append(f"{method} {counts} (purity {purities})")
    return ("Directions read at each rung (" + " / ".join(_labels(result)) + ", over every "
            "domain and seed), and their mean purity there: " + "; ".join(parts) + ".")


def bars_section(result: dict) -> list[str]:
    """The issue's bars read on the ladder: coverage over it, purity at the working strength, and
    the clear margin over random in every domain (both margins >= CLEAR_MARGIN and above their
    spread), with the words held to the same rule beside NoiseCLR."""
    mine = result["overall"]["NoiseCLR"]
    rows = [("coverage of all attributes, over the ladder", mine["ladder"][0], BARS["coverage"]),
            ("mean purity at the working strength", mine["purity"][0], BARS["mean_purity"]),
            ("purity as a share of the text ceiling's", result["text_purity_share"]["all"], BARS["text_purity_share"])]
    lines = ["## The issue's bars on the ladder", "", "| bar | NoiseCLR | at least | met? |", "|---|---|---|---|"]
    lines += [f"| {bar} | {value:.2f} | {goal} | {'yes' if value >= goal else f'**no** (short by {goal - value:.2f})'} |"
              for bar, value, goal in rows]
    lines += ["", f"| domain | coverage margin over random | purity margin over random | clear (both >= {CLEAR_MARGIN} "
                  f"and above their spread)? | purity / text purity |", "|---|---|---|---|---|"]
    lines += [f"| {d} | {_pm(result['margin'][d])} | {_pm(result['margin_purity'][d])} | "
              f"{'yes' if result['clear'][d] else '**no**'} | {result['text_purity_share'][d]:.2f} |"
              for d in result["domains"]]
    if "text_clear" in result:  # ladders written before the words were held to the rule lack it
        sized = "text_sized_clear" in result
        lines += ["", "### The words against the floor", ""] + words_rule_lines({
            d: {"coverage": result["text_margin"]["ladder"][d], "purity": result["text_margin"]["purity"][d],
                "clear": result["text_clear"][d],
                **({"sized_coverage": result["text_margin"]["sized"][d], "sized_clear": result["text_sized_clear"][d],
                    "words": result["domains"][d]["text"]["directions"],
                    "tokens": result["domains"][d]["random"]["directions"]} if sized else {})}
            for d in result["domains"]})
    return lines + [""]


def _by_measure(values: dict, domains, cell: Callable) -> str:
    """One peer comparison in words: "coverage over the ladder overall C (face C, ...); in domain ...;
    purity at the working strength ...", each C written by ``cell`` from ``values[measure][domain]``."""
    return "; ".join(f"{what} overall {cell(values[key]['all'])} ("
                     + ", ".join(f"{d} {cell(values[key][d])}" for d in domains) + ")"
                     for key, what in (("ladder", "coverage over the ladder"), ("in_domain", "in domain"),
                                       ("purity", "purity at the working strength")))


def _labels(result: dict) -> list[str]:
    """Each rung's name (ladders written before windows were rungs have only ``targets``)."""
    return result.get("labels") or [f"{t:g}" for t in result["targets"]]


def markdown(result: dict) -> str:
    """The Markdown page of a ladder (``ladder[-tag].md``)."""
    targets, sizes, labels = result["targets"], result["sizes"], _labels(result)
    several = len({tuple(w) for w in result.get("windows", [])}) > 1
    rung_heads = " | ".join(f"at {label}" for label in labels)
    kept = f"over the ladder, in domain (>= {KEPT_MIN:g})"
    lines = [f"# Coverage over a ladder of edit strengths{' and windows' if several else ''} ({', '.join(labels)})", "",
             f"Made {result['date']} by `benchmarks/ladder.py` from {len(targets)} reports that scored the same "
             f"directions (weights {result['weights']}, seeds {result['seeds']}) at different target pixel "
             f"changes{' and in different edit windows (start:end of the schedule)' if several else ''}: "
             + ", ".join(f"[`{stem}`]({stem}.md) at {label} (scales searched in {bracket})"
                         for stem, label, bracket in zip(result["reports"], labels, result["brackets"]))
             + ". An attribute is covered over the ladder when some direction covers it (strength >= 0.5, "
               "purity >= 0.6) at some rung; every method climbs the same rungs. \"In domain\" counts only the "
               f"covering edits that the oracle still reads as the starting domain in at least {KEPT_MIN:.0%} of the "
               "images at +s and -s: strong edits can cover an attribute by turning a painting into a car. Mean ± "
               "std over seeds (text: one run).", "", "## Overall", "",
             f"| method | {rung_heads} | over the ladder | {kept} | {PURITY_HEAD} |",
             "|---|" + "---|" * (len(targets) + 3)]
    for method, row in result["overall"].items():
        lines.append(f"| {method} | " + " | ".join(_pm(c, sign="") for c in row["rungs"])
                     + f" | **{_pm(row['ladder'], sign='')}** | **{_pm(row['in_domain'], sign='')}** | "
                       f"{_pm(row['purity'], sign='')} |")
    for key, what in (("margin", "over the ladder"), ("margin_in_domain", "in domain")):
        margin = result[key]
        lines += ["", f"NoiseCLR's coverage minus random's, {what}, seed by seed: overall {_pm(margin['all'])}; "
                  + ", ".join(f"{d} {_pm(margin[d])}" for d in result["domains"]) + "."]
    lines += ["", "NoiseCLR's purity at the working strength minus random's, seed by seed: overall "
              f"{_pm(result['margin_purity']['all'])}; "
              + ", ".join(f"{d} {_pm(result['margin_purity'][d])}" for d in result["domains"]) + ".",
              "", f"The working strength of a direction is the weakest rung at which its largest effect reaches "
              f"{STRENGTH_MIN:g} (its strongest rung if none does); a slider user stops there"
              + ("; with two windows at one strength, the purer of those where it shows there (if it never "
                 "shows: the strongest strength, in the window where its largest effect is largest). "
                 if several else ". ")
              + _read_at_sentence(result), ""]
    for peer, gap in result.get("peer_gap", {}).items():
        pairing = ("seed by seed below" if peer in result.get("peer_margin", {})
                   else "which are not paired as NoiseCLR's and random's are")
        lines += [f"NoiseCLR's mean minus {peer}'s (means over seeds, {pairing}): "
                  + _by_measure(gap, result["domains"], lambda value: f"{value:+.2f}") + ".", ""]
    for peer, margin in result.get("peer_margin", {}).items():
        lines += [f"NoiseCLR minus {peer}, seed by seed ({peer} starts from NoiseCLR's rows and image draws of "
                  f"the same seed): " + _by_measure(margin, result["domains"], _pm) + ".", ""]
    lines += bars_section(result)
    unread = [f"{method} in {domain} {row['unread']} of {row['scores']}" for domain, methods in result["domains"].items()
              for method, row in methods.items() if row.get("unread")]
    if unread:
        lines += [f"**Unread domain:** some scores predate the oracle's domain reading (`domain_kept`) and count as "
                  f"kept, so \"in domain\" is only an upper bound there: {'; '.join(unread)}. Re-score those "
                  f"reports' units (delete their cache entries) to read it.", ""]
    for domain, methods in result["domains"].items():
        names = get_domain(domain).attribute_names
        lines += [f"## {domain}", "", f"| method | {rung_heads} | over the ladder | {kept} | {PURITY_HEAD} | "
                  + " | ".join(names) + " |", "|---|" + "---|" * (len(targets) + 3 + len(names))]
        for method, row in methods.items():
            n = len(row["seeds"])
            counts = [f"{row['covered'][a]}/{n}" + (f" ({row['covered_in_domain'][a]})"
                                                    if row["covered_in_domain"][a] != row["covered"][a] else "")
                      for a in names]
            lines.append(f"| {method} | " + " | ".join(_cells(c) for c in row["rungs"])
                         + f" | {_cells(row['ladder'])} | {_cells(row['in_domain'])} | {_cells(row['purity'])} | "
                         + " | ".join(counts) + " |")
        lines += ["", "Attribute columns: in how many seeds the method covers the attribute over the ladder (in "
                      "brackets where fewer of them keep the domain).", ""]
    lines += ["## How many pixels each attribute takes", "",
              f"Mean absolute pixel change between a render and the same render with one attribute flipped "
              f"(`noiseclr_lite.toyworld.domains.attribute_pixel_change`, {result['size_images']} label sets each; median, "
              f"10th-90th percentile). An edit that flips an attribute on the half of a balanced image set that "
              f"lacks it changes the pixels by half this, so an attribute fits the rung nearest half its size.", "",
              "| domain | attribute | pixel change of a flip | half of it |", "|---|---|---|---|"]
    for domain, attributes in sizes.items():
        for attribute, (median, low, high) in attributes.items():
            lines.append(f"| {domain} | {attribute} | {median:.3f} ({low:.3f}-{high:.3f}) | {median / 2:.3f} |")
    return "\n".join(lines) + "\n"


def ladder_report(names, out_dir: str | os.PathLike = RESULTS, tag: str = "",
                  log: Callable[[str], None] = print, size_images: int = SIZE_IMAGES) -> dict:
    """Read the rungs (:func:`load_rungs`), climb them (:func:`ladder`), measure the attributes'
    pixel sizes (:func:`attribute_sizes`, ``size_images`` renders each), write
    ``ladder[-tag].md/.json`` into ``out_dir`` and return the result."""
    out_dir = Path(out_dir)
    rungs = load_rungs(names, out_dir)
    first = rungs[0][1]
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "weights": first.get("weights"),
              "seeds": first["settings"]["seeds"], "reports": [report_stem(path) for path, _ in rungs],
              "brackets": [_scale_bracket(r["settings"].get("min_scale", 0.0), r["settings"]["max_scale"])
                           for _, r in rungs],
              **ladder(rungs), "sizes": attribute_sizes(first["settings"]["domains"], size_images),
              "size_images": size_images}
    stem = "ladder" + (f"-{tag}" if tag else "")
    out_dir.mkdir(parents=True, exist_ok=True)  # rungs given as paths may live elsewhere
    write_atomically(out_dir / f"{stem}.json", json.dumps(result, indent=1))
    write_atomically(out_dir / f"{stem}.md", markdown(result))
    overall = ", ".join(f"{m} {row['ladder'][0]:.2f} ({row['in_domain'][0]:.2f} in domain)"
                        for m, row in result["overall"].items())
    log(f"wrote {out_dir / stem}.md and .json: coverage over the ladder {overall}")
    return result


def main(argv=None) -> dict:
    """``python benchmarks/ladder.py REPORT REPORT [...] [--tag TAG] [--out DIR]``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", help="quality reports (.json.gz paths or --tag names), one per target change "
                                              "and edit window")
    p.add_argument("--out", default=str(RESULTS), help="folder of the reports and the output (default: %(default)s)")
    p.add_argument("--tag", default="", help="name the outputs ladder-TAG.md/.json")
    args = p.parse_args(argv)
    return ladder_report(args.reports, args.out, args.tag)


if __name__ == "__main__":
    main()
