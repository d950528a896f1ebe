"""Which variant of the loss would choose the model's own words?  A screen of objectives on the vocabulary.

    python benchmarks/objectives.py --tag alone
    python benchmarks/objectives.py --context caption --tag caption

``vocabulary.py`` evaluates the official loss exactly over every piece of the tokenizer's vocabulary
and finds that it does not choose the words the model's captions taught it ("smiling", "striped",
the quality benchmark's supervised ceiling): the purity gap belongs to the objective.  This script
asks the same of the loss's variants that training already offers, from the same cached edit
features (``vocabulary.domain_features``), in seconds per variant instead of the hours of training
and scoring a variant costs in ``quality.py``.  These are training's options (``quality.py`` and the
library's ``TrainConfig``), here chosen with ``--objectives``:

* the temperature (training's ``--tau``);
* sign-blind negatives (training's ``--sign-blind-negatives``: ``|cos|``, so opposite edits are bad
  negatives);
* the standard InfoNCE form (training's ``--loss infonce``);
* centred edits (training's ``--center-edits``: each edit minus the mean over the set's directions).
  Two centred edits are always opposite, so a centred set is scored from three pieces on, as
  training refuses fewer: its first two pieces are those the same loss without centring chooses;
* the denoising-gain term (training's ``--gain-weight``, ours): ``W`` times
  :func:`noiseclr_lite.loss.denoising_gain_loss`, which asks each direction to explain some images
  better than the reference prompt.  It needs the reference's residuals on the features' own noisy
  images (:func:`domain_residuals`, a few seconds per domain).  ``+share=S`` scores each direction's
  gain on that share of the images (training's ``--gain-top-share``, 0.25 by default) and
  ``+two-sided`` by the better end of the slider on each (training's ``--gain-two-sided``).

An objective is written ``LOSS[+sign-blind][+centred][+gain=W[+share=S][+two-sided]]:TAU``, for
example ``noiseclr:0.1`` (the recipe), ``noiseclr+centred:0.1``, ``noiseclr+gain=10:0.1`` or
``noiseclr+gain=30+share=1+two-sided:0.1``.  Each is the library's own loss
(:func:`noiseclr_lite.loss.get_loss`, every direction an anchor) on the set's edit features at each
timestep, averaged over the timesteps (:func:`objective_loss`).  For each objective and domain, with
no labels:

* ``-k`` pieces chosen greedily (``vocabulary.greedy_selection``, from the most consistent piece):
  how many are whole words, and how many the domain's own words, against chance among whole words;
* the loss of the domain's own words as one set, against ``--draws`` random sets of as many whole
  words: the share of draws the words beat (1.0: the objective prefers the words to every draw).

The objectives that training has measured give the screen a check: if it ranks them as training's
scores do, it can screen a new variant before it is trained (``quality-findings.md``, "Screening the
loss's variants on the vocabulary").  Writes ``results/objectives[-tag].md`` and ``.json``.  The
features come from ``vocabulary.py``'s cache, when it is there, or are measured as it
measures them, about 3.5 minutes per domain on 2 CPU cores (``--no-resume`` measures them again);
each objective then takes about 8 s per domain.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/objectives.py` from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.quality import (DEFAULT_SAMPLES, RESULTS, direction_context, machine,  # noqa: E402
                                write_atomically)
from benchmarks.vocabulary import (DOMAINS, EditCosines, _check_ids, _pieces, _summary,  # noqa: E402
                                   add_feature_arguments, context_phrase, domain_features, domain_pictures,
                                   greedy_selection, pipeline_from_args, random_set_losses, word_indexes)
from noiseclr_lite.loss import LOSSES, center_edit_features, denoising_gain_loss, get_loss  # noqa: E402
from noiseclr_lite.train import CONSISTENCY_TIMESTEPS, TrainConfig, vocabulary_rows  # noqa: E402

TOOL = "benchmarks/objectives.py"
#: the recipe, the temperatures training has measured, and each option of the loss at the recipe's `tau`
DEFAULT_OBJECTIVES = ("noiseclr:0.1", "noiseclr:0.05", "noiseclr:0.5", "noiseclr:2", "noiseclr+sign-blind:0.1",
                      "noiseclr+sign-blind:0.5", "infonce:0.1", "noiseclr+centred:0.1")
_SPEC = re.compile(r"^(?P<loss>[a-z]+)(?P<options>(?:\+[a-z-]+(?:=[0-9.]+(?:[eE][+-]?[0-9]+)?)?)*)"
                   r":(?P<tau>[0-9.eE+-]+)$")
#: the share of the images each piece's denoising gain is scored on: training's default
GAIN_TOP_SHARE = TrainConfig.gain_top_share
_OPTION = re.compile(r"\+[a-z-]+(?:=[0-9.]+(?:[eE][+-]?[0-9]+)?)?")
#: every option an objective takes: (its name, whether it is given without a value)
_OPTIONS = {("sign-blind", True), ("centred", True), ("gain", False), ("share", False), ("two-sided", True)}


def _fail(message: str):
    raise SystemExit(f"{TOOL}: {message}")


@dataclasses.dataclass(frozen=True)
class Objective:
    """One variant of the loss: ``loss`` (a name in ``noiseclr_lite.loss.LOSSES``) at temperature
    ``tau``, with sign-blind negatives and on centred edits or not, and with the denoising-gain term
    at weight ``gain`` (0: none), scored on the share ``gain_share`` of the images, one-sided or
    ``two_sided``, as training's options set them."""

    loss: str = "noiseclr"
    tau: float = 0.1
    sign_blind: bool = False
    centred: bool = False
    gain: float = 0.0
    gain_share: float = GAIN_TOP_SHARE
    two_sided: bool = False

    @classmethod
    def parse(cls, spec: str) -> "Objective":
        """From ``LOSS[+sign-blind][+centred][+gain=W[+share=S][+two-sided]]:TAU``, e.g.
        ``noiseclr+centred:0.1`` or ``noiseclr+gain=10+share=0.5:0.1``; SystemExit naming what is
        wrong otherwise."""
        match = _SPEC.match(spec)
        if not match:
            _fail(f"objective {spec!r}: write LOSS[+sign-blind][+centred][+gain=W[+share=S][+two-sided]]:TAU, "
                  f"e.g. noiseclr:0.1 or noiseclr+gain=10:0.1")
        if match["loss"] not in LOSSES:
            _fail(f"objective {spec!r}: unknown loss {match['loss']!r}; choose one of {sorted(LOSSES)}")
        # each "+name" or "+name=value" (a value may hold a "+" of its own: 1e+2)
        given = [option.group(0)[1:].partition("=") for option in _OPTION.finditer(match["options"])]
        options = {name: value if equals else None for name, equals, value in given}
        unknown = sorted(name + equals + value for name, equals, value in given if (name, not equals) not in _OPTIONS)
        if unknown:
            _fail(f"objective {spec!r}: unknown option(s) {unknown}; the options are +sign-blind, +centred, "
                  f"+gain=W (W the term's weight), and with it +share=S (S in (0, 1]) and +two-sided")
        if len(options) < len(given):
            _fail(f"objective {spec!r}: an option is given twice; give each of +sign-blind, +centred, +gain=W, "
                  f"+share=S and +two-sided once")
        if ("share" in options or "two-sided" in options) and "gain" not in options:
            _fail(f"objective {spec!r}: +share and +two-sided shape the gain term; give its weight too (+gain=W)")
        gain_weight = _positive(options["gain"], spec, "the gain term's weight") if "gain" in options else 0.0
        share = (_positive(options["share"], spec, "the gain's share (of the images scored, in (0, 1])")
                 if "share" in options else GAIN_TOP_SHARE)
        tau = _positive(match["tau"], spec, "the temperature")
        try:
            return cls(match["loss"], tau, "sign-blind" in options, "centred" in options, gain_weight, share,
                       "two-sided" in options)
        except ValueError as error:
            _fail(f"objective {spec!r}: {error}")

    def __post_init__(self):
        # what a spec cannot say is refused, so that every objective's name reads back as itself
        if not 0 < self.gain_share <= 1:
            raise ValueError(f"the gain's share is the share of the images scored, in (0, 1]; got {self.gain_share:g}")
        if not self.gain and (self.two_sided or self.gain_share != GAIN_TOP_SHARE):
            raise ValueError(f"gain_share={self.gain_share:g}, two_sided={self.two_sided} shape the gain term, "
                             f"which is off (gain=0); give a gain weight or leave them at their defaults")

    @property
    def name(self) -> str:
        """The spec :meth:`parse` reads back, e.g. ``noiseclr+centred:0.1``: the page's row label."""
        options = "+sign-blind" * self.sign_blind + "+centred" * self.centred
        if self.gain:   # 12 digits: two weights, two names
            options += f"+gain={self.gain:.12g}"
            options += f"+share={self.gain_share:.12g}" if self.gain_share != GAIN_TOP_SHARE else ""
            options += "+two-sided" * self.two_sided
        return f"{self.loss}{options}:{self.tau:g}"


