"""Scoring directions: the math on constructed cases with known answers, and one end-to-end run."""

import dataclasses
import itertools
import json
import math
import statistics
from dataclasses import asdict

import pytest
import torch

from noiseclr_lite.directions import Directions
from noiseclr_lite.editing import DirectionEdit, edit
from noiseclr_lite.inversion import encode_prompt
from noiseclr_lite.metrics import (DirectionScore, PromptDirections, StartSet, aggregate_summaries,
                                   attribute_probabilities, balanced_start_images, calibrate_scale, coverage,
                                   cross_domain_interference, expected_subset_coverage, format_table,
                                   images_to_tensor, oracle_read, pixel_change, prepare_start, preservation,
                                   purity, score_direction, score_directions, score_rendered, strength, summary,
                                   target_attribute, two_sided_effects)
from noiseclr_lite.models import decode_latents, encode_images
from noiseclr_lite.toyworld.domains import CAT, FACE, SCENE
from noiseclr_lite.toyworld.oracle import HEADS

FACE_NAMES = FACE.attribute_names  # expression, hair, glasses, skin


def balanced_labels(m=8, a=4, seed=0):
    """[M, A] 0/1 labels, every column half ones."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.tensor([0, 1] * (m // 2))[torch.randperm(m, generator=g)] for _ in range(a)], 1).float()


# ----------------------------------------------------------------------------- effects, purity, strength
def test_a_pure_direction_that_flips_one_attribute_scores_purity_1_strength_1():
    start = balanced_labels()
    plus, minus = start.clone(), start.clone()
    plus[:, 2], minus[:, 2] = 1.0, 0.0  # +s: glasses on everyone, -s: glasses off everyone
    effects = two_sided_effects(plus, minus)
    assert torch.allclose(effects, torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert purity(effects) == 1.0 and strength(effects) == 1.0
    assert target_attribute(effects, FACE_NAMES) == "glasses"
    assert two_sided_effects(minus, plus, signed=True)[2].item() == -1.0  # the sign says which way


def test_a_mixed_direction_has_purity_one_half():
    start = balanced_labels()
    plus, minus = start.clone(), start.clone()
    plus[:, [0, 3]], minus[:, [0, 3]] = 1.0, 0.0  # smile and dark skin together
    effects = two_sided_effects(plus, minus)
    assert purity(effects) == pytest.approx(0.5) and strength(effects) == pytest.approx(1.0)
    assert preservation(effects, 0.02, FACE_NAMES).off_target == pytest.approx(1.0)


def test_a_one_way_direction_scores_one_half_on_balanced_images_and_is_hidden_by_a_one_way_score():
    start = balanced_labels()
    plus, minus = start.clone(), start.clone()
    plus[:, 2] = 1.0  # only adds glasses; -s leaves them as they were
    effects = two_sided_effects(plus, minus, signed=True)
    assert effects[2].item() == pytest.approx(0.5) and effects.abs().sum().item() == pytest.approx(0.5)
    # the pitfall: where 70% already wear glasses a one-way score sees only 0.3
    wearing = (torch.arange(10) < 7).float()[:, None]
    assert two_sided_effects(torch.ones(10, 1), wearing).item() == pytest.approx(0.3)


def test_doing_nothing_has_purity_0_and_names_are_required():
    assert purity(torch.zeros(4)) == 0.0 and strength(torch.zeros(4)) == 0.0
    assert purity({"a": 0.2, "b": -0.2}) == pytest.approx(0.5)  # signed effects count by size
    with pytest.raises(ValueError, match="names"):
        target_attribute(torch.ones(3))
    with pytest.raises(ValueError, match="same images"):
        two_sided_effects(torch.zeros(4, 2), torch.zeros(3, 2))


# ----------------------------------------------------------------------------- coverage
def test_coverage_counts_strong_pure_directions_only():
    table = torch.tensor([
        [0.9, 0.05, 0.0, 0.05],   # pure and strong: covers expression
        [0.85, 0.0, 0.1, 0.0],    # the same attribute again: counted once
        [0.0, 0.8, 0.8, 0.0],     # strong but impure (purity 0.5): covers nothing
        [0.0, 0.0, 0.0, 0.3],     # pure but weak: covers nothing
        [0.0, 0.0, 0.75, 0.5],    # strength 0.75, purity exactly 0.6: covers glasses
    ])
    share, covered = coverage(table, FACE_NAMES)
    assert covered == ["expression", "glasses"] and share == pytest.approx(0.5)
    assert coverage(table[2:4], FACE_NAMES) == (0.0, [])
    share, covered = coverage(table, FACE_NAMES, strength_min=0.25, purity_min=0.5)  # looser rule
    assert covered == FACE_NAMES and share == 1.0
    with pytest.raises(ValueError, match="A = 4"):
        coverage(table[:, :3], FACE_NAMES)


def test_expected_subset_coverage_is_the_mean_coverage_over_every_draw_of_that_size():
    covered = [["expression"], ["expression"], [], ["hair", "glasses"]]   # D = 4 directions
    # size 2 by hand: expression is missed by 1 draw of 6, hair and glasses by 3 of 6, skin always
    assert expected_subset_coverage(covered, FACE_NAMES, 2) == pytest.approx((5 / 6 + 1 / 2 + 1 / 2 + 0) / 4)
    for size in (1, 2, 3, 4):                                              # the same, counted draw by draw
        draws = list(itertools.combinations(covered, size))
        counted = statistics.mean(len(set().union(*draw)) / 4 for draw in draws)
        assert expected_subset_coverage(covered, FACE_NAMES, size) == pytest.approx(counted)
    assert expected_subset_coverage(covered, FACE_NAMES, 4) == pytest.approx(0.75)  # the whole set's own
    for size in (0, 5):
        with pytest.raises(ValueError, match=f"size={size} directions cannot be drawn from a set of 4"):
            expected_subset_coverage(covered, FACE_NAMES, size)
    with pytest.raises(ValueError, match="got no directions"):
        expected_subset_coverage([], FACE_NAMES, 1)


# ----------------------------------------------------------------------------- preservation, pixels
def test_preservation_and_pixel_change():
    kept = preservation(torch.tensor([0.1, 0.9, 0.2, 0.0]), 0.04, FACE_NAMES)
    assert kept.target == "hair" and kept.target_effect == pytest.approx(0.9)
    assert kept.off_target == pytest.approx(0.3) and kept.pixel_change == 0.04
    black, white = -torch.ones(2, 3, 8, 8), torch.ones(2, 3, 8, 8)
    assert pixel_change(black, white) == 1.0 and pixel_change(white, white) == 0.0
    half = white.clone()
    half[:, :, :4] = -1  # half the pixels go black to white
    assert pixel_change(black, half) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        pixel_change(black, white[:1])


def test_cross_domain_interference_splits_face_from_cat():
    names = SCENE.attribute_names
    effects = torch.zeros(len(names))
    effects[names.index("face_hair")], effects[names.index("cat_fur")] = 0.8, 0.2
    face = cross_domain_interference(effects, names, "face")
    assert (face.own, face.other) == pytest.approx((0.8, 0.2)) and face.leak == pytest.approx(0.2)
    cat = cross_domain_interference(dict(zip(names, effects.tolist())), direction_domain="cat")
    assert (cat.own, cat.other) == pytest.approx((0.2, 0.8)) and cat.leak == pytest.approx(0.8)
    assert cross_domain_interference(torch.zeros(len(names)), names, "face").leak == 0.0
    with pytest.raises(ValueError, match="subject"):
        cross_domain_interference(effects, names, "car")


# ----------------------------------------------------------------------------- calibration
def test_calibrate_scale_on_a_linear_render():
    calls = []
    result = calibrate_scale(lambda s: calls.append(s) or 0.01 * s, 0.05, high=16.0, iters=12)
    assert result.reached and result.scale == pytest.approx(5.0, rel=0.05)
    assert result.change == pytest.approx(0.05, rel=0.05) and len(calls) <= 13
    assert [s for s, _ in result.evaluations] == calls


def test_calibrate_scale_log_spaced_finds_small_and_large_scales_alike():
    # a direction that needs 0.3 and one that needs 100, each linear in its scale
    for needed in (0.3, 100.0):
        calls = []
        result = calibrate_scale(lambda s: calls.append(s) or 0.05 * s / needed, 0.05, low=0.125, high=256.0,
                                 iters=8)
        assert result.reached and result.scale == pytest.approx(needed, rel=0.15), needed
        assert calls[0] == 256.0 and all(0.125 < s < 256.0 for s in calls[1:])
        assert calls[1] == pytest.approx(math.sqrt(0.125 * 256.0))                 # the log-midpoint first
    # plain halving from [0, 16] with 4 steps cannot go below 1: the small scale is missed 3x over
    coarse = calibrate_scale(lambda s: 0.05 * s / 0.3, 0.05, high=16.0, iters=4)
    assert coarse.scale == 1.0 and coarse.change > 3 * 0.05
    with pytest.raises(ValueError, match="low < high"):
        calibrate_scale(lambda s: s, 0.05, low=4.0, high=2.0)


def test_calibrate_scale_on_a_saturating_render():
    reachable = calibrate_scale(lambda s: 0.1 * math.tanh(s / 4), 0.05, high=20.0)
    assert reachable.reached and reachable.scale == pytest.approx(4 * math.atanh(0.5), rel=0.08)
    # saturates at 0.03 < target: return the upper bound and say so
    capped = calibrate_scale(lambda s: 0.03 * (1 - math.exp(-s)), 0.05, high=10.0)
    assert not capped.reached and capped.scale == 10.0 and capped.change < 0.05
    assert len(capped.evaluations) == 1  # no bisection once the top is known to fall short
    with pytest.raises(ValueError):
        calibrate_scale(lambda s: s, 0.0)


# ----------------------------------------------------------------------------- start images
def test_balanced_start_images_are_balanced_seeded_and_labelled():
    images, labels = balanced_start_images("face", 8, seed=3)
    assert images.shape == (8, 3, 64, 64) and images.min() >= -1 and images.max() <= 1
    for attribute in FACE_NAMES:
        assert sum(lab[attribute] for lab in labels) == 4, attribute
    again, labels_again = balanced_start_images("face", 8, seed=3)
    assert torch.equal(images, again) and labels == labels_again
    other, other_labels = balanced_start_images("face", 8, seed=4)
    assert not torch.equal(images, other)
    # the labels are the rendered ones: dark-skinned faces are darker between the eyes
    centre = images[:, :, 28:36, 28:36].mean((1, 2, 3))
    dark = torch.tensor([lab["skin"] == 1 for lab in labels])
    assert centre[dark].max() < centre[~dark].min()
    small, scene_labels = balanced_start_images("scene", 6, seed=0, size=32)
    assert small.shape == (6, 3, 32, 32)
    assert all(sum(lab[a] for lab in scene_labels) == 3 for a in SCENE.attribute_names)


# ----------------------------------------------------------------------------- tables
def fake_score(name, effects, change=0.05):
    effects = dict(zip(FACE_NAMES, effects))
    top = max(effects, key=effects.get)
    return DirectionScore(name, name, "face", 1.0, effects, effects, effects, effects, purity(effects),
                          strength(effects), top, change, sum(effects.values()) - effects[top])


def test_summary_and_markdown_table():
    scores = [fake_score("a", [0.9, 0.0, 0.1, 0.0]), fake_score("b", [0.0, 0.6, 0.6, 0.0])]
    row = summary(scores, "face")
    assert row["coverage"] == 0.25 and row["covered"] == ["expression"]
    assert row["mean_purity"] == pytest.approx((0.9 + 0.5) / 2) and row["mean_strength"] == pytest.approx(0.75)
    other = summary([fake_score("c", [0.9, 0.0, 0.0, 0.0]), fake_score("d", [0.0, 0.0, 0.8, 0.0])], "face")
    both = aggregate_summaries([row, other])
    assert both["coverage"] == pytest.approx((0.375, math.sqrt(0.03125)))
    assert both["covered"] == ["expression"] and both["runs"] == 2
    table = format_table([{"method": "NoiseCLR", **both}, {"method": "random", **row}])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| method | domain | K | coverage |")
    assert "| NoiseCLR | face | 2 | 0.38 ± 0.18 |" in lines[2] and "| random | face | 2 | 0.25 |" in lines[3]
    # a report read back from JSON has lists where it had (mean, std) tuples: the same table
    assert format_table(json.loads(json.dumps([{"method": "NoiseCLR", **both}, {"method": "random", **row}]))) == table
    with pytest.raises(ValueError, match="attributes") as refused:
        summary(scores, "cat")
    assert all(s.name in str(refused.value) for s in scores)  # the error names the scores that are off
    with pytest.raises(ValueError, match="summary\\('face'\\) got no scores"):
        summary([], "face")


# ----------------------------------------------------------------------------- end to end, tiny pipeline
class ColourOracle:
    """A deterministic stand-in for the oracle: redness -> P(smiling), blueness -> P(blond)."""

    def predict(self, images):
        b = images.shape[0]
        probs = torch.full((b, len(HEADS)), 0.5)
        mean = images.float().mean((2, 3))  # [B, 3]
        probs[:, HEADS.index(("face", "expression"))] = torch.sigmoid(20 * mean[:, 0])
        probs[:, HEADS.index(("face", "hair"))] = torch.sigmoid(20 * mean[:, 2])
        return {"domain": torch.full((b, 5), 0.2), "attributes": probs}


STEPS = 3


@pytest.fixture
def scene(tiny_pipe):
    images, _ = balanced_start_images("face", 2, seed=0, size=32)
    start = prepare_start(tiny_pipe, images, num_inference_steps=STEPS, seed=0)
    directions = Directions.create(tiny_pipe, 2, prefix="face", seed=1)
    # scale 0 gives back the inverted images: the VAE round trip, to uint8 rounding
    round_trip = images_to_tensor(decode_latents(tiny_pipe, encode_images(tiny_pipe, images)))
    assert (start.images - round_trip).abs().max() <= 2.5 / 127.5
    return tiny_pipe, start, directions


def test_score_direction_end_to_end_on_the_tiny_pipeline(scene):
    pipe, start, directions = scene
    oracle = ColourOracle()
    assert start.images.shape == (2, 3, 32, 32)
    nothing = score_direction(pipe, oracle, directions, 1, start, "face", scale=0.0)
    assert nothing.pixel_change == 0.0 and nothing.strength == 0.0 and nothing.purity == 0.0

    score = score_direction(pipe, oracle, directions, "<face_1>", start, "face", scale=4.0)
    # recompute by hand: the same edits, the same fake oracle
    columns = [HEADS.index(("face", a)) for a in FACE_NAMES]
    by_hand = {}
    for s in (4.0, -4.0):
        edited = images_to_tensor(edit(pipe, [DirectionEdit(directions, 1, s)], inversion=start.inversion))
        by_hand[s] = (edited, oracle.predict(edited)["attributes"][:, columns])
    signed = (by_hand[4.0][1] - by_hand[-4.0][1]).mean(0)
    assert list(score.effects) == FACE_NAMES and score.token == "<face_1>" and score.scale == 4.0
    assert torch.allclose(torch.tensor(list(score.signed_effects.values())), signed, atol=1e-6)
    assert torch.allclose(torch.tensor(list(score.effects.values())), signed.abs(), atol=1e-6)
    assert score.effects["glasses"] == 0.0 and score.effects["skin"] == 0.0  # the fake reads two attributes
    assert score.strength > 0 and score.purity == pytest.approx(signed.abs().max() / signed.abs().sum())
    change = (pixel_change(by_hand[4.0][0], start.images) + pixel_change(by_hand[-4.0][0], start.images)) / 2
    assert score.pixel_change == pytest.approx(change) and score.pixel_change > 0
    plus_minus = [score.plus_effects[a] - score.minus_effects[a] for a in FACE_NAMES]
    assert plus_minus == pytest.approx(signed.tolist(), abs=1e-6)
    assert not score.calibrated and score.window == (1.0, 0.0)

    # in an edit window the edits are made in that window, and the score records it
    late = score_direction(pipe, oracle, directions, 1, start, "face", scale=4.0, window=(0.5, 0.0))
    late_edits = [images_to_tensor(edit(pipe, [DirectionEdit(directions, 1, s, (0.5, 0.0))], inversion=start.inversion))
                  for s in (4.0, -4.0)]
    assert late.window == (0.5, 0.0)
    assert late.pixel_change == pytest.approx(sum(pixel_change(e, start.images) for e in late_edits) / 2)
    assert late.pixel_change != pytest.approx(score.pixel_change)


def test_calibrated_scores_match_the_target_change_and_text_prompts_work_as_directions(scene):
    pipe, start, directions = scene
    oracle = ColourOracle()
    target = score_direction(pipe, oracle, directions, 0, start, "face", scale=2.0).pixel_change
    score = score_direction(pipe, oracle, directions, 0, start, "face", target_change=target,
                            calibration_images=2, max_scale=8.0, calibration_iters=10)
    assert score.calibrated and not score.saturated
    assert score.pixel_change == pytest.approx(target, rel=0.05)
    capped = score_direction(pipe, oracle, directions, 0, start, "face", target_change=0.9, max_scale=1.0,
                             calibration_images=1)
    assert capped.saturated and capped.scale == 1.0

    prompts = PromptDirections(["smiling", "blond hair"], names=["smile", "blond"])
    assert prompts.index("blond") == 1 and prompts.index("smiling") == 0
    assert torch.equal(prompts.conditioning(pipe)[1:], encode_prompt(pipe, "blond hair"))
    text = score_direction(pipe, oracle, prompts, "smile", start, "face", scale=3.0)
    assert text.name == "smile" and text.token == "smiling" and text.pixel_change > 0


def test_score_directions_scores_every_direction_on_one_inversion_it_makes_if_needed(scene):
    pipe, start, directions = scene
    oracle = ColourOracle()
    scores = score_directions(pipe, oracle, directions, start, "face", progress=False, scale=4.0)
    assert [s.token for s in scores] == ["<face_0>", "<face_1>"]
    assert scores[1] == score_direction(pipe, oracle, directions, 1, start, "face", scale=4.0)
    # raw images are inverted once, as prepare_start would: the same start, the same scores
    images, _ = balanced_start_images("face", 2, seed=0, size=32)
    again = score_directions(pipe, oracle, directions, images, "face", progress=False, scale=4.0,
                             num_inference_steps=STEPS)
    assert [s.effects for s in again] == [s.effects for s in scores]
    assert [s.pixel_change for s in again] == pytest.approx([s.pixel_change for s in scores])


def test_the_oracle_is_read_in_the_domains_attribute_order_with_an_in_domain_mask():
    images = torch.zeros(3, 3, 8, 8)
    images[0, 0] = 0.5   # red: P(smiling) high
    images[1, 2] = -0.5  # little blue: P(blond) low
    probs, in_domain = oracle_read(ColourOracle(), images, "face")
    assert probs.shape == (3, len(FACE_NAMES)) and probs.dtype == torch.float32
    expression, hair = FACE_NAMES.index("expression"), FACE_NAMES.index("hair")
    assert probs[0, expression] > 0.99 and probs[1, hair] < 0.01 and probs[2, expression] == pytest.approx(0.5)
    assert probs[:, FACE_NAMES.index("glasses")].eq(0.5).all()  # heads the fake does not read
    assert in_domain.tolist() == [True, True, True]  # the fake's domain head reads every image as a face
    assert torch.equal(attribute_probabilities(ColourOracle(), images, "face"), probs)
    cat_probs, cat_in_domain = oracle_read(ColourOracle(), images, "cat")
    assert cat_probs.shape == (3, len(CAT.attribute_names)) and not cat_in_domain.any()


class BrightnessDomainOracle:
    """Reads an image as a face while its mean brightness is below 0.5, as a car above."""

    def predict(self, images):
        b = images.shape[0]
        bright = images.float().mean((1, 2, 3))
        domain = torch.zeros(b, 5)
        domain[:, 0] = (bright < 0.5).float()   # face
        domain[:, 2] = (bright >= 0.5).float()  # car
        probs = torch.full((b, len(HEADS)), 0.5)
        probs[:, HEADS.index(("face", "skin"))] = torch.sigmoid(10 * bright)
        return {"domain": domain, "attributes": probs}


def test_domain_kept_counts_the_edits_that_leave_the_domain():
    start = StartSet(inversion=None, images=torch.zeros(4, 3, 8, 8))
    brighten = lambda s, images: (images.images + s).clamp(-1, 1)  # noqa: E731
    # +0.8 makes every face a "car"; -0.8 keeps them faces: half of the edits left the domain
    left = score_rendered(brighten, BrightnessDomainOracle(), start, "face", "b", "<b>", scale=0.8)
    assert left.domain_kept == pytest.approx(0.5) and left.target == "skin"
    stayed = score_rendered(brighten, BrightnessDomainOracle(), start, "face", "b", "<b>", scale=0.3)
    assert stayed.domain_kept == 1.0
    row = summary([left, stayed], "face")
    assert row["mean_domain_kept"] == pytest.approx(0.75)
    # a score saved before the field existed has None, and so has every summary it enters
    old = DirectionScore(**{**asdict(left), "domain_kept": None})
    assert summary([old, stayed], "face")["mean_domain_kept"] is None
    both = aggregate_summaries([row, summary([old, stayed], "face")])
    assert both["mean_domain_kept"] is None
    assert "| - |" in format_table([{"method": "m", **both}], [("method", "method"), ("mean_domain_kept", "kept")])


def test_reached_purity_leaves_out_saturated_directions():
    from noiseclr_lite.metrics import reached_purity

    faint = dataclasses.replace(fake_score("faint", [0.02, 0.0, 0.0, 0.0], change=0.01), saturated=True)
    mixed = fake_score("mixed", [0.5, 0.5, 0.0, 0.0])
    pure = fake_score("pure", [0.0, 0.0, 0.9, 0.1])
    assert faint.purity == 1.0                        # a faint edit of one attribute reads as perfectly pure
    assert reached_purity([faint, mixed, pure]) == (pytest.approx((0.5 + 0.9) / 2), 2)
    assert reached_purity([faint]) == (None, 0)
