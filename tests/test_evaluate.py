"""The bundled model's re-measurement (``noiseclr_lite.toyworld.evaluate``), one function at a time.

Each measurement runs on the shipped model and oracle at a tiny size (a few samples, 2 denoising
steps): the numbers are not the card's, the shapes, ranges, seeding and bookkeeping are.
"""

import json
import statistics

import pytest
import torch

from noiseclr_lite.models import BUNDLED_MODEL, ORACLE_DIR, load_pipeline
from noiseclr_lite.toyworld import evaluate as ev
from noiseclr_lite.toyworld.domains import DOMAIN_NAMES, DOMAINS
from noiseclr_lite.toyworld.oracle import Oracle
from noiseclr_lite.toyworld.train_model import psnr


@pytest.fixture(scope="module")
def bundled():
    return load_pipeline(BUNDLED_MODEL, device="cpu"), Oracle.load(ORACLE_DIR)


def test_reconstruction_psnr_is_the_psnr_of_the_returned_round_trips(bundled):
    pipe, _ = bundled
    value, recon, labels = ev.reconstruction_psnr(pipe, num_images=4)
    images = ev._pixels(ev.render_batch(4, seed=987_654)[0])
    assert recon.shape == (4, 3, 64, 64) and recon.min() >= -1 and recon.max() <= 1 and len(labels) == 4
    assert value == pytest.approx(psnr(images, recon))
    assert value > 25  # the shipped VAE's card reads about 31 dB on 500 images; a broken decoder reads under 15


def test_sample_is_seeded_per_batch_and_in_the_documented_range(bundled):
    pipe, _ = bundled
    three = ev.sample(pipe, "a cat, striped", num=3, steps=2, seed=5, batch=2)
    assert three.shape == (3, 3, 64, 64) and three.min() >= -1 and three.max() <= 1
    # batches are seeded seed + start, so the first two samples do not depend on the batch size
    two = ev.sample(pipe, "a cat, striped", num=2, steps=2, seed=5, batch=2)
    assert torch.equal(three[:2], two)
    assert not torch.equal(ev.sample(pipe, "a cat, striped", num=2, steps=2, seed=6, batch=2), two)


def test_text_domain_and_unconditional_control_read_every_value_as_a_share(bundled):
    pipe, oracle = bundled
    control = ev.text_control(pipe, oracle, per_value=1, steps=2, progress=False)
    expected = {f"{d}.{a}={phrase}" for d in DOMAIN_NAMES for a, values in DOMAINS[d].attributes.items()
                for phrase in values}
    assert set(control) == expected and all(share in (0.0, 1.0) for share in control.values())
    domains = ev.domain_control(pipe, oracle, per_domain=2, steps=2)
    assert list(domains) == list(DOMAIN_NAMES) and all(share in (0.0, 0.5, 1.0) for share in domains.values())
    assert ev.unconditional_confidence(pipe, oracle, num=2, steps=2) in (0.0, 0.5, 1.0)


def test_unconditional_confidence_counts_samples_sure_of_their_domain(monkeypatch):
    calls = []

    def fake_sample(pipe, prompt, num, guidance_scale, steps, seed):
        calls.append((prompt, num, guidance_scale))
        return "images"

    class FakeOracle:
        def predict(self, images):
            # top domain probabilities 0.95, 0.6, 0.9 (exactly at the bar) and 0.5
            return {"domain": torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.1, 0.9], [0.5, 0.5]])}

    monkeypatch.setattr(ev, "sample", fake_sample)
    assert ev.unconditional_confidence("pipe", FakeOracle(), num=4, steps=2) == 0.5
    assert calls == [("", 4, 1.0)]  # the empty prompt, without guidance


def test_generation_seconds_is_a_median_after_a_warm_up(monkeypatch):
    calls = []
    monkeypatch.setattr("noiseclr_lite.models.load_pipeline", lambda path, device: calls.append(path) or
                        (lambda *args, **kwargs: None))
    clock = iter([0.0, 10.0, 11.0, 20.0, 22.0, 30.0, 33.0])  # the warm-up is never read back; then 1, 2, 3 s
    monkeypatch.setattr(ev.time, "perf_counter", lambda: next(clock))
    assert ev.generation_seconds("some/model", repeats=3) == 2.0 and calls == ["some/model"] * 4


def test_evaluate_turns_the_measurements_into_the_cards_bars(monkeypatch, tmp_path):
    control = {"face.expression=smiling": 1.0, "face.expression=frowning": 0.5,
               "cat.pattern=plain": 0.25, "cat.pattern=striped": 0.75}
    monkeypatch.setattr("noiseclr_lite.models.load_pipeline", lambda path, device: "pipe")
    monkeypatch.setattr(ev.Oracle, "load", staticmethod(lambda path: "oracle"))
    monkeypatch.setattr(ev, "reconstruction_psnr", lambda pipe, n: (31.0, "recon", "labels"))
    monkeypatch.setattr(ev, "render_batch", lambda n, seed: ("renders", "held labels"))
    monkeypatch.setattr(ev, "_pixels", lambda images: images)
    monkeypatch.setattr(ev, "accuracy", lambda oracle, images, labels:
                        {"domain": 0.1, "a": 0.99, "b": 0.97} if images == "renders" else {"domain": 0.1, "a": 0.96})
    monkeypatch.setattr(ev, "text_control", lambda pipe, oracle, per_value: dict(control))
    monkeypatch.setattr(ev, "domain_control", lambda pipe, oracle, per_domain: {"face": 1.0, "cat": 0.5})
    monkeypatch.setattr(ev, "unconditional_confidence", lambda pipe, oracle, num: 0.95)
    monkeypatch.setattr(ev, "generation_seconds", lambda path, repeats: 4.0)
    details = {}
    bars = {bar.name: bar for bar in ev.evaluate("model", "oracle", quick=True, details=details)}
    assert details == control
    assert bars["VAE reconstruction PSNR (dB)"].passed
    # the worst attribute, never the domain head (its 0.1 would fail every card)
    assert bars["oracle: worst attribute accuracy on renders"].value == 0.97
    assert not bars["oracle: worst attribute accuracy on renders"].passed  # bar 0.98
    assert bars["oracle: worst attribute accuracy on VAE reconstructions"].value == 0.96
    assert bars["text control: mean over attribute values"].value == statistics.mean(control.values())
    # per attribute, the mean of its values' shares: face.expression 0.75, cat.pattern 0.5
    assert bars["text control: worst attribute"].value == 0.5
    assert bars["domain word yields its domain (worst domain)"].value == 0.5
    assert bars["unconditional samples with top domain prob >= 0.9"].passed
    speed = bars["load + 25-step generation, median seconds"]
    assert speed.value == 4.0 and not speed.at_least and not speed.passed and str(speed).startswith("FAIL")
    path = ev.save_evaluation(tmp_path, list(bars.values()), details, quick=True)
    assert path == tmp_path / "evaluation.json"
    record = json.loads(path.read_text())
    assert record["quick"] is True and record["details"] == control and record["unet_step"] is None
    assert [(b["name"], b["value"], b["passed"]) for b in record["bars"]] == \
        [(b.name, b.value, b.passed) for b in bars.values()]