def _positive(text: str, spec: str, what: str) -> float:
    """``text`` as a positive finite number; SystemExit naming the spec and ``what`` otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < math.inf:
        _fail(f"objective {spec!r}: {what} must be a positive number; got {text!r}")
    return value


def objective_loss(objective: Objective, features: torch.Tensor, members,
                   residuals: torch.Tensor | None = None) -> float:
    """``objective``'s loss of the pieces ``members`` as one set of directions: the library's loss
    (every member an anchor) on their edit features at each timestep, plus, with a gain weight,
    that weight times ``denoising_gain_loss`` of the (uncentred) features, as training adds it;
    averaged over the timesteps.

    Args:
        objective: the loss, its temperature and options.
        features: [T, N, V, F] edit features (``vocabulary.vocabulary_features``).
        members: piece indexes into V, at least 2 (3 for a centred objective).
        residuals: [T, N, F] the reference's residuals on the same noisy images
            (:func:`domain_residuals`); needed with a gain weight only.
    Returns:
        The loss, lower is better (as ``noiseclr_loss`` or ``infonce_loss`` returns it).
    """
    members = list(members)
    if len(members) < 2:
        _fail(f"a set needs at least 2 pieces to contrast; got {len(members)}")
    if objective.centred and len(members) < 3:
        _fail(f"{objective.name}: a centred set needs at least 3 pieces; got {len(members)}, and two centred "
              f"edits are always opposite (training refuses --center-edits with fewer than 3 directions too)")
    if objective.gain and residuals is None:
        _fail(f"{objective.name}: the gain term needs the reference's residuals (domain_residuals)")
    loss_fn = get_loss(objective.loss)
    losses = []
    for t, edits in enumerate(features[:, :, members]):               # [N, S, F]
        contrasted = center_edit_features(edits) if objective.centred else edits
        loss = float(loss_fn(contrasted, tau=objective.tau, sign_blind=objective.sign_blind))
        if objective.gain:
            loss += objective.gain * float(denoising_gain_loss(edits, residuals[t], objective.gain_share,
                                                               objective.two_sided))
        losses.append(loss)
    return sum(losses) / len(losses)


def objective_result(objective: Objective, features: torch.Tensor, names: list[str], whole: list[int],
                     own: dict[str, int], first: int, k: int, draws: int, seed: int,
                     residuals: torch.Tensor | None = None) -> dict:
    """What the page says of one objective in one domain, from its pieces' ``features`` [T, N, V, F]:
    ``whole`` and ``own`` index the whole words and the domain's words (``vocabulary.word_indexes``),
    ``first`` is the most consistent piece, where the greedy choice starts.  A centred objective
    starts from the two pieces the same loss without centring chooses (:func:`objective_loss`
    scores centred sets from three pieces on)."""
    def loss_of(members):
        return objective_loss(objective, features, members, residuals)

    started = time.perf_counter()
    own_loss = loss_of(list(own.values()))
    whole_draws = random_set_losses(loss_of, whole, len(own), draws, torch.Generator().manual_seed(seed))
    start = [first]
    if objective.centred:
        uncentred = dataclasses.replace(objective, centred=False)
        start = greedy_selection(lambda members: objective_loss(uncentred, features, members, residuals),
                                 features.shape[2], 2, start)
    greedy = greedy_selection(loss_of, features.shape[2], k, start)
    return {"greedy": {"pieces": [names[i] for i in greedy], "whole": sum(i in whole for i in greedy),
                       "own": [names[i] for i in greedy if i in own.values()], "loss": loss_of(greedy)},
            # picks drawn at random among the whole words would hold this many of the domain's words
            "chance_own_among_whole": k * len(own) / len(whole),
            "own_loss": own_loss, "whole_draws": _summary(whole_draws),
            "own_below_whole": sum(own_loss < value for value in whole_draws) / draws,
            "seconds": time.perf_counter() - started}


def domain_residuals(pipe, samples: str | Path, domain: str, context: str = "alone", images: int = 12,
                     timesteps=CONSISTENCY_TIMESTEPS) -> torch.Tensor:
    """The reference prompt's residuals (``train.reference_residuals``) on the images and noise
    ``vocabulary.domain_features`` measures its features on, flattened as the features are.

    Args:
        pipe: the pipeline the features were measured with.
        samples: the folder holding ``<domain>/`` image folders.
        domain: whose images (the first ``images`` of ``samples/domain/``).
        context: ``"alone"`` or ``"caption"`` (``quality.CONTEXTS``): sets the reference prompt.
        timesteps: the features' timesteps (the noise is seeded by the timestep).
    Returns:
        [T, N, F] float32, F = 4 * h * w.
    """
    from noiseclr_lite.directions import Directions
    from noiseclr_lite.models import encode_images
    from noiseclr_lite.train import reference_residuals

    pictures = domain_pictures(pipe, samples, domain, images)
    reference = Directions.create(pipe, 1, prefix="residual-reference", context=direction_context(domain, context))
    return reference_residuals(pipe, reference, encode_images(pipe, pictures), timesteps).flatten(2)


def markdown(result: dict) -> str:
    """The page: one row per objective, the domains side by side, then every objective's picks."""
    settings, domains = result["settings"], list(result["domains"])
    used = context_phrase(settings["context"])
    lines = [f"# Which variant of the loss would choose the model's own words?"
             f"{' (' + result['tag'] + ')' if result.get('tag') else ''}", "",
             f"Written by `{TOOL}` on {result['date']}, {result['wall_seconds'] / 60:.1f} min on {result['machine']}.",
             f"Command: `{result['command']}`." if result["command"] else "", "",
             f"Every piece of the tokenizer's vocabulary ({result['pieces']} pieces, {result['whole_words']} of them "
             f"whole words), used {used} as a direction, on the first {settings['images']} training images "
             f"of each domain at t = "
             f"{', '.join(map(str, settings['timesteps']))} (`vocabulary.py`'s features). Each objective is the "
             f"library's loss, every direction an anchor, averaged over the timesteps. No labels are used; which "
             f"pieces are the domain's words is known from its attributes' phrases.", "",
             f"Per domain: how many of the {settings['k']} pieces the objective chooses greedily are the domain's "
             f"words, and the share of {settings['draws']} random sets of as many whole words that the words' own "
             f"set beats (1.00: the objective prefers the words to every draw). The last columns add the domains "
             f"up; chance is what picks drawn at random among the whole words would hold.", "",
             "| objective | " + " | ".join(domains) + " | the domain's words among the picks | chance | "
             "whole words among the picks | words beat, mean over domains |",
             "|---|" + "---|" * (len(domains) + 4)]
    for name, per_domain in result["objectives"].items():
        cells = [f"{len(r['greedy']['own'])} · {r['own_below_whole']:.2f}" for r in per_domain.values()]
        overall = result["overall"][name]
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {overall['own']} of {overall['chosen']} | "
                     f"{overall['chance']:.1f} | {overall['whole']} | {overall['own_below_whole']:.2f} |")
    lines += ["", "Each cell: the domain's words among the picks · the share of random word sets its words beat."]
    if any("+centred" in name for name in result["objectives"]):
        lines += ["", "A centred objective is scored from three pieces on (two centred edits are always opposite, "
                      "and training refuses fewer): its first two picks are those of the same loss without centring."]
    lines += [
              "", "## The picks", "", "| objective | domain | chosen greedily, in order | the domain's words | "
              "their loss / the words' loss |", "|---|---|---|---|---|"]
    for name, per_domain in result["objectives"].items():
        for domain, r in per_domain.items():
            lines.append(f"| `{name}` | {domain} | {_pieces(r['greedy']['pieces'])} | {_pieces(r['greedy']['own'])} "
                         f"| {r['greedy']['loss']:.3f} / {r['own_loss']:.3f} |")
    return "\n".join(lines) + "\n"


