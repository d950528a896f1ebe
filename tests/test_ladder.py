"""benchmarks/ladder.py: coverage over several edit strengths, on constructed reports whose answer is known."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from noiseclr_lite.metrics import DirectionScore, purity, strength, summary
from noiseclr_lite.toyworld.domains import attribute_pixel_change

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import ladder, quality  # noqa: E402

FACE = ["expression", "hair", "glasses", "skin"]


def score(kept: float = 1.0, **effects) -> dict:
    """A face direction's score with the given two-sided effects (the rest 0) whose edits stay faces
    ``kept`` of the time, as a report stores it."""
    full = {a: float(effects.get(a, 0.0)) for a in FACE}
    top = max(full, key=full.get)
    return dataclasses.asdict(DirectionScore(
        name="d", token="<d>", domain="face", scale=1.0, effects=full, signed_effects=full, plus_effects=full,
        minus_effects=full, purity=purity(list(full.values())), strength=strength(list(full.values())), target=top,
        pixel_change=0.05, off_target=sum(full.values()) - full[top], calibrated=True, domain_kept=kept))


def report(path: Path, target: float, runs: dict, **settings) -> Path:
    """A one-domain (face) quality report at ``target`` with {method: {seed: [scores]}}."""
    s = quality.Settings(domains=["face"], seeds=[0, 1], methods=quality.REQUIRED_METHODS, target_change=target,
                         **settings)
    saved = {m: [{"method": m, "domain": "face", "seed": seed, "summary": {}, "seconds": {}, "scores": scores}
                 for seed, scores in by_seed.items()] for m, by_seed in runs.items()}
    path.write_text(json.dumps({"weights": "w", "settings": json.loads(json.dumps(dataclasses.asdict(s), default=list)),
                                "domains": {"face": {"runs": saved}}}))
    return path


def rungs_on_disk(tmp_path, **settings_of_the_second):
    """Two rungs: at 0.02 NoiseCLR seed 0 covers expression; at 0.05 it covers hair (seed 0) and
    glasses (seed 1, by edits that leave the faces half of the time); random covers nothing; text
    covers skin at 0.05 only."""
    weak, impure = score(expression=0.2), score(expression=0.6, hair=0.6)
    report(tmp_path / "quality-low.json", 0.02, {
        "NoiseCLR": {0: [score(expression=0.9), weak], 1: [weak, impure]},
        "random": {0: [weak, impure], 1: [weak, weak]}, "text": {None: [weak, impure]}})
    report(tmp_path / "quality-high.json", 0.05, {
        "NoiseCLR": {0: [impure, score(hair=0.8, skin=0.1)], 1: [score(glasses=0.7, kept=0.5), weak]},
        "random": {0: [impure, impure], 1: [weak, weak]}, "text": {None: [score(skin=0.9), weak]}},
        **settings_of_the_second)


def add_peer(tmp_path, method: str, peer: dict) -> None:
    """Add ``method``'s face runs, {target change: {seed: [scores]}}, to both rungs of :func:`rungs_on_disk`."""
    for name in ("low", "high"):
        path = tmp_path / f"quality-{name}.json"
        saved = json.loads(path.read_text())
        saved["settings"]["methods"].append(method)
        saved["domains"]["face"]["runs"][method] = [
            {"method": method, "domain": "face", "seed": seed, "summary": {}, "seconds": {}, "scores": scores}
            for seed, scores in peer[saved["settings"]["target_change"]].items()]
        path.write_text(json.dumps(saved))


