"""Does the official loss prefer the words' own axes to their mixtures?  A rotation check.

    python benchmarks/rotations.py --tag alone
    python benchmarks/rotations.py --context caption --tag caption

Each attribute of the bundled world has a word the model's captions taught it ("smiling",
"striped"), and a token that is that word makes a pure edit.  NoiseCLR's trained sets are no purer
than random tokens.  One reason it could be: the contrastive loss compares edits only by how alike
they are, and if a domain's pure edits are about orthogonal, any rotation of the set, whose edits
are then mixtures of attributes, tells its edits apart just as well.  This script checks it on the
words' edits, with no training:

* per domain, the words set: one word per attribute, the word that sets one value apart from the
  other (:func:`attribute_words`; the second value by default: ``smiling``, ``blond``, ``glasses``,
  ``dark`` for faces);
* a rotation ``R`` (S x S, orthogonal) mixes their edits linearly, ``D'_i = sum_j R_ij D_j`` at every
  timestep and image (:func:`rotate_edits`): what S tokens whose edits were mixtures of the words'
  edits would give;
* the official loss (:func:`noiseclr_lite.loss.noiseclr_loss`, every direction an anchor, averaged
  over the timesteps) of the words against ``--draws`` Haar-random rotations, and against the
  rotation that gradient descent from the identity finds with the lowest loss
  (:func:`optimise_rotation`), and, outside the registered reading, the mixing matrix it finds when
  the edits may take any share of each other, not only a rotation's;
* how close a rotation is to the words themselves (:func:`axis_alignment`): 1 for the words up to
  order and sign, ``1/S`` for an even mix.

``--sign-blind-negatives`` reads all of it with ``|cos|`` negatives, and ``--unit-edits`` scales
every word's edit to length 1 before mixing (the words' own loss is the same either way; a mixture
then weighs the words by its shares alone); neither is part of a5e8afc's reading (``--unit-edits``
was registered on its own, in 0a27bb3).

The reading of each (domain, context) cell was fixed before it ran (commit a5e8afc,
:func:`read_cell`).  The edit features are ``vocabulary.py``'s (its cache, when it is there, or
measured as it measures them, about 3.5 minutes per domain on 2 CPU cores); the rotations then take
seconds.  Writes ``results/rotations[-tag].md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/rotations.py` from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.quality import DEFAULT_SAMPLES, RESULTS, machine, write_atomically  # noqa: E402
from benchmarks.vocabulary import (DOMAINS, EditCosines, _summary, add_feature_arguments,  # noqa: E402
                                   context_phrase, domain_features, pipeline_from_args, word_indexes)
from noiseclr_lite.loss import noiseclr_loss  # noqa: E402
from noiseclr_lite.train import CONSISTENCY_TIMESTEPS, vocabulary_rows  # noqa: E402

TOOL = "benchmarks/rotations.py"
#: the reading's temperature (the best setting's) and the one reported beside it (the paper's)
READ_TAU, ALSO_TAU = 0.1, 0.5
#: a cell "prefers the axes" when the words beat this share of the Haar draws and the optimised
#: rotation stays this aligned; it "prefers mixtures" when the optimised rotation lowers the words'
#: loss by more than MIXTURE_GAIN with an alignment below MIXED (all fixed in commit a5e8afc)
AXES_SHARE, ALIGNED, MIXTURE_GAIN, MIXED = 0.95, 0.9, 0.01, 0.7


def _fail(message: str):
    raise SystemExit(f"{TOOL}: {message}")


def attribute_words(domain: str, value: int = 1) -> list[str]:
    """One word per attribute of ``domain``, in the oracle's order: the first word of the phrase of
    ``value`` (0 or 1) that the other value's phrase lacks, or the phrase's last word when it has none
    (``glasses`` against ``no glasses``).  Face, value 1: ``smiling``, ``blond``, ``glasses``, ``dark``;
    value 0: ``frowning``, ``black``, ``no``, ``light``."""
    from noiseclr_lite.toyworld.domains import get_domain

    if value not in (0, 1):
        _fail(f"value {value}: the bundled attributes are binary; give 0 or 1")
    words = []
    for name, phrases in get_domain(domain).attributes.items():
        other = set(phrases[1 - value].split())
        own = [word for word in phrases[value].split() if word not in other]
        words.append(own[0] if own else phrases[value].split()[-1])
    return words


def word_choices(domain: str) -> list[list[str]]:
    """Every set of one word per attribute (:func:`attribute_words` of either value, per attribute):
    2^A sets for A binary attributes, the second values' set last."""
    per_attribute = zip(attribute_words(domain, 0), attribute_words(domain, 1))
    return [list(choice) for choice in itertools.product(*per_attribute)]


