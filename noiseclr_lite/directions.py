"""Directions: K placeholder tokens whose embeddings are the learned NoiseCLR edit directions.

A direction ``d_k`` is one new row of the text encoder's token-embedding matrix, reached
through a placeholder token such as ``<face_3>`` (textual-inversion style).  Its
conditioning ``c_k`` is the text encoder's output for a prompt made of that token alone,
or of the token in a fixed *context* such as ``"a car, {}"`` (the way the model's training
captions put their words, after the domain's noun).  Its edit is what the token adds to the
prompt without it, its *reference*: ``eps(c_k) - eps(c_ref)``, with ``c_ref`` the empty
prompt for a token used alone (the official NoiseCLR) and ``"a car"`` for ``"a car, {}"``.
Only these K rows are ever trained or written; every other weight stays as it was.

    d = Directions.create(pipe, 8, prefix="face")   # random rows, seeded
    d.install(pipe)                                 # tokens usable in any prompt
    c = d.conditioning(pipe)                        # [8, L, H] for the UNet
    d.save("face.safetensors"); Directions.load("face.safetensors")
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "noiseclr_lite.directions"
FORMAT_VERSION = "1"
#: the default context: the token alone is the whole prompt (as in the official NoiseCLR)
ALONE = "{}"


def check_context(context: str, where: str = "context") -> str:
    """``context`` if it is a prompt template with exactly one ``{}`` (where the token goes), else ValueError."""
    # any other brace would make str.format fail or eat the token
    if not isinstance(context, str) or context.count("{}") != 1 or set("{}") & set(context.replace("{}", "")):
        raise ValueError(f"{where} must be a prompt with exactly one '{{}}' where the direction's token goes, "
                         f"e.g. 'a car, {{}}' or '{{}}' (the token alone); got {context!r}")
    return context


def reference_prompt(context: str) -> str:
    """``context`` without its ``{}`` slot and the comma that joins the slot to the words before
    it (or, with none before, to those after), spaces tidied: ``"a car, {}"`` -> ``"a car"``,
    ``"{}, a car"`` -> ``"a car"``, ``"a {} face"`` -> ``"a face"``, ``"{}"`` -> ``""``."""
    before, after = check_context(context).split("{}")
    joined = f"{before.rstrip(' ,')}{after}" if before.strip() else after.lstrip(" ,")
    return " ".join(joined.split())


def tokenizer_fingerprint(tokenizer) -> tuple[str, int]:
    """sha256 (16 hex digits) of the tokenizer's base vocabulary, and that vocabulary's size.

    Base vocabulary = every (token, id) pair except non-special added tokens, so adding
    placeholder tokens (ours, textual inversions) does not change it; two different
    tokenizers (SD 1.5's CLIP vs the bundled word tokenizer) give different fingerprints.
    """
    added = {t.content for t in tokenizer.added_tokens_decoder.values() if not t.special}
    base = sorted((tok, i) for tok, i in tokenizer.get_vocab().items() if tok not in added)
    return hashlib.sha256(json.dumps(base).encode()).hexdigest()[:16], len(base)


def _model_name(pipe) -> str | None:
    """The pipeline's hub id or folder, when it has one."""
    name = getattr(pipe, "name_or_path", None) or getattr(pipe.text_encoder.config, "_name_or_path", None)
    return str(name) if name else None


def _encode(pipe, prompts: list[str]) -> torch.Tensor:
    """The text encoder's last hidden state for ``prompts``, tokenized as the pipeline does."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    inputs = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    mask = inputs.attention_mask.to(text_encoder.device) if getattr(
        text_encoder.config, "use_attention_mask", False) else None
    return text_encoder(inputs.input_ids.to(text_encoder.device), attention_mask=mask)[0].to(text_encoder.dtype)


@torch.no_grad()
def empty_conditioning(pipe) -> torch.Tensor:
    """``c_empty``: the text encoder's output [1, L, H] for the empty prompt ``""``."""
    return _encode(pipe, [""])


class _RowOverride(torch.nn.Module):
    """A token-embedding lookup in which ``token_ids[k]`` reads ``rows[k]`` (differentiably)."""

    def __init__(self, base: torch.nn.Embedding, token_ids: list[int], rows: torch.Tensor):
        super().__init__()
        self.base = base
        # A plain attribute, not a registered parameter: a trainable float32 Parameter here would
        # become the text encoder's first parameter, so ``text_encoder.dtype`` would read float32
        # and ``_encode`` would hand fp32 conditioning to fp16 weights (a dtype error without autocast).
        self.__dict__["rows"] = rows
        self.register_buffer("token_ids", torch.tensor(token_ids, device=base.weight.device), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.base(input_ids)
        match = (input_ids.unsqueeze(-1) == self.token_ids).to(out.dtype)  # [..., L, K]
        picked = match @ self.rows.to(out.device, out.dtype)  # [..., L, H]
        return torch.where(match.sum(-1, keepdim=True) > 0, picked, out)


@dataclass(eq=False)
class Directions:
    """K edit directions: ``embeddings`` float32 [K, H] on the CPU, one placeholder token each.

    ``names`` are free labels (default: the tokens) that users may rename, e.g. "smile";
    ``metadata`` (JSON-able) records the base model, hidden size, tokenizer fingerprint
    and training settings, and ``"context"``, the prompt each token is used in (see
    :attr:`context`); ``source`` is the file it was loaded from, if any.
    """

    embeddings: torch.Tensor
    tokens: list[str]
    names: list[str] | None = None
    metadata: dict = field(default_factory=dict)
    source: str | None = None
    # what _prompts last checked (context, tokens, ids, tokenizer): training encodes every step,
    # and the check only needs to run again when one of these changes
    _checked_prompts: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.embeddings = self.embeddings.detach().to("cpu", torch.float32).contiguous()
        self.tokens, self.names = list(self.tokens), list(self.names or self.tokens)
        if self.embeddings.ndim != 2 or not len(self.tokens) == len(self.names) == len(self.embeddings):
            raise ValueError(f"Directions need embeddings [K, H] with K tokens and K names; got embeddings "
                             f"{tuple(self.embeddings.shape)}, {len(self.tokens)} tokens, {len(self.names)} names")
        if len(set(self.tokens)) != len(self.tokens):
            repeated = sorted({t for t in self.tokens if self.tokens.count(t) > 1})
            raise ValueError(f"Directions tokens must be distinct; {repeated} appear more than once in "
                             f"{self.tokens}. Give each direction its own token (Directions.create numbers them)")
        where = f"the context in {self.source}" if self.source else "Directions context"
        check_context(self.context, where)

    @property
    def context(self) -> str:
        """The prompt each token is used in, ``{}`` standing for the token: ``"{}"`` (the
        token alone, the default) or e.g. ``"a car, {}"``.  Directions are applied in the
        context they were trained in (``metadata["context"]``)."""
        return self.metadata.get("context", ALONE)

    @property
    def reference_prompt(self) -> str:
        """The context without its token: the prompt a direction's push is measured from
        (``eps(c_k) - eps(c_ref)``).  ``""`` for tokens used alone, ``"a car"`` for
        ``"a car, {}"``: the rule is :func:`reference_prompt`'s."""
        return reference_prompt(self.context)

    @torch.no_grad()
    def reference_conditioning(self, pipe) -> torch.Tensor:
        """``c_ref``: the text encoder's output [1, L, H] for :attr:`reference_prompt` (the
        empty prompt's, :func:`empty_conditioning`, for tokens used alone)."""
        return _encode(pipe, [self.reference_prompt])

    @classmethod
    def create(cls, pipe, num_directions: int, prefix: str = "d", init: str = "random", seed: int = 0,
               base_model: str | None = None, context: str = ALONE) -> "Directions":
        """New directions for ``pipe``'s text encoder, tokens ``<{prefix}_0>`` .. ``<{prefix}_{K-1}>``.

        Args:
            init: ``"random"``: normal rows scaled to the mean norm of the vocabulary's rows;
                ``"vocab"``: rows drawn from a Gaussian with the mean and covariance of the
                vocabulary's rows (no word is picked: the draw only lies in the subspace the text
                encoder was trained on, where it responds more strongly, about 2x the push of
                ``"random"`` at the same norm on the bundled model);
                or a word that is one token in ``pipe.tokenizer``: its row plus noise of 10%
                of that scale (so the K directions start apart).
            seed: seeds the ``torch.Generator`` that draws the rows.
            base_model: recorded in ``metadata`` (default: the pipeline's hub id or folder).
            context: the prompt each token is used in (:attr:`context`); recorded in
                ``metadata`` only when it is not the default ``"{}"``.
        """
        if num_directions < 1:
            raise ValueError(f"num_directions must be at least 1; got {num_directions}")
        weight = pipe.text_encoder.get_input_embeddings().weight.detach().float().cpu()
        # the tokenizer's own vocabulary only: rows of direction tokens installed earlier in this
        # session (trained, often several times longer) would make the draw depend on what ran before
        weight = weight[:pipe.tokenizer.vocab_size]
        hidden = weight.shape[1]
        scale = weight.norm(dim=1).mean().item() / hidden ** 0.5  # per-coordinate std of a typical row
        noise = torch.randn(num_directions, hidden, generator=torch.Generator().manual_seed(seed))
        if init == "random":
            embeddings = noise * scale
        elif init == "vocab":
            covariance = torch.cov(weight.T.double())
            # a small ridge: a vocabulary smaller than H (or with tied rows) has a singular covariance
            ridge = 1e-6 * covariance.diagonal().mean() * torch.eye(hidden, dtype=torch.float64)
            cholesky = torch.linalg.cholesky(covariance + ridge)
            embeddings = (weight.double().mean(0) + noise.double() @ cholesky.T).float()
        else:
            ids = pipe.tokenizer(init, add_special_tokens=False).input_ids
            if len(ids) != 1:
                raise ValueError(f"init word {init!r} is {len(ids)} tokens in this tokenizer; give init='random' "
                                 f"or a word that is a single token")
            embeddings = weight[ids[0]] + 0.1 * scale * noise
        fingerprint, vocab_size = tokenizer_fingerprint(pipe.tokenizer)
        metadata = {"base_model": base_model or _model_name(pipe), "hidden_size": hidden,
                    "tokenizer_vocab_size": vocab_size, "tokenizer_fingerprint": fingerprint,
                    "init": init, "seed": seed, **({} if context == ALONE else {"context": context})}
        return cls(embeddings, [f"<{prefix}_{k}>" for k in range(num_directions)], metadata=metadata)

    @property
    def num_directions(self) -> int:
        """K, the number of directions."""
        return self.embeddings.shape[0]

    @property
    def hidden_size(self) -> int:
        """H, the width of a token embedding (768 on SD 1.5, 128 on the bundled model)."""
        return self.embeddings.shape[1]

    def index(self, key: int | str) -> int:
        """The row of ``key``: an index in [-K, K), a token such as ``"<face_2>"`` or a name."""
        if isinstance(key, int) and -self.num_directions <= key < self.num_directions:
            return key % self.num_directions
        for labels in (self.tokens, self.names):
            if key in labels:
                return labels.index(key)
        raise KeyError(f"no direction {key!r}; give an index below {self.num_directions}, a token "
                       f"{self.tokens} or a name {self.names}")

    def check_compatible(self, pipe) -> None:
        """Raise ValueError if these directions were made for another text encoder or tokenizer."""
        mine, theirs = self.metadata.get("base_model") or "an unnamed model", _model_name(pipe) or "an unnamed model"
        where = f"directions in {self.source}" if self.source else "these directions"
        hidden = pipe.text_encoder.get_input_embeddings().embedding_dim
        if hidden != self.hidden_size:
            raise ValueError(f"{where} were trained for hidden size {self.hidden_size} ({mine}) but this pipeline's "
                             f"text encoder has {hidden} ({theirs}); load directions made for this model or retrain")
        expected = self.metadata.get("tokenizer_fingerprint")
        if expected and expected != tokenizer_fingerprint(pipe.tokenizer)[0]:
            raise ValueError(f"{where} were trained with the tokenizer of {mine} (fingerprint {expected}) but this "
                             f"pipeline ({theirs}) has a different tokenizer; load directions made for this model "
                             f"or retrain")

    def install(self, pipe) -> list[int]:
        """Add the tokens to ``pipe.tokenizer`` and write the K rows into its text encoder.

        Grows the embedding matrix if needed; only the K rows change (a token already
        present is overwritten).  Safe to call again, and with other sets.  Returns the K ids.
        """
        self.check_compatible(pipe)
        tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
        added = set(tokenizer.get_added_vocab())
        clash = [t for t in self.tokens if t in tokenizer.get_vocab() and t not in added]
        if clash:
            raise ValueError(f"tokens {clash} are words of the base vocabulary; installing would overwrite them. "
                             f"Rename the directions' tokens (e.g. create(..., prefix='mine'))")
        tokenizer.add_tokens([t for t in self.tokens if t not in added])
        ids = tokenizer.convert_tokens_to_ids(self.tokens)
        for token, i in zip(self.tokens, ids):
            if tokenizer(token, add_special_tokens=False).input_ids != [i]:
                raise ValueError(f"token {token!r} does not tokenize to its own id {i}; use a simpler prefix")
        old = text_encoder.get_input_embeddings()
        if old.num_embeddings < len(tokenizer):
            text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            text_encoder.get_input_embeddings().weight.requires_grad_(old.weight.requires_grad)
        weight = text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            weight[ids] = self.embeddings.to(weight.device, weight.dtype)
        return ids

    def conditioning(self, pipe, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """``c_k``: the text encoder's output [K, L, H] for each token in :attr:`context` (alone
        by default), tokenized as SD does.

        Installs the tokens first if ``pipe`` lacks them.  With ``embeddings`` ([K, H],
        possibly requiring grad) the K tokens read those rows instead of the stored ones and
        the result is differentiable w.r.t. them; no weight of the text encoder is changed.
        Returns the text encoder's dtype and device.
        """
        rows = self.embeddings if embeddings is None else embeddings
        if tuple(rows.shape) != tuple(self.embeddings.shape):
            raise ValueError(f"embeddings must be {tuple(self.embeddings.shape)} (one row per direction of this "
                             f"set); got {tuple(rows.shape)}. Pass rows of this set's shape, or None for its own")
        if any(t not in pipe.tokenizer.get_added_vocab() for t in self.tokens):
            self.install(pipe)
        ids = pipe.tokenizer.convert_tokens_to_ids(self.tokens)
        text_encoder = pipe.text_encoder
        original = text_encoder.get_input_embeddings()
        text_encoder.set_input_embeddings(_RowOverride(original, ids, rows))
        try:
            with torch.set_grad_enabled(embeddings is not None and torch.is_grad_enabled()):
                return _encode(pipe, self._prompts(pipe, ids))
        finally:
            text_encoder.set_input_embeddings(original)

    def _prompts(self, pipe, token_ids: list[int]) -> list[str]:
        """Each token in :attr:`context`; ValueError when the tokenizer's length limit cuts a token off
        (its prompt would then equal the reference, and its push would be zero without a word)."""
        prompts = [self.context.format(token) for token in self.tokens]
        limit = pipe.tokenizer.model_max_length
        checked = (self.context, tuple(self.tokens), tuple(token_ids), id(pipe.tokenizer), limit)
        if self.context != ALONE and checked != self._checked_prompts:
            kept = pipe.tokenizer(prompts, max_length=limit, truncation=True).input_ids
            cut = [p for p, ids, token_id in zip(prompts, kept, token_ids) if token_id not in ids]
            if cut:
                raise ValueError(f"the context {self.context!r} is too long for its tokens: the tokenizer keeps "
                                 f"{limit} tokens and cuts the token off {cut[0]!r}; shorten the context or put "
                                 f"'{{}}' earlier (Directions.create(..., context=...) or TrainConfig.context)")
            self._checked_prompts = checked
        return prompts

    def save(self, path: str | os.PathLike) -> Path:
        """Write one safetensors file ("embeddings" [K, H] + tokens, names, metadata); atomic."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "tokens": json.dumps(self.tokens),
                  "names": json.dumps(self.names), "metadata": json.dumps(self.metadata)}
        tmp = path.with_name(path.name + ".tmp")
        save_file({"embeddings": self.embeddings}, str(tmp), metadata=header)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Directions":
        """Read a file written by ``save``; errors name the file and what is wrong with it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"directions file {path} does not exist; give the .safetensors file that "
                                    f"Directions.save (or training) wrote")
        try:
            with safe_open(str(path), framework="pt") as f:
                header, keys = f.metadata() or {}, list(f.keys())
                embeddings = f.get_tensor("embeddings") if "embeddings" in keys else None
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path} is not a safetensors file ({e}); give a file written by Directions.save") from e
        if header.get("format") != FORMAT or embeddings is None:
            hint = (" It looks like a diffusers textual-inversion file: load it with "
                    "pipe.load_textual_inversion(...)." if len(keys) == 1 else "")
            raise ValueError(f"{path} is not a noiseclr_lite directions file (no '{FORMAT}' header or no "
                             f"'embeddings' tensor).{hint}")
        if header.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} has directions format version {header.get('format_version')}; this "
                             f"noiseclr_lite reads version {FORMAT_VERSION}; upgrade noiseclr_lite")
        return cls(embeddings, json.loads(header["tokens"]), json.loads(header["names"]),
                   json.loads(header["metadata"]), source=str(path))

    def export_textual_inversion(self, folder: str | os.PathLike) -> list[Path]:
        """Write diffusers textual-inversion files, one ``{token: tensor[H]}`` safetensors per direction.

        Load them into any pipeline of the same base model with
        ``pipe.load_textual_inversion([str(f) for f in files], token=tokens, use_safetensors=True)``.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = [folder / f"{k:03d}_{re.sub(r'[^A-Za-z0-9_-]', '', t) or 'token'}.safetensors"
                 for k, t in enumerate(self.tokens)]
        stale = sorted(set(folder.glob("*.safetensors")) - set(files))
        if stale:
            raise FileExistsError(f"{folder} already holds other embeddings {[p.name for p in stale]}; "
                                  f"export into an empty folder")
        for k, (token, file) in enumerate(zip(self.tokens, files)):
            save_file({token: self.embeddings[k].clone()}, str(file))
        (folder / "README.md").write_text(
            f"Textual-inversion embeddings {self.tokens} (names {self.names}) for "
            f"{self.metadata.get('base_model') or 'an unnamed model'}, hidden size {self.hidden_size}; load with "
            f"pipe.load_textual_inversion(files, token=tokens, use_safetensors=True).\n"
            + ("" if self.context == ALONE else f"They were trained in the prompt {self.context!r} ({{}} is the "
                                                f"token): use them in that prompt.\n"))
        return files

    @classmethod
    def from_official(cls, folder: str | os.PathLike, base_model: str | None = None,
                      prefix: str | None = None) -> "Directions":
        """Import the official NoiseCLR release: ``folder/text_encoder`` + ``folder/tokenizer`` with ``<t1>..<tK>``.

        Rows are read from the text encoder's input embeddings, ordered by k.  Tokens stay
        ``<tk>`` unless ``prefix`` renames them to ``<{prefix}_{k-1}>`` (so that two releases
        can be installed together); ``names`` keep the official tokens.
        """
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = Path(folder)
        missing = [sub for sub in ("text_encoder", "tokenizer") if not (folder / sub).is_dir()]
        if missing:
            raise FileNotFoundError(f"{folder} lacks {missing}; the official NoiseCLR release folder holds "
                                    f"text_encoder/ and tokenizer/ saved with save_pretrained")
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        matches = {i: re.fullmatch(r"<t(\d+)>", t) for t, i in tokenizer.get_added_vocab().items()}
        found = {int(m.group(1)): i for i, m in matches.items() if m}
        if not found:
            raise ValueError(f"{folder / 'tokenizer'} has no added tokens <t1>..<tK>; is this a NoiseCLR release?")
        order = sorted(found)
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
        embeddings = text_encoder.get_input_embeddings().weight.detach()[[found[k] for k in order]]
        fingerprint, vocab_size = tokenizer_fingerprint(tokenizer)
        official = [f"<t{k}>" for k in order]
        tokens = [f"<{prefix}_{k - 1}>" for k in order] if prefix else official
        metadata = {"base_model": base_model, "hidden_size": embeddings.shape[1], "tokenizer_vocab_size": vocab_size,
                    "tokenizer_fingerprint": fingerprint, "imported_from": str(folder)}
        return cls(embeddings, tokens, official, metadata, source=str(folder))


def textual_inversion_files(folder: str | os.PathLike) -> list[Path]:
    """The ``.safetensors`` files in ``folder`` (as written by ``export_textual_inversion``), sorted."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors textual-inversion files in {folder}; "
                                f"write them with Directions.export_textual_inversion")
    return files