def objectives_report(pipe, objectives, samples: str | Path = DEFAULT_SAMPLES, out_dir: str | Path = RESULTS,
                      tag: str = "", domains=DOMAINS, context: str = "alone", images: int = 12,
                      timesteps=CONSISTENCY_TIMESTEPS, k: int = 10, draws: int = 50, seed: int = 0,
                      resume: bool = True, command: str = "", log=print) -> dict:
    """Screen every objective (:class:`Objective`) in every domain and write ``results/objectives[-tag].md``
    and ``.json``; returns the result.  The features are ``vocabulary.py``'s, from its cache when
    ``resume`` and they are there."""
    if not objectives:
        _fail("give at least one objective (--objectives)")
    if len({objective.name for objective in objectives}) < len(objectives):
        _fail(f"an objective is given twice in {[objective.name for objective in objectives]}; give each once")
    if not 2 <= k <= 100:
        _fail(f"-k {k}: choose between 2 and 100 pieces per domain (the loss contrasts at least two)")
    if draws < 1:
        _fail(f"--draws {draws}: draw at least 1 random set per domain (50 by default)")
    centred = [objective.name for objective in objectives if objective.centred]
    if centred and k < 3:
        _fail(f"-k {k}: {centred[0]} is scored from three pieces on (two centred edits are always opposite); "
              f"give -k 3 or more")
    ids = vocabulary_rows(pipe)[0]
    indexes = {domain: word_indexes(pipe, ids, domain) for domain in domains}   # before any UNet work
    for domain, (_, own) in indexes.items():
        if centred and len(own) < 3:
            _fail(f"this tokenizer writes {len(own)} of {domain}'s words as single pieces; {centred[0]} scores "
                  f"sets of three or more, so drop it from --objectives or the domain from --domains")
    names = pipe.tokenizer.convert_ids_to_tokens(ids)
    began = time.perf_counter()
    result = {"settings": {"context": context, "images": images, "timesteps": list(timesteps), "k": k,
                           "draws": draws, "seed": seed, "samples": str(samples)},
              "tag": tag, "date": time.strftime("%Y-%m-%d"), "machine": machine(pipe), "command": command,
              "pieces": len(ids), "whole_words": len(indexes[domains[0]][0]),
              "domains": {}, "objectives": {objective.name: {} for objective in objectives}}
    for domain in domains:
        started = time.perf_counter()
        feature_ids, features, from_cache = domain_features(pipe, samples, domain, context, images, timesteps,
                                                            out_dir, resume)
        _check_ids(feature_ids, ids, domain)
        first = int(EditCosines.of(features).consistency().argmax())   # where vocabulary.py's greedy choice starts
        residuals = (domain_residuals(pipe, samples, domain, context, images, timesteps)
                     if any(objective.gain for objective in objectives) else None)
        whole, own = indexes[domain]
        result["domains"][domain] = {"own_words": sorted(own), "first": names[first],
                                     "features_seconds": time.perf_counter() - started, "from_cache": from_cache}
        for objective in objectives:
            r = objective_result(objective, features, names, whole, own, first, k, draws, seed, residuals)
            result["objectives"][objective.name][domain] = r
            log(f"{domain} {objective.name}: {len(r['greedy']['own'])} of its words chosen, the words beat "
                f"{r['own_below_whole']:.2f} of random word sets ({r['seconds']:.0f} s)")
    result["overall"] = {name: {"chosen": k * len(domains), "own": sum(len(r["greedy"]["own"]) for r in rs.values()),
                                "whole": sum(r["greedy"]["whole"] for r in rs.values()),
                                "chance": sum(r["chance_own_among_whole"] for r in rs.values()),
                                "own_below_whole": sum(r["own_below_whole"] for r in rs.values()) / len(rs)}
                         for name, rs in result["objectives"].items()}
    result["wall_seconds"] = time.perf_counter() - began
    stem = "objectives" + (f"-{tag}" if tag else "")
    write_atomically(Path(out_dir) / f"{stem}.json", json.dumps(result, indent=1))
    write_atomically(Path(out_dir) / f"{stem}.md", markdown(result))
    return result


def parse_args(argv=None) -> argparse.Namespace:
    """The command line's options (``argv``: the arguments, ``sys.argv[1:]`` when None)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objectives", nargs="+", default=list(DEFAULT_OBJECTIVES),
                        help="LOSS[+sign-blind][+centred][+gain=W[+share=S][+two-sided]]:TAU each "
                             "(default: %(default)s)")
    add_feature_arguments(parser, "objectives")
    parser.add_argument("-k", type=int, default=10, help="pieces each objective chooses")
    parser.add_argument("--draws", type=int, default=50, help="random sets of words drawn per domain")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="measure the features again instead of reading vocabulary.py's cache")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Parse every objective, then run :func:`objectives_report` from the command line ``argv``;
    returns its result."""
    args = parse_args(argv)
    objectives = [Objective.parse(spec) for spec in args.objectives]   # before loading the model
    pipe = pipeline_from_args(args)
    return objectives_report(pipe, objectives, args.samples, args.out, args.tag, args.domains, args.context,
                             args.images, args.timesteps, args.k, args.draws, args.seed, args.resume,
                             command="python " + " ".join([TOOL, *sys.argv[1:]]) if argv is None else "")


if __name__ == "__main__":
    main()
