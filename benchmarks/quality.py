"""Direction quality against ground truth: NoiseCLR and its peers on one protocol.

    python benchmarks/quality.py --quick                      # smoke run: 1 seed, few images and steps
    python benchmarks/quality.py                              # the README's table: 4 domains, seeds 0-3
    python benchmarks/quality.py --domains face --seeds 0 1 2 --steps 500 --lr 3e-2 --tag lr3e-2
    python benchmarks/quality.py --model PATH --oracle PATH   # another model / oracle (e.g. a test model)
    python benchmarks/quality.py --sweep-table                # settings vs NoiseCLR's numbers, every report
    python benchmarks/quality.py --merge TAG1 TAG2 --tag BOTH  # pool two reports' seeds or methods (same protocol)
    python benchmarks/quality.py --resume --processes 2       # the domains split over two processes

For every domain (face, cat, car, painting) the same held-out starting images, balanced over
every attribute's values, are inverted once (edit-friendly DDPM inversion), and five kinds
of directions are scored on them with the two-sided protocol of ``noiseclr_lite.metrics``
(each direction's scale calibrated to a common mean pixel change, then edits at +s and -s
read by the attribute oracle):

* NoiseCLR   -- K tokens trained with the official loss on ``data/samples/<domain>``;
* InfoNCE    -- the same, with the standard InfoNCE variant of the loss;
* random     -- the K random rows NoiseCLR started from (same seed), each rescaled to the
                trained NoiseCLR directions' mean norm: the floor (what training bought);
* text       -- each attribute's own phrase ("smiling", "striped") as a direction: the
                supervised ceiling (deterministic: scored once);
* h-space    -- Haas et al. 2023: the top-K principal components of the UNet's middle-block
                output over the same sample folder, added to it during denoising
                (``noiseclr_lite.hspace``): a published unsupervised peer.

Seeded methods run once per ``--seeds`` value; tables give mean ± standard deviation over
seeds.  With face and cat among the domains, every face and cat direction is also applied
(at the scale calibrated in its own domain) to face+cat scenes, to measure how much it
leaks onto the other subject.  Outputs, under ``--out`` (default ``benchmarks/results/``):
``quality.md`` (tables, bars, settings, date, wall time per stage), ``quality.json.gz`` (every
score: gzip-compressed JSON, about a sixth of its plain size; :func:`read_report` reads it) and
``quality_<domain>.png`` (each method's best and worst direction at -s, 0, +s).
With ``--resume`` every finished (domain, method, seed) unit is read back from
``<out>/cache/`` instead of being recomputed.  Trained directions are kept apart from their
scores, under a key of the training settings only (``Settings.training_fingerprint``), so a
run that changes only the protocol (calibration, images, window) scores the same trained
directions again instead of retraining them.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/quality.py` from anywhere
    sys.path.insert(0, str(REPO))

from noiseclr_lite.metrics import (STRENGTH_MIN, PURITY_MIN, DirectionScore, PromptDirections, StartSet,  # noqa: E402
                                   aggregate_summaries, balanced_start_images, coverage,
                                   cross_domain_interference, expected_subset_coverage, format_table,
                                   images_to_tensor, prepare_start, reached_purity, score_direction,
                                   score_rendered, summary)
from noiseclr_lite.models import image_size  # noqa: E402
from noiseclr_lite.train import EDIT_SPACES, PARAMETERIZATIONS, TrainConfig, check_config  # noqa: E402
from noiseclr_lite.toyworld.domains import get_domain  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DEFAULT_ORACLE = str(REPO / "data" / "models" / "oracle")
DEFAULT_SAMPLES = str(REPO / "data" / "samples")
DOMAINS = ["face", "cat", "car", "painting"]
METHODS = ["NoiseCLR", "InfoNCE", "random", "text", "h-space"]
SEEDED = {"NoiseCLR", "InfoNCE", "random", "h-space"}  # text prompts are deterministic: one run
#: the report compares NoiseCLR with the floor and the ceiling, so a run always has these three
REQUIRED_METHODS = ["NoiseCLR", "random", "text"]
#: a margin over random is "clear" when it is at least this and larger than its seed spread
CLEAR_MARGIN = 0.10
#: the bars of issue 5, for NoiseCLR over all domains
BARS = {"coverage": 0.75, "mean_purity": 0.7, "text_purity_share": 0.8}
#: a calibrated direction whose pixel change is off the target by more than this share is counted
MISCALIBRATION = 0.25
# the gain term's share before --gain-top-share existed: what reports and caches without the key used,
# whatever TrainConfig's default becomes
GAIN_SHARE_BEFORE_OPTION = 0.25


# ===================================================================================== settings
@dataclass
class Settings:
    """Every knob of a run (recorded in the outputs).  See ``--help`` for each one."""

    domains: list = field(default_factory=lambda: list(DOMAINS))
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    methods: list = field(default_factory=lambda: list(METHODS))
    interference: bool = True
    # training (NoiseCLR and InfoNCE)
    num_directions: int = 8
    steps: int = 300
    learning_rate: float = 1e-2
    timestep_range: tuple = (0, 1000)
    batch_size: int = 6
    negatives: int | None = None          # None = contrast every direction each step
    tau: float = 0.5
    anchors: str = "one"                  # "one" (official) or "all" (train.TrainConfig.anchors)
    init: str = "random"                  # "random" or "vocab" (directions.Directions.create)
    strength_weight: float = 0.0          # > 0: the push-strength term (train.TrainConfig.strength_weight)
    gain_weight: float = 0.0              # > 0: the denoising-gain term (train.TrainConfig.gain_weight)
    gain_top_share: float = TrainConfig.gain_top_share  # the share of a step's images its gain is scored on
    gain_two_sided: bool = False          # True: each image's gain from +D or -D (train.TrainConfig.gain_two_sided)
    sign_blind_negatives: bool = False    # True: negatives scored by |cos| (train.TrainConfig.sign_blind_negatives)
    center_edits: bool = False            # True: contrast the centred edits (train.TrainConfig.center_edits)
    edit_space: str = "eps"               # "eps" (official) or "hspace": what edits are compared in (train.EDIT_SPACES)
    parameterization: str = "embedding"   # "embedding" (official) or "vocab-mixture" (train.PARAMETERIZATIONS)
    context: str = "alone"                # "alone" or "caption": the prompt tokens are used in (direction_context)
    train_images: int | None = None       # None = the whole sample folder
    # the protocol
    eval_images: int = 16
    start_seed: int = 0
    inference_steps: int = 20
    target_change: float = 0.05
    max_scale: float = 16.0
    hspace_max_scale: float = 4.0
    min_scale: float = 0.0                # > 0: calibration bisects [min_scale, max_scale] log-spaced
    hspace_min_scale: float = 0.0         # the same for h-space directions
    calibration_images: int = 4
    calibration_iters: int = 7
    window: tuple = (1.0, 0.0)
    hspace_timesteps: tuple = (800, 600, 400, 200)
    text_phrases: str = "positive"        # "positive", "both" or "caption" (text_directions)
    interference_images: int = 8
    grid_images: int = 3
    # where things are
    model: str = ""
    oracle: str = ""
    samples: str = DEFAULT_SAMPLES
    quick: bool = False

    def train_overrides(self, loss: str, seed: int) -> dict:
        """Keyword overrides for ``train_directions`` (everything but the prefix)."""
        return {"num_directions": self.num_directions, "steps": self.steps, "learning_rate": self.learning_rate,
                "timestep_range": tuple(self.timestep_range), "batch_size": self.batch_size,
                "negatives_per_step": self.negatives, "tau": self.tau, "anchors": self.anchors, "loss": loss,
                "init": self.init, "strength_weight": self.strength_weight, "gain_weight": self.gain_weight,
                "gain_top_share": self.gain_top_share, "gain_two_sided": self.gain_two_sided,
                "sign_blind_negatives": self.sign_blind_negatives, "center_edits": self.center_edits,
                "edit_space": self.edit_space, "parameterization": self.parameterization, "seed": seed}

    def fingerprint(self, weights: str = "") -> str:
        """Hash of every setting that changes a (domain, method, seed) result (for ``--resume``),
        and of ``weights`` (:func:`cache_key`): paths alone would let a retrained model or
        oracle in the same folder read back scores measured with the old one."""
        skip = {"domains", "seeds", "methods", "interference", "grid_images", "interference_images", "quick"}
        kept = {k: v for k, v in asdict(self).items() if k not in skip}
        kept["weights"] = weights
        for key, before in (("anchors", "one"), ("init", "random"), ("strength_weight", 0.0), ("gain_weight", 0.0),
                            ("gain_top_share", GAIN_SHARE_BEFORE_OPTION), ("gain_two_sided", False),
                            ("min_scale", 0.0), ("hspace_min_scale", 0.0),
                            ("sign_blind_negatives", False), ("context", "alone"),
                            ("center_edits", False), ("edit_space", "eps"), ("parameterization", "embedding")):
            if kept[key] == before:  # the setting before the option existed: keep those caches valid
                del kept[key]
        if "context" in kept:
            kept["context"] = CONTEXT_KEYS[self.context]
        # the words change only the text units, whose file names carry any other phrase set
        # (Cache.text_name): hashed as the default, so every other method's scores are shared
        kept["text_phrases"] = "positive"
        return hashlib.sha256(json.dumps(kept, sort_keys=True, default=list).encode()).hexdigest()[:12]

    def training_fingerprint(self, weights: str = "") -> str:
        """Hash of the settings that change the *trained* directions (NoiseCLR, InfoNCE, h-space;
        random ones are drawn from the NoiseCLR set), not how they are scored: the key of the
        trained-directions cache, shared by every protocol."""
        kept = {k: v for k, v in self.train_overrides("noiseclr", 0).items() if k not in ("loss", "seed")}
        for option in ("sign_blind_negatives", "center_edits", "gain_weight", "gain_two_sided"):
            if not kept[option]:  # the setting before the option existed: keep those caches valid
                del kept[option]
        if kept["gain_top_share"] == GAIN_SHARE_BEFORE_OPTION:  # the same
            del kept["gain_top_share"]
        if kept["edit_space"] == "eps":  # the same
            del kept["edit_space"]
        if kept["parameterization"] == "embedding":  # the same
            del kept["parameterization"]
        if self.context != "alone":  # the same: directions trained alone keep their cache
            kept["context"] = CONTEXT_KEYS[self.context]
        kept.update(train_images=self.train_images, hspace_timesteps=self.hspace_timesteps, model=self.model,
                    samples=self.samples, weights=weights)
        return hashlib.sha256(json.dumps(kept, sort_keys=True, default=list).encode()).hexdigest()[:12]


@dataclass
class Cache:
    """Where ``--resume`` keeps things: ``scores`` (one folder per :meth:`Settings.fingerprint`)
    and ``trained`` directions with their training checkpoints (one folder per
    :meth:`Settings.training_fingerprint`, named ``trained-<key>``).  ``text_name`` names the text
    units' files: the words are left out of the scores' key, so that other phrase sets share
    every other method's scores, and a phrase set other than the default names its own
    (``text-caption``)."""

    scores: Path
    trained: Path
    text_name: str = "text"

    @classmethod
    def for_settings(cls, root: Path, settings: Settings, weights: str) -> "Cache":
        """The cache of one protocol under ``root``: scores keyed by every setting and the weights,
        trained directions by the training settings and the weights only."""
        text_name = "text" if settings.text_phrases == "positive" else f"text-{settings.text_phrases}"
        return cls(root / settings.fingerprint(weights), root / f"trained-{settings.training_fingerprint(weights)}",
                   text_name)

    def unit_name(self, method: str) -> str:
        """The name ``method``'s units are cached under (``text_name`` for the words)."""
        return self.text_name if method == "text" else method