def test_an_attribute_covered_at_any_rung_counts_once_for_every_method_alike(tmp_path):
    rungs_on_disk(tmp_path)
    said = []
    result = ladder.ladder_report(["high", "low"], tmp_path, tag="t", log=said.append, size_images=8)
    assert result["targets"] == [0.02, 0.05] and result["reports"] == ["quality-low", "quality-high"]
    face = result["domains"]["face"]
    assert face["NoiseCLR"]["rungs"] == [[0.25, 0.0], [0.25, 0.25]]
    assert face["NoiseCLR"]["ladder"] == [0.5, 0.25]  # seed 0: expression (0.02) + hair (0.05)
    assert face["NoiseCLR"]["covered"] == {"expression": 1, "hair": 1, "glasses": 1, "skin": 0}
    assert face["NoiseCLR"]["in_domain"] == [0.5, 0.0] and face["NoiseCLR"]["covered_in_domain"]["glasses"] == 0
    assert face["random"]["ladder"] == [0.0, 0.0]
    assert face["text"]["seeds"] == [None] and face["text"]["ladder"] == [0.25]
    assert result["overall"]["NoiseCLR"]["ladder"][0] == pytest.approx(0.375)
    assert result["margin"]["all"][0] == pytest.approx(0.375) and result["margin"]["face"][1] == pytest.approx(0.1768, abs=1e-4)
    assert result["overall"]["NoiseCLR"]["in_domain"][0] == pytest.approx(0.25)
    leaving = DirectionScore(**score(glasses=0.9, kept=0.1))
    assert ladder.in_domain_coverage([leaving], "face") == (0.0, [])
    assert ladder.in_domain_coverage([leaving], "face", kept_min=0.1) == (0.25, ["glasses"])
    assert result["margin_in_domain"]["all"] == pytest.approx((0.25, 0.3536), abs=1e-4)
    md = (tmp_path / "ladder-t.md").read_text()
    assert "| NoiseCLR | 0.12 ± 0.18 | 0.25 ± 0.00 | **0.38 ± 0.18** | **0.25 ± 0.35** | 0.85 ± 0.14 |" in md
    assert "| NoiseCLR | 0.12 ± 0.18 | 0.25 ± 0.00 | 0.38 ± 0.18 | 0.25 ± 0.35 | 0.85 ± 0.14 | 1/2 | 1/2 | 1/2 (0) | 0/2 |" in md
    assert "[`quality-low`](quality-low.md) at 0.02 (scales searched in [0, 16])" in md
    assert "| face | glasses |" in md and json.loads((tmp_path / "ladder-t.json").read_text())["seeds"] == [0, 1]
    assert "NoiseCLR 0.38 (0.25 in domain)" in said[0]
    assert face["NoiseCLR"]["unread"] == 0 and face["NoiseCLR"]["scores"] == 8 and "Unread domain" not in md
    # rungs given as .json paths, written into a folder that does not exist yet
    elsewhere = tmp_path / "new" / "folder"
    again = ladder.ladder_report([str(tmp_path / "quality-high.json"), str(tmp_path / "quality-low.json")],
                                 elsewhere, tag="t", log=said.append, size_images=8)
    assert again["overall"] == result["overall"] and (elsewhere / "ladder-t.md").is_file()


