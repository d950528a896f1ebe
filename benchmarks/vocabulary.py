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
``quality.py``).  Then, with no labels:

* **the objective's own choice**: ``-k`` pieces chosen greedily, each the one that lowers the
  official loss (:func:`noiseclr_lite.loss.noiseclr_loss`, every direction an anchor, ``--tau``,
  averaged over the timesteps) of the set chosen so far the most, starting from the piece whose
  edit is most alike over the images (:func:`noiseclr_lite.loss.edit_consistency`).  How many of
  them are whole words, and how many the domain's own words (the words of its attributes'
  phrases), against what picks drawn at random among the whole words would give;
* **the loss of the domain's own words as a set**, against ``--draws`` random sets of as many
  whole words and as many pieces: is the set the benchmark calls the ceiling one the loss prefers?
* every piece's edit consistency, and the rank of each of the domain's words by it.

Writes ``results/vocabulary[-tag].md`` and ``.json``.  About 3 minutes per domain on 2 CPU cores
with the defaults (234 pieces x 12 images x 6 timesteps through the UNet); renders nothing and
needs no oracle, since which pieces are the domain's words is known.  On Stable Diffusion's
49,406 pieces this would be days of UNet calls: it is a tool for the bundled model's small vocabulary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/vocabulary.py` from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.quality import (CONTEXTS, DEFAULT_SAMPLES, RESULTS, direction_context, machine,  # noqa: E402
                                write_atomically)
from noiseclr_lite.loss import edit_consistency, noiseclr_loss  # noqa: E402
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


def vocabulary_features(pipe, latents: torch.Tensor, context: str = "{}",
                        timesteps=CONSISTENCY_TIMESTEPS, chunk_size: int | None = 512) -> tuple[list[int], torch.Tensor]:
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


def set_loss(features: torch.Tensor, members, tau: float) -> float:
    """The official loss of the directions ``members`` as one set (every one an anchor), averaged
    over the timesteps of ``features`` [T, N, V, F]."""
    members = list(members)
    return statistics.fmean(noiseclr_loss(per_timestep[:, members], tau).item() for per_timestep in features)


def piece_consistency(features: torch.Tensor) -> torch.Tensor:
    """[V]: each piece's edit consistency (:func:`noiseclr_lite.loss.edit_consistency`), averaged over
    the timesteps of ``features`` [T, N, V, F]."""
    return torch.stack([edit_consistency(per_timestep) for per_timestep in features]).mean(0)


def greedy_selection(features: torch.Tensor, k: int, tau: float) -> list[int]:
    """``k`` indexes into the pieces of ``features`` [T, N, V, F], chosen as the loss would choose
    them: the most consistent piece first, then each time the piece that gives the set so far the
    lowest :func:`set_loss` (ties: the lower index)."""
    count = features.shape[2]
    if not 2 <= k <= count:
        _fail(f"-k {k}: choose between 2 and the {count} pieces")
    chosen = [int(piece_consistency(features).argmax())]
    while len(chosen) < k:
        candidates = [piece for piece in range(count) if piece not in chosen]
        losses = [set_loss(features, chosen + [piece], tau) for piece in candidates]
        chosen.append(candidates[min(range(len(losses)), key=losses.__getitem__)])
    return chosen


def random_set_losses(features: torch.Tensor, pool: list[int], size: int, draws: int, tau: float,
                      generator: torch.Generator) -> list[float]:
    """:func:`set_loss` of ``draws`` sets of ``size`` pieces drawn without replacement from ``pool``
    (indexes into the pieces of ``features``)."""
    if size > len(pool):
        _fail(f"cannot draw sets of {size} from a pool of {len(pool)} pieces")
    return [set_loss(features, [pool[i] for i in torch.randperm(len(pool), generator=generator)[:size].tolist()], tau)
            for _ in range(draws)]