def haar_rotations(size: int, draws: int, generator: torch.Generator) -> torch.Tensor:
    """[draws, size, size] orthogonal matrices drawn uniformly (Haar measure on O(size)): the Q of a
    Gaussian matrix's QR, its columns' signs fixed by R's diagonal so that the draw is uniform."""
    gaussian = torch.randn(draws, size, size, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def rotate_edits(edits: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Mix a set's edits: ``edits`` [T, N, S, F] and ``rotation`` [S, S] give [T, N, S, F] with
    ``out[..., i, :] = sum_j rotation[i, j] * edits[..., j, :]``."""
    if rotation.shape != (edits.shape[2], edits.shape[2]):
        _fail(f"a rotation of shape {tuple(rotation.shape)} cannot mix a set of {edits.shape[2]} edits; "
              f"give a {edits.shape[2]} x {edits.shape[2]} matrix")
    return torch.einsum("ij,tnjf->tnif", rotation.to(edits.dtype), edits)


def rotated_loss(edits: torch.Tensor, rotation: torch.Tensor, tau: float, sign_blind: bool = False) -> torch.Tensor:
    """The official loss (every direction an anchor) of the rotated set, averaged over the timesteps:
    a scalar tensor, differentiable in ``rotation``.  ``edits`` [T, N, S, F], ``rotation`` [S, S];
    ``sign_blind`` scores the negatives by ``|cos|`` (training's ``--sign-blind-negatives``)."""
    mixed = rotate_edits(edits, rotation)
    return torch.stack([noiseclr_loss(at_t, tau=tau, sign_blind=sign_blind) for at_t in mixed]).mean()


def axis_alignment(rotation: torch.Tensor) -> float:
    """How close ``rotation`` [S, S] is to a signed permutation: the mean over its rows, each scaled to
    length 1 (the loss reads only an edit's direction), of the largest squared entry: 1 for the words
    themselves (up to order, sign and size), ``1/S`` for an even mix."""
    rows = torch.nn.functional.normalize(rotation.double(), dim=1)
    return float((rows ** 2).max(dim=1).values.mean())


def matched_alignment(mixing: torch.Tensor) -> float:
    """:func:`axis_alignment` with each row held to its own word: the largest, over every way of giving
    the S rows S different columns, of the mean squared entry there (rows scaled to length 1).  A mixing
    matrix whose rows all lean on one word scores low here, where :func:`axis_alignment` would not;
    for a rotation near the words the two agree.  ``mixing`` [S, S], S <= 8 (every permutation is tried)."""
    size = mixing.shape[0]
    if size > 8:
        _fail(f"matched_alignment tries every permutation of {size} rows; give at most 8 directions")
    rows = torch.nn.functional.normalize(mixing.double(), dim=1) ** 2
    return max(float(rows[range(size), list(columns)].mean()) for columns in itertools.permutations(range(size)))


def optimise_rotation(edits: torch.Tensor, tau: float, steps: int = 300, learning_rate: float = 0.05,
                      orthogonal: bool = True, sign_blind: bool = False) -> tuple[torch.Tensor, list[float]]:
    """Gradient descent on the loss of ``edits`` [T, N, S, F] over rotations, from the identity (the
    words themselves): ``R = matrix_exp(A - A^T)`` with ``A`` learned by Adam, so ``R`` stays a proper
    rotation.  With ``orthogonal=False``, over every mixing matrix instead (``R = I + A``): each edit may
    then take any share of the others, not only the shares a rotation allows.  A local search: it
    finds the lowest loss near the words, not the lowest of all.

    Returns:
        (the matrix [S, S] with the lowest loss seen, float64; the loss at every step, the
        identity's first).
    """
    size = edits.shape[2]
    edits = edits.double()
    identity = torch.eye(size, dtype=torch.float64)
    generator_matrix = torch.zeros(size, size, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([generator_matrix], lr=learning_rate)
    best, best_loss, losses = identity, float("inf"), []
    for _ in range(steps + 1):
        rotation = (torch.linalg.matrix_exp(generator_matrix - generator_matrix.T) if orthogonal
                    else identity + generator_matrix)
        loss = rotated_loss(edits, rotation, tau, sign_blind)
        losses.append(float(loss.detach()))
        if losses[-1] < best_loss:
            best, best_loss = rotation.detach().clone(), losses[-1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return best, losses


def mean_cosines(edits: torch.Tensor) -> dict:
    """What the loss reads of a set's edits [T, N, S, F]: the mean cosine of one direction's edits on two
    different images (``positives``) and of two directions' edits on one image (``negatives``)."""
    cosines = EditCosines.of(edits)
    images, size = edits.shape[1], edits.shape[2]
    other_image, other_direction = ~torch.eye(images, dtype=torch.bool), ~torch.eye(size, dtype=torch.bool)
    return {"positives": float(cosines.across_images[..., other_image].mean()),
            "negatives": float(cosines.across_pieces[..., other_direction].mean())}


def read_cell(cell: dict) -> str:
    """The registered reading of one (domain, context) cell at ``READ_TAU`` (commit a5e8afc):
    ``"prefers the axes"``, ``"prefers mixtures"`` or ``"indifferent"``."""
    if cell["words_beat"] >= AXES_SHARE and cell["optimised"]["alignment"] >= ALIGNED:
        return "prefers the axes"
    if cell["words_loss"] - cell["optimised"]["loss"] > MIXTURE_GAIN and cell["optimised"]["alignment"] < MIXED:
        return "prefers mixtures"
    return "indifferent"


def _share_above(loss: float, draw_losses: list[float]) -> float:
    """The share of the draws whose loss is above ``loss``: what the words beat (a5e8afc's reading)."""
    return sum(loss < value for value in draw_losses) / len(draw_losses)


def _words_and_draws(edits: torch.Tensor, tau: float, draws: int, seed: int,
                     sign_blind: bool) -> tuple[float, torch.Tensor, list[float]]:
    """The words' loss, ``draws`` Haar rotations [draws, S, S] (seeded by ``seed``) and their losses, of
    ``edits`` [T, N, S, F]."""
    identity = torch.eye(edits.shape[2], dtype=torch.float64)
    rotations = haar_rotations(edits.shape[2], draws, torch.Generator().manual_seed(seed))
    return (float(rotated_loss(edits, identity, tau, sign_blind)), rotations,
            [float(rotated_loss(edits, rotation, tau, sign_blind)) for rotation in rotations])


def cell_result(edits: torch.Tensor, tau: float, draws: int, seed: int, steps: int = 300,
                sign_blind: bool = False) -> dict:
    """The words set's loss against rotations of it, at ``tau``: ``edits`` [T, N, S, F] are the words'
    edit features.  ``words_beat`` is the share of the Haar draws whose loss is above the words'."""
    edits = edits.double()
    words_loss, rotations, draw_losses = _words_and_draws(edits, tau, draws, seed, sign_blind)
    best_draw = min(range(draws), key=draw_losses.__getitem__)
    optimised, trace = optimise_rotation(edits, tau, steps, sign_blind=sign_blind)
    mixing, mixing_trace = optimise_rotation(edits, tau, steps, orthogonal=False, sign_blind=sign_blind)
    return {"tau": tau, "words_loss": words_loss, "words_cosines": mean_cosines(edits),
            "draws": _summary(draw_losses), "words_beat": _share_above(words_loss, draw_losses),
            "best_draw": {"loss": draw_losses[best_draw], "alignment": axis_alignment(rotations[best_draw])},
            "draws_alignment": _summary([axis_alignment(rotation) for rotation in rotations]),
            "optimised": {"loss": min(trace), "alignment": axis_alignment(optimised),
                          "matched_alignment": matched_alignment(optimised),
                          "rotation": [[round(float(x), 4) for x in row] for row in optimised]},
            # not part of the registered reading: any mixing matrix, not only rotations
            "any_mixing": {"loss": min(mixing_trace), "alignment": axis_alignment(mixing),
                           "matched_alignment": matched_alignment(mixing),
                           "cosines": mean_cosines(rotate_edits(edits, mixing)),
                           "matrix": [[round(float(x), 4) for x in row] for row in mixing]}}


def _word_edits(features: torch.Tensor, index: dict[str, int], words: list[str], unit: bool) -> torch.Tensor:
    """The edits [T, N, S, F] (float64) of ``words`` among ``features`` [T, N, V, F]; with ``unit``, each
    at length 1, so that a mixture weighs the words by its shares alone: a word whose edits are larger
    would otherwise set a mixture's direction whatever its share.  The loss of the words themselves
    reads only directions, so it is the same either way."""
    edits = features[:, :, [index[word] for word in words]].double()
    return torch.nn.functional.normalize(edits, dim=-1) if unit else edits


def words_in_features(pipe, ids: list[int], domain: str) -> dict[str, int]:
    """``{word: index}`` among the pieces ``ids`` of every word :func:`word_choices` can take for
    ``domain``.  SystemExit if the tokenizer does not write each as one piece."""
    own = word_indexes(pipe, ids, domain)[1]
    missing = sorted({word for choice in word_choices(domain) for word in choice} - set(own))
    if missing:
        _fail(f"{domain}: the tokenizer does not write {missing} as single pieces; the check mixes one "
              f"piece per attribute, so it needs the bundled model's tokenizer (or one with the same words)")
    return own


def rotations_report(pipe, samples: str | Path = DEFAULT_SAMPLES, out_dir: str | Path = RESULTS, tag: str = "",
                     domains=DOMAINS, context: str = "alone", images: int = 12, timesteps=CONSISTENCY_TIMESTEPS,
                     draws: int = 1000, choice_draws: int = 200, seed: int = 0, steps: int = 300,
                     resume: bool = True, sign_blind: bool = False, unit_edits: bool = False, command: str = "",
                     log=print) -> dict:
    """Check every domain and write ``results/rotations[-tag].md`` and ``.json``; returns the result.

    For each domain: the second values' words (:func:`cell_result` at ``READ_TAU``, read by
    :func:`read_cell`, and at ``ALSO_TAU``), and every choice of one word per attribute
    (:func:`word_choices`) against ``choice_draws`` Haar draws at ``READ_TAU``; with ``sign_blind``,
    of the loss with sign-blind negatives; with ``unit_edits``, of every word's edit scaled to length 1
    on each image and timestep before mixing (neither is part of a5e8afc's reading)."""
    if draws < 1 or choice_draws < 1:
        _fail(f"--draws {draws} / --choice-draws {choice_draws}: draw at least 1 rotation")
    if steps < 1:
        _fail(f"--steps {steps}: take at least 1 gradient step over rotations (300 by default)")
    ids = vocabulary_rows(pipe)[0]
    indexes = {domain: words_in_features(pipe, ids, domain) for domain in domains}   # before any UNet work
    began = time.perf_counter()
    result = {"settings": {"context": context, "images": images, "timesteps": list(timesteps), "draws": draws,
                           "choice_draws": choice_draws, "seed": seed, "steps": steps, "sign_blind": sign_blind,
                           "unit_edits": unit_edits, "samples": str(samples)},
              "tag": tag, "date": time.strftime("%Y-%m-%d"), "machine": machine(pipe), "command": command,
              "domains": {}}
    for domain in domains:
        started = time.perf_counter()
        feature_ids, features, from_cache = domain_features(pipe, samples, domain, context, images, timesteps,
                                                            out_dir, resume)
        if feature_ids != ids:
            _fail(f"the cached features of {domain} are of another vocabulary; measure them again (--no-resume)")
        words = attribute_words(domain, 1)
        edits = _word_edits(features, indexes[domain], words, unit_edits)
        cells = {f"{tau:g}": cell_result(edits, tau, draws, seed, steps, sign_blind) for tau in (READ_TAU, ALSO_TAU)}
        choices = []
        for choice in word_choices(domain):
            choice_edits = _word_edits(features, indexes[domain], choice, unit_edits)
            loss, _, draw_losses = _words_and_draws(choice_edits, READ_TAU, choice_draws, seed, sign_blind)
            choices.append({"words": choice, "words_loss": loss, "words_beat": _share_above(loss, draw_losses)})
        reading = read_cell(cells[f"{READ_TAU:g}"])
        result["domains"][domain] = {"words": words, "cells": cells, "reading": reading, "choices": choices,
                                     "from_cache": from_cache, "seconds": time.perf_counter() - started}
        log(f"{domain}: the words beat {cells[f'{READ_TAU:g}']['words_beat']:.2f} of the rotations; {reading}")
    readings = [r["reading"] for r in result["domains"].values()]
    result["overall"] = {reading: readings.count(reading)
                         for reading in ("prefers the axes", "indifferent", "prefers mixtures")}
    result["wall_seconds"] = time.perf_counter() - began
    stem = "rotations" + (f"-{tag}" if tag else "")
    write_atomically(Path(out_dir) / f"{stem}.json", json.dumps(result, indent=1))
    write_atomically(Path(out_dir) / f"{stem}.md", markdown(result))
    return result


def markdown(result: dict) -> str:
    """The page: settings, one row per domain and temperature, and the word choices."""
    s = result["settings"]
    loss = "the loss with sign-blind negatives" if s.get("sign_blind") else "the loss"
    edits = "the words' edits, each at length 1" if s.get("unit_edits") else "the words' edits"
    lines = [f"# Does {loss} prefer the words' axes? Rotations of {edits} ({context_phrase(s['context'])})",
             "",
             f"Measured {result['date']} on {result['machine']}; {result['wall_seconds']:.0f} s. "
             f"{s['images']} images per domain, timesteps {s['timesteps']}, {s['draws']} Haar-random rotations "
             f"(seed {s['seed']}), {s['steps']} steps of gradient descent over rotations from the identity. "
             f"Produced by `{result['command'] or TOOL}` ({TOOL}: what each column means).",
             "",
             "| domain | words | tau | words' loss | rotations' loss (mean ± std) | words beat | best draw: loss, "
             "alignment | optimised: loss, alignment | any mixing, optimised: loss, matched alignment | "
             "negatives' cosine: words, any mixing | reading |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for domain, r in result["domains"].items():
        for tau, c in r["cells"].items():
            reading = r["reading"] if float(tau) == READ_TAU else "(not read)"
            lines.append(f"| {domain} | {', '.join(r['words'])} | {tau} | {c['words_loss']:.3f} | "
                         f"{c['draws']['mean']:.3f} ± {c['draws']['std']:.3f} | {c['words_beat']:.2f} | "
                         f"{c['best_draw']['loss']:.3f}, {c['best_draw']['alignment']:.2f} | "
                         f"{c['optimised']['loss']:.3f}, {c['optimised']['alignment']:.2f} | "
                         f"{c['any_mixing']['loss']:.3f}, {c['any_mixing']['matched_alignment']:.2f} | "
                         f"{c['words_cosines']['negatives']:.2f}, {c['any_mixing']['cosines']['negatives']:.2f} | "
                         f"{reading} |")
    lines += ["", f"Readings at tau {READ_TAU:g}: " + ", ".join(f"{k} {v}" for k, v in result["overall"].items())
              + ".", "", f"Every choice of one word per attribute, at tau {READ_TAU:g}, against "
              f"{s['choice_draws']} Haar draws: the share of draws the words beat.", "",
              "| domain | lowest | median | highest | the words that beat the most |", "|---|---|---|---|---|"]
    for domain, r in result["domains"].items():
        shares = [c["words_beat"] for c in r["choices"]]
        best = max(r["choices"], key=lambda c: c["words_beat"])   # the first in word_choices' order on a tie
        lines.append(f"| {domain} | {min(shares):.2f} | {statistics.median(shares):.2f} | {max(shares):.2f} | "
                     f"{', '.join(best['words'])} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    """The command line's options (``argv``: the arguments, ``sys.argv[1:]`` when None)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_feature_arguments(parser, "rotations")
    parser.add_argument("--draws", type=int, default=1000, help="Haar-random rotations per domain")
    parser.add_argument("--choice-draws", type=int, default=200, help="rotations per choice of words")
    parser.add_argument("--steps", type=int, default=300, help="gradient steps over rotations")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="measure the features again instead of reading vocabulary.py's cache")
    parser.add_argument("--sign-blind-negatives", dest="sign_blind", action="store_true",
                        help="score the negatives by |cos| (training's option of the same name)")
    parser.add_argument("--unit-edits", action="store_true",
                        help="scale every word's edit to length 1 before mixing (equal shares, equal weight)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Run :func:`rotations_report` from the command line ``argv``; returns its result."""
    args = parse_args(argv)
    pipe = pipeline_from_args(args)
    return rotations_report(pipe, args.samples, args.out, args.tag, args.domains, args.context, args.images,
                            args.timesteps, args.draws, args.choice_draws, args.seed, args.steps, args.resume,
                            args.sign_blind, args.unit_edits,
                            command="python " + " ".join([TOOL, *sys.argv[1:]]) if argv is None else "")


if __name__ == "__main__":
    main()
