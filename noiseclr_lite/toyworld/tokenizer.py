"""A word-level CLIP tokenizer: every word of a small vocabulary is one token.

Stable Diffusion pipelines expect a ``CLIPTokenizer`` (byte-level BPE with a ``</w>``
end-of-word marker).  Instead of inventing a tokenizer class, we write an ordinary
``vocab.json`` + ``merges.txt`` whose merges assemble each vocabulary word into a single
token, so ``CLIPTokenizer.from_pretrained(folder)`` just works, offline.  Words outside
the vocabulary still tokenize (into letters), they are only not single tokens.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair merge ``symbols`` exactly as CLIP's tokenizer does (lowest rank first)."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == float("inf"):
            break
        first, second = symbols[i], symbols[i + 1]
        merged, j = [], 0
        while j < len(symbols):  # merge every occurrence of the pair, left to right
            if j < len(symbols) - 1 and symbols[j] == first and symbols[j + 1] == second:
                merged.append(first + second)
                j += 2
            else:
                merged.append(symbols[j])
                j += 1
        symbols = merged
    return symbols


def build_word_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges that turn each word into the single symbol ``word + "</w>"``.

    Each new merge is appended with a higher rank than all before it, so it can never
    fire before the merges that completed earlier words: those words stay single tokens.
    """
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        symbols = _apply_merges(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            symbols = _apply_merges(symbols, ranks)
    return merges


def save_word_tokenizer(words: list[str], folder: str | Path, model_max_length: int = 32) -> CLIPTokenizer:
    """Write a CLIP tokenizer in which each of ``words`` is a single token; return it loaded.

    The vocabulary holds the special tokens, every lowercase letter and digit (alone and
    with ``</w>``), comma, the merge intermediates and the words.  ``model_max_length``
    is the padded prompt length that pipelines use (the text encoder's positions).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w.lower() for w in words})
    bad = [w for w in words if not w or any(c not in string.ascii_lowercase + string.digits for c in w)]
    if bad:
        raise ValueError(f"tokenizer words must be lowercase letters/digits; got {bad}")
    merges = build_word_merges(words)
    vocab: list[str] = [BOS, EOS]
    for ch in string.ascii_lowercase + string.digits + ",.":
        vocab += [ch, ch + "</w>"]
    for a, b in merges:
        if a + b not in vocab:
            vocab.append(a + b)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=EOS,
                              model_max_length=model_max_length)
    tokenizer.save_pretrained(folder)
    not_single = [w for w in words if len(tokenizer.tokenize(w)) != 1]
    if not_single:
        raise RuntimeError(f"words {not_single} did not become single tokens; this is a bug in build_word_merges")
    return CLIPTokenizer.from_pretrained(folder)