def _summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def domain_result(pipe, ids: list[int], features: torch.Tensor, domain: str, k: int, tau: float, draws: int,
                  seed: int) -> dict:
    """Everything the page says about one domain, from its pieces' ``features`` [T, N, V, F]."""
    from noiseclr_lite.toyworld.domains import vocabulary

    index = {piece_id: i for i, piece_id in enumerate(ids)}
    names = pipe.tokenizer.convert_ids_to_tokens(ids)
    whole = sorted(index[i] for i in word_pieces(pipe, vocabulary()).values() if i in index)
    own = {word: index[i] for word, i in word_pieces(pipe, domain_words(domain)).items() if i in index}
    own_set = set(own.values())
    chosen = greedy_selection(features, k, tau)
    consistency = piece_consistency(features)
    order = consistency.argsort(descending=True).tolist()
    generator = torch.Generator().manual_seed(seed)
    own_loss = set_loss(features, own.values(), tau)
    whole_draws = random_set_losses(features, whole, len(own), draws, tau, generator)
    piece_draws = random_set_losses(features, list(range(len(ids))), len(own), draws, tau, generator)
    return {
        "pieces": len(ids), "whole_words": len(whole), "own_words": sorted(own),
        "chosen": [names[i] for i in chosen],
        "chosen_whole": sum(i in whole for i in chosen),
        "chosen_own": [names[i] for i in chosen if i in own_set],
        # picks drawn at random among the whole words would hold this many of the domain's words
        "chance_own_among_whole": k * len(own) / len(whole),
        "chosen_loss": set_loss(features, chosen, tau),
        "own_loss": own_loss,
        "whole_draws": _summary(whole_draws), "piece_draws": _summary(piece_draws),
        "own_below_whole": sum(own_loss < value for value in whole_draws) / draws,
        "own_below_pieces": sum(own_loss < value for value in piece_draws) / draws,
        "consistency_rank": {word: order.index(i) + 1 for word, i in sorted(own.items())},
        "median_rank_own": statistics.median(order.index(i) + 1 for i in own.values()),
        "median_rank_whole": statistics.median(order.index(i) + 1 for i in whole),
        "most_consistent": [[names[i], round(float(consistency[i]), 3)] for i in order[:10]],
    }


def _piece(name: str) -> str:
    return name.removesuffix("</w>") if name.endswith("</w>") else name + "-"


def markdown(result: dict) -> str:
    """The Markdown page of a :func:`vocabulary_report` result."""
    s = result["settings"]
    lines = [
        f"# Would the NoiseCLR objective choose the model's own words? ({s['context']})", "",
        f"Written by `{TOOL}` on {result['date']}, {result['wall_seconds'] / 60:.1f} min on {result['machine']}.",
        f"Command: `{result['command']}`.", "",
        f"Every piece of the tokenizer's vocabulary ({result['pieces']} pieces, {result['whole_words']} of them "
        f"whole words), used {'alone' if s['context'] == 'alone' else 'in the captions context (`a car, {}`)'} "
        f"as a direction, on the first {s['images']} training images of each domain at t = "
        f"{', '.join(map(str, s['timesteps']))}; loss `tau` {s['tau']}, every direction an anchor. "
        "A piece written `glas-` is a word piece, `glasses` a whole word. No labels are used; "
        "which pieces are the domain's words is known from its attributes' phrases.", "",
        f"## The objective's own choice: {s['k']} pieces, chosen greedily", "",
        "| domain | chosen, in order | whole words | the domain's words among them | by chance among whole words |",
        "|---|---|---|---|---|",
    ]
    for domain, r in result["domains"].items():
        lines.append(f"| {domain} | {', '.join(_piece(p) for p in r['chosen'])} | {r['chosen_whole']} of {s['k']} | "
                     f"{len(r['chosen_own'])} ({', '.join(_piece(p) for p in r['chosen_own']) or 'none'}) | "
                     f"{r['chance_own_among_whole']:.1f} |")
    total = result["overall"]
    lines += [f"| **all** | | {total['chosen_whole']} of {total['chosen']} | {total['chosen_own']} | "
              f"{total['chance_own_among_whole']:.1f} |", "",
              "## The loss of the domain's own words as one set", "",
              f"Lower is better. Each random set has as many members as the domain's words; {s['draws']} draws "
              "of each, mean ± std, and the share of draws whose loss is higher than the words' (1.0: the "
              "loss prefers the words to every draw).", "",
              "| domain | its words | their loss | random whole words | words beat | random pieces | words beat | "
              f"the {s['k']} chosen |",
              "|---|---|---|---|---|---|---|---|"]
    for domain, r in result["domains"].items():
        lines.append(f"| {domain} | {', '.join(r['own_words'])} | {r['own_loss']:.3f} | "
                     f"{r['whole_draws']['mean']:.3f} ± {r['whole_draws']['std']:.3f} | {r['own_below_whole']:.2f} | "
                     f"{r['piece_draws']['mean']:.3f} ± {r['piece_draws']['std']:.3f} | {r['own_below_pieces']:.2f} | "
                     f"{r['chosen_loss']:.3f} |")
    lines += ["", "## Edit consistency: how alike a piece's edit is over the images", "",
              f"Rank 1 is the most consistent of the {result['pieces']} pieces.", "",
              "| domain | the domain's words' ranks | their median | whole words' median | the ten most consistent |",
              "|---|---|---|---|---|"]
    for domain, r in result["domains"].items():
        ranks = ", ".join(f"{word} {rank}" for word, rank in r["consistency_rank"].items())
        lines.append(f"| {domain} | {ranks} | {r['median_rank_own']:g} | {r['median_rank_whole']:g} | "
                     f"{', '.join(f'{_piece(p)} {c:.2f}' for p, c in r['most_consistent'])} |")
    return "\n".join(lines) + "\n"