def test_each_direction_is_read_at_the_weakest_rung_where_it_shows_and_the_bars_are_judged_there(tmp_path):
    weak, impure, clean = (DirectionScore(**score(expression=0.2)), DirectionScore(**score(expression=0.6, hair=0.6)),
                           DirectionScore(**score(hair=0.8, skin=0.1)))
    # direction 0 shows only at the second rung; direction 1 already at the first (impure there); 2 never
    picked, read_at = ladder.working_strength_scores([[weak, impure, weak], [clean, clean, weak]])
    assert picked == [clean, impure, weak] and read_at == [1, 0, 1]
    assert ladder.working_strength_scores([[weak, impure]], strength_min=0.1) == ([weak, impure], [0, 0])
    with pytest.raises(ValueError, match=r"got \[2, 1\] directions per rung.*same -k"):
        ladder.working_strength_scores([[weak, impure], [clean]])
    with pytest.raises(ValueError, match=r"direction 0 is \['d', 'e'\]"):
        ladder.working_strength_scores([[weak], [dataclasses.replace(clean, name="e")]])

    rungs_on_disk(tmp_path)
    result = ladder.ladder_report(["low", "high"], tmp_path, log=lambda _: None, size_images=8)
    face = result["domains"]["face"]
    # NoiseCLR seed 0: expression 0.9 at 0.02 (purity 1), hair 0.8 + skin 0.1 at 0.05 (8/9); seed 1: glasses at
    # 0.05 (1), the impure pair at 0.02 (0.5).  Random seed 1 never reaches 0.5 and is read at its strongest rung.
    assert face["NoiseCLR"]["purity"] == pytest.approx([(1 + 8 / 9) / 2, 0.75])
    assert sorted(face["NoiseCLR"]["read_purity"][0]) == pytest.approx([0.5, 1.0])
    assert sorted(face["NoiseCLR"]["read_purity"][1]) == pytest.approx([8 / 9, 1.0])
    assert [len(read) for read in face["random"]["read_purity"]] == [1, 3]
    assert face["random"]["purity"] == pytest.approx([0.5, 1.0]) and face["text"]["purity"] == pytest.approx([0.75])
    assert result["margin_purity"]["face"][0] == pytest.approx(((1 + 8 / 9) / 2 - 0.5 - 0.25) / 2)
    assert result["text_purity_share"]["face"] == pytest.approx(((1 + 8 / 9) / 2 + 0.75) / 2 / 0.75)
    # the coverage margin is clear (+0.38 ± 0.18), the purity margin (+0.10 ± 0.49) is not
    assert result["margin"]["face"][0] > 0.1 and result["clear"] == {"face": False}
    # the rule itself: at least 0.10 and above the spread, for every margin given
    assert quality.is_clear((0.12, 0.08), (0.21, 0.19)) and quality.is_clear((0.10, 0.0))
    assert not quality.is_clear((0.12, 0.08), (0.09, 0.0)) and not quality.is_clear((0.3, 0.3))
    md = (tmp_path / "ladder.md").read_text()
    assert "| mean purity at the working strength | 0.85 | 0.7 | yes |" in md
    assert "| coverage of all attributes, over the ladder | 0.38 | 0.75 | **no** (short by 0.38) |" in md
    assert "| face | +0.38 ± 0.18 | +0.10 ± 0.49 | **no** | 1.13 |" in md
    # the words (one run, skin at 0.05: coverage 0.25, purity 0.75) against random's two seeds
    # (coverage 0 and 0, purity 0.5 and 1.0): their purity margin 0 ± 0.35 is not clear either
    assert result["text_margin"]["ladder"]["face"] == pytest.approx((0.25, 0.0))
    assert result["text_margin"]["purity"]["face"] == pytest.approx((0.0, 0.5 ** 0.5 / 2))
    assert result["text_clear"] == {"face": False}
    assert "| face | +0.25 ± 0.00 | +0.00 ± 0.35 | **no** | +0.25 ± 0.00 (2 tokens of 2) | **no** |" in md
    assert "(1 of 1 here)" in md and "2 words against 2 random tokens" in md
    assert "NoiseCLR 2 / 2 (purity 0.75 / 0.94); random 1 / 3 (purity" in md and "; text 1 / 1 (purity" in md


def test_the_words_are_held_to_the_same_clear_margin_rule_against_the_same_random_floor(tmp_path):
    # random (and NoiseCLR, the same here) move expression and hair together in both seeds; the words
    # move skin alone and hair alone: the words clear the bar, NoiseCLR does not
    impure, skin, hair = score(expression=0.6, hair=0.6), score(skin=0.9), score(hair=0.8)
    floor = {0: [impure, impure], 1: [impure, impure]}
    for name, target in (("low", 0.02), ("high", 0.05)):
        report(tmp_path / f"quality-{name}.json", target,
               {"NoiseCLR": floor, "random": floor, "text": {None: [skin, hair]}})
    result = ladder.ladder_report(["low", "high"], tmp_path, log=lambda _: None, size_images=8)
    assert result["text_margin"]["ladder"]["face"] == pytest.approx((0.5, 0.0))
    assert result["text_margin"]["purity"]["face"] == pytest.approx((0.5, 0.0))
    assert result["text_clear"] == {"face": True} and result["clear"] == {"face": False}
    md = (tmp_path / "ladder.md").read_text()
    assert "| face | +0.00 ± 0.00 | +0.00 ± 0.00 | **no** | 0.50 |" in md
    assert "| face | +0.50 ± 0.00 | +0.50 ± 0.00 | yes | +0.50 ± 0.00 (2 tokens of 2) | yes |" in md
    assert "(0 of 1 here)" in md
    # ladders written before the words were held against sets of their size, or to the rule at all, still render
    del result["text_sized_clear"]
    assert "| face | +0.50 ± 0.00 | +0.50 ± 0.00 | yes |" in ladder.bars_section(result)
    del result["text_margin"], result["text_clear"]
    assert ladder.bars_section(result)[-2] == "| face | +0.00 ± 0.00 | +0.00 ± 0.00 | **no** | 0.50 |"


