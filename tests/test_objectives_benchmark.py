"""benchmarks/objectives.py: the loss's variants screened on the vocabulary."""

import json
import sys
from pathlib import Path

import pytest
import torch

from noiseclr_lite.loss import center_edit_features, denoising_gain_loss, infonce_loss, noiseclr_loss

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import objectives, vocabulary  # noqa: E402
from benchmarks.objectives import Objective  # noqa: E402


def test_an_objective_is_parsed_from_its_spec_and_named_back():
    assert Objective.parse("noiseclr:0.1") == Objective("noiseclr", 0.1)
    both = Objective.parse("noiseclr+sign-blind+centred:0.5")
    assert both == Objective("noiseclr", 0.5, sign_blind=True, centred=True)
    assert both.name == "noiseclr+sign-blind+centred:0.5" and Objective.parse(both.name) == both
    assert Objective.parse("infonce:2").name == "infonce:2"
    gained = Objective.parse("noiseclr+centred+gain=30:0.1")
    assert gained == Objective("noiseclr", 0.1, centred=True, gain=30.0) and Objective.parse(gained.name) == gained
    assert Objective.parse("noiseclr+gain=1e2:0.1").name == "noiseclr+gain=100:0.1"
    assert Objective.parse("noiseclr+gain=1e+2+centred:0.1") == Objective("noiseclr", 0.1, centred=True, gain=100.0)
    for weight in (1e6, 0.123456789, 1e-7):   # every weight's name reads back as that weight
        assert Objective.parse(Objective(gain=weight).name).gain == weight
    # the gain's share and sides: named only where they differ from training's defaults
    shaped = Objective.parse("noiseclr+two-sided+gain=30+share=1:0.1")
    assert shaped == Objective("noiseclr", 0.1, gain=30.0, gain_share=1.0, two_sided=True)
    assert shaped.name == "noiseclr+gain=30+share=1+two-sided:0.1" and Objective.parse(shaped.name) == shaped
    assert Objective.parse("noiseclr+gain=10+share=0.25:0.1").name == "noiseclr+gain=10:0.1"
    assert Objective.parse("noiseclr+gain=10+share=0.5:0.1").gain_share == 0.5
    sided = Objective.parse("noiseclr+gain=10+two-sided:0.1")
    assert sided.name == "noiseclr+gain=10+two-sided:0.1" and Objective.parse(sided.name) == sided
    # what no spec can say is refused where it is built, so every name reads back
    for unsayable in ({"two_sided": True}, {"gain_share": 0.5}, {"gain": 1.0, "gain_share": 2.0}):
        with pytest.raises(ValueError, match="share|shape the gain term"):
            Objective(**unsayable)
    for spec, message in (("noiseclr", "write LOSS"), ("noiseclr:0.1:2", "write LOSS"),
                          ("triplet:0.1", "unknown loss 'triplet'"), ("noiseclr+centered:0.1", r"\['centered'\]"),
                          ("noiseclr:0", "must be a positive number; got '0'"), ("noiseclr:1e", "got '1e'"),
                          ("noiseclr:1e400", "got '1e400'"), ("noiseclr+centred+centred:0.1", "given twice"),
                          ("noiseclr+gain:0.1", r"\['gain'\]"), ("noiseclr+gain=0:0.1", "weight must be a positive"),
                          ("noiseclr+gain=1+gain=2:0.1", "given twice"), ("noiseclr+gain=-1:0.1", "write LOSS"),
                          ("noiseclr+two-sided:0.1", r"give its weight too \(\+gain=W\)"),
                          ("noiseclr+share=0.5:0.1", "give its weight too"),
                          ("noiseclr+gain=1+share=2:0.1", r"in \(0, 1\]; got 2"),
                          ("noiseclr+gain=1+share=0:0.1", r"in \(0, 1\]\) must be a positive number"),
                          ("noiseclr+gain=1+two-sided=1:0.1", r"\['two-sided=1'\]"),
                          ("noiseclr+gain=1+share:0.1", r"\['share'\]")):
        with pytest.raises(SystemExit, match=message):
            Objective.parse(spec)