def cache_key(pipe, oracle) -> str:
    """``models.weights_key`` of everything a score depends on: the text encoder, the UNet, the VAE
    (edits are decoded by it, so a fine-tuned decoder changes every score) and the oracle."""
    from noiseclr_lite.models import weights_key

    if isinstance(oracle, torch.nn.Module):
        return weights_key(pipe.text_encoder, pipe.unet, pipe.vae, oracle)
    # a stand-in without weights (the tests'): its type is all there is
    return weights_key(pipe.text_encoder, pipe.unet, pipe.vae) + type(oracle).__qualname__


#: defaults of a full run and of ``--quick`` (explicit flags override either).  A full run is the
#: main README's headline protocol (K = 6, 150 steps, seeds 0-3, 8 images, 10 sampler steps, every
#: scale calibrated in the log-spaced bracket [0.125, 256] on 2 images), so that the bare command
#: reproduces its table; the :class:`Settings` defaults stay those of the first reports, which older
#: report files are read with.  The bracket [0, 16] of those reports saturated most directions and
#: flattered NoiseCLR (``benchmarks/quality-findings.md``), so neither default uses it any more.
LOG_BRACKET = {"min_scale": 0.125, "max_scale": 256.0, "hspace_min_scale": 0.0625, "hspace_max_scale": 16.0}
FULL = {"seeds": [0, 1, 2, 3], "num_directions": 6, "steps": 150, "eval_images": 8, "inference_steps": 10,
        "calibration_images": 2, "calibration_iters": 6, "interference_images": 4, "grid_images": 3, **LOG_BRACKET}
QUICK = {"seeds": [0], "num_directions": 3, "steps": 10, "eval_images": 4, "inference_steps": 6,
         "calibration_images": 2, "calibration_iters": 3, "interference_images": 4, "grid_images": 2, **LOG_BRACKET}


# ===================================================================================== timing
class Stages:
    """Wall time of every stage, in order: ``with stages("face: train NoiseCLR seed 0"): ...``."""

    def __init__(self, log: Callable[[str], None] = print):
        self.seconds: dict[str, float] = {}
        self.log = log
        self.started = time.perf_counter()

    @contextmanager
    def __call__(self, name: str):
        self.log(f"[{time.perf_counter() - self.started:8.1f} s] {name} ...")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 2)

    @property
    def total(self) -> float:
        """Seconds since this run started, rounded to 0.01."""
        return round(time.perf_counter() - self.started, 2)


# ===================================================================================== rendering and scoring
def render(pipe, directions, index: int, scale: float, start: StartSet,
           window: tuple[float, float]) -> torch.Tensor:
    """The start images edited by one direction at ``scale``: float [M, 3, H, W] in [-1, 1].

    ``directions`` is a ``Directions`` / ``PromptDirections`` (a token or prompt edit through
    ``noiseclr_lite.editing.edit``) or a tensor [K, C, h', w'] of h-space directions (an
    offset on the UNet's middle block, ``noiseclr_lite.hspace``).  Scale 0 = the unedited
    reconstruction, as in ``metrics.score_direction``.
    """
    from noiseclr_lite.editing import DirectionEdit, edit
    from noiseclr_lite.hspace import edit_hspace

    if scale == 0:
        return start.images
    if isinstance(directions, torch.Tensor):
        return images_to_tensor(edit_hspace(pipe, directions[index], scale, window, inversion=start.inversion))
    return images_to_tensor(edit(pipe, [DirectionEdit(directions, index, scale, window)], inversion=start.inversion))


def score_one(pipe, oracle, directions, index: int, start: StartSet, domain: str, settings: Settings,
              scale: float | None = None) -> DirectionScore:
    """Score direction ``index`` of any method: calibrated (``scale=None``) or at a fixed scale."""
    amount = {"target_change": settings.target_change} if scale is None else {"scale": scale}
    if isinstance(directions, torch.Tensor):  # h-space
        return score_rendered(lambda s, st: render(pipe, directions, index, s, st, settings.window), oracle, start,
                              domain, f"pc{index}", f"h-space pc{index}",
                              calibration_images=settings.calibration_images, max_scale=settings.hspace_max_scale,
                              min_scale=settings.hspace_min_scale, calibration_iters=settings.calibration_iters,
                              **amount)
    return score_direction(pipe, oracle, directions, index, start, domain, window=tuple(settings.window),
                           calibration_images=settings.calibration_images, max_scale=settings.max_scale,
                           min_scale=settings.min_scale, calibration_iters=settings.calibration_iters, **amount)


# ===================================================================================== the methods
#: the phrase sets of the text ceiling (``--text-phrases``, :func:`text_directions`)
TEXT_PHRASES = ("positive", "both", "caption")


def text_directions(domain: str, phrases: str = "positive") -> PromptDirections:
    """Each attribute's own words as directions (the supervised ceiling).

    ``"positive"``: the phrase of value 1 of each attribute ("smiling", "striped"), the value
    whose probability the oracle reads (two-sided scoring covers the other side);
    ``"both"``: both phrases of every attribute ("frowning" and "smiling", ...);
    ``"caption"``: the value-1 phrase as the bundled model's captions put it, after the domain's
    noun ("a car, night"): every training caption starts with the noun, so the bare word is a
    prompt the model never saw alone (the bare "night" barely darkens an inverted day car).
    The directions are named by the phrase alone in every case.
    """
    if phrases not in TEXT_PHRASES:
        raise ValueError(f"text phrases must be one of {', '.join(TEXT_PHRASES)}; got {phrases!r}")
    dom = get_domain(domain)
    chosen = [v for values in dom.attributes.values() for v in (values if phrases == "both" else values[1:2])]
    if phrases == "caption":
        return PromptDirections([f"{dom.noun}, {v}" for v in chosen], names=chosen)
    return PromptDirections(chosen)


CONTEXTS = ("alone", "caption")
#: what the cache keys hash for a context other than "alone": the first "caption" runs measured the
#: push from the empty prompt (commit a5cea54); since then the push is measured from the context without
#: the token ("a car"): other directions and other scores, so another key
CONTEXT_KEYS = {"caption": {"context": "caption", "reference": "the context without the token"}}


def direction_context(domain: str, context: str = "alone") -> str:
    """The prompt a trained (or random) direction's token is used in, ``{}`` for the token:
    ``"alone"``: ``"{}"``, the token is the whole prompt (the official NoiseCLR);
    ``"caption"``: after the domain's noun, as the bundled model's captions put their words
    (``"a car, {}"``, the words' ``"caption"`` phrases); the token's push is then measured
    from the noun alone (``Directions.reference_prompt``)."""
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {', '.join(CONTEXTS)}; got {context!r}")
    return f"{get_domain(domain).noun}, {{}}" if context == "caption" else "{}"


def matched_random(pipe, reference, seed: int, prefix: str, init: str = "random"):
    """Random token rows (the init ``train_directions`` starts from with ``seed`` and ``init``),
    each rescaled to the mean row norm of ``reference`` (the trained directions) and used in the
    same prompt context."""
    from noiseclr_lite.directions import Directions

    rows = Directions.create(pipe, reference.num_directions, prefix=prefix, init=init, seed=seed,
                             context=reference.context)
    target = reference.embeddings.norm(dim=1).mean()
    rows.embeddings = rows.embeddings / rows.embeddings.norm(dim=1, keepdim=True) * target
    rows.metadata["matched_norm"] = float(target)
    return rows


@dataclass
class MethodRun:
    """One method's directions for one domain and seed, and how they scored."""

    method: str
    domain: str
    seed: int | None
    directions: object  # Directions | PromptDirections | h-space tensor [K, C, h', w']
    scores: list
    summary: dict
    seconds: dict = field(default_factory=dict)
    cached: bool = False

    def to_json(self) -> dict:
        """This unit as plain JSON (what the cache and the report store; :meth:`from_json` reads it back)."""
        return {"method": self.method, "domain": self.domain, "seed": self.seed, "summary": self.summary,
                "seconds": self.seconds, "cached": self.cached, "scores": [asdict(s) for s in self.scores]}

    @classmethod
    def from_json(cls, saved: dict) -> "MethodRun":
        """A run read back from a report or the cache (:meth:`to_json`); its directions are not
        stored there, so ``directions`` is None."""
        return cls(saved["method"], saved["domain"], saved["seed"], None,
                   [DirectionScore(**s) for s in saved["scores"]], saved["summary"], saved["seconds"],
                   cached=saved.get("cached", False))


def _cache_paths(cache: Cache | None, domain: str, method: str, seed):
    if cache is None:
        return None, None
    stem = f"{domain}_{cache.unit_name(method)}_seed{seed}"
    return cache.scores / f"{stem}.json", (cache.trained / f"{stem}.safetensors" if method != "text" else None)


def _save_directions(directions, cache: Cache | None, domain: str, method: str, seed) -> None:
    _, directions_file = _cache_paths(cache, domain, method, seed)
    if directions_file is None:
        return
    directions_file.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(directions, torch.Tensor):
        from safetensors.torch import save_file

        tmp = directions_file.with_name(directions_file.name + ".tmp")
        save_file({"directions": directions.contiguous()}, str(tmp))
        os.replace(tmp, directions_file)
    else:
        directions.save(directions_file)  # atomic


def _load_directions(cache: Cache | None, domain: str, method: str, seed):
    """Saved directions of a unit (trained but maybe not yet scored), or None."""
    _, directions_file = _cache_paths(cache, domain, method, seed)
    if directions_file is not None and not directions_file.exists():
        # caches written before trained directions had their own folder kept them with the scores
        directions_file = cache.scores / directions_file.name
    if directions_file is None or not directions_file.exists():
        return None
    if method == "h-space":
        from safetensors.torch import load_file

        return load_file(str(directions_file))["directions"]
    from noiseclr_lite.directions import Directions

    return Directions.load(directions_file)


def _save_unit(run: MethodRun, cache: Cache | None) -> None:
    scores_file, _ = _cache_paths(cache, run.domain, run.method, run.seed)
    if scores_file is None:
        return
    _save_directions(run.directions, cache, run.domain, run.method, run.seed)
    scores_file.parent.mkdir(parents=True, exist_ok=True)
    # written last: a unit counts as done only once its scores are saved
    write_atomically(scores_file, json.dumps(run.to_json(), indent=1))


def _load_unit(cache: Cache | None, domain: str, method: str, seed, text: PromptDirections | None) -> MethodRun | None:
    scores_file, _ = _cache_paths(cache, domain, method, seed)
    if scores_file is None or not scores_file.exists():
        return None
    directions = text if method == "text" else _load_directions(cache, domain, method, seed)
    if directions is None:  # its directions file is gone: score the unit again (figures render its directions)
        return None
    run = MethodRun.from_json(json.loads(scores_file.read_text()))
    run.directions = directions
    run.cached = True
    return run


TRAINED_LOSSES = {"NoiseCLR": "noiseclr", "InfoNCE": "infonce"}


def training_latents(pipe, settings: Settings, domain: str) -> torch.Tensor:
    """[N, 4, h, w] latents of the images the trained methods learn from: ``settings.samples/<domain>``,
    its first ``settings.train_images`` when set."""
    from noiseclr_lite.data import load_images
    from noiseclr_lite.models import encode_images

    pictures = load_images(Path(settings.samples) / domain, image_size(pipe))
    return encode_images(pipe, pictures[:settings.train_images] if settings.train_images else pictures)