def test_the_words_are_also_held_against_random_sets_of_their_own_size(tmp_path):
    # random seed 0: token 0 covers expression at 0.02 and hair at 0.05, token 1 expression at both rungs
    # (one token, counted once), two tokens move two attributes at once; seed 1: all four do. The words:
    # two phrases, glasses and skin, covering half the attributes.
    impure, expression = score(expression=0.6, hair=0.6), score(expression=0.9)
    rung = {"low": (0.02, expression), "high": (0.05, score(hair=0.9))}
    for name, (target, first) in rung.items():
        floor = {0: [first, expression, impure, impure], 1: [impure] * 4}
        report(tmp_path / f"quality-{name}.json", target, {"NoiseCLR": floor, "random": floor,
                                                             "text": {None: [score(glasses=0.9), score(skin=0.9)]}})
    result = ladder.ladder_report(["low", "high"], tmp_path, log=lambda _: None, size_images=8)
    # all four tokens: seed 0 covers 0.5 over the ladder, seed 1 nothing; the words 0.5
    assert result["text_margin"]["ladder"]["face"] == pytest.approx((0.25, 0.5 ** 0.5 / 2))
    # draws of two of seed 0's four tokens: expression (tokens 0 and 1) is missed by 1 draw of 6, hair
    # (token 0) by 3 of 6: (5/6 + 1/2) / 4 = 1/3
    assert result["domains"]["face"]["random"]["words_sized_floor"] == pytest.approx([1 / 3, 0.0])
    assert result["text_margin"]["sized"]["face"] == pytest.approx((1 / 3, (1 / 3) / 2 ** 0.5))
    # purity at the working strength: random 0.75 and 0.5, the words 1.0
    assert result["text_margin"]["purity"]["face"] == pytest.approx((0.375, 0.25 / 2 ** 0.5))
    assert result["text_clear"] == {"face": False} and result["text_sized_clear"] == {"face": True}
    assert "| +0.33 ± 0.24 (2 tokens of 4) | yes |" in (tmp_path / "ladder.md").read_text()


def test_compare_holds_noiseclr_and_the_words_to_the_rule_against_random_and_random_sets_of_the_words_size():
    def runs(method, by_seed):
        return [quality.MethodRun(method, "face", seed, None, scores, summary(scores, "face"))
                for seed, scores in by_seed.items()]

    weak = DirectionScore(**score(expression=0.2, hair=0.2))                   # purity 0.5, covers nothing
    expression, hair, glasses, skin = (DirectionScore(**score(**{a: 0.9})) for a in FACE)
    face = {"NoiseCLR": runs("NoiseCLR", {0: [expression, hair, glasses, weak], 1: [expression, hair, weak, weak]}),
            "random": runs("random", {0: [expression, hair, weak, weak], 1: [expression, weak, weak, weak]}),
            "text": runs("text", {None: [glasses, skin]})}
    c = quality.compare(face)
    # NoiseCLR - random, by seed: coverage 0.25 and 0.25, purity 0.875 - 0.75 and 0.75 - 0.625
    assert c["coverage_margin_over_random"] == pytest.approx((0.25, 0.0))
    assert c["mean_purity_margin_over_random"] == pytest.approx((0.125, 0.0)) and c["clear_margin"]
    assert c["text_purity_share"] == pytest.approx((0.8125, 0.125 / 2 ** 0.5))
    # the words (coverage 0.5, purity 1) minus random's seeds: coverage 0 and 0.25, purity 0.25 and 0.375
    assert c["text_coverage_margin_over_random"] == pytest.approx((0.125, 0.125 * 2 ** 0.5))
    assert c["text_mean_purity_margin_over_random"] == pytest.approx((0.3125, 0.125 / 2 ** 0.5))
    assert not c["text_clear_margin"]                                          # 0.125 is under its spread
    # random sets of two: seed 0's draws hold expression and hair in 3 of 6 each, (0.5 + 0.5) / 4;
    # seed 1's hold expression in 3 of 6, 0.5 / 4
    assert (c["text_directions"], c["random_directions"]) == (2, 4)
    assert c["text_coverage_margin_over_sized_random"] == pytest.approx((0.3125, 0.125 / 2 ** 0.5))
    assert c["text_sized_clear_margin"]
    lines = quality._comparison_sections({"bars": [], "losses": [], "comparisons": {"face": c}})
    assert "| face | +0.25 ± 0.00 | +0.12 ± 0.00 | yes | 0.81 ± 0.09 |" in lines
    assert "| face | +0.12 ± 0.18 | +0.31 ± 0.09 | **no** | +0.31 ± 0.09 (2 tokens of 4) | yes |" in lines
    assert "(1 of 1 here)" in lines[-1] and "not clear in 0 of 1" in lines[-1]
    # fewer random tokens than words: no larger draw exists, so the floor is each seed's whole set
    few = quality.compare({**face, "random": runs("random", {0: [expression], 1: [weak]})})
    assert few["text_coverage_margin_over_sized_random"] == pytest.approx(few["text_coverage_margin_over_random"])