def test_objective_loss_is_the_library_loss_averaged_over_timesteps():
    features = torch.randn(2, 5, 7, 6, generator=torch.Generator().manual_seed(0))   # [T, N, V, F]
    members = [4, 0, 2]
    cases = ((Objective("noiseclr", 0.3), lambda f: noiseclr_loss(f, 0.3)),
             (Objective("noiseclr", 0.3, sign_blind=True), lambda f: noiseclr_loss(f, 0.3, sign_blind=True)),
             (Objective("infonce", 0.5), lambda f: infonce_loss(f, 0.5)),
             (Objective("noiseclr", 0.3, centred=True), lambda f: noiseclr_loss(center_edit_features(f), 0.3)))
    values = []
    for objective, loss in cases:
        expected = sum(loss(features[t][:, members]).item() for t in range(2)) / 2
        values.append(objectives.objective_loss(objective, features, members))
        assert values[-1] == pytest.approx(expected, abs=1e-5)
    assert len(set(values)) == len(values)   # each option changes the loss
    # the recipe is the loss vocabulary.py scores sets with
    recipe = objectives.objective_loss(Objective("noiseclr", 0.3), features, members)
    # the gain term is added as training adds it: its weight times denoising_gain_loss of the raw edits
    residuals = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(1))       # [T, N, F]
    for centred in (False, True):
        term = sum(denoising_gain_loss(features[t][:, members], residuals[t], objectives.GAIN_TOP_SHARE).item()
                   for t in range(2)) / 2
        plain = objectives.objective_loss(Objective("noiseclr", 0.3, centred=centred), features, members)
        gained = objectives.objective_loss(Objective("noiseclr", 0.3, centred=centred, gain=7.0), features, members,
                                           residuals)
        assert gained == pytest.approx(plain + 7.0 * term, abs=1e-5) and term != 0
    # with its own share, two-sided: the same term with those arguments
    term = sum(denoising_gain_loss(features[t][:, members], residuals[t], 1.0, True).item() for t in range(2)) / 2
    shaped = objectives.objective_loss(Objective("noiseclr", 0.3, gain=7.0, gain_share=1.0, two_sided=True),
                                       features, members, residuals)
    assert shaped == pytest.approx(recipe + 7.0 * term, abs=1e-5)
    assert shaped != pytest.approx(objectives.objective_loss(Objective("noiseclr", 0.3, gain=7.0), features, members,
                                                             residuals))
    with pytest.raises(SystemExit, match=r"noiseclr\+gain=7:0.3: the gain term needs the reference's residuals"):
        objectives.objective_loss(Objective("noiseclr", 0.3, gain=7.0), features, members)
    assert recipe == pytest.approx(vocabulary.set_loss(vocabulary.EditCosines.of(features), members, 0.3), abs=1e-5)
    with pytest.raises(SystemExit, match="a set needs at least 2 pieces to contrast; got 1"):
        objectives.objective_loss(Objective(), features, [3])
    # two centred edits are always opposite: a centred pair is refused, as training refuses it
    with pytest.raises(SystemExit, match="noiseclr\\+centred:0.3: a centred set needs at least 3 pieces; got 2"):
        objectives.objective_loss(Objective("noiseclr", 0.3, centred=True), features, [0, 1])


def test_the_official_loss_chooses_an_opposite_and_sign_blind_negatives_an_unrelated_piece():
    # [T=1, N=4, V=4, F=3]: pieces 0 and 1 push along e1 and e2, piece 2 along -e1 (the other end of
    # piece 0's slider), piece 3 along e3; every edit is the same on every image
    e1, e2, e3 = torch.eye(3)
    features = torch.stack([torch.stack([e1, e2, -e1, e3])] * 4).unsqueeze(0)

    def greedy(objective):
        return vocabulary.greedy_selection(lambda members: objectives.objective_loss(objective, features, members),
                                           4, 2, start=[0])

    # the official negatives reward a cosine of -1: the slider's other end is the best partner
    assert greedy(Objective("noiseclr", 0.1)) == [0, 2]
    # sign-blind negatives score |cos|: the opposite is as bad as a copy, an unrelated piece is chosen
    # (pieces 1 and 3 tie; the lower index wins)
    assert greedy(Objective("noiseclr", 0.1, sign_blind=True)) == [0, 1]


