"""benchmarks/consistency.py: its statistics on known cases, and end to end on the tiny pipeline."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from noiseclr_lite.metrics import DirectionScore
from noiseclr_lite.testing import StatsOracle

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import consistency, quality  # noqa: E402


def _score(target: str, strength: float, purity: float) -> DirectionScore:
    effects = {"expression": 0.0, "hair": 0.0, "glasses": 0.0, "skin": 0.0}
    effects[target] = strength
    rest = [name for name in effects if name != target]
    # the rest of the effect spread evenly, so that largest / sum == purity
    for name in rest:
        effects[name] = strength * (1 / purity - 1) / len(rest)
    return DirectionScore(name=target, token=target, domain="face", scale=1.0, effects=effects,
                          signed_effects=effects, plus_effects=effects, minus_effects=effects, purity=purity,
                          strength=strength, target=target, pixel_change=0.05, off_target=0.0)


def test_spearman_and_ranks_on_known_cases():
    assert consistency.ranks([0.3, 0.1, 0.2]) == [2, 0, 1]
    assert consistency.ranks([1.0, 2.0, 1.0, 3.0]) == [0.5, 2, 0.5, 3]          # ties share their mean rank
    assert consistency.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert consistency.spearman([1, 2, 3, 4], [9, 4, 1, 0]) == pytest.approx(-1.0)  # monotone, not linear
    assert consistency.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4/(5*24)
    assert consistency.spearman([1, 2, 3], [5, 5, 5]) is None                     # undefined on a constant
    assert consistency.spearman([1, 2], [1, 2]) is None
    with pytest.raises(ValueError, match="one length; got 3 and 2"):
        consistency.spearman([1, 2, 3], [1, 2])


def test_halves_split_a_set_by_consistency():
    scores = [_score("expression", 0.9, 0.9), _score("hair", 0.2, 0.5), _score("glasses", 0.8, 0.7),
              _score("skin", 0.1, 0.4), _score("hair", 0.6, 0.8)]
    values = [0.1, 0.9, 0.2, 0.8, 0.5]              # the weak, impure directions are the consistent ones
    split = consistency.halves(values, scores, "face")
    # an odd set leaves its middle one (consistency 0.5) out
    assert split["more"]["consistency"] == pytest.approx(0.85) and split["less"]["consistency"] == pytest.approx(0.15)
    assert split["more"]["strength"] == pytest.approx(0.15) and split["less"]["strength"] == pytest.approx(0.85)
    assert split["more"]["strong"] == 0.0 and split["less"]["strong"] == 1.0
    assert split["more"]["purity"] == pytest.approx(0.45) and split["less"]["purity"] == pytest.approx(0.8)
    # coverage: strength >= 0.5 and purity >= 0.6 -> expression and glasses, 2 of the 4 face attributes
    assert split["more"]["coverage"] == 0.0 and split["less"]["coverage"] == 0.5


def test_seed_agreement_is_each_directions_best_match_in_the_other_seeds_sets():
    x, y, z = torch.eye(3)

    def features(*edits):  # one timestep, one image: [1, K, 3]
        return [torch.stack(edits).unsqueeze(0)]

    two = consistency.seed_agreement({"0": features(x, y), "1": features(-2 * x, z)})
    assert two["0"] == pytest.approx([1.0, 0.0]) and two["1"] == pytest.approx([1.0, 0.0])  # the sign does not count
    # the mean over the other seeds, and the mean over timesteps before the best match is taken
    three = consistency.seed_agreement({"0": features(x, y), "1": features(x, z), "2": features(y, (x + y) / 2 ** 0.5)})
    assert three["0"] == pytest.approx([(1.0 + 0.5 ** 0.5) / 2, (0.0 + 1.0) / 2])
    over_time = consistency.seed_agreement({"0": features(x) + features(x), "1": features(x) + features(-x)})
    assert over_time["0"] == pytest.approx([0.0])                        # +1 at one timestep, -1 at the other
    with pytest.raises(ValueError, match="two or more seeds; got 1"):
        consistency.seed_agreement({"0": features(x)})


def test_gain_kurtosis_on_known_spreads():
    two_groups = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, -1.0]])       # one clean split: the minimum, -2
    two_splits = torch.tensor([[-2.0, 0.0, 0.0, 2.0]])                   # two independent splits added
    one_stands_out = torch.tensor([[0.0] * 7 + [1.0]])                   # Bernoulli(1/8): (1 - 6pq) / pq
    # rows of 4: the split, the two splits, and Bernoulli(1/4) (the last four of one_stands_out)
    got = consistency.gain_kurtosis(torch.cat([two_groups[:, :4], two_splits, one_stands_out[:, 4:]]))
    assert got == pytest.approx([-2.0, -1.0, (1 - 6 * 3 / 16) / (3 / 16)])
    assert consistency.gain_kurtosis(one_stands_out) == pytest.approx([(1 - 6 * 7 / 64) / (7 / 64)])
    # it reads the shape of the spread, not its place or size
    assert consistency.gain_kurtosis(5 + 3 * two_splits) == pytest.approx([-1.0])
    wide = torch.randn(2, 20000, generator=torch.Generator().manual_seed(0))
    assert consistency.gain_kurtosis(wide) == pytest.approx([0.0, 0.0], abs=0.1)   # Gaussian: 0
    with pytest.raises(ValueError, match="NaN or infinite"):
        consistency.gain_kurtosis(torch.tensor([[1.0, float("nan"), 3.0, 4.0]]))
    with pytest.raises(ValueError, match=r"directions \[1\] gain exactly the same on every image"):
        consistency.gain_kurtosis(torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]]))
    with pytest.raises(ValueError, match=r"N >= 4 images; got shape \(1, 3\)"):
        consistency.gain_kurtosis(torch.ones(1, 3))


def test_consistency_benchmark_end_to_end_on_the_tiny_pipeline(tiny_pipe, tmp_path):
    from test_quality_benchmark import tiny_settings

    settings = tiny_settings(Path(quality.DEFAULT_SAMPLES), domains=["face"], calibration_iters=0, num_directions=3,
                             methods=["NoiseCLR", "InfoNCE", "random", "text"], interference=False, seeds=[0, 1])
    quality.run_benchmark(tiny_pipe, StatsOracle(), settings, tmp_path, tag="a", resume=True, progress=False,
                          log=lambda _: None)
    logged = []
    result = consistency.consistency_report(["a"], tiny_pipe, StatsOracle(), tmp_path, tag="t", images=3,
                                            timesteps=(200, 600), progress=False, log=logged.append, gain_images=6)
    # the trained directions come from quality.py's cache: nothing is trained again
    assert logged and not any("train" in line for line in logged)
    report = quality.read_report(tmp_path / "quality-a.json.gz")
    assert consistency.report_threads(report) == torch.get_num_threads()
    assert consistency.report_threads({"machine": "x86_64, 2 CPUs, 1 torch threads, torch 2.13.0"}) == 1
    assert consistency.report_threads({"machine": "an older line"}) is None
    # a run with other threads than the report's is warned that training would not repeat its sets
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        warned = []
        consistency.consistency_report(["a"], tiny_pipe, StatsOracle(), tmp_path, tag="w", images=2,
                                       timesteps=(200,), progress=False, log=warned.append)
    finally:
        torch.set_num_threads(threads)
    assert f"ran with {threads} torch threads and this run has {threads + 1}" in warned[0]
    assert f"give --threads {threads}" in warned[0]
    values = result["consistency"]["face"]
    assert set(values) == {"NoiseCLR", "InfoNCE", "random", "text"}
    assert [len(values[m]["0"]) for m in ("NoiseCLR", "InfoNCE", "random")] == [3, 3, 3]
    assert len(values["text"]["None"]) == 4                          # the words: one set, seed None
    assert all(-1 <= v <= 1 for by_seed in values.values() for set_ in by_seed.values() for v in set_)
    # the random tokens are the set quality.py scored (saved in its cache), and drawn again the same
    # way when that file is gone
    from noiseclr_lite.directions import Directions
    from noiseclr_lite.train import direction_consistency

    cache = quality.Cache.for_settings(tmp_path / "cache", settings, quality.cache_key(tiny_pipe, StatsOracle()))
    saved = Directions.load(cache.trained / "face_random_seed0.safetensors")
    latents = consistency.consistency_latents(quality.training_latents(tiny_pipe, settings, "face"), 3)
    assert len(latents) == 3 and len(consistency.consistency_latents(latents, 16)) == 3   # at most what there is
    assert torch.allclose(direction_consistency(tiny_pipe, saved, latents, (200, 600)),
                          torch.tensor(values["random"]["0"]), atol=1e-5)
    (cache.trained / "face_random_seed0.safetensors").unlink()
    sets, trained = consistency.token_sets(tiny_pipe, settings, "face", [("random", 0)], lambda: None,
                                           quality.Stages(lambda _: None), cache, progress=False)
    assert trained == [] and torch.equal(sets[("random", 0)].embeddings, saved.embeddings)
    assert result["trained_here"] == [] and result["images"] == {"face": 3}
    # one reading, one set per ranked method, within-set correlations defined for a set of 3
    (reading,) = result["readings"]
    assert reading["report"] == "quality-a" and set(reading["methods"]) == {"NoiseCLR", "InfoNCE", "random"}
    for row in reading["methods"].values():
        assert row["sets"] == 2 and set(row["halves"]) == {"more", "less"}
        more, less = row["halves"]["more"], row["halves"]["less"]
        assert more["consistency"][0] >= less["consistency"][0]
    assert set(result["table"]) == {"NoiseCLR", "InfoNCE", "random", "text"}
    # each set's shared edit share, over the same images and timesteps as its consistency
    from noiseclr_lite.loss import shared_edit_share
    from noiseclr_lite.train import over_timesteps

    assert set(result["shared_table"]) == {"NoiseCLR", "InfoNCE", "random", "text"}
    assert result["shared"]["face"]["random"]["0"] == pytest.approx(
        over_timesteps(shared_edit_share, tiny_pipe, saved, latents, (200, 600)).item(), rel=1e-5)
    assert result["shared_table"]["text"]["face"] == (pytest.approx(result["shared"]["face"]["text"]["None"]), 0.0)
    assert all(0 <= v <= 1 for by_method in result["shared"].values() for by_seed in by_method.values()
               for v in by_seed.values())
    # each direction's agreement with the other seed's set of its method, on the same images and timesteps
    from noiseclr_lite.train import timestep_features

    agreement = result["agreement"]["face"]
    assert set(agreement) == {"NoiseCLR", "InfoNCE", "random"}          # the words are one set: nothing to agree
    assert all(len(agreement[m][seed]) == 3 for m in agreement for seed in ("0", "1"))
    assert all(0 <= v <= 1 for by_seed in agreement.values() for values in by_seed.values() for v in values)
    random_sets = {"0": saved, "1": Directions.load(cache.trained / "face_random_seed1.safetensors")}
    by_hand = consistency.seed_agreement({seed: timestep_features(tiny_pipe, directions, latents, (200, 600))
                                          for seed, directions in random_sets.items()})
    for seed in "01":
        assert agreement["random"][seed] == pytest.approx(by_hand[seed], abs=1e-5)
    (agreeing,) = result["agreement_readings"]
    assert set(agreeing["methods"]) == {"NoiseCLR", "InfoNCE", "random"}
    for row in agreeing["methods"].values():
        assert row["sets"] == 2 and row["halves"]["more"]["agreement"][0] >= row["halves"]["less"]["agreement"][0]
    assert result["agreement_table"]["random"]["face"][0] == pytest.approx(
        (sum(agreement["random"]["0"]) / 3 + sum(agreement["random"]["1"]) / 3) / 2)
    # each direction's denoising gain on more of the same draw of images, and its kurtosis over them
    from noiseclr_lite.train import denoising_gain

    assert result["gain_images"] == {"face": 4}   # at most the 4 training images there are
    gained_on = consistency.consistency_latents(quality.training_latents(tiny_pipe, settings, "face"), 6)
    assert torch.equal(gained_on[:3], latents)
    kurtosis = result["gain_kurtosis"]["face"]
    assert set(kurtosis) == {"NoiseCLR", "InfoNCE", "random", "text"} and len(kurtosis["text"]["None"]) == 4
    assert kurtosis["random"]["0"] == pytest.approx(
        consistency.gain_kurtosis(denoising_gain(tiny_pipe, saved, gained_on, (200, 600))), abs=1e-4)
    assert result["gain_table"]["random"]["face"][0] == pytest.approx(
        (sum(kurtosis["random"]["0"]) / 3 + sum(kurtosis["random"]["1"]) / 3) / 2)
    (by_kurtosis,) = result["gain_readings"]
    assert set(by_kurtosis["methods"]) == {"NoiseCLR", "InfoNCE", "random"}
    for row in by_kurtosis["methods"].values():
        assert row["halves"]["more"]["gain kurtosis"][0] >= row["halves"]["less"]["gain kurtosis"][0]
    assert set(result["gain_table"]) == {"NoiseCLR", "InfoNCE", "random", "text"}
    md = (tmp_path / "consistency-t.md").read_text()
    for text in ("# Edit consistency against the oracle (t)", "## How consistent each method's edits are",
                 "## How much of its edits a set makes alike",
                 "### [`quality-a`](quality-a.md)", "| NoiseCLR | 2 |", "| text |", "![the most and the least",
                 "(consistency-t.png)", "## Does another seed find the same directions?", "seeds here: 0, 1)",
                 "more agreeing half", "## Does a direction split the images? The kurtosis of its denoising gain",
                 "on 4 training images per domain", "more kurtotic half"):
        assert text in md
    from PIL import Image

    with Image.open(tmp_path / "consistency-t.png") as picture:     # one face row each: most, least consistent
        assert picture.mode == "P" and picture.height > 2 * 80 and picture.width > 2 * 3 * 80
    assert json.loads((tmp_path / "consistency-t.json").read_text())["readings"] == json.loads(json.dumps(
        result["readings"]))

    # in h-space: consistency, shared share and agreement of the middle block's output; no gain asked, none measured
    from noiseclr_lite.loss import edit_consistency

    in_h = consistency.consistency_report(["a"], tiny_pipe, StatsOracle(), tmp_path, tag="h", images=3,
                                          timesteps=(200, 600), progress=False, log=lambda _: None, gain_images=0,
                                          edit_space="hspace")
    h_features = timestep_features(tiny_pipe, saved, latents, (200, 600), edit_space="hspace")
    assert h_features[0].shape[2:] == (64, 8, 8)
    assert in_h["consistency"]["face"]["random"]["0"] == pytest.approx(
        torch.stack([edit_consistency(f) for f in h_features]).mean(dim=0).tolist(), abs=1e-5)
    assert in_h["consistency"]["face"]["random"]["0"] != pytest.approx(values["random"]["0"], abs=1e-3)
    assert in_h["edit_space"] == "hspace" and result["edit_space"] == "eps"
    assert in_h["gain_kurtosis"] == {} and in_h["gain_table"] == {} and in_h["gain_images"] == {}
    h_page = (tmp_path / "consistency-h.md").read_text()
    assert "the UNet's middle-block output h" in h_page and "kurtosis of its denoising gain" not in h_page
    assert "middle-block output" not in md
    assert consistency.parse_args(["a", "--edit-space", "hspace", "--gain-images", "0"]).edit_space == "hspace"
    with pytest.raises(SystemExit):
        consistency.parse_args(["a", "--gain-images", "3"])
    with pytest.raises(ValueError, match="gain_images=-1: give 0"):
        consistency.consistency_report(["a"], tiny_pipe, StatsOracle(), tmp_path, gain_images=-1)
    assert not (tmp_path / "consistency-hspace.md").exists()   # tagged h-space runs are named by their tag

    # reports of other trained directions are refused, naming both
    other = dataclasses.replace(settings, steps=3, methods=["NoiseCLR"])
    quality.run_benchmark(tiny_pipe, StatsOracle(), other, tmp_path, tag="b", resume=True, progress=False,
                          log=lambda _: None)
    with pytest.raises(SystemExit, match="quality-b.json.gz and .*quality-a.json.gz trained their directions with "
                                         "different settings"):
        consistency.load_readings(["a", "b"], tmp_path)
    with pytest.raises(SystemExit, match="give at least one quality report"):
        consistency.load_readings([], tmp_path)
    # the words must be the same phrases in every reading
    words = dataclasses.replace(settings, text_phrases="both", methods=["NoiseCLR", "random", "text"])
    quality.run_benchmark(tiny_pipe, StatsOracle(), words, tmp_path, tag="c", resume=True, progress=False,
                          log=lambda _: None)
    with pytest.raises(SystemExit, match="--text-phrases both and .*positive"):
        consistency.load_readings(["a", "c"], tmp_path)


def test_sets_missing_from_the_cache_are_trained_and_named_and_images_found_with_samples(tiny_pipe, tmp_path):
    from test_quality_benchmark import tiny_settings

    settings = tiny_settings(Path(quality.DEFAULT_SAMPLES), domains=["face"], calibration_iters=0, num_directions=2,
                             methods=["NoiseCLR", "random"], interference=False)
    quality.run_benchmark(tiny_pipe, StatsOracle(), settings, tmp_path, tag="a", resume=True, progress=False,
                          log=lambda _: None)
    # the report recorded a samples path that is not on this machine (a clone elsewhere)
    report = quality.read_report(tmp_path / "quality-a.json.gz")
    report["settings"]["samples"] = str(tmp_path / "elsewhere" / "samples")
    quality.write_report_json(report, tmp_path / "quality-moved.json.gz")
    with pytest.raises(SystemExit, match="elsewhere/samples/face are not here.*give --samples"):
        consistency.consistency_report(["moved"], tiny_pipe, StatsOracle(), tmp_path, images=2, timesteps=(500,),
                                       progress=False, log=lambda _: None)
    # the cache is keyed by the recorded path, so its sets are not found: NoiseCLR is trained, and named
    result = consistency.consistency_report(["moved"], tiny_pipe, StatsOracle(), tmp_path, tag="moved", images=2,
                                            timesteps=(500,), progress=False, log=lambda _: None,
                                            samples=quality.DEFAULT_SAMPLES)
    assert result["trained_here"] == ["face NoiseCLR seed 0"]
    page = (tmp_path / "consistency-moved.md").read_text()
    assert "trained here as `quality.py` trains them" in page
    # one seed: no other seed's set to agree with, so no agreement and no section for it
    assert result["agreement"] == {} and result["agreement_table"] == {}
    assert all(not r["methods"] for r in result["agreement_readings"])
    assert "## Does another seed find the same directions?" not in page
    # training is deterministic: the set trained again reads as the one the report scored
    first = consistency.consistency_report(["a"], tiny_pipe, StatsOracle(), tmp_path, tag="a", images=2,
                                           timesteps=(500,), progress=False, log=lambda _: None)
    assert first["trained_here"] == [] and first["consistency"]["face"]["NoiseCLR"] == result["consistency"]["face"][
        "NoiseCLR"]