def test_a_peer_on_every_rung_is_compared_with_noiseclr_by_its_means(tmp_path):
    rungs_on_disk(tmp_path)
    result = ladder.ladder_report(["low", "high"], tmp_path, log=lambda _: None, size_images=8)
    assert result["peer_gap"] == {}  # no peer ran
    # h-space on both rungs: seed 0 covers skin at 0.05, seed 1 nothing (read at its strongest rung)
    peer = {0.02: {0: [score(skin=0.2), score(hair=0.1)], 1: [score(skin=0.1), score(hair=0.1)]},
            0.05: {0: [score(skin=0.9), score(hair=0.3)], 1: [score(skin=0.3), score(hair=0.2)]}}
    add_peer(tmp_path, "h-space", peer)
    result = ladder.ladder_report(["low", "high"], tmp_path, tag="peer", log=lambda _: None, size_images=8)
    assert result["domains"]["face"]["h-space"]["ladder"] == [0.25, 0.0]
    gap = result["peer_gap"]["h-space"]
    assert gap["ladder"]["all"] == pytest.approx(0.375 - 0.125) and gap["ladder"]["face"] == pytest.approx(0.25)
    assert gap["in_domain"]["all"] == pytest.approx(0.25 - 0.125)
    assert gap["purity"]["all"] == pytest.approx(((1 + 8 / 9) / 2 + 0.75) / 2 - 1.0)
    md = (tmp_path / "ladder-peer.md").read_text()
    assert "NoiseCLR's mean minus h-space's (means over seeds, which are not paired" in md
    assert "coverage over the ladder overall +0.25 (face +0.25); in domain overall +0.12" in md
    assert "| h-space | 0.00 ± 0.00 | 0.12 ± 0.18 | **0.12 ± 0.18** |" in md


def test_infonce_shares_noiseclrs_seeds_so_its_gap_is_also_read_seed_by_seed(tmp_path):
    rungs_on_disk(tmp_path)
    # InfoNCE seed 0 covers skin (at 0.05), seed 1 expression (0.02) and glasses (0.05): 0.25 and 0.5
    # over the ladder, against NoiseCLR's 0.5 and 0.25, so equal means but opposite seeds
    peer = {0.02: {0: [score(skin=0.2)], 1: [score(expression=0.8)]},
            0.05: {0: [score(skin=0.9)], 1: [score(glasses=0.9)]}}
    add_peer(tmp_path, "InfoNCE", peer)
    result = ladder.ladder_report(["low", "high"], tmp_path, tag="infonce", log=lambda _: None, size_images=8)
    assert result["domains"]["face"]["InfoNCE"]["ladder"] == [0.25, 0.5]
    assert result["peer_gap"]["InfoNCE"]["ladder"]["all"] == pytest.approx(0.0)
    margin = result["peer_margin"]["InfoNCE"]
    assert margin["ladder"]["face"] == pytest.approx((0.0, 0.25 * 2 ** 0.5))  # +0.25 and -0.25
    # in domain NoiseCLR seed 1 loses glasses (its edits leave the faces): +0.25 and -0.5
    assert margin["in_domain"]["all"] == pytest.approx((-0.125, 0.75 / 2 ** 0.5))
    md = (tmp_path / "ladder-infonce.md").read_text()
    assert "NoiseCLR's mean minus InfoNCE's (means over seeds, seed by seed below)" in md
    assert "NoiseCLR minus InfoNCE, seed by seed" in md and "coverage over the ladder overall +0.00 ± 0.35" in md
    # h-space draws no rows from NoiseCLR's seed: no seed-by-seed reading for it
    assert "h-space" not in result["peer_margin"]