def test_objectives_report_end_to_end_on_the_tiny_pipeline(tiny_pipe, tmp_path):
    settings = dict(out_dir=tmp_path, domains=["face", "car"], images=3, timesteps=(200, 600), k=4, draws=5)
    screened = [Objective("noiseclr", 0.1), Objective("noiseclr", 0.1, centred=True),
                Objective("noiseclr", 0.1, gain=100.0)]
    logged = []
    result = objectives.objectives_report(tiny_pipe, screened, tag="t", log=logged.append, **settings)
    assert [line.split(":")[0] for line in logged] == ["face noiseclr", "face noiseclr+centred",
                                                       "face noiseclr+gain=100", "car noiseclr",
                                                       "car noiseclr+centred", "car noiseclr+gain=100"]
    assert not result["domains"]["face"]["from_cache"]
    assert json.loads((tmp_path / "objectives-t.json").read_text())["objectives"] == result["objectives"]
    page = (tmp_path / "objectives-t.md").read_text()
    assert "| `noiseclr:0.1` |" in page and "| `noiseclr+centred:0.1` | car |" in page
    # the recipe's row is what vocabulary.py says of the official loss, from the same cached features
    checked = vocabulary.vocabulary_report(tiny_pipe, tau=0.1, resume=True, log=logged.append, **settings)
    assert all("(from the cache)" in line for line in logged[6:])
    for domain in ("face", "car"):
        recipe, official = result["objectives"]["noiseclr:0.1"][domain], checked["domains"][domain]
        assert recipe["greedy"]["pieces"] == official["greedy"]["pieces"]
        assert recipe["greedy"]["own"] == official["greedy"]["own"]
        assert recipe["own_loss"] == pytest.approx(official["own_loss"], abs=1e-5)
        assert recipe["own_below_whole"] == official["own_below_whole"]   # the same seed draws the same sets
        assert result["domains"][domain]["first"] == official["most_consistent"][0][0]
        # a centred set starts from the two pieces the uncentred loss chooses, then is chosen centred
        centred = result["objectives"]["noiseclr+centred:0.1"][domain]
        assert centred["greedy"]["pieces"][:2] == recipe["greedy"]["pieces"][:2]
        assert len(set(centred["greedy"]["pieces"])) == 4
        ids, features, from_cache = vocabulary.domain_features(tiny_pipe, vocabulary.DEFAULT_SAMPLES, domain,
                                                               images=3, timesteps=(200, 600), out_dir=tmp_path,
                                                               resume=True)
        names = tiny_pipe.tokenizer.convert_ids_to_tokens(ids)
        own = [names.index(word + "</w>") for word in result["domains"][domain]["own_words"]]
        assert from_cache and centred["own_loss"] == pytest.approx(
            objectives.objective_loss(Objective("noiseclr", 0.1, centred=True), features, own), abs=1e-6)
        chosen = [names.index(piece) for piece in centred["greedy"]["pieces"]]
        assert centred["greedy"]["loss"] == pytest.approx(
            objectives.objective_loss(Objective("noiseclr", 0.1, centred=True), features, chosen), abs=1e-6)
        # the gain term's residuals are measured on the features' own images and noise
        residuals = objectives.domain_residuals(tiny_pipe, vocabulary.DEFAULT_SAMPLES, domain, images=3,
                                                timesteps=(200, 600))
        assert residuals.shape == features.shape[:2] + features.shape[3:]
        with pytest.raises(SystemExit, match="nowhere/face is not a folder of face images"):
            objectives.domain_residuals(tiny_pipe, tmp_path / "nowhere", "face")
        gained = result["objectives"]["noiseclr+gain=100:0.1"][domain]
        chosen = [names.index(piece) for piece in gained["greedy"]["pieces"]]
        assert gained["greedy"]["loss"] == pytest.approx(
            objectives.objective_loss(Objective("noiseclr", 0.1, gain=100.0), features, chosen, residuals), abs=1e-5)
        assert gained["own_loss"] != pytest.approx(recipe["own_loss"], abs=1e-6)   # the term counts
    # the page's row is the record's numbers, and the page says how a centred set starts
    centred_rows = result["objectives"]["noiseclr+centred:0.1"]
    cells = " | ".join(f"{len(r['greedy']['own'])} · {r['own_below_whole']:.2f}" for r in centred_rows.values())
    total = result["overall"]["noiseclr+centred:0.1"]
    assert (f"| `noiseclr+centred:0.1` | {cells} | {total['own']} of 8 | {total['chance']:.1f} | {total['whole']} | "
            f"{total['own_below_whole']:.2f} |") in page
    assert "its first two picks are those of the same loss without centring" in page
    overall = result["overall"]["noiseclr:0.1"]
    assert overall["own"] == sum(len(checked["domains"][d]["greedy"]["own"]) for d in ("face", "car"))
    assert overall["whole"] == sum(checked["domains"][d]["greedy"]["whole"] for d in ("face", "car"))
    assert overall["own_below_whole"] == pytest.approx(
        sum(checked["domains"][d]["own_below_whole"] for d in ("face", "car")) / 2)
    chance = sum(checked["domains"][d]["chance_own_among_whole"] for d in ("face", "car"))
    assert overall["chosen"] == 8 and overall["chance"] == pytest.approx(chance)