def load_or_train(pipe, settings: Settings, domain: str, method: str, seed: int, latents: Callable[[], torch.Tensor],
                  stages: Stages, cache: Cache | None = None, progress: bool = True) -> tuple:
    """A trained method's directions for one domain and seed: read from the cache, or trained
    (checkpointed into the cache, so an interrupted run resumes) and saved there.

    Args:
        method: ``"NoiseCLR"`` or ``"InfoNCE"``.
        latents: called only when training is needed; returns the [N, 4, h, w] training latents.
    Returns:
        (``Directions``, training seconds, or None when read from the cache).
    """
    from noiseclr_lite.train import train_directions

    trained = _load_directions(cache, domain, method, seed)
    if trained is not None:
        return trained, None
    label = f"{domain}: train {method} seed {seed}"
    checkpoints = cache.trained / f"{domain}_{method}_seed{seed}.ckpt" if cache is not None else None
    train_latents = latents()  # before the stage opens: encoding is not training time
    with stages(label):
        trained = train_directions(pipe, latents=train_latents, progress=progress,
                                   prefix=f"{domain}_{method.lower()}{seed}", output_dir=checkpoints,
                                   resume=checkpoints is not None, context=direction_context(domain, settings.context),
                                   **settings.train_overrides(TRAINED_LOSSES[method], seed))
    _save_directions(trained, cache, domain, method, seed)
    return trained, stages.seconds[label]


def domain_start(pipe, settings: Settings, domain: str) -> StartSet:
    """The held-out starting images every direction of ``domain`` is scored on, inverted once:
    ``settings.eval_images`` images balanced over every attribute's values."""
    images, _ = balanced_start_images(domain, settings.eval_images, seed=settings.start_seed, size=image_size(pipe))
    return prepare_start(pipe, images, num_inference_steps=settings.inference_steps, seed=settings.start_seed)


def run_domain(pipe, oracle, domain: str, settings: Settings, stages: Stages, cache: Cache | None = None,
               progress: bool = True) -> tuple[StartSet, dict[str, list[MethodRun]]]:
    """Every method on one domain: {method: [MethodRun per seed]} and the shared start set."""
    from tqdm.auto import tqdm

    from noiseclr_lite.hspace import hspace_directions

    with stages(f"{domain}: start images + inversion"):
        start = domain_start(pipe, settings, domain)
    latents = None
    text = text_directions(domain, settings.text_phrases)
    runs: dict[str, list[MethodRun]] = {m: [] for m in settings.methods}

    def scored(method, seed, directions, train_seconds=None) -> MethodRun:
        k_total = directions.shape[0] if isinstance(directions, torch.Tensor) else directions.num_directions
        label = f"{domain}: score {method}" + (f" seed {seed}" if seed is not None else "")
        with stages(label):
            t0 = time.perf_counter()
            scores = [score_one(pipe, oracle, directions, k, start, domain, settings)
                      for k in tqdm(range(k_total), desc=label, disable=not progress)]
            seconds = {"score": round(time.perf_counter() - t0, 2)}
        if train_seconds is not None:
            seconds["train"] = train_seconds
        run = MethodRun(method, domain, seed, directions, scores, summary(scores, domain), seconds)
        _save_unit(run, cache)
        return run

    def sample_latents():
        nonlocal latents
        if latents is None:
            with stages(f"{domain}: load + encode {settings.samples}/{domain}"):
                latents = training_latents(pipe, settings, domain)
        return latents

    for seed in settings.seeds:
        for method in TRAINED_LOSSES:
            if method not in runs:
                continue
            run = _load_unit(cache, domain, method, seed, text)
            if run is None:
                trained, train_seconds = load_or_train(pipe, settings, domain, method, seed, sample_latents, stages,
                                                       cache, progress)
                run = scored(method, seed, trained, train_seconds)
            runs[method].append(run)
        if "random" in runs:  # drawn from this seed's NoiseCLR set, rescaled to its norms
            run = _load_unit(cache, domain, "random", seed, text)
            if run is None:
                reference = runs["NoiseCLR"][-1].directions
                run = scored("random", seed, matched_random(pipe, reference, seed, f"{domain}_random{seed}",
                                                            settings.init))
            runs["random"].append(run)
        if "h-space" in runs:
            run = _load_unit(cache, domain, "h-space", seed, text)
            if run is None:
                components, pca_seconds = _load_directions(cache, domain, "h-space", seed), None
                if components is None:
                    label = f"{domain}: h-space PCA seed {seed}"
                    with stages(label):
                        components = hspace_directions(pipe, sample_latents(), settings.num_directions,
                                                       settings.hspace_timesteps, seed=seed)
                    pca_seconds = stages.seconds[label]
                run = scored("h-space", seed, components, pca_seconds)
            runs["h-space"].append(run)
    if "text" in runs:
        runs["text"].append(_load_unit(cache, domain, "text", None, text) or scored("text", None, text))
    return start, runs


# ===================================================================================== interference
def run_interference(pipe, oracle, face_runs, cat_runs, settings: Settings, stages: Stages,
                     cache: Cache | None = None, progress: bool = True) -> dict:
    """Face and cat directions applied to face+cat scenes at their own calibrated scales.

    Returns {method: {"runs": [{seed, face_leak, cat_leak, leak}], "face_leak"|"cat_leak"|"leak":
    (mean, std) over seeds}}; leak = the other subject's share of a direction's effect
    (``metrics.cross_domain_interference``), averaged over the set's directions.
    """
    from tqdm.auto import tqdm

    size = image_size(pipe)
    names = get_domain("scene").attribute_names
    start = None
    out = {}
    for method in settings.methods:
        per_seed = []
        for face_run, cat_run in zip(face_runs[method], cat_runs[method]):
            saved = (cache.scores / f"scene{settings.interference_images}_{cache.unit_name(method)}_seed"
                     f"{face_run.seed}.json" if cache is not None else None)
            if saved is not None and saved.exists():
                per_seed.append(json.loads(saved.read_text()))
                continue
            if start is None:
                with stages("scene: start images + inversion"):
                    images, _ = balanced_start_images("scene", settings.interference_images, seed=settings.start_seed,
                                                      size=size)
                    start = prepare_start(pipe, images, num_inference_steps=settings.inference_steps,
                                          seed=settings.start_seed)
            label = f"scene: {method}" + (f" seed {face_run.seed}" if face_run.seed is not None else "")
            row = {"seed": face_run.seed}
            with stages(label):
                for subject, run in (("face", face_run), ("cat", cat_run)):
                    leaks = []
                    for k, own in enumerate(tqdm(run.scores, desc=label, disable=not progress)):
                        on_scene = score_one(pipe, oracle, run.directions, k, start, "scene", settings, scale=own.scale)
                        leaks.append(cross_domain_interference(on_scene.effects, names, subject).leak)
                    row[f"{subject}_leak"] = statistics.mean(leaks)
            row["leak"] = (row["face_leak"] + row["cat_leak"]) / 2
            per_seed.append(row)
            if saved is not None:
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_text(json.dumps(row))
        out[method] = {"runs": per_seed, **{key: _mean_std([r[key] for r in per_seed])
                                            for key in ("face_leak", "cat_leak", "leak")}}
    return out


# ===================================================================================== the report
def _mean_std(values) -> tuple[float, float]:
    values = [float(v) for v in values]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _mean(value) -> float:
    return value[0] if isinstance(value, (tuple, list)) else float(value)


def miscalibrated(scores, target_change: float, tolerance: float = MISCALIBRATION) -> int:
    """How many (unsaturated) directions ended more than ``tolerance`` (relative) away from the
    target pixel change: the bisection's closest scale was not close (raise --calibration-iters)."""
    return sum(not s.saturated and abs(s.pixel_change - target_change) > tolerance * target_change for s in scores)


def domain_table(runs: dict[str, list[MethodRun]], target_change: float) -> list[dict]:
    """One row per method: ``metrics.aggregate_summaries`` over its seeds, plus counts over every
    seed of saturated and miscalibrated directions, and the purity of the directions that reached
    the target change (``metrics.reached_purity``, pooled over seeds)."""
    rows = []
    for method in METHODS:
        if runs.get(method):
            row = {"method": method, **aggregate_summaries([r.summary for r in runs[method]])}
            row["saturated"] = sum(r.summary["saturated"] for r in runs[method])  # over every seed
            row["miscalibrated"] = sum(miscalibrated(r.scores, target_change) for r in runs[method])
            row["purity_reached"] = reached_purity([s for r in runs[method] for s in r.scores])[0]
            rows.append(row)
    return rows


def is_clear(*margins: tuple[float, float]) -> bool:
    """Whether every (mean, std over seeds) margin over random is clear: at least CLEAR_MARGIN and
    larger than its spread (the issue's "clear margin" needs both coverage and purity)."""
    return all(mean >= CLEAR_MARGIN and mean > spread for mean, spread in margins)


def margin_over_each(value: float, floors: Sequence[float]) -> tuple[float, float]:
    """A one-run method's margin over a seeded one: ``value`` minus each of ``floors`` (one per
    seed), as (mean, std). The words' text ceiling is deterministic, so its spread is the floor's."""
    return _mean_std([value - floor for floor in floors])


def direction_coverage(scores: list[DirectionScore], domain: str) -> list[set[str]]:
    """The attributes each direction covers on its own (``metrics.coverage`` of its one row): its
    target, or nothing if it is too weak or too impure."""
    names = get_domain(domain).attribute_names
    return [set(coverage([[s.effects[n] for n in names]], names)[1]) for s in scores]


def words_sized_floor(covered_per_seed: list[list[set[str]]], n_words: int, domain: str) -> list[float]:
    """Per seed of random tokens, the coverage that ``n_words`` of its tokens reach on average
    (``metrics.expected_subset_coverage``): the floor for a set as small as the domain's words.

    ``covered_per_seed`` holds, per seed, what each random token covers (:func:`direction_coverage`,
    or its union over the rungs of a ladder). A seed with fewer tokens than ``n_words`` gives its
    whole set's coverage: no larger draw exists.

    The floor is an expectation over draws, so its spread over seeds is smaller than that of one
    actual draw of ``n_words`` tokens: "above its spread" is the looser test against this floor."""
    names = get_domain(domain).attribute_names
    return [expected_subset_coverage(covered, names, min(n_words, len(covered))) for covered in covered_per_seed]


def compare(runs: dict[str, list[MethodRun]]) -> dict:
    """NoiseCLR against the floor and the ceiling on one domain (paired by seed).

    Returns {"coverage_margin_over_random", "mean_purity_margin_over_random": (mean, std) of
    NoiseCLR minus random, seed by seed; "clear_margin": both clear (:func:`is_clear`);
    "text_purity_share": NoiseCLR's mean purity over the words', (mean, std) over seeds; and the
    words held to the same rule against the same floor: "text_coverage_margin_over_random",
    "text_mean_purity_margin_over_random", "text_clear_margin"; against random sets of the words'
    own size, "text_coverage_margin_over_sized_random" and "text_sized_clear_margin"; and
    "text_directions", "random_directions": the two set sizes}.
    """
    nclr, rand, text = runs["NoiseCLR"], runs["random"], runs["text"][0]
    text_purity = text.summary["mean_purity"]
    out = {}
    for key in ("coverage", "mean_purity"):
        diffs = [a.summary[key] - b.summary[key] for a, b in zip(nclr, rand)]
        out[f"{key}_margin_over_random"] = _mean_std(diffs)
    out["clear_margin"] = is_clear(out["coverage_margin_over_random"], out["mean_purity_margin_over_random"])
    shares = [r.summary["mean_purity"] / text_purity if text_purity > 0 else float("nan") for r in nclr]
    out["text_purity_share"] = _mean_std(shares)
    # The words against the same floor by the same rule: where even the supervised ceiling is not
    # clear, the bar measures how high random tokens reach on this model rather than a method.
    for key in ("coverage", "mean_purity"):
        out[f"text_{key}_margin_over_random"] = margin_over_each(text.summary[key], [r.summary[key] for r in rand])
    out["text_clear_margin"] = is_clear(out["text_coverage_margin_over_random"],
                                        out["text_mean_purity_margin_over_random"])
    # Coverage grows with the size of a set, so the words (one per attribute) are also held against
    # random sets of their own size. A random subset's mean purity has the random set's mean as its
    # expectation, so the purity margin is the same one.
    out["text_directions"], out["random_directions"] = len(text.scores), len(rand[0].scores)
    floors = words_sized_floor([direction_coverage(r.scores, r.domain) for r in rand], len(text.scores), text.domain)
    out["text_coverage_margin_over_sized_random"] = margin_over_each(text.summary["coverage"], floors)
    out["text_sized_clear_margin"] = is_clear(out["text_coverage_margin_over_sized_random"],
                                              out["text_mean_purity_margin_over_random"])
    return out