def test_scores_without_a_domain_reading_count_as_kept_and_the_page_says_so(tmp_path):
    rungs_on_disk(tmp_path)
    old = json.loads((tmp_path / "quality-high.json").read_text())
    for saved in old["domains"]["face"]["runs"]["random"]:
        for s in saved["scores"]:
            s["domain_kept"] = None  # scored before the oracle read the domain
    (tmp_path / "quality-high.json").write_text(json.dumps(old))
    result = ladder.ladder_report(["low", "high"], tmp_path, log=lambda _: None, size_images=8)
    assert result["domains"]["face"]["random"]["unread"] == 4 and result["domains"]["face"]["NoiseCLR"]["unread"] == 0
    assert "count as kept" in (md := (tmp_path / "ladder.md").read_text()) and "random in face 4 of 8" in md
    assert "NoiseCLR in face" not in md


def test_rungs_in_two_edit_windows_cover_together_and_each_direction_is_read_in_its_purer_window(tmp_path):
    weak, impure = score(expression=0.2), score(expression=0.6, hair=0.6)
    # whole window: NoiseCLR shows impurely at 0.02 (direction 0) and covers hair at 0.05 (direction 1);
    # late window: direction 0 shows purely at 0.02 (covers expression), direction 1 never shows there
    report(tmp_path / "quality-whole-low.json", 0.02, {
        "NoiseCLR": {0: [impure, weak], 1: [weak, weak]}, "random": {0: [weak, weak], 1: [weak, weak]},
        "text": {None: [weak, weak]}})
    report(tmp_path / "quality-whole-high.json", 0.05, {
        "NoiseCLR": {0: [impure, score(hair=0.8)], 1: [weak, weak]}, "random": {0: [weak, weak], 1: [weak, weak]},
        "text": {None: [weak, weak]}})
    report(tmp_path / "quality-late-low.json", 0.02, {
        "NoiseCLR": {0: [score(expression=0.9), weak], 1: [weak, weak]}, "random": {0: [weak, weak], 1: [weak, weak]},
        "text": {None: [weak, weak]}}, window=(0.55, 0.0))
    names = ["late-low", "whole-high", "whole-low"]
    rungs = ladder.load_rungs(names, tmp_path)
    assert [p.stem for p, _ in rungs] == ["quality-whole-low", "quality-late-low", "quality-whole-high"]
    result = ladder.ladder_report(names, tmp_path, tag="w", log=lambda _: None, size_images=8)
    assert result["labels"] == ["0.02 in 1:0", "0.02 in 0.55:0", "0.05 in 1:0"]
    assert result["windows"] == [[1.0, 0.0], [0.55, 0.0], [1.0, 0.0]]
    face = result["domains"]["face"]
    assert face["NoiseCLR"]["ladder"] == [0.5, 0.0]  # seed 0: expression (late 0.02) + hair (whole 0.05)
    # seed 0: direction 0 shows at 0.02 in both windows and is read in the purer, late one (purity 1, not
    # 0.5); direction 1 first shows at 0.05 (purity 1). Seed 1 never shows: read at 0.05, the strongest.
    assert face["NoiseCLR"]["purity"] == pytest.approx([1.0, 1.0])
    assert [len(read) for read in face["NoiseCLR"]["read_purity"]] == [0, 1, 3]
    picked, read_at = ladder.working_strength_scores(
        [[DirectionScore(**impure)], [DirectionScore(**score(expression=0.9))], [DirectionScore(**weak)]],
        targets=[0.02, 0.02, 0.05])
    assert read_at == [1]
    # never shows: the strongest target, in the window where its largest effect is largest
    faint, fainter = DirectionScore(**score(expression=0.3)), DirectionScore(**score(expression=0.1))
    assert ladder.working_strength_scores([[faint], [fainter], [faint]], targets=[0.02, 0.05, 0.05])[1] == [2]
    md = (tmp_path / "ladder-w.md").read_text()
    assert md.startswith("# Coverage over a ladder of edit strengths and windows (0.02 in 1:0, 0.02 in 0.55:0, 0.05 in 1:0)")
    assert "| method | at 0.02 in 1:0 | at 0.02 in 0.55:0 | at 0.05 in 1:0 |" in md
    assert "the purer of those where it shows there" in md
    with pytest.raises(SystemExit, match=r"same target change and window \(\['0.02 in 0.55:0', '0.02 in 0.55:0'\]"):
        ladder.load_rungs(["late-low", str(tmp_path / "quality-late-low.json")], tmp_path)
    # one window: the labels and the page stay those of a ladder of strengths
    single = ladder.ladder_report(["whole-low", "whole-high"], tmp_path, tag="s", log=lambda _: None, size_images=8)
    assert single["labels"] == ["0.02", "0.05"] and "and windows" not in (tmp_path / "ladder-s.md").read_text()