def vocabulary_report(pipe, samples: str | Path = DEFAULT_SAMPLES, out_dir: str | Path = RESULTS, tag: str = "",
                      domains=DOMAINS, context: str = "alone", images: int = 12, timesteps=CONSISTENCY_TIMESTEPS,
                      k: int = 10, tau: float = 0.1, draws: int = 50, seed: int = 0, chunk_size: int | None = 512,
                      command: str = "", log=print) -> dict:
    """Measure every domain and write ``results/vocabulary[-tag].md`` and ``.json``; returns the result."""
    from noiseclr_lite.data import load_images
    from noiseclr_lite.models import encode_images, image_size

    began = time.perf_counter()
    result = {"settings": {"context": context, "images": images, "timesteps": list(timesteps), "k": k, "tau": tau,
                           "draws": draws, "seed": seed, "samples": str(samples)},
              "date": time.strftime("%Y-%m-%d"), "machine": machine(pipe), "command": command, "domains": {}}
    for domain in domains:
        folder = Path(samples) / domain
        if not folder.is_dir():
            _fail(f"{folder} is not a folder of {domain} images; give --samples the folder holding <domain>/")
        latents = encode_images(pipe, load_images(folder, image_size(pipe))[:images])
        if len(latents) < 2:
            _fail(f"{folder} holds {len(latents)} image(s); the loss compares images in pairs: give at least 2")
        started = time.perf_counter()
        ids, features = vocabulary_features(pipe, latents, direction_context(domain, context), timesteps, chunk_size)
        result["domains"][domain] = domain_result(pipe, ids, features, domain, k, tau, draws, seed)
        log(f"{domain}: {time.perf_counter() - started:.0f} s; chosen {result['domains'][domain]['chosen']}")
    per_domain = result["domains"].values()
    result["pieces"], result["whole_words"] = next(iter(per_domain))["pieces"], next(iter(per_domain))["whole_words"]
    result["overall"] = {"chosen": k * len(domains), "chosen_whole": sum(r["chosen_whole"] for r in per_domain),
                         "chosen_own": sum(len(r["chosen_own"]) for r in per_domain),
                         "chance_own_among_whole": sum(r["chance_own_among_whole"] for r in per_domain)}
    result["wall_seconds"] = time.perf_counter() - began
    stem = "vocabulary" + (f"-{tag}" if tag else "")
    write_atomically(Path(out_dir) / f"{stem}.json", json.dumps(result, indent=1))
    write_atomically(Path(out_dir) / f"{stem}.md", markdown(result))
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="the model folder or hub id (default: the bundled model)")
    parser.add_argument("--samples", default=DEFAULT_SAMPLES, help="the folder holding <domain>/ image folders")
    parser.add_argument("--out", default=str(RESULTS), help="where the page is written")
    parser.add_argument("--tag", default="", help="writes results/vocabulary-TAG.md and .json")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS))
    parser.add_argument("--context", choices=CONTEXTS, default="alone",
                        help="each piece used alone, or after the domain's noun as the captions put words")
    parser.add_argument("--images", type=int, default=12, help="training images per domain")
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(CONSISTENCY_TIMESTEPS))
    parser.add_argument("-k", type=int, default=10, help="pieces the objective chooses")
    parser.add_argument("--tau", type=float, default=0.1, help="the loss temperature")
    parser.add_argument("--draws", type=int, default=50, help="random sets drawn per domain and pool")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random sets")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from noiseclr_lite.models import load_pipeline

    pipe = load_pipeline(args.model) if args.model else load_pipeline()
    return vocabulary_report(pipe, args.samples, args.out, args.tag, args.domains, args.context, args.images,
                             args.timesteps, args.k, args.tau, args.draws, args.seed,
                             command="python " + " ".join([TOOL, *sys.argv[1:]]) if argv is None else "")


if __name__ == "__main__":
    main()