def words_rule_lines(rows: dict[str, dict]) -> list[str]:
    """Markdown: the attributes' own words held to the clear-margin rule against random tokens, per
    domain. ``rows`` maps a domain to {"coverage", "purity": the words' margins over random, (mean,
    std); "clear"; and, where measured, "sized_coverage" and "sized_clear": against random sets of
    the words' size, "words" and "tokens": the two sizes}."""
    if not rows:
        return []
    sized = all("sized_coverage" in row for row in rows.values())
    lines = ["| domain | the words' coverage margin over random | their purity margin | clear? |"
             + (" coverage margin over random sets of the words' size | clear against those? |" if sized else ""),
             "|---|---|---|---|" + ("---|---|" if sized else "")]
    for domain, row in rows.items():
        line = (f"| {domain} | {_pm(row['coverage'])} | {_pm(row['purity'])} | "
                f"{'yes' if row['clear'] else '**no**'} |")
        if sized:
            line += (f" {_pm(row['sized_coverage'])} ({min(row['words'], row['tokens'])} tokens of {row['tokens']}) | "
                     f"{'yes' if row['sized_clear'] else '**no**'} |")
        lines.append(line)
    not_clear = sum(not row["clear"] for row in rows.values())
    text = (f"The attributes' own words (the supervised ceiling, one run) held to the same rule against the same "
            f"random floor, their value minus each of random's seeds (so the spread is random's): a domain where "
            f"even they are not clear ({not_clear} of {len(rows)} here) tells how high random tokens reach on this "
            f"model. The rule reads the unrounded margins (a purity margin of 0.098 shows as +0.10 and is not clear).")
    if sized:
        not_sized = sum(not row["sized_clear"] for row in rows.values())
        sizes = sorted({(row["words"], row["tokens"]) for row in rows.values()})
        text += (" Coverage counts what some direction of a set covers, so a larger set gets more tries ("
                 + ", ".join(f"{words} words against {tokens} random tokens" for words, tokens in sizes)
                 + "); the last two columns compare the words with the coverage that random sets of the words' size "
                   "reach on average, drawn from each seed's tokens (`metrics.expected_subset_coverage`; a subset's "
                   "mean purity is on average the set's, so the purity margin is the same): not clear in "
                 + f"{not_sized} of {len(rows)}. That floor is an average over draws, so its spread over seeds is "
                   "smaller than one draw's, and \"above its spread\" is the looser test against it.")
    return lines + ["", text]


def losses(domain: str, rows: list[dict]) -> list[str]:
    """Sentences for every method that beats NoiseCLR on coverage or mean purity on a domain."""
    by_method = {r["method"]: r for r in rows}
    mine = by_method["NoiseCLR"]
    lines = []
    for method, row in by_method.items():
        if method == "NoiseCLR":
            continue
        for key, what in (("coverage", "coverage"), ("mean_purity", "mean purity")):
            if _mean(row[key]) > _mean(mine[key]):
                note = " (the supervised ceiling)" if method == "text" else ""
                lines.append(f"{domain}: NoiseCLR loses to {method}{note} on {what} "
                             f"({_mean(mine[key]):.3f} vs {_mean(row[key]):.3f})")
    return lines


def overall_table(per_domain: dict[str, dict[str, list[MethodRun]]]) -> list[dict]:
    """Per method: each seed's mean over the domains, then mean ± std over seeds; "saturated" and
    "purity_reached" (``metrics.reached_purity``) pool every direction of every domain and seed.

    A number some cached score lacks (e.g. "stays in domain" before it was measured) is None.
    """
    keys = ("coverage", "mean_purity", "mean_strength", "mean_off_target", "mean_pixel_change", "mean_domain_kept")
    rows = []
    for method in METHODS:
        domains = [d for d in per_domain if per_domain[d].get(method)]
        if not domains:
            continue
        n_runs = min(len(per_domain[d][method]) for d in domains)
        per_seed = []
        for i in range(n_runs):
            values = {k: [per_domain[d][method][i].summary.get(k) for d in domains] for k in keys}
            per_seed.append({k: None if None in v else statistics.mean(v) for k, v in values.items()} | {"covered": []})
        over_seeds = aggregate_summaries(per_seed)    # (mean, std) over seeds; None where a seed lacks a number
        covered = [f"{d}.{a}" for d in domains
                   for a in aggregate_summaries([r.summary for r in per_domain[d][method]])["covered"]]
        pooled = [s for d in domains for r in per_domain[d][method] for s in r.scores]
        rows.append({"method": method, "domain": "all", "directions": sum(per_domain[d][method][0].summary["directions"]
                                                                         for d in domains),
                     **{k: over_seeds[k] for k in keys}, "covered": covered, "runs": n_runs,
                     "saturated": sum(s.saturated for s in pooled), "purity_reached": reached_purity(pooled)[0]})
    return rows


def bars(overall: list[dict], comparisons: dict[str, dict]) -> list[dict]:
    """Issue 5's bars for NoiseCLR: measured value, bar, passed, shortfall."""
    rows = {r["method"]: r for r in overall}
    nclr, text = rows["NoiseCLR"], rows["text"]
    share = _mean(nclr["mean_purity"]) / _mean(text["mean_purity"]) if _mean(text["mean_purity"]) > 0 else 0.0
    out = [{"bar": "coverage of all attributes", "value": _mean(nclr["coverage"]), "at_least": BARS["coverage"]},
           {"bar": "mean purity", "value": _mean(nclr["mean_purity"]), "at_least": BARS["mean_purity"]},
           {"bar": "purity as a share of the text ceiling's", "value": share, "at_least": BARS["text_purity_share"]}]
    for row in out:
        row["passed"] = row["value"] >= row["at_least"]
        row["short_by"] = max(0.0, row["at_least"] - row["value"])
    worst = min(comparisons, key=lambda d: min(_mean(comparisons[d]["coverage_margin_over_random"]),
                                               _mean(comparisons[d]["mean_purity_margin_over_random"])))
    out.append({"bar": f"beats random by a clear margin (>= {CLEAR_MARGIN} and > its spread) on coverage and "
                       f"purity in every domain", "value": f"weakest: {worst}",
                "at_least": "every domain", "passed": all(c["clear_margin"] for c in comparisons.values()),
                "short_by": [d for d, c in comparisons.items() if not c["clear_margin"]]})
    return out


QUALITY_COLUMNS = [("method", "method"), ("domain", "domain"), ("directions", "K"), ("runs", "runs"),
                   ("coverage", "coverage"), ("mean_purity", "mean purity"), ("mean_strength", "mean strength"),
                   ("mean_off_target", "off-target"), ("mean_pixel_change", "pixel change"),
                   ("mean_domain_kept", "stays in domain"), ("saturated", "saturated"),
                   ("purity_reached", "purity of unsaturated"),
                   ("miscalibrated", "miscalibrated"), ("covered", "covered attributes")]


def _pm(value, digits: int = 2, sign: str = "+") -> str:
    mean, std = value if isinstance(value, (tuple, list)) else (value, 0.0)
    return f"{mean:{sign}.{digits}f} ± {std:.{digits}f}"


def _scale_bracket(low: float, high: float) -> str:
    """A calibration bracket in a few characters: "[0, 16]" (halved) or "[0.125, 256] log" (log-spaced)."""
    return f"[{low:g}, {high:g}]" + (" log" if low else "")


def _training_images(s: dict) -> str:
    """Which images a report's directions were trained on, in a few characters: the sample folder
    ("data/samples" for the shipped one, else the folder's name, e.g. "samples256") and "[:N]" when
    ``--train-images`` kept only the first N."""
    folder = Path(s.get("samples", DEFAULT_SAMPLES))
    name = "data/samples" if folder.parts[-2:] == ("data", "samples") else folder.name
    return name + (f"[:{s['train_images']}]" if s.get("train_images") else "")


def _loss_options(s: dict) -> str:
    """How NoiseCLR's loss was set, in words: "official loss", or the options that change it."""
    options = [name for key, name in (("sign_blind_negatives", "sign-blind negatives"),
                                      ("center_edits", "centred edits")) if s.get(key)]
    if s.get("edit_space", "eps") != "eps":
        options.append("edits compared in h-space")
    if s.get("strength_weight"):
        options.append(f"strength term {s['strength_weight']:g}")
    if s.get("gain_weight"):
        options.append(f"denoising-gain term {s['gain_weight']:g}{_gain_shape(s)}")
    if s.get("parameterization", "embedding") != "embedding":
        options.append("directions trained as vocabulary mixtures")
    return "official loss" if not options else "official loss with " + " and ".join(options)


def _gain_shape(s: dict) -> str:
    """How the gain term was scored, in words, where not by default: " (two-sided, on all the images)"."""
    shape = ["two-sided"] if s.get("gain_two_sided") else []
    share = s.get("gain_top_share", GAIN_SHARE_BEFORE_OPTION)   # reports from before the option
    if share != TrainConfig.gain_top_share:
        shape.append("on all the images" if share == 1 else f"on the best {share:g} of the images")
    return f" ({', '.join(shape)})" if shape else ""


def _gain_words(s: dict) -> str:
    """The gain term in the sweep table's loss column: ", gain term 10 (two-sided)", or "" without it."""
    return f", gain term {s['gain_weight']:g}{_gain_shape(s)}" if s.get("gain_weight") else ""


def _protocol_bracket(s: dict) -> str:
    """How the calibration searched the scale, in words (reports from before ``min_scale`` lack it: 0)."""
    return (f"token and text scales searched in {_scale_bracket(s.get('min_scale', 0.0), s['max_scale'])}, "
            f"h-space in {_scale_bracket(s.get('hspace_min_scale', 0.0), s['hspace_max_scale'])} "
            f"(\"log\": bisected log-spaced, else halved), {s['calibration_iters']} steps on "
            f"{s['calibration_images']} images")


def _comparison_sections(report: dict) -> list[str]:
    """A full report's Markdown about NoiseCLR: the issue's bars, where it loses, and per domain its
    margins over the floor, its share of the ceiling's purity, and the words' margins over the floor."""
    lines = ["## Bars (issue 5, NoiseCLR)", "", "| bar | measured | bar | passed | short by |", "|---|---|---|---|---|"]
    for b in report["bars"]:
        value = f"{b['value']:.2f}" if isinstance(b["value"], float) else b["value"]
        short = f"{b['short_by']:.2f}" if isinstance(b["short_by"], float) else (", ".join(b["short_by"]) or "-")
        lines.append(f"| {b['bar']} | {value} | {b['at_least']} | {'yes' if b['passed'] else '**no**'} | {short} |")
    lines += ["", "## Where NoiseCLR loses", ""]
    lines += [f"- {line}" for line in report["losses"]] or ["- nowhere: NoiseCLR has the best coverage and mean "
                                                             "purity of every method in every domain"]
    lines += ["", "## NoiseCLR against the floor and the ceiling", "",
              "| domain | coverage margin over random | purity margin over random | clear? | purity / text purity |",
              "|---|---|---|---|---|"]
    for domain, c in report["comparisons"].items():
        lines.append(f"| {domain} | {_pm(c['coverage_margin_over_random'])} | "
                     f"{_pm(c['mean_purity_margin_over_random'])}"
                     f" | {'yes' if c['clear_margin'] else '**no**'} | {c['text_purity_share'][0]:.2f} ± "
                     f"{c['text_purity_share'][1]:.2f} |")
    lines += ["", f"A margin is clear when it is at least {CLEAR_MARGIN} and above its seed spread, on coverage "
                  f"and purity both.", "", "## The words against the floor", ""]
    return lines + words_rule_lines({
        domain: {"coverage": c["text_coverage_margin_over_random"], "purity": c["text_mean_purity_margin_over_random"],
                 "clear": c["text_clear_margin"], "sized_coverage": c["text_coverage_margin_over_sized_random"],
                 "sized_clear": c["text_sized_clear_margin"], "words": c["text_directions"],
                 "tokens": c["random_directions"]}
        for domain, c in report["comparisons"].items()})