def test_rungs_of_another_protocol_or_the_same_strength_are_refused(tmp_path):
    rungs_on_disk(tmp_path, steps=7)
    with pytest.raises(SystemExit, match="quality-high.json has steps = 7 but .*quality-low.json has 300"):
        ladder.load_rungs(["low", "high"], tmp_path)
    # h-space did not run, so its settings do not count; each rung may search its own scale bracket
    rungs_on_disk(tmp_path, hspace_timesteps=(500,), grid_images=1, min_scale=0.015625)
    assert [p.stem for p, _ in ladder.load_rungs(["high", "low"], tmp_path)] == ["quality-low", "quality-high"]
    with pytest.raises(SystemExit, match="same target change"):
        ladder.load_rungs(["low", str(tmp_path / "quality-low.json")], tmp_path)
    with pytest.raises(SystemExit, match=r"got 1 report\(s\); a ladder needs 2 or more"):
        ladder.load_rungs(["low"], tmp_path)
    assert [p.stem for p, _ in ladder.load_rungs(["low"], tmp_path, at_least=1)] == ["quality-low"]
    lacking = json.loads((tmp_path / "quality-high.json").read_text())
    lacking["settings"]["methods"] = ["NoiseCLR", "text"]
    (tmp_path / "quality-norandom.json").write_text(json.dumps(lacking))
    with pytest.raises(SystemExit, match="lacks random; .* or pool it with a report of the same rung"):
        ladder.load_rungs(["low", "norandom"], tmp_path)


def test_one_protocol_check_names_the_setting_and_frees_only_what_it_is_told(tmp_path):
    low, high = tmp_path / "quality-low.json", tmp_path / "quality-high.json"
    rungs_on_disk(tmp_path, steps=7, hspace_timesteps=(500,))
    reports = [json.loads(p.read_text()) for p in (low, high)]
    with pytest.raises(SystemExit, match=r"^tool: .*quality-high.json has steps = 7 but .*quality-low.json has 300: "
                                         r"re-run it$"):
        quality.check_one_protocol([low, high], reports, {"target_change"}, "tool", "re-run it")
    # freed settings pass; h-space's settings pass while some report did not run h-space
    quality.check_one_protocol([low, high], reports, {"target_change", "steps"}, "tool", "fix")
    for report in reports:
        report["settings"]["methods"] = list(quality.REQUIRED_METHODS) + ["h-space"]
    with pytest.raises(SystemExit, match="hspace_timesteps = \\[500\\]"):
        quality.check_one_protocol([low, high], reports, {"target_change", "steps"}, "tool", "fix")
    reports[1]["weights"] = "other"
    with pytest.raises(SystemExit, match="measured weights other and .* weights w: these are different models"):
        quality.check_one_protocol([low, high], reports, set(quality.Settings().__dict__), "tool", "fix")


def test_attribute_pixel_change_sizes_small_and_large_attributes_and_names_the_attributes():
    glasses, hair = attribute_pixel_change("face", "glasses", images=16), attribute_pixel_change("face", "hair", images=16)
    night = attribute_pixel_change("car", "time", images=16)
    assert len(glasses) == 16 and max(glasses) < min(hair) and max(hair) < min(night)
    assert all(0 < c < 1 for c in glasses + hair + night)
    assert attribute_pixel_change("face", "glasses", images=16) == glasses  # seeded
    with pytest.raises(ValueError, match="no attribute 'wings'.*expression"):
        attribute_pixel_change("face", "wings")


def test_keeps_domain_reads_the_share_of_edits_left_in_the_domain():
    def scored(kept):
        return DirectionScore(name="d", token="d", domain="face", scale=1.0, effects={}, signed_effects={},
                              plus_effects={}, minus_effects={}, purity=1.0, strength=0.0, target="expression",
                              pixel_change=0.05, off_target=0.0, domain_kept=kept)

    assert ladder.keeps_domain(scored(0.95)) and ladder.keeps_domain(scored(0.9))
    assert not ladder.keeps_domain(scored(0.5)) and ladder.keeps_domain(scored(0.5), kept_min=0.5)
    assert ladder.keeps_domain(scored(None))          # measured before domain_kept existed: counted as kept