def test_bad_settings_are_refused_before_any_unet_work(tiny_pipe, tmp_path):
    nowhere = dict(samples=tmp_path / "nowhere", out_dir=tmp_path)
    for screened, settings, message in (([], {}, "give at least one objective"),
                                        ([Objective(), Objective("noiseclr", 0.1)], {}, "given twice"),
                                        ([Objective()], {"k": 1}, "-k 1: choose between 2 and 100"),
                                        ([Objective()], {"draws": 0}, "--draws 0"),
                                        ([Objective(), Objective(centred=True)], {"k": 2},
                                         r"-k 2: noiseclr\+centred:0.1 is scored from three pieces on")):
        with pytest.raises(SystemExit, match=message):
            objectives.objectives_report(tiny_pipe, screened, **nowhere, **settings)
    # with good settings the first thing it needs is the images
    with pytest.raises(SystemExit, match="nowhere/face is not a folder of face images"):
        objectives.objectives_report(tiny_pipe, [Objective()], **nowhere)


def test_a_centred_objective_needs_three_of_the_domains_words_before_any_unet_work(tiny_pipe, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(vocabulary, "domain_words", lambda domain: ["smiling", "glasses"])
    with pytest.raises(SystemExit, match="writes 2 of face's words as single pieces; noiseclr\\+centred:0.1 scores"):
        objectives.objectives_report(tiny_pipe, [Objective(centred=True)], samples=tmp_path / "nowhere",
                                     out_dir=tmp_path, domains=["face"])
    # without centring, two words are enough to compare as a set: the images are what it needs next
    with pytest.raises(SystemExit, match="nowhere/face is not a folder of face images"):
        objectives.objectives_report(tiny_pipe, [Objective()], samples=tmp_path / "nowhere", out_dir=tmp_path,
                                     domains=["face"])


def test_features_of_another_vocabulary_are_refused(tiny_pipe, tmp_path, monkeypatch):
    # a cache written for another tokenizer: its pieces are not this one's, and the page would misname them
    monkeypatch.setattr(objectives, "domain_features",
                        lambda *args: (list(range(7)), torch.zeros(1, 2, 7, 4), True))
    with pytest.raises(SystemExit, match="cached features of face are of another vocabulary; .*--no-resume"):
        objectives.objectives_report(tiny_pipe, [Objective()], out_dir=tmp_path, domains=["face"])


def test_the_command_line_parses_every_objective_before_loading_the_model(tiny_pipe_dir, tmp_path):
    with pytest.raises(SystemExit, match="objective 'noiseclr': write LOSS"):
        objectives.main(["--model", str(tmp_path / "no-model"), "--objectives", "infonce:0.1", "noiseclr"])
    result = objectives.main(["--model", str(tiny_pipe_dir), "--out", str(tmp_path), "--tag", "cli",
                              "--objectives", "infonce:0.1", "--domains", "cat", "--context", "caption",
                              "--images", "2", "--timesteps", "300", "-k", "2", "--draws", "2"])
    assert list(result["objectives"]) == ["infonce:0.1"] and result["settings"]["context"] == "caption"
    assert "captions' context" in (tmp_path / "objectives-cli.md").read_text()
