"""Would the NoiseCLR objective choose the model's own words?  The loss, evaluated over the vocabulary.

    python benchmarks/vocabulary.py --tag alone
    python benchmarks/vocabulary.py --context caption --tag caption

Training follows the loss's gradient through a continuous space of token rows, and on the bundled
world its directions end about as impure as random tokens (``benchmarks/quality-findings.md``).
That could be the optimiser's fault (the gradient finds impure optima) or the objective's (the
loss does not prefer pure edits).  This script separates the two on the one set of pure
directions the model is known to have: the words its captions taught it ("smiling", "striped"),
which are the quality benchmark's supervised ceiling.  It evaluates the loss exactly, with no
gradient, on every row of the tokenizer's own vocabulary (special tokens left out;
``noiseclr_lite.train.vocabulary_rows``): 234 pieces on the bundled model, 43 of them whole words.

For each domain, on its first ``--images`` training images noised to each of ``--timesteps``
(``noiseclr_lite.train.timestep_features``, the noise seeded by the timestep), every piece's edit
features are measured once, used alone or in the captions' context (``--context``, as in
``quality.py``), and their cosines kept (:class:`EditCosines`).  Then, with no labels:

* **the objective's own choice**: ``-k`` pieces chosen greedily, each the one that lowers the
  official loss (:func:`noiseclr_lite.loss.noiseclr_loss`, every direction an anchor, ``--tau``,
  averaged over the timesteps) of the set chosen so far the most, starting from the piece whose
  edit is most alike over the images (:func:`noiseclr_lite.loss.edit_consistency`); then improved
  by single swaps of a member for a non-member until none lowers the loss (:func:`swap_search`).
  How many of them are whole words, and how many the domain's own words (the words of its
  attributes' phrases), against what picks drawn at random among the whole words would give;
* **the loss of the domain's own words as a set**, against ``--draws`` random sets of as many
  whole words and as many pieces, and what a swap search started from the words keeps of them:
  is the set the benchmark calls the ceiling one the loss prefers?
* every piece's edit consistency, and the rank of each of the domain's words by it.

Writes ``results/vocabulary[-tag].md`` and ``.json``.  About 3.5 minutes per domain on 2 CPU
cores with the defaults (234 pieces x 12 images x 6 timesteps through the UNet; the choices take
10 s more); renders nothing and needs no oracle, since which pieces are the domain's words is
known.  The features are saved under ``out/cache/vocabulary/`` and ``--resume`` reads them back
(:func:`features_cache_path`).  On Stable Diffusion's 49,406 pieces this would be days of UNet
calls: it is a tool for the bundled model's small vocabulary, and refuses more than
:data:`MAX_PIECES`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/vocabulary.py` from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.quality import (CONTEXTS, DEFAULT_SAMPLES, RESULTS, _mean_std, direction_context,  # noqa: E402
                                machine, write_atomically)
from noiseclr_lite.train import CONSISTENCY_TIMESTEPS, timestep_features, vocabulary_rows  # noqa: E402

TOOL = "benchmarks/vocabulary.py"
DOMAINS = ("face", "cat", "car", "painting")
#: the most pieces this script will push through the UNet (the bundled model has 234; SD 1.5 49,406)
MAX_PIECES = 2000


def _fail(message: str):
    raise SystemExit(f"{TOOL}: {message}")


def word_pieces(pipe, words) -> dict[str, int]:
    """``{word: vocabulary id}`` for each of ``words`` that the tokenizer writes as one piece (a word
    split into several pieces has no single row, and is left out)."""
    found = {}
    for word in words:
        ids = pipe.tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) == 1:
            found[word] = ids[0]
    return found


def domain_words(domain: str) -> list[str]:
    """The words of ``domain``'s attributes' phrases (``"no glasses"`` gives ``no`` and ``glasses``),
    sorted: the words the model's captions taught it for that domain's attributes."""
    from noiseclr_lite.toyworld.domains import get_domain

    return sorted({word for phrases in get_domain(domain).attributes.values() for phrase in phrases
                   for word in phrase.split()})


def vocabulary_features(pipe, latents: torch.Tensor, context: str = "{}", timesteps=CONSISTENCY_TIMESTEPS,
                        chunk_size: int | None = 512) -> tuple[list[int], torch.Tensor]:
    """Every vocabulary piece's edit features, as if each were a trained direction.

    Args:
        pipe: the pipeline (its tokenizer's vocabulary, special tokens left out, is measured).
        latents: [N, 4, h, w] scaled VAE latents of the domain's images.
        context: the prompt each piece is used in (``"{}"``: alone; ``"a car, {}"``: after the noun,
            its push measured from ``"a car"``).
        timesteps: the diffusion timesteps the latents are noised to (noise seeded by the timestep).
        chunk_size: at most this many (image, piece) pairs per UNet call.
    Returns:
        (the pieces' vocabulary ids [V], features [T, N, V, F] float32): ``eps(c_piece) - eps(c_ref)``
        flattened, for each timestep, image and piece.
    """
    from noiseclr_lite.directions import Directions

    ids, rows = vocabulary_rows(pipe)
    if len(ids) > MAX_PIECES:
        _fail(f"the tokenizer has {len(ids)} pieces; this script pushes every one through the UNet and is "
              f"meant for a small vocabulary (at most {MAX_PIECES}, the bundled model has 234)")
    # the pieces' rows, installed as direction tokens so that they are used exactly as directions are
    pieces = Directions.create(pipe, len(ids), prefix="vocabulary-piece", context=context)
    pieces.embeddings = rows.clone()
    pieces.install(pipe)
    per_timestep = timestep_features(pipe, pieces, latents, timesteps, chunk_size=chunk_size)
    return ids, torch.stack([features.flatten(2) for features in per_timestep])


@dataclass
class EditCosines:
    """The cosines the loss is built from, between every two pieces' edit features, computed once
    so that a set's loss is a lookup (the greedy choice and the swap search score thousands of sets).

    ``across_images[t, v, i, j] = cos(D_iv, D_jv)`` [T, V, N, N] (the positives' cosines) and
    ``across_pieces[t, i, v, w] = cos(D_iv, D_iw)`` [T, N, V, V] (the negatives'), at each timestep.
    """

    across_images: torch.Tensor
    across_pieces: torch.Tensor

    @classmethod
    def of(cls, features: torch.Tensor) -> "EditCosines":
        """From edit features [T, N, V, F] (:func:`vocabulary_features`)."""
        unit = F.normalize(features.float(), dim=-1)
        return cls(torch.einsum("tivf,tjvf->tvij", unit, unit), torch.einsum("tivf,tiwf->tivw", unit, unit))

    @property
    def pieces(self) -> int:
        return self.across_images.shape[1]

    def consistency(self) -> torch.Tensor:
        """[V]: each piece's edit consistency (:func:`noiseclr_lite.loss.edit_consistency`: the mean
        cosine of its edits on two different images), averaged over the timesteps."""
        n = self.across_images.shape[-1]
        off_diagonal = ~torch.eye(n, dtype=torch.bool)
        return self.across_images[..., off_diagonal].mean(-1).mean(0)


def set_loss(cosines: EditCosines, members, tau: float) -> float:
    """The official loss (:func:`noiseclr_lite.loss.noiseclr_loss`, every member an anchor) of the
    pieces ``members`` as one set of directions, averaged over the timesteps."""
    members = torch.as_tensor(list(members))
    size, n = len(members), cosines.across_images.shape[-1]
    if size < 2:
        _fail(f"a set needs at least 2 pieces to contrast; got {size}")
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    positives = cosines.across_images[:, members][..., off_diagonal] / tau              # [T, S, N(N-1)]
    log_pos = torch.logsumexp(positives, -1) - math.log(n * (n - 1))
    negatives = cosines.across_pieces[:, :, members][..., members] / tau               # [T, N, S anchor, S other]
    negatives = negatives.masked_fill(torch.eye(size, dtype=torch.bool), float("-inf"))  # no anchor against itself
    log_neg = torch.logsumexp(negatives.permute(0, 2, 1, 3).flatten(2), -1) - math.log(n * (size - 1))
    return float((log_neg - log_pos).mean())


def greedy_selection(loss_of: Callable[[list[int]], float], pieces: int, k: int, start: list[int]) -> list[int]:
    """``k`` of ``pieces`` piece indexes chosen as a loss would choose them: the set ``start`` (here
    the most consistent piece; ``objectives.py`` starts a centred loss from two), then each time the
    piece that gives the set so far the lowest ``loss_of(set)`` (ties: the lower index).  ``loss_of``
    maps a list of piece indexes to the set's loss: :func:`set_loss` here, ``objectives.objective_loss``
    for a loss's variants."""
    if not 2 <= k <= pieces:
        _fail(f"-k {k}: choose between 2 and the {pieces} pieces")
    if not 1 <= len(start) <= k or len(set(start)) < len(start) or not all(0 <= p < pieces for p in start):
        raise ValueError(f"start={start}: give 1 to k={k} distinct piece indexes in [0, {pieces - 1}]")
    chosen = list(start)
    while len(chosen) < k:
        candidates = [piece for piece in range(pieces) if piece not in chosen]
        losses = [loss_of(chosen + [piece]) for piece in candidates]
        chosen.append(candidates[min(range(len(losses)), key=losses.__getitem__)])
    return chosen


def swap_search(loss_of: Callable[[list[int]], float], pieces: int, start: list[int],
                max_swaps: int = 100) -> tuple[list[int], bool]:
    """A local search of ``loss_of`` (as for :func:`greedy_selection`) from the set ``start``: each
    round makes the one swap of a member for one of the other ``pieces`` that lowers the loss the
    most, until no swap lowers it.

    Returns:
        (the set in its order, a swapped-in piece where the one it replaced was; whether the search
        ended because no swap lowers the loss, False when it stopped after ``max_swaps``).
    """
    if max_swaps < 0:
        raise ValueError(f"max_swaps={max_swaps}: give 0 or more swaps")
    members = list(start)
    current = loss_of(members)
    outside = [piece for piece in range(pieces) if piece not in members]
    swaps = 0
    while True:
        best = (current, None, None)
        for slot in range(len(members)):
            for piece in outside:
                loss = loss_of(members[:slot] + [piece] + members[slot + 1:])
                if loss < best[0] - 1e-9:
                    best = (loss, slot, piece)
        if best[1] is None:
            return members, True
        if swaps == max_swaps:   # one more swap would lower the loss, but the budget is spent
            return members, False
        current, slot, piece = best
        outside[outside.index(piece)] = members[slot]
        members[slot] = piece
        swaps += 1


def random_set_losses(loss_of: Callable[[list[int]], float], pool: list[int], size: int, draws: int,
                      generator: torch.Generator) -> list[float]:
    """``loss_of`` (as for :func:`greedy_selection`) of ``draws`` sets of ``size`` pieces drawn
    without replacement from ``pool`` (piece indexes)."""
    if size > len(pool):
        _fail(f"cannot draw sets of {size} from a pool of {len(pool)} pieces")
    return [loss_of([pool[i] for i in torch.randperm(len(pool), generator=generator)[:size].tolist()])
            for _ in range(draws)]


def _summary(values: list[float]) -> dict:
    mean, std = _mean_std(values)
    return {"mean": mean, "std": std, "values": values}


def word_indexes(pipe, ids: list[int], domain: str) -> tuple[list[int], dict[str, int]]:
    """Where the words are among the pieces ``ids`` (:func:`vocabulary_features`' order): the
    indexes of the bundled captions' words, sorted, and ``{word: index}`` of ``domain``'s words.
    SystemExit unless the tokenizer writes at least two of the domain's words, and at least as many
    captions' words, as single pieces (the page compares sets of them)."""
    from noiseclr_lite.toyworld.domains import vocabulary

    index = {piece_id: i for i, piece_id in enumerate(ids)}
    whole = sorted(index[i] for i in word_pieces(pipe, vocabulary()).values() if i in index)
    own = {word: index[i] for word, i in word_pieces(pipe, domain_words(domain)).items() if i in index}
    if len(own) < 2 or len(whole) < len(own):
        _fail(f"this tokenizer writes {len(own)} of {domain}'s words and {len(whole)} of the bundled captions' "
              f"words as single pieces; the page compares sets of them, so it needs the bundled model's tokenizer "
              f"(or one with the same words)")
    return whole, own


def domain_result(pipe, ids: list[int], features: torch.Tensor, words: tuple[list[int], dict[str, int]], k: int,
                  tau: float, draws: int, seed: int) -> dict:
    """Everything the page says about one domain, from its pieces' ``features`` [T, N, V, F] and
    ``words``, where its whole words and its own words are among them (:func:`word_indexes`)."""
    names = pipe.tokenizer.convert_ids_to_tokens(ids)
    whole, own = words
    cosines = EditCosines.of(features)
    consistency = cosines.consistency()
    order = consistency.argsort(descending=True).tolist()
    generator = torch.Generator().manual_seed(seed)
    loss_of = functools.partial(set_loss, cosines, tau=tau)
    own_loss = loss_of(list(own.values()))
    whole_draws = random_set_losses(loss_of, whole, len(own), draws, generator)
    piece_draws = random_set_losses(loss_of, list(range(len(ids))), len(own), draws, generator)
    greedy = greedy_selection(loss_of, len(ids), k, start=[int(consistency.argmax())])
    searched, searched_converged = swap_search(loss_of, len(ids), greedy)
    from_words, from_words_converged = swap_search(loss_of, len(ids), list(own.values()))

    def described(chosen: list[int], converged: bool | None = None) -> dict:
        return {"pieces": [names[i] for i in chosen], "whole": sum(i in whole for i in chosen),
                "own": [names[i] for i in chosen if i in own.values()], "loss": loss_of(chosen),
                **({} if converged is None else {"converged": converged})}

    return {
        "pieces": len(ids), "whole_words": len(whole), "own_words": sorted(own),
        "greedy": described(greedy), "searched": described(searched, searched_converged),
        "from_words": described(from_words, from_words_converged),
        # picks drawn at random among the whole words would hold this many of the domain's words
        "chance_own_among_whole": k * len(own) / len(whole),
        "own_loss": own_loss,
        "whole_draws": _summary(whole_draws), "piece_draws": _summary(piece_draws),
        "own_below_whole": sum(own_loss < value for value in whole_draws) / draws,
        "own_below_pieces": sum(own_loss < value for value in piece_draws) / draws,
        "consistency_rank": {word: order.index(i) + 1 for word, i in sorted(own.items())},
        "median_rank_own": statistics.median(order.index(i) + 1 for i in own.values()),
        "median_rank_whole": statistics.median(order.index(i) + 1 for i in whole),
        "most_consistent": [[names[i], round(float(consistency[i]), 3)] for i in order[:10]],
    }


def context_phrase(context: str) -> str:
    """How a page says the pieces were used: ``"alone"`` or in the captions' context."""
    return "alone" if context == "alone" else "in the captions' context (`a <noun>, {}`, measured from `a <noun>`)"


def _check_ids(feature_ids: list[int], ids: list[int], domain: str) -> None:
    """SystemExit unless the features (perhaps from the cache) are of the pieces ``ids``."""
    if feature_ids != ids:
        _fail(f"the cached features of {domain} are of another vocabulary; measure them again "
              f"(without --resume here, with --no-resume in objectives.py)")


def _piece(name: str) -> str:
    return name.removesuffix("</w>") if name.endswith("</w>") else name + "-"


def _pieces(names) -> str:
    return ", ".join(_piece(name) for name in names) or "none"


def markdown(result: dict) -> str:
    """The Markdown page of a :func:`vocabulary_report` result."""
    s, total = result["settings"], result["overall"]
    used = context_phrase(s["context"])
    lines = [
        f"# Would the NoiseCLR objective choose the model's own words? ({s['context']})", "",
        f"Written by `{TOOL}` on {result['date']}, {result['wall_seconds'] / 60:.1f} min on {result['machine']}.",
        f"Command: `{result['command']}`.", "",
        f"Every piece of the tokenizer's vocabulary ({result['pieces']} pieces, {result['whole_words']} of them "
        f"whole words), used {used} "
        f"as a direction, on the first {s['images']} training images of each domain at t = "
        f"{', '.join(map(str, s['timesteps']))}; loss `tau` {s['tau']}, every direction an anchor "
        "(the mean over anchors of the one-anchor loss a training step uses). "
        "A piece written `glas-` is a word piece, `glasses` a whole word. No labels are used; "
        "which pieces are the domain's words is known from its attributes' phrases. "
        "Losses: lower is better.", "",
        f"## The objective's own choice: {s['k']} pieces", "",
        "Chosen greedily (each piece the one that lowers the set's loss most), then searched by single swaps "
        "until no swap of a member for another piece lowers the loss. The last column is what "
        f"{s['k']} picks drawn at random among the whole words would hold of the domain's words.", "",
        "| domain | chosen greedily, in order | after the swaps | whole words | the domain's words | loss, "
        "greedy / swapped | by chance |",
        "|---|---|---|---|---|---|---|",
    ]
    for domain, r in result["domains"].items():
        greedy, searched = r["greedy"], r["searched"]
        lines.append(f"| {domain} | {_pieces(greedy['pieces'])} | {_pieces(searched['pieces'])} | "
                     f"{greedy['whole']} / {searched['whole']} of {s['k']} | {len(greedy['own'])} / "
                     f"{len(searched['own'])} ({_pieces(searched['own'])}) | {greedy['loss']:.3f} / "
                     f"{searched['loss']:.3f} | {r['chance_own_among_whole']:.1f} |")
    lines += [f"| **all** | | | {total['greedy_whole']} / {total['searched_whole']} of {total['chosen']} | "
              f"{total['greedy_own']} / {total['searched_own']} | | {total['chance_own_among_whole']:.1f} |", "",
              "## The domain's own words as one set", "",
              f"Each random set has as many members as the domain's words; {s['draws']} draws of each, mean ± std, "
              "and the share of draws whose loss is higher than the words' (1.0: the loss prefers the words to "
              "every draw). The last columns search by single swaps from the words: what the loss keeps of them.",
              "",
              "| domain | its words | their loss | random whole words | words beat | random pieces | words beat | "
              "kept by the swaps | swapped in | loss after |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for domain, r in result["domains"].items():
        after = r["from_words"]
        own = {word + "</w>" for word in r["own_words"]}
        swapped_in = [name for name in after["pieces"] if name not in own]
        lines.append(f"| {domain} | {', '.join(r['own_words'])} | {r['own_loss']:.3f} | "
                     f"{r['whole_draws']['mean']:.3f} ± {r['whole_draws']['std']:.3f} | {r['own_below_whole']:.2f} | "
                     f"{r['piece_draws']['mean']:.3f} ± {r['piece_draws']['std']:.3f} | {r['own_below_pieces']:.2f} | "
                     f"{len(after['own'])} of {len(r['own_words'])} | {_pieces(swapped_in)} | {after['loss']:.3f} |")
    lines += ["", "## Edit consistency: how alike a piece's edit is over the images", "",
              f"Rank 1 is the most consistent of the {result['pieces']} pieces.", "",
              "| domain | the domain's words' ranks | their median | whole words' median | the ten most consistent |",
              "|---|---|---|---|---|"]
    for domain, r in result["domains"].items():
        ranks = ", ".join(f"{word} {rank}" for word, rank in r["consistency_rank"].items())
        lines.append(f"| {domain} | {ranks} | {r['median_rank_own']:g} | {r['median_rank_whole']:g} | "
                     f"{', '.join(f'{_piece(p)} {c:.2f}' for p, c in r['most_consistent'])} |")
    return "\n".join(lines) + "\n"


def features_cache_path(pipe, out_dir: str | Path, context: str, images: torch.Tensor, timesteps) -> Path:
    """Where :func:`vocabulary_features` of these settings is kept for ``--resume``: under
    ``out_dir/cache/vocabulary/``, named by the text encoder's, the UNet's and the VAE's weights, the
    vocabulary's rows (``models.weights_key`` leaves token embeddings out), the UNet's dtype, the
    context, the images [N, 3, H, W] (their pixels, not their latents, whose last bits depend on the
    torch thread count) and the timesteps (anything else gives another file)."""
    import hashlib

    from noiseclr_lite.models import weights_key

    key = [weights_key(pipe.text_encoder, pipe.unet, pipe.vae), str(pipe.unet.dtype), context, list(timesteps)]
    digest = hashlib.sha1(json.dumps(key).encode())
    digest.update(vocabulary_rows(pipe)[1].numpy().tobytes())
    digest.update(images.float().cpu().numpy().tobytes())
    return Path(out_dir) / "cache" / "vocabulary" / f"{digest.hexdigest()[:16]}.pt"


def domain_pictures(pipe, samples: str | Path, domain: str, images: int = 12) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1]: the first ``images`` images of ``samples/domain/`` at the model's size,
    the images the features are measured on.  SystemExit for a missing folder or fewer than 2 images."""
    from noiseclr_lite.data import load_images
    from noiseclr_lite.models import image_size

    folder = Path(samples) / domain
    if not folder.is_dir():
        _fail(f"{folder} is not a folder of {domain} images; give --samples the folder holding <domain>/")
    pictures = load_images(folder, image_size(pipe))[:images]
    if len(pictures) < 2:
        _fail(f"{folder} holds {len(pictures)} image(s); the loss compares images in pairs: give at least 2")
    return pictures


def domain_features(pipe, samples: str | Path, domain: str, context: str = "alone", images: int = 12,
                    timesteps=CONSISTENCY_TIMESTEPS, out_dir: str | Path = RESULTS, resume: bool = False,
                    chunk_size: int | None = 512) -> tuple[list[int], torch.Tensor, bool]:
    """:func:`vocabulary_features` of ``domain``: its first ``images`` images in ``samples/domain/``,
    each piece used in ``context`` (``quality.CONTEXTS``).  Saved under ``out_dir/cache/vocabulary/``
    and, with ``resume``, read back from there instead of measured again (:func:`features_cache_path`).

    Returns:
        (the pieces' vocabulary ids [V], features [T, N, V, F], whether they came from the cache).
    """
    from noiseclr_lite.models import encode_images

    pictures = domain_pictures(pipe, samples, domain, images)
    prompt = direction_context(domain, context)
    cached = features_cache_path(pipe, out_dir, prompt, pictures, timesteps)
    if resume and cached.exists():
        saved = torch.load(cached, weights_only=True)
        return saved["ids"].tolist(), saved["features"], True
    ids, features = vocabulary_features(pipe, encode_images(pipe, pictures), prompt, timesteps, chunk_size)
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ids": torch.tensor(ids), "features": features}, cached)
    return ids, features, False


def vocabulary_report(pipe, samples: str | Path = DEFAULT_SAMPLES, out_dir: str | Path = RESULTS, tag: str = "",
                      domains=DOMAINS, context: str = "alone", images: int = 12, timesteps=CONSISTENCY_TIMESTEPS,
                      k: int = 10, tau: float = 0.1, draws: int = 50, seed: int = 0, chunk_size: int | None = 512,
                      resume: bool = False, command: str = "", log=print) -> dict:
    """Measure every domain and write ``results/vocabulary[-tag].md`` and ``.json``; returns the result.
    The features are kept under ``out_dir/cache/vocabulary/`` and, with ``resume``, read back from there
    instead of measured again (:func:`domain_features`)."""
    if not 2 <= k <= 100:
        _fail(f"-k {k}: choose between 2 and 100 pieces per domain (the loss contrasts at least two)")
    if draws < 1:
        _fail(f"--draws {draws}: draw at least 1 random set per pool (50 by default)")
    if not tau > 0:
        _fail(f"--tau {tau}: the loss temperature must be positive (0.1 by default)")
    ids = vocabulary_rows(pipe)[0]
    # before any UNet work: the words the page counts are the tokenizer's
    indexes = {domain: word_indexes(pipe, ids, domain) for domain in domains}
    began = time.perf_counter()
    result = {"settings": {"context": context, "images": images, "timesteps": list(timesteps), "k": k, "tau": tau,
                           "draws": draws, "seed": seed, "samples": str(samples)},
              "date": time.strftime("%Y-%m-%d"), "machine": machine(pipe), "command": command, "domains": {}}
    for domain in domains:
        started = time.perf_counter()
        feature_ids, features, from_cache = domain_features(pipe, samples, domain, context, images, timesteps,
                                                            out_dir, resume, chunk_size)
        _check_ids(feature_ids, ids, domain)
        measured = time.perf_counter()
        result["domains"][domain] = r = domain_result(pipe, ids, features, indexes[domain], k, tau, draws, seed)
        log(f"{domain}: features {measured - started:.0f} s{' (from the cache)' if from_cache else ''}, "
            f"choices {time.perf_counter() - measured:.0f} s; chosen {r['searched']['pieces']}")
    per_domain = list(result["domains"].values())
    result["pieces"], result["whole_words"] = per_domain[0]["pieces"], per_domain[0]["whole_words"]
    result["overall"] = {"chosen": k * len(domains),
                         **{f"{how}_{what}": sum(len(r[how][what]) if what == "own" else r[how][what]
                                                 for r in per_domain)
                            for how in ("greedy", "searched") for what in ("whole", "own")},
                         "chance_own_among_whole": sum(r["chance_own_among_whole"] for r in per_domain)}
    result["wall_seconds"] = time.perf_counter() - began
    stem = "vocabulary" + (f"-{tag}" if tag else "")
    write_atomically(Path(out_dir) / f"{stem}.json", json.dumps(result, indent=1))
    write_atomically(Path(out_dir) / f"{stem}.md", markdown(result))
    return result


def add_feature_arguments(parser: argparse.ArgumentParser, stem: str) -> None:
    """The options that say which features are measured, shared with ``objectives.py``: the model,
    the images, the context, the timesteps, where the page ``results/STEM[-TAG].md`` goes, the seed
    of the random sets and the CPU threads."""
    parser.add_argument("--model", default=None, help="the model folder or hub id (default: the bundled model)")
    parser.add_argument("--samples", default=DEFAULT_SAMPLES, help="the folder holding <domain>/ image folders")
    parser.add_argument("--out", default=str(RESULTS), help="where the page is written (and the cache kept)")
    parser.add_argument("--tag", default="", help=f"writes results/{stem}-TAG.md and .json")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS))
    parser.add_argument("--context", choices=CONTEXTS, default="alone",
                        help="each piece used alone, or after the domain's noun as the captions put words")
    parser.add_argument("--images", type=int, default=12, help="training images per domain")
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(CONSISTENCY_TIMESTEPS))
    parser.add_argument("--seed", type=int, default=0, help="seeds the random sets")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def pipeline_from_args(args: argparse.Namespace):
    """The pipeline :func:`add_feature_arguments`' options name: sets ``args.threads`` torch CPU threads
    (when given), then loads ``args.model`` (a folder or hub id; the bundled model when None)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    from noiseclr_lite.models import load_pipeline

    return load_pipeline(args.model)   # None: the bundled model


def parse_args(argv=None) -> argparse.Namespace:
    """The command line's options (``argv``: the arguments, ``sys.argv[1:]`` when None)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_feature_arguments(parser, "vocabulary")
    parser.add_argument("-k", type=int, default=10, help="pieces the objective chooses")
    parser.add_argument("--tau", type=float, default=0.1, help="the loss temperature")
    parser.add_argument("--draws", type=int, default=50, help="random sets drawn per domain and pool")
    parser.add_argument("--resume", action="store_true",
                        help="read the pieces' features back from out/cache/vocabulary/ when they are there")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Run :func:`vocabulary_report` from the command line ``argv``; returns its result."""
    args = parse_args(argv)
    pipe = pipeline_from_args(args)
    return vocabulary_report(pipe, args.samples, args.out, args.tag, args.domains, args.context, args.images,
                             args.timesteps, args.k, args.tau, args.draws, args.seed, resume=args.resume,
                             command="python " + " ".join([TOOL, *sys.argv[1:]]) if argv is None else "")


if __name__ == "__main__":
    main()
