"""Re-measure the bundled model's card: reconstruction, oracle accuracy, text control, speed.

``python -m noiseclr_lite.toyworld evaluate`` prints every number next to its bar and
exits non-zero if one is missed.  Each measurement is a small function, so tests and
notebooks can call them one at a time.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .domains import DOMAIN_NAMES, DOMAINS, render_batch
from .oracle import HEADS, Oracle, accuracy
from .train_model import psnr


@dataclass
class Bar:
    """One measured number and the bar it must clear (``at_least`` or at most)."""

    name: str
    value: float
    bar: float
    at_least: bool = True

    @property
    def passed(self) -> bool:
        """Whether ``value`` clears ``bar`` (>= it when ``at_least``, <= it otherwise)."""
        return self.value >= self.bar if self.at_least else self.value <= self.bar

    def __str__(self) -> str:
        sign = ">=" if self.at_least else "<="
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.value:.4g} (bar {sign} {self.bar:g})"


def _pixels(images_uint8) -> torch.Tensor:
    """uint8 renders [B, 64, 64, 3] -> float [B, 3, 64, 64] in [-1, 1]."""
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@torch.no_grad()
def reconstruction_psnr(pipe, num_images: int = 500, seed: int = 987_654) -> tuple[float, torch.Tensor, list]:
    """Mean PSNR (dB) of VAE round trips of ``num_images`` held-out renders.

    Returns (PSNR, the reconstructions [num_images, 3, 64, 64] in [-1, 1], the renders' labels).
    """
    images_u8, labels = render_batch(num_images, seed=seed)
    images = _pixels(images_u8)
    vae = pipe.vae
    recon = torch.cat([vae.decode(vae.encode(images[s:s + 100].to(vae.dtype)).latent_dist.mode()).sample.float()
                       for s in range(0, num_images, 100)]).clamp(-1, 1)
    return psnr(images, recon), recon, labels


@torch.no_grad()
def sample(pipe, prompt: str, num: int, guidance_scale: float = 4.0, steps: int = 25, seed: int = 0,
           batch: int = 32) -> torch.Tensor:
    """``num`` samples [num, 3, 64, 64] in [-1, 1] for ``prompt`` with the pipeline's own loop."""
    out = []
    for start in range(0, num, batch):
        n = min(batch, num - start)
        result = pipe([prompt] * n, num_inference_steps=steps, guidance_scale=guidance_scale,
                      generator=torch.Generator().manual_seed(seed + start), output_type="pt")
        out.append(result.images.float() * 2 - 1)
    return torch.cat(out)


def text_control(pipe, oracle: Oracle, per_value: int = 32, guidance_scale: float = 4.0, steps: int = 25,
                 progress: bool = True) -> dict:
    """For every attribute value: the share of samples of "<noun>, <value>" the oracle reads as it.

    Returns {"domain.attribute=value": share}.
    """
    from tqdm.auto import tqdm

    jobs = [(d, a, v, phrase) for d in DOMAIN_NAMES for a, values in DOMAINS[d].attributes.items()
            for v, phrase in enumerate(values)]
    result = {}
    for d, a, v, phrase in tqdm(jobs, desc="text control", disable=not progress):
        images = sample(pipe, f"{DOMAINS[d].noun}, {phrase}", per_value, guidance_scale, steps, seed=v)
        probs = oracle.predict(images)["attributes"][:, HEADS.index((d, a))]
        result[f"{d}.{a}={phrase}"] = float(((probs > 0.5).long() == v).float().mean())
    return result


def domain_control(pipe, oracle: Oracle, per_domain: int = 32, guidance_scale: float = 4.0, steps: int = 25) -> dict:
    """Share of samples of the bare noun ("a cat") that the oracle puts in the right domain."""
    result = {}
    for i, d in enumerate(DOMAIN_NAMES):
        probs = oracle.predict(sample(pipe, DOMAINS[d].noun, per_domain, guidance_scale, steps, seed=100 + i))
        result[d] = float((probs["domain"].argmax(1) == i).float().mean())
    return result


def unconditional_confidence(pipe, oracle: Oracle, num: int = 64, steps: int = 25) -> float:
    """Share of unconditional samples whose top oracle domain probability is >= 0.9."""
    probs = oracle.predict(sample(pipe, "", num, guidance_scale=1.0, steps=steps, seed=7))
    return float((probs["domain"].max(1).values >= 0.9).float().mean())


def generation_seconds(model_path: str, repeats: int = 5, steps: int = 25) -> float:
    """Median seconds for load + one 25-step 64x64 generation, after one warm-up."""
    from ..models import load_pipeline

    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        pipe = load_pipeline(model_path, device="cpu")
        pipe("a face", num_inference_steps=steps, guidance_scale=4.0, generator=torch.Generator().manual_seed(i))
        if i:  # the first run warms caches up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def evaluate(model_path: str, oracle_path: str, quick: bool = False, details: dict | None = None) -> list[Bar]:
    """Measure every bar of the bundled model's card; ``quick`` uses fewer samples.

    If ``details`` is a dict, the per-attribute-value text-control shares are put in it.
    """
    from ..models import load_pipeline

    pipe = load_pipeline(model_path, device="cpu")
    oracle = Oracle.load(oracle_path)
    bars: list[Bar] = []
    value, recon, labels = reconstruction_psnr(pipe, 100 if quick else 500)
    bars.append(Bar("VAE reconstruction PSNR (dB)", value, 30.0))
    held_u8, held_labels = render_batch(200 if quick else 2000, seed=123_456_789)
    on_renders = accuracy(oracle, _pixels(held_u8), held_labels)
    on_recon = accuracy(oracle, recon, labels)
    bars.append(Bar("oracle: worst attribute accuracy on renders", min(v for k, v in on_renders.items() if k != "domain"), 0.98))
    bars.append(Bar("oracle: worst attribute accuracy on VAE reconstructions",
                    min(v for k, v in on_recon.items() if k != "domain"), 0.95))
    control = text_control(pipe, oracle, per_value=8 if quick else 32)
    if details is not None:
        details.update(control)
    bars.append(Bar("text control: mean over attribute values", statistics.mean(control.values()), 0.85))
    per_attribute = {}
    for key, share in control.items():
        per_attribute.setdefault(key.split("=")[0], []).append(share)
    bars.append(Bar("text control: worst attribute", min(statistics.mean(v) for v in per_attribute.values()), 0.70))
    domains = domain_control(pipe, oracle, per_domain=8 if quick else 32)
    bars.append(Bar("domain word yields its domain (worst domain)", min(domains.values()), 0.98))
    bars.append(Bar("unconditional samples with top domain prob >= 0.9", unconditional_confidence(pipe, oracle, 16 if quick else 64), 0.90))
    bars.append(Bar("load + 25-step generation, median seconds", generation_seconds(model_path, 2 if quick else 5), 3.0, at_least=False))
    return bars


def save_evaluation(model_path: str, bars: list[Bar], details: dict, quick: bool = False) -> Path:
    """Write ``evaluation.json`` beside the weights, for the card (``card.py``)."""
    import json
    import os
    import platform

    model_path = Path(model_path)
    state_path = model_path / "training_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    record = {"date": time.strftime("%Y-%m-%d"), "unet_step": state.get("unet_step"), "quick": quick,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads",
              "bars": [{"name": b.name, "value": b.value, "bar": b.bar, "at_least": b.at_least, "passed": b.passed}
                       for b in bars],
              "details": details}
    out = model_path / "evaluation.json"
    out.write_text(json.dumps(record, indent=1))
    return out