def _partial_sections(report: dict) -> list[str]:
    """What a report without NoiseCLR, random or text is for: pooling into a full report."""
    return ["## A partial report", "",
            f"This report lacks {', '.join(report['lacks'])}, so it has no bars and no margins over random: it "
            f"scores {', '.join(report['settings']['methods'])} for pooling into a report of the same protocol and "
            f"seeds that has them (`python benchmarks/quality.py --merge FULL THIS --tag BOTH`)."]


def markdown(report: dict) -> str:
    """The Markdown report (``quality.md``)."""
    s = report["settings"]
    if report.get("merged_from"):
        own_methods = len({tuple(m.get("methods", s["methods"])) for m in report["merged_from"]}) > 1
        parts = [f"`{m['report']}` (seeds {m['seeds']}"
                 + (f", methods {', '.join(m.get('methods', s['methods']))}" if own_methods else "")
                 + f", {m['date']}, {m['machine']}; its own process {m['seconds_total'] / 60:.1f} min)"
                 for m in report["merged_from"]]
        differs = (f" (its scores differ in {', '.join(report['text_differs'])})" if report.get("text_differs")
                   else "")
        measured = (f"Pooled {report['date']} by `benchmarks/quality.py --merge` from {len(parts)} reports of one "
                    f"protocol: {'; '.join(parts)}; the minutes are each report's last process, without the units "
                    f"it read back from the cache (their seconds are at the end). The text ceiling is the first "
                    f"report's that has it (deterministic){differs}, each figure the one of the first report "
                    f"holding the smallest seed. Weights {report.get('weights', '?')} (hash of text encoder, UNet, "
                    f"VAE and oracle)")
    else:
        measured = (f"Measured {report['date']} on {report['machine']}, weights {report.get('weights', '?')} "
                    f"(hash of text encoder, UNet, VAE and oracle); total wall time "
                    f"{report['seconds_total'] / 60:.1f} min")
    lines = [f"# Direction quality on {Path(s['model']).name or s['model']}", "",
             measured + (" (**--quick smoke run: not a result**)" if s["quick"] else "") + ".", "",
             "Protocol (`noiseclr_lite.metrics`): the same held-out starting images per domain, balanced over every "
             f"attribute's values ({s['eval_images']} per domain, inverted once with {s['inference_steps']}-step "
             "edit-friendly DDPM inversion); each direction's scale calibrated to a mean pixel change of "
             f"{s['target_change']} at +s and -s ({_protocol_bracket(s)}); effects two-sided, read by the "
             "attribute oracle. A direction covers "
             f"its target attribute when strength >= {STRENGTH_MIN} and purity >= {PURITY_MIN}. Mean ± standard "
             f"deviation over seeds {s['seeds']} (text prompts are deterministic: one run). \"saturated\" counts "
             "directions that did not reach the target change at the largest scale tried (over every seed), "
             "\"purity of unsaturated\" is the mean purity of the others (an edit smaller than the target reads as "
             "pure; it also drops full flips of small-area attributes such as eye colour), "
             "\"miscalibrated\" those "
             f"whose pixel change ended more than {MISCALIBRATION:.0%} away from the target. \"stays in domain\" is the "
             "share of +s and -s edits that the oracle still reads as the starting domain: an edit that turns a face "
             "into a car moves every attribute at once (\"-\": scores cached before it was measured).", "",
             f"Methods: **NoiseCLR** ({_loss_options(s)}), **InfoNCE** (the variant loss, same settings), **random** "
             + ("(NoiseCLR's own random init rows, rescaled to its trained norm: the floor)"
                if s.get("parameterization", "embedding") == "embedding" else
                "(random rows drawn from NoiseCLR's seed, not its starting mixtures, rescaled to its trained norm: "
                "the floor)")
             + ", **text** (the attribute's "
             f"own phrase, {s['text_phrases']} phrases: the supervised ceiling), **h-space** (PCA of the UNet "
             "middle block, Haas et al. 2023, `noiseclr_lite.hspace`)." +
             ("" if s.get("context", "alone") == "alone" else
              " NoiseCLR's, InfoNCE's and random tokens are trained and applied after the domain's noun, as the "
              "model's captions put words (`--context caption`: the prompt \""
              + direction_context(s["domains"][0], "caption").format("<token>") + "\", not the token alone), and "
              "their push is measured from the noun alone (\"" + get_domain(s["domains"][0]).noun + "\"); the "
              "words' is measured from the empty prompt."), ""]
    lines += ["## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s.items()]
    lines += ["", "## Overall (mean over domains)", "", format_table(report["overall"], QUALITY_COLUMNS), ""]
    if report.get("lacks"):
        lines += _partial_sections(report)
    else:
        lines += _comparison_sections(report)
    for domain, d in report["domains"].items():
        lines += ["", f"## {domain}", "", format_table(d["table"], QUALITY_COLUMNS), ""]
        if d.get("figure"):
            lines += [f"![{domain}: each method's best and worst direction at -s, 0, +s]({d['figure']})", "",
                      "Rows: each method's best and worst direction (by strength x purity, first seed), "
                      "columns: held-out images at -s, 0 and +s (s = the calibrated scale).", ""]
    if report.get("interference"):
        lines += ["## Cross-domain interference (face+cat scenes)", "",
                  "Each face (cat) direction applied to face+cat scenes at the scale calibrated on faces (cats); "
                  "leak = the other subject's share of its effect, 0 = stays on its own subject.", "",
                  "| method | face directions' leak onto the cat | cat directions' leak onto the face | mean |",
                  "|---|---|---|---|"]
        for method, row in report["interference"].items():
            lines.append(f"| {method} | {row['face_leak'][0]:.2f} ± {row['face_leak'][1]:.2f} | "
                         f"{row['cat_leak'][0]:.2f} ± {row['cat_leak'][1]:.2f} | {row['leak'][0]:.2f} ± "
                         f"{row['leak'][1]:.2f} |")
        lines.append("")
    lines += ["## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["seconds"].items()]
    lines += [f"| **total** | {report['seconds_total']} |", ""]
    if report.get("cached_seconds"):
        lines += ["Read back from the `--resume` cache (seconds when they were computed):", "",
                  "| unit | train | score |", "|---|---|---|"]
        lines += [f"| {unit} | {sec.get('train', '-')} | {sec.get('score', '-')} |"
                  for unit, sec in report["cached_seconds"].items()]
        lines.append("")
    return "\n".join(lines)


# ===================================================================================== the figure
def best_and_worst(run: MethodRun) -> tuple[int, int]:
    """Indices of the run's best and worst direction by strength x purity (ties: by purity)."""
    quality = [(s.strength * s.purity, s.purity) for s in run.scores]
    return max(range(len(quality)), key=quality.__getitem__), min(range(len(quality)), key=quality.__getitem__)


def save_small_png(image, path) -> None:
    """Save ``image`` as a 256-colour palette PNG: about 3x smaller than RGB for these grids
    (flat cartoon colours), which keeps the committed figures light."""
    from PIL import Image

    image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def domain_figure(pipe, runs: dict[str, list[MethodRun]], start: StartSet, settings: Settings):
    """A labelled grid: rows = each method's best and worst direction (first seed), columns =
    ``grid_images`` held-out images at -s, 0, +s."""
    from noiseclr_lite.data import to_pil
    from noiseclr_lite.grid import image_grid

    few = start.subset(min(settings.grid_images, len(start)))
    rows, labels = [], []
    for method in METHODS:
        if not runs.get(method):
            continue
        run = runs[method][0]
        best, worst = best_and_worst(run)
        for tag, k in (("best", best), ("worst", worst)):
            score = run.scores[k]
            pictures = {s: render(pipe, run.directions, k, s, few, tuple(settings.window))
                        for s in (-score.scale, 0.0, score.scale)}
            rows.append([to_pil(pictures[s][i]) for i in range(len(few)) for s in (-score.scale, 0.0, score.scale)])
            labels.append(f"{method} {tag}: {score.target} p={score.purity:.2f} st={score.strength:.2f} "
                          f"s={score.scale:.2g}")
            if best == worst:
                break
    columns = [f"img{i} {c}" for i in range(len(few)) for c in ("-s", "0", "+s")]
    return image_grid(rows, labels, columns, cell=80)


# ===================================================================================== the whole run
def machine(pipe=None) -> str:
    """This machine in one line for the report: architecture, CPUs, torch threads and version, GPU if
    any, and where ``pipe`` (if given) runs and in which dtype (a GPU run's numbers differ from a CPU's)."""
    line = (f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    if pipe is not None:
        line += f"; model on {pipe.device.type} in {str(pipe.unet.dtype).removeprefix('torch.')}"
    return line


def run_benchmark(pipe, oracle, settings: Settings, out_dir: str | os.PathLike = RESULTS, tag: str = "",
                  resume: bool = False, progress: bool = True, log: Callable[[str], None] = print,
                  stages: Stages | None = None) -> dict:
    """Run every method on every domain, write ``quality[-tag].md/.json`` and the PNGs; return the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = stages or Stages(log)
    stem = "quality" + (f"-{tag}" if tag else "")
    weights = cache_key(pipe, oracle)  # which model + oracle the numbers describe (reports say it)
    cache = Cache.for_settings(out_dir / "cache", settings, weights) if resume else None
    per_domain, starts = {}, {}
    for domain in settings.domains:
        starts[domain], per_domain[domain] = run_domain(pipe, oracle, domain, settings, stages, cache, progress)
    interference = None
    if settings.interference and {"face", "cat"} <= set(settings.domains):
        interference = run_interference(pipe, oracle, per_domain["face"], per_domain["cat"], settings, stages,
                                        cache, progress)
    figures = {}
    for domain, runs in per_domain.items():
        figures[domain] = f"{stem}_{domain}.png"
        with stages(f"{domain}: figure"):
            save_small_png(domain_figure(pipe, runs, starts[domain], settings), out_dir / figures[domain])
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(pipe), "weights": weights,
              "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
              **tabulate(per_domain, settings.target_change, figures), "interference": interference,
              "seconds": dict(stages.seconds), "seconds_total": stages.total,
              "cached_seconds": {f"{r.domain}: {r.method}" + (f" seed {r.seed}" if r.seed is not None else ""): r.seconds
                                 for runs in per_domain.values() for rs in runs.values() for r in rs if r.cached}}
    _write_report(report, out_dir, stem)
    log(f"wrote {out_dir / stem}.md, {REPORT_SUFFIX} and {len(per_domain)} PNGs in {stages.total / 60:.1f} min")
    return report


def tabulate(per_domain: dict[str, dict[str, list[MethodRun]]], target_change: float,
             figures: dict[str, str]) -> dict:
    """Every table of a report from its runs ({domain: {method: [MethodRun per seed]}}): each
    domain's table, runs and figure, NoiseCLR's comparisons with the floor and the ceiling, where
    it loses, the overall table and the issue's bars.

    A report that lacks NoiseCLR, random or text (a peer scored later, to be pooled into a full
    report by ``--merge``) has its tables but no comparisons, losses or bars; ``lacks`` names
    what it lacks ([] for a full report).
    """
    present = {method for runs in per_domain.values() for method in runs}
    out = {"domains": {}, "comparisons": {}, "losses": [], "bars": [],
           "lacks": [m for m in REQUIRED_METHODS if m not in present]}
    for domain, runs in per_domain.items():
        out["domains"][domain] = {"table": domain_table(runs, target_change), "figure": figures.get(domain),
                                  "runs": {m: [r.to_json() for r in rs] for m, rs in runs.items()}}
    out["overall"] = overall_table(per_domain)
    if out["lacks"]:
        return out
    for domain, runs in per_domain.items():
        out["comparisons"][domain] = compare(runs)
        out["losses"] += losses(domain, out["domains"][domain]["table"])
    out["losses"] += losses("all domains", out["overall"])
    out["bars"] = bars(out["overall"], out["comparisons"])
    return out


#: a report's scores are written as gzip-compressed JSON: every score of every direction makes up
#: to 1.4 MB of plain text per report (six seeds of every method), and the repository keeps every report
REPORT_SUFFIX = ".json.gz"


def report_stem(path: str | os.PathLike) -> str:
    """A report's name without its suffix: ``quality-late`` for ``quality-late.json.gz`` or ``.json``."""
    name = Path(path).name
    for suffix in (REPORT_SUFFIX, ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def write_atomically(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename it, so
    a run stopped mid-write leaves the previous file whole, never a cut-off one.  The temporary
    file has a name of its own (two processes writing one file do not share it) and is removed
    if the write fails."""
    import tempfile

    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is as readable as any file written here
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_report_json(report: dict, path: str | os.PathLike) -> Path:
    """Write ``report`` as gzip-compressed JSON to ``path`` (which should end in ``.json.gz``).

    The gzip header's time stamp is fixed at 0, so the same report gives the same bytes (git
    sees no change when a run is repeated).  Sets and tuples are written as lists.
    """
    data = json.dumps(report, separators=(",", ":"), default=list).encode()
    return write_atomically(path, gzip.compress(data, mtime=0))


def read_report(path: str | os.PathLike, tool: str = "benchmarks/quality.py") -> dict:
    """A report written by :func:`write_report_json` (``.json.gz``), or a plain ``.json`` one (as
    reports were written before 2026-12-05, and as hand-edited test reports are); SystemExit,
    starting with ``tool`` (the script the user ran), when it is not one."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        if raw[:2] == b"\x1f\x8b":  # the gzip magic number, whatever the file is called
            raw = gzip.decompress(raw)
        return json.loads(raw)
    except (ValueError, EOFError, gzip.BadGzipFile) as error:  # bad JSON or UTF-8; a cut-off or corrupt gzip
        raise SystemExit(f"{tool}: {path} is not a report ({error}); give a quality*.json.gz written by "
                         f"benchmarks/quality.py") from None


def _write_report(report: dict, out_dir: Path, stem: str) -> None:
    write_report_json(report, out_dir / f"{stem}{REPORT_SUFFIX}")
    write_atomically(out_dir / f"{stem}.md", markdown(report))


# ===================================================================================== pooling reports
#: settings that may differ between pooled reports: the seeds (what pooling adds up), whether the
#: face+cat scenes ran (pooled only when every report has them), and where the model, oracle and
#: samples lie on each machine (the weights hash checks the model and oracle)
POOLED_FREELY = ("seeds", "interference", "model", "oracle", "samples")
#: settings that only the h-space peer reads: compared only between reports that ran it
HSPACE_SETTINGS = ("hspace_max_scale", "hspace_min_scale", "hspace_timesteps")


def _find_report(name: str | os.PathLike, out_dir: Path, tool: str = "benchmarks/quality.py --merge") -> Path:
    """A report's file from its path or its tag (``late-4seeds`` -> ``<out_dir>/quality-late-4seeds.json.gz``,
    or the plain ``.json`` of a report written before reports were compressed); SystemExit,
    starting with ``tool`` (the script the user ran), when there is none."""
    candidates = [Path(name)] + [out_dir / f"{prefix}{name}{suffix}" for prefix in ("quality-", "")
                                 for suffix in (REPORT_SUFFIX, ".json")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SystemExit(f"{tool}: no report {name!r} (looked for "
                     f"{', '.join(str(c) for c in candidates)}); give a report's .json.gz path "
                     f"or the --tag it was written with")


def _protocol(report: dict) -> dict:
    """A report's settings with the defaults filled in for options it predates (the value they
    had before the option existed, as :meth:`Settings.fingerprint` assumes), as JSON values."""
    return json.loads(json.dumps({**asdict(Settings()), **report["settings"]}, default=list))


def check_one_protocol(paths: list[Path], reports: list[dict], free, tool: str, fix: str) -> None:
    """Raise SystemExit unless every report measured the first one's weights and has its settings,
    but for the setting names in ``free``.  ``HSPACE_SETTINGS`` are compared only between the
    reports that ran h-space: in the others they moved nothing.

    The message starts with ``tool`` (the script the user ran), names both reports, the setting and
    both values, and ends with ``fix`` (what to re-run).  Shared by ``--merge`` (pooling seeds) and
    ``benchmarks/ladder.py`` (climbing target changes), which free different settings.
    """
    first_path, first = paths[0], reports[0]
    protocols = [_protocol(report) for report in reports]
    hspace_compared = [key for key in HSPACE_SETTINGS if key not in free]
    free = set(free) | set(HSPACE_SETTINGS)
    protocol = protocols[0]
    for path, report, theirs in zip(paths, reports, protocols):
        if report.get("weights") != first.get("weights"):
            raise SystemExit(f"{tool}: {path} measured weights {report.get('weights')} and {first_path} weights "
                             f"{first.get('weights')}: these are different models or oracles; leave out the "
                             f"reports of the other one")
        for key in sorted(protocol):
            if key not in free and protocol[key] != theirs[key]:
                raise SystemExit(f"{tool}: {path} has {key} = {theirs[key]!r} but {first_path} has "
                                 f"{protocol[key]!r}: {fix}")
    # the h-space settings moved only the reports that ran h-space: compare those among themselves
    ran_hspace = [(path, theirs) for path, theirs in zip(paths, protocols) if "h-space" in theirs["methods"]]
    for path, theirs in ran_hspace[1:]:
        reference_path, reference = ran_hspace[0]
        for key in hspace_compared:
            if reference[key] != theirs[key]:
                raise SystemExit(f"{tool}: {path} has {key} = {theirs[key]!r} but {reference_path} has "
                                 f"{reference[key]!r}: {fix}")


def _seed_order(seed: int | None) -> int:
    """Sort key of a run's seed: the unseeded text run (None) first, then the seeds in order."""
    return -1 if seed is None else seed


def _keep_methods(report: dict, methods, path: Path) -> dict:
    """``report`` with only the runs (and scene rows) of ``methods``, as if it had run only those;
    SystemExit names ``path`` if it holds none of them."""
    kept = [m for m in report["settings"]["methods"] if m in methods]
    if not kept:
        raise SystemExit(f"benchmarks/quality.py --merge: {path} has none of --methods {' '.join(methods)} (it "
                         f"has {' '.join(report['settings']['methods'])}); leave it out or name its methods")
    domains = {d: {**scored, "runs": {m: runs for m, runs in scored["runs"].items() if m in kept}}
               for d, scored in report["domains"].items()}
    interference = report.get("interference")
    if interference:
        interference = {m: rows for m, rows in interference.items() if m in kept}
    return {**report, "settings": {**report["settings"], "methods": kept}, "domains": domains,
            "interference": interference}


def merge_reports(names, out_dir: str | os.PathLike = RESULTS, tag: str = "",
                  log: Callable[[str], None] = print, methods=None) -> dict:
    """Pool reports of one protocol into one report, as if one run had scored every (method,
    seed) unit they hold: seeds 0 1 on one machine and 2 3 on another (or in another session) give
    the four-seed tables, and a peer scored later on the same seeds (``--methods h-space``) joins
    the report it was left out of.  Valid because a unit's result depends only on its settings and
    seed, not on what ran before it in the process (``tests/test_train.py``).

    ``names`` are report paths or tags.  Every report must have the same weights, domains and
    settings but for ``POOLED_FREELY`` and the methods (``HSPACE_SETTINGS`` are compared between
    the reports that ran h-space); no seeded method may have a seed twice, and every seeded method
    must end with the same seeds; otherwise SystemExit names the reports, the setting or unit, and
    the fix.  The deterministic text ceiling is taken from the first report that has it (a report
    whose text scores differ is named in the log and the Markdown); the scene interference is
    pooled when every report has it, else left out; each domain's figure is a link to the PNG of
    the first report holding the smallest seed (renaming that report breaks it).  ``methods`` (default:
    all) pools only those methods' runs, e.g. NoiseCLR, random and text of a full report and of a
    report of more seeds that skipped the peers.  Writes
    ``quality[-tag].md/.json`` (no new PNGs, nothing is rendered) and returns the report; it is
    partial (no bars) if the reports together still lack NoiseCLR, random or text.
    """
    out_dir = Path(out_dir)
    if len(names) < 2:
        raise SystemExit(f"benchmarks/quality.py --merge: got {len(names)} report; pooling needs two or more")
    paths = [_find_report(n, out_dir) for n in names]
    reports = [read_report(p) for p in paths]
    if methods is not None:
        reports = [_keep_methods(report, methods, path) for path, report in zip(paths, reports)]
    first, first_path = reports[0], paths[0]
    for path, report in zip(paths, reports):
        if set(report["settings"]["domains"]) != set(first["settings"]["domains"]):
            raise SystemExit(f"benchmarks/quality.py --merge: {path} scored the domains "
                             f"{report['settings']['domains']} and {first_path} {first['settings']['domains']}: "
                             f"pooling adds seeds and methods, not domains; run the missing domains into each report "
                             f"first (with --resume, finished units are read back)")
    check_one_protocol(paths, reports, POOLED_FREELY + ("domains", "methods"), "benchmarks/quality.py --merge",
                       f"only one protocol's reports can be pooled; run the missing seeds or methods with the same "
                       f"flags as {report_stem(first_path)} (its settings table lists them)")
    methods = [m for m in METHODS if any(m in r["settings"]["methods"] for r in reports)]
    # which report holds each method's runs: every report for a seeded method, the first for text
    holders = {m: [i for i, r in enumerate(reports) if m in r["settings"]["methods"]] for m in methods}
    holders = {m: (held if m in SEEDED else held[:1]) for m, held in holders.items()}
    seeds_of: dict[str, dict[int, Path]] = {}
    for method in (m for m in methods if m in SEEDED):
        seeds_of[method] = {}
        for i in holders[method]:
            for seed in reports[i]["settings"]["seeds"]:
                if seed in seeds_of[method]:
                    raise SystemExit(f"benchmarks/quality.py --merge: {method} seed {seed} is in both "
                                     f"{seeds_of[method][seed]} and {paths[i]}; each unit may be pooled once: leave "
                                     f"one of the two reports out, or re-run one of them with other --seeds")
                seeds_of[method][seed] = paths[i]
    if len({tuple(sorted(held)) for held in seeds_of.values()}) > 1:
        raise SystemExit("benchmarks/quality.py --merge: the methods would end with different seeds ("
                         + "; ".join(f"{m} {sorted(held)}" for m, held in seeds_of.items())
                         + "): every method's tables need the same seeds; run the missing units with the same "
                           "flags and --methods/--seeds naming them")
    all_seeds = sorted({seed for held in seeds_of.values() for seed in held})
    per_domain: dict[str, dict[str, list[MethodRun]]] = {}
    text_differs = []
    for domain in first["settings"]["domains"]:
        per_domain[domain] = {}
        for method in methods:
            runs = [MethodRun.from_json(saved) for i in holders[method]
                    for saved in reports[i]["domains"][domain]["runs"][method]]
            per_domain[domain][method] = sorted(runs, key=lambda run: _seed_order(run.seed))
        if "text" in per_domain[domain]:
            text_holder = reports[holders["text"][0]]
            text_differs += [f"{report_stem(path)} ({domain})" for path, report in zip(paths, reports)
                             if report is not text_holder and "text" in report["settings"]["methods"]
                             and report["domains"][domain]["runs"]["text"][0]["summary"]
                             != text_holder["domains"][domain]["runs"]["text"][0]["summary"]]
    if text_differs:
        text_stem = report_stem(paths[holders["text"][0]])
        log(f"note: the text ceiling's scores differ from {text_stem}'s in {', '.join(text_differs)}; "
            f"the report uses {text_stem}'s")
    # the figures show each method's first seed: those of the first report holding the smallest seed
    holder = next(i for i, r in enumerate(reports) if min(all_seeds) in r["settings"]["seeds"])
    figures = {d: os.path.relpath(paths[holder].parent / reports[holder]["domains"][d]["figure"], out_dir)
               for d in per_domain if reports[holder]["domains"][d].get("figure")}
    interference = None
    if all(r.get("interference") for r in reports):
        interference = {}
        for method in (m for m in methods if all(m in reports[i]["interference"] for i in holders[m])):
            rows = sorted((row for i in holders[method] for row in reports[i]["interference"][method]["runs"]),
                          key=lambda row: _seed_order(row["seed"]))
            interference[method] = {"runs": rows, **{key: _mean_std([row[key] for row in rows])
                                                     for key in ("face_leak", "cat_leak", "leak")}}
    stems = [report_stem(p) for p in paths]
    settings = dict(first["settings"], seeds=all_seeds, methods=methods, interference=interference is not None)
    if "h-space" in methods:  # the h-space settings of the reports that ran it (check_one_protocol compared them)
        settings.update({key: _protocol(reports[holders["h-space"][0]])[key] for key in HSPACE_SETTINGS})
    merged = {"date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": "; ".join(dict.fromkeys(r["machine"] for r in reports)), "weights": first.get("weights"),
              "settings": settings, **tabulate(per_domain, settings["target_change"], figures),
              "interference": interference,
              "merged_from": [{"report": stem, "date": r["date"], "machine": r["machine"],
                               "seeds": r["settings"]["seeds"], "methods": r["settings"]["methods"],
                               "seconds_total": r["seconds_total"]}
                              for stem, r in zip(stems, reports)],
              "text_differs": text_differs,
              "seconds": {f"{stem}: {stage}": sec for stem, r in zip(stems, reports) for stage, sec in r["seconds"].items()},
              "seconds_total": round(sum(r["seconds_total"] for r in reports), 2),
              "cached_seconds": {f"{stem}: {unit}": sec for stem, r in zip(stems, reports)
                                 for unit, sec in r.get("cached_seconds", {}).items()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "quality" + (f"-{tag}" if tag else "")
    _write_report(merged, out_dir, stem)
    log(f"wrote {out_dir / stem}.md and {REPORT_SUFFIX}: seeds {settings['seeds']} of {', '.join(methods)} pooled from "
        f"{', '.join(stems)}")
    return merged


def _report_files(out_dir: Path) -> list[Path]:
    """Every ``quality*.json.gz`` report in ``out_dir`` (and older plain ``quality*.json`` ones), once
    each and sorted by name; a report kept both ways counts as its compressed file."""
    found = {report_stem(p): p for p in out_dir.glob("quality*.json")}
    found.update({report_stem(p): p for p in out_dir.glob(f"quality*{REPORT_SUFFIX}")})
    return [found[stem] for stem in sorted(found)]


def sweep_table(out_dir: str | os.PathLike = RESULTS) -> str:
    """One row per ``quality*.json.gz`` in ``out_dir``: the weights it measured (:func:`cache_key`;
    "?" for reports older than that field), its training settings (the images it trained on:
    :func:`_training_images`) and NoiseCLR's overall numbers (strength and saturation next to
    purity: a faint edit reads as pure; "-" where an older report lacks a number; the calibration
    bracket and target, since rows measured at another one compare methods at another edit
    strength; the edit window every direction was scored in), to read how sensitive the result is
    to them (written to ``quality-sweep.md``).  Partial reports (no NoiseCLR, random or text: pooled
    into full ones by ``--merge``) have no row.  Only rows with the same weights compare settings;
    a retrained model starts a new group."""
    out_dir = Path(out_dir)
    columns = ["report", "weights", "domains", "seeds", "K", "steps", "lr", "tau", "t range", "batch",
               "training images", "anchors", "init", "strength weight", "negatives, edit features", "scale bracket",
               "target change on images", "edit window",
               "coverage", "mean purity", "purity margin over random", "purity / text", "mean strength",
               "saturated", "purity of unsaturated"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for path in _report_files(out_dir):
        report = read_report(path)
        if report.get("lacks"):  # a peer scored for pooling: it has no NoiseCLR numbers
            continue
        s, rows = report["settings"], {r["method"]: r for r in report["overall"]}
        nclr, text = rows["NoiseCLR"], rows["text"]
        # older reports lack these two (None: printed "-")
        saturated, reached = nclr.get("saturated"), nclr.get("purity_reached")
        nclr_total = nclr["directions"] * len(s["seeds"])
        margins = [c["mean_purity_margin_over_random"][0] for c in report["comparisons"].values()]
        share = nclr["mean_purity"][0] / text["mean_purity"][0] if text["mean_purity"][0] > 0 else float("nan")
        lines.append(f"| {report_stem(path)}{' (quick)' if s['quick'] else ''} | {report.get('weights', '?')} | "
                     f"{', '.join(s['domains'])} | "
                     f"{len(s['seeds'])} | "
                     f"{s['num_directions']} | {s['steps']} | {s['learning_rate']:g} | {s['tau']:g} | {s['timestep_range']} | "
                     f"{s['batch_size']} | {_training_images(s)} | "
                     f"{s.get('anchors', 'one')} | {s.get('init', 'random')}"
                     f"{'' if s.get('context', 'alone') == 'alone' else ', in ' + s['context']} | "
                     f"{s.get('strength_weight', 0.0):g} | "
                     f"{'sign-blind' if s.get('sign_blind_negatives') else 'signed'}"
                     f"{', centred' if s.get('center_edits') else ''}"
                     f"{_gain_words(s)}"
                     f"{', h-space edits' if s.get('edit_space', 'eps') != 'eps' else ''}"
                     f"{', vocabulary mixtures' if s.get('parameterization', 'embedding') != 'embedding' else ''} | "
                     f"{_scale_bracket(s.get('min_scale', 0.0), s['max_scale'])} | "
                     f"{s['target_change']:g} on {s['calibration_images']} | "
                     f"{':'.join(f'{x:g}' for x in s.get('window', (1.0, 0.0)))} | "
                     f"{_pm(nclr['coverage'], sign='')} | "
                     f"{_pm(nclr['mean_purity'], sign='')} | "
                     f"{statistics.mean(margins):+.2f} | {share:.2f} | {_pm(nclr['mean_strength'], sign='')} | "
                     f"{'-' if saturated is None else f'{saturated} of {nclr_total}'} | "
                     f"{'-' if reached is None else f'{reached:.2f}'} |")
    table = "\n".join(["# NoiseCLR across settings", "", "Overall numbers of every quality report in this folder "
                       "(mean ± std over seeds; margin = mean over domains). Compare settings only between rows with the "
                       "same weights (a hash of the text encoder, UNet, VAE and oracle).", ""] + lines) + "\n"
    (out_dir / "quality-sweep.md").write_text(table)
    return table


# ===================================================================================== command line
#: ``--dtype``'s choices
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _negatives(text: str) -> int | None:
    return None if text == "all" else int(text)


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (``argv``, default ``sys.argv[1:]``) as a namespace; defaults from :class:`Settings`."""
    defaults = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = p.add_argument_group("what to run")
    run.add_argument("--quick", action="store_true",
                     help=f"smoke run: {', '.join(f'{k}={v}' for k, v in QUICK.items())} (explicit flags still win); "
                          "about 2 minutes per domain on 2 CPU cores (10 minutes for all four with the scenes); "
                          "it checks that everything runs, it is not a result")
    run.add_argument("--model", default=None, help="diffusers pipeline folder or hub id (default: the bundled model)")
    run.add_argument("--oracle", default=DEFAULT_ORACLE, help="attribute oracle folder (default: %(default)s)")
    run.add_argument("--samples", default=DEFAULT_SAMPLES,
                     help="folder with one training-image folder per domain (default: %(default)s)")
    run.add_argument("--domains", nargs="+", default=defaults.domains, choices=DOMAINS, help="default: all four")
    run.add_argument("--seeds", nargs="+", type=int, default=None, help=f"seeds of the seeded methods "
                     f"(default {FULL['seeds']}; --quick {QUICK['seeds']})")
    run.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                     help="methods to run (default: all; random needs NoiseCLR). A settings sweep can skip "
                          "InfoNCE and h-space: --methods NoiseCLR random text. Without NoiseCLR, random or text "
                          "the report is partial (no bars), for pooling into a full one of the same seeds with "
                          "--merge: e.g. --methods h-space adds the peer to a finished report")
    run.add_argument("--no-interference", action="store_true", help="skip the face+cat scene interference part")
    run.add_argument("--out", default=str(RESULTS), help="output folder (default: %(default)s)")
    run.add_argument("--tag", default="", help="name the outputs quality-TAG.* (for sweeps) instead of quality.*")
    run.add_argument("--resume", action="store_true",
                     help="reuse finished (domain, method, seed) units from OUT/cache/ (same settings only)")
    run.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    run.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                     help="weights dtype (default: load_pipeline's, float16 on a GPU and float32 on the CPU); "
                          "float32 on a GPU keeps its numbers comparable with the CPU reports")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--no-progress", action="store_true", help="no tqdm bars (stage lines are still printed)")
    run.add_argument("--processes", type=int, default=1,
                     help="split the domains over this many processes (each with CPU cores / N threads unless "
                          "--threads is given), then read their units back and write one report; needs --resume "
                          "(default: %(default)s)")
    run.add_argument("--merge", nargs="+", metavar="REPORT", default=None,
                     help="pool reports of one protocol and different seeds (their .json.gz paths or tags) into "
                          "quality[-TAG].md/.json.gz instead of running anything, e.g. --merge late late-seeds23 "
                          "--tag late-4seeds; with --methods, only those methods are pooled")
    run.add_argument("--sweep-table", action="store_true",
                     help="run nothing: tabulate every OUT/quality*.json (settings vs NoiseCLR's numbers) into "
                          "OUT/quality-sweep.md")
    train = p.add_argument_group("training (NoiseCLR and InfoNCE)")
    train.add_argument("-k", "--num-directions", type=int, default=None,
                       help=f"K directions per method (default {FULL['num_directions']}; "
                            f"--quick {QUICK['num_directions']})")
    train.add_argument("--steps", type=int, default=None, help=f"training steps (default {FULL['steps']}; --quick "
                                                               f"{QUICK['steps']})")
    train.add_argument("--lr", type=float, default=defaults.learning_rate,
                       help="AdamW learning rate (default: %(default)s)")
    train.add_argument("--timestep-range", nargs=2, type=int, default=list(defaults.timestep_range),
                       metavar=("LOW", "HIGH"), help="t drawn from [LOW, HIGH) (default: %(default)s)")
    train.add_argument("--batch-size", type=int, default=defaults.batch_size,
                       help="images per step (default: %(default)s)")
    train.add_argument("--negatives", type=_negatives, default=defaults.negatives,
                       help="directions contrasted with the anchor per step, or 'all' (default: all)")
    train.add_argument("--tau", type=float, default=defaults.tau, help="loss temperature (default: %(default)s)")
    train.add_argument("--anchors", choices=["one", "all"], default=defaults.anchors,
                       help="anchor directions per step: the official 'one' or 'all' (default: %(default)s)")
    train.add_argument("--init", choices=["random", "vocab"], default=defaults.init,
                       help="how directions start, and the random floor's rows (default: %(default)s)")
    train.add_argument("--strength-weight", type=float, default=defaults.strength_weight,
                       help="weight of the push-strength term, 0 = the official loss (default: %(default)s)")
    train.add_argument("--gain-weight", type=float, default=defaults.gain_weight,
                       help="weight of the denoising-gain term (ours: each direction should explain some images "
                            "better than the reference prompt; loss.denoising_gain_loss), 0 = the official loss "
                            "(default: %(default)s)")
    train.add_argument("--gain-top-share", type=float, default=defaults.gain_top_share,
                       help="the share of a step's images each direction's gain is scored on, in (0, 1] "
                            "(with --gain-weight; default: %(default)s)")
    train.add_argument("--gain-two-sided", action="store_true",
                       help="score each image's gain by +D or -D, the better end of the slider (with --gain-weight; "
                            "default: one-sided)")
    train.add_argument("--sign-blind-negatives", action="store_true",
                       help="score the loss's negatives by |cos|, so that two directions that are opposite ends "
                            "of one attribute count as one slider (NoiseCLR and InfoNCE; default: the official, "
                            "signed negatives)")
    train.add_argument("--center-edits", action="store_true",
                       help="contrast what is specific to each direction: every edit feature minus the mean over "
                            "the step's directions on that image (loss.center_edit_features; NoiseCLR and InfoNCE; "
                            "default: the official, uncentred features)")
    train.add_argument("--parameterization", choices=PARAMETERIZATIONS, default=defaults.parameterization,
                       help="what is trained: 'embedding', each token's row (the official NoiseCLR), or "
                            "'vocab-mixture', logits over the vocabulary's rows (ours); the random floor stays "
                            "random rows of the trained norm (default: %(default)s)")
    train.add_argument("--edit-space", choices=EDIT_SPACES, default=defaults.edit_space,
                       help="what NoiseCLR's and InfoNCE's loss compares edits in: eps, the noise prediction (the "
                            "official loss), or hspace, the UNet's middle-block output (default: %(default)s)")
    train.add_argument("--context", choices=CONTEXTS, default=defaults.context,
                       help="the prompt NoiseCLR's and InfoNCE's tokens are trained and applied in (random ones "
                            "too): alone (the official) or caption, after the domain's noun as the model's "
                            "captions put words, 'a car, <token>' (default: %(default)s)")
    train.add_argument("--train-images", type=int, default=None, help="use the first N sample images (default: all)")
    proto = p.add_argument_group("the protocol")
    proto.add_argument("--eval-images", type=int, default=None, help=f"held-out starting images per domain "
                       f"(default {FULL['eval_images']}; --quick {QUICK['eval_images']}; use a multiple of 2)")
    proto.add_argument("--start-seed", type=int, default=defaults.start_seed, help="seed of the starting images")
    proto.add_argument("--inference-steps", type=int, default=None, help=f"sampler steps of inversion and edits "
                       f"(default {FULL['inference_steps']}; --quick {QUICK['inference_steps']})")
    proto.add_argument("--target-change", type=float, default=defaults.target_change,
                       help="calibrated mean pixel change at +-s, in [0, 1] pixel units (default: %(default)s)")
    proto.add_argument("--max-scale", type=float, default=None,
                       help=f"calibration bracket [MIN, MAX] of token and text directions (default {FULL['max_scale']:g}; "
                            f"--quick {QUICK['max_scale']:g})")
    proto.add_argument("--min-scale", type=float, default=None,
                       help=f"lower end of that bracket; > 0 bisects it log-spaced, which finds small and large "
                            f"scales equally well, 0 halves it from MAX (default {FULL['min_scale']:g}; --quick "
                            f"{QUICK['min_scale']:g})")
    proto.add_argument("--hspace-max-scale", type=float, default=None,
                       help=f"calibration bracket of h-space directions, in units of a typical h difference "
                            f"(default {FULL['hspace_max_scale']:g}; --quick {QUICK['hspace_max_scale']:g})")
    proto.add_argument("--hspace-min-scale", type=float, default=None,
                       help=f"lower end of the h-space bracket; > 0 bisects it log-spaced (default "
                            f"{FULL['hspace_min_scale']:g}; --quick {QUICK['hspace_min_scale']:g})")
    proto.add_argument("--calibration-images", type=int, default=None, help=f"images used to calibrate a scale "
                       f"(default {FULL['calibration_images']}; --quick {QUICK['calibration_images']})")
    proto.add_argument("--calibration-iters", type=int, default=None, help=f"bisection steps (default "
                       f"{FULL['calibration_iters']}; --quick {QUICK['calibration_iters']})")
    proto.add_argument("--window", nargs=2, type=float, default=list(defaults.window), metavar=("START", "END"),
                       help="step window of every edit, fractions of diffusion time (default: %(default)s)")
    proto.add_argument("--hspace-timesteps", nargs="+", type=int, default=list(defaults.hspace_timesteps),
                       help="timesteps at which h-space is read for the PCA (default: %(default)s)")
    proto.add_argument("--text-phrases", choices=TEXT_PHRASES, default=defaults.text_phrases,
                       help="text ceiling: each attribute's value-1 phrase, both phrases, or the value-1 phrase "
                            "after the domain's noun as in the model's captions, 'a car, night' (default: "
                            "%(default)s)")
    proto.add_argument("--interference-images", type=int, default=None, help=f"face+cat scenes (default "
                       f"{FULL['interference_images']}; --quick {QUICK['interference_images']})")
    proto.add_argument("--grid-images", type=int, default=None, help=f"held-out images per figure row (default "
                       f"{FULL['grid_images']}; --quick {QUICK['grid_images']})")
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace, model: str) -> Settings:
    """Resolve the flags into :class:`Settings`: explicit flags, then the ``--quick`` or full defaults."""
    base = QUICK if args.quick else FULL
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else base[name]  # noqa: E731
    return Settings(
        domains=list(args.domains), seeds=list(pick("seeds")),
        methods=[m for m in METHODS if m in args.methods], interference=not args.no_interference,
        num_directions=pick("num_directions"), steps=pick("steps"), learning_rate=args.lr,
        timestep_range=tuple(args.timestep_range), batch_size=args.batch_size, negatives=args.negatives,
        tau=args.tau, anchors=args.anchors, init=args.init, strength_weight=args.strength_weight,
        gain_weight=args.gain_weight, gain_top_share=args.gain_top_share, gain_two_sided=args.gain_two_sided,
        sign_blind_negatives=args.sign_blind_negatives, center_edits=args.center_edits, context=args.context,
        edit_space=args.edit_space, parameterization=args.parameterization, train_images=args.train_images,
        eval_images=pick("eval_images"),
        start_seed=args.start_seed,
        inference_steps=pick("inference_steps"), target_change=args.target_change,
        max_scale=pick("max_scale"), min_scale=pick("min_scale"),
        hspace_max_scale=pick("hspace_max_scale"), hspace_min_scale=pick("hspace_min_scale"),
        calibration_images=pick("calibration_images"),
        calibration_iters=pick("calibration_iters"), window=tuple(args.window),
        hspace_timesteps=tuple(args.hspace_timesteps), text_phrases=args.text_phrases,
        interference_images=pick("interference_images"), grid_images=pick("grid_images"), model=model,
        oracle=str(args.oracle), samples=str(args.samples), quick=args.quick)


def part_tag(tag: str, part: int) -> str:
    """The tag of part ``part`` of a ``--processes`` run tagged ``tag``: ``TAG-partN`` (``partN`` untagged)."""
    return f"{tag}-part{part}" if tag else f"part{part}"


def run_in_processes(argv: list[str], args: argparse.Namespace, stages: Stages) -> None:
    """Run ``argv`` (this script's flags) as ``args.processes`` child processes, each on its share of
    ``args.domains`` (round robin), without the face+cat scenes and under :func:`part_tag`, and wait.

    Every finished unit lands in the ``--resume`` cache, from which the caller then reads the whole
    run back and writes its one report; the parts' own reports are deleted.  A unit's result
    depends only on its settings and seed, so this gives the report of one process, sooner.
    Raises SystemExit naming the part, its domains and its exit status if one fails.
    """
    groups = [args.domains[i::args.processes] for i in range(min(args.processes, len(args.domains)))]
    threads = [] if args.threads else ["--threads", str(max(1, (os.cpu_count() or 1) // len(groups)))]
    children = []
    for part, domains in enumerate(groups):
        # later flags win in argparse, so the part's own flags are appended to the caller's
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--processes", "1", "--domains", *domains,
                   "--no-interference", "--tag", part_tag(args.tag, part), *threads]
        children.append(subprocess.Popen(command))
    with stages(f"{len(groups)} processes: " + " | ".join(" ".join(g) for g in groups)):
        status = [child.wait() for child in children]
    for part in range(len(groups)):
        for path in Path(args.out).glob(f"quality-{part_tag(args.tag, part)}[._]*"):
            path.unlink()
    failed = [f"part {part} ({' '.join(groups[part])}) exited with {code}" for part, code in enumerate(status) if code]
    if failed:
        raise SystemExit(f"benchmarks/quality.py --processes {args.processes}: {'; '.join(failed)} (the output is "
                         f"above). Finished units are in the cache: fix the cause and run the same command again")


def main(argv=None) -> dict:
    """Run what ``argv`` asks (a benchmark run, ``--merge`` or ``--sweep-table``); returns the report
    as a dict (``{}`` for the sweep table), the same record that is written to ``quality*.json``."""
    args = parse_args(argv)
    if args.sweep_table:
        print(sweep_table(args.out))
        return {}
    if args.merge:
        # --methods narrows a merge only when given: its default (every method) keeps what the reports hold
        return merge_reports(args.merge, args.out, tag=args.tag,
                             methods=None if args.methods == list(METHODS) else args.methods)
    if "random" in args.methods and "NoiseCLR" not in args.methods:
        raise SystemExit(f"benchmarks/quality.py: --methods {' '.join(args.methods)} has random but not NoiseCLR; "
                         f"random tokens are drawn at the norms of that seed's NoiseCLR set, so add NoiseCLR")
    if args.processes < 1:
        raise SystemExit(f"benchmarks/quality.py: --processes {args.processes}: give 1 (the default) or more")
    if args.processes > 1 and not args.resume:
        raise SystemExit(f"benchmarks/quality.py: --processes {args.processes} hands the units over through the "
                         f"cache; add --resume")
    from noiseclr_lite.models import BUNDLED_MODEL, load_pipeline
    from noiseclr_lite.toyworld.oracle import Oracle

    model = args.model or BUNDLED_MODEL
    settings = settings_from_args(args, model)
    # before the model loads: a usage error, not a minute's wait. Both losses take the same options, so
    # one is checked; text and h-space alone train nothing, so nothing is refused
    trained = next((method for method in settings.methods if method in TRAINED_LOSSES), None)
    try:
        if trained is not None:
            check_config(TrainConfig(**settings.train_overrides(TRAINED_LOSSES[trained], seed=0)))
    except ValueError as err:
        raise SystemExit(f"benchmarks/quality.py: {err} (`python benchmarks/quality.py --help` names the option "
                         f"that sets each field)") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    stages = Stages()
    if args.processes > 1 and len(args.domains) > 1:  # one domain gains nothing from a child process
        run_in_processes(list(sys.argv[1:] if argv is None else argv), args, stages)
    with stages("load model and oracle"):
        pipe = load_pipeline(model, device=args.device, dtype=DTYPES.get(args.dtype))
        oracle = Oracle.load(args.oracle).to(pipe.device)
    return run_benchmark(pipe, oracle, settings, args.out, tag=args.tag, resume=args.resume,
                         progress=not args.no_progress, stages=stages)


if __name__ == "__main__":
    main()
