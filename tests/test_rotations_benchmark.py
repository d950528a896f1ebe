"""benchmarks/rotations.py: does the official loss prefer the words' own axes to their mixtures?"""

import json
import sys
from pathlib import Path

import pytest
import torch

from noiseclr_lite.loss import noiseclr_loss

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import rotations, vocabulary  # noqa: E402


def _pure_edits(sizes: torch.Tensor) -> torch.Tensor:
    """[T=1, N, S=4, F=6]: piece j pushes along its own axis e_j on every image, by ``sizes[i, j]``
    on image i (a binary attribute moves the images that lack it much more than those that have it)."""
    axes = torch.eye(6)[:4]
    return (sizes.unsqueeze(-1) * axes).unsqueeze(0).double()


def test_attribute_words_take_the_word_that_sets_a_value_apart():
    assert rotations.attribute_words("face") == ["smiling", "blond", "glasses", "dark"]
    assert rotations.attribute_words("face", 0) == ["frowning", "black", "no", "light"]
    assert rotations.attribute_words("car") == ["red", "big", "hardtop", "night"]
    choices = rotations.word_choices("cat")
    assert len(choices) == 16 and len({tuple(c) for c in choices}) == 16
    assert choices[0] == rotations.attribute_words("cat", 0) and choices[-1] == rotations.attribute_words("cat", 1)
    with pytest.raises(SystemExit, match="value 2: the bundled attributes are binary"):
        rotations.attribute_words("face", 2)


def test_haar_rotations_are_orthogonal_seeded_and_unbiased():
    drawn = rotations.haar_rotations(4, 500, torch.Generator().manual_seed(0))
    assert drawn.shape == (500, 4, 4)
    identity = torch.eye(4, dtype=torch.float64).expand(500, 4, 4)
    assert torch.allclose(drawn @ drawn.transpose(1, 2), identity, atol=1e-12)
    assert torch.equal(drawn, rotations.haar_rotations(4, 500, torch.Generator().manual_seed(0)))
    # uniform over O(4): no entry leans to a sign (the diagonal would, without the sign fix), squares average 1/4
    assert drawn.mean(0).abs().max() < 0.1
    assert (drawn ** 2).mean(0).sub(0.25).abs().max() < 0.03
    determinants = torch.linalg.det(drawn)
    assert (determinants > 0).any() and (determinants < 0).any()


def test_axis_alignment_is_one_for_signed_permutations_and_a_quarter_for_an_even_mix():
    assert rotations.axis_alignment(torch.eye(4)) == 1.0
    signed_permutation = torch.eye(4)[[2, 0, 3, 1]] * torch.tensor([1.0, -1.0, 1.0, -1.0]).unsqueeze(1)
    assert rotations.axis_alignment(signed_permutation) == 1.0
    hadamard = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2.0
    assert rotations.axis_alignment(hadamard) == pytest.approx(0.25)
    assert rotations.matched_alignment(hadamard) == pytest.approx(0.25)
    assert rotations.matched_alignment(signed_permutation) == pytest.approx(1.0)
    # every row leaning on the first word: aligned row by row, not one word per row
    one_word = torch.tensor([[1.0, 0, 0, 0], [1.0, 0.1, 0, 0], [1.0, 0, 0.1, 0], [1.0, 0, 0, 0.1]])
    assert rotations.axis_alignment(one_word) > 0.99
    assert rotations.matched_alignment(one_word) == pytest.approx((1 + 3 * 0.01 / 1.01) / 4)
    with pytest.raises(SystemExit, match="every permutation of 9 rows; give at most 8"):
        rotations.matched_alignment(torch.eye(9))


def test_rotated_edits_mix_the_words_and_the_identity_gives_the_library_loss():
    edits = torch.randn(3, 5, 4, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    swap = torch.eye(4)[[1, 0, 2, 3]]
    assert torch.equal(rotations.rotate_edits(edits, swap), edits[:, :, [1, 0, 2, 3]])
    mixed = rotations.rotate_edits(edits, torch.tensor([[0.6, 0.8, 0, 0], [-0.8, 0.6, 0, 0], [0, 0, 1, 0],
                                                         [0, 0, 0, 1.0]], dtype=torch.float64))
    assert torch.allclose(mixed[:, :, 0], 0.6 * edits[:, :, 0] + 0.8 * edits[:, :, 1])
    expected = sum(float(noiseclr_loss(edits[t], tau=0.3)) for t in range(3)) / 3
    assert float(rotations.rotated_loss(edits, torch.eye(4), 0.3)) == pytest.approx(expected)
    # the loss of the words is what vocabulary.py's set_loss says of the same pieces
    cosines = vocabulary.EditCosines.of(edits.float())
    assert expected == pytest.approx(vocabulary.set_loss(cosines, range(4), 0.3), abs=1e-5)
    with pytest.raises(SystemExit, match=r"shape \(3, 3\) cannot mix a set of 4 edits"):
        rotations.rotate_edits(edits, torch.eye(3))


def test_orthogonal_edits_of_one_size_are_the_same_set_under_any_rotation():
    # every image moves by the same amount along each piece's axis: a rotation keeps every cosine, so
    # the loss cannot tell the axes from their mixtures (the case the reading calls indifferent)
    cell = rotations.cell_result(_pure_edits(torch.ones(6, 4)), tau=0.1, draws=50, seed=0, steps=20)
    assert cell["draws"]["std"] < 1e-5 and cell["draws"]["mean"] == pytest.approx(cell["words_loss"])
    assert cell["optimised"]["loss"] == pytest.approx(cell["words_loss"], abs=1e-5)
    assert cell["optimised"]["matched_alignment"] > 0.99   # nothing to gain, so it stays at the words


def test_any_mixing_pulls_orthogonal_edits_towards_opposite_mixtures_unless_negatives_are_sign_blind():
    # four pure, orthogonal, consistent edits: the official loss's negatives are best at cos -1/3 (four
    # mutually opposite edits), so mixing in negative shares of the others lowers it; with |cos| the
    # words' own cos 0 is already the best a negative can be, and the optimum stays at the words
    edits = _pure_edits(torch.ones(6, 4))
    assert rotations.mean_cosines(edits) == pytest.approx({"positives": 1.0, "negatives": 0.0}, abs=1e-6)
    official = rotations.cell_result(edits, tau=0.1, draws=5, seed=0, steps=300)
    mixed = official["any_mixing"]
    assert official["words_cosines"]["negatives"] == pytest.approx(0.0, abs=1e-6)
    assert mixed["loss"] < official["words_loss"] - 1.0 and mixed["matched_alignment"] < 0.9
    assert mixed["cosines"]["negatives"] == pytest.approx(-1 / 3, abs=0.02)
    assert mixed["cosines"]["positives"] == pytest.approx(1.0, abs=1e-6)   # every mixture is still consistent
    blind = rotations.cell_result(edits, tau=0.1, draws=5, seed=0, steps=300, sign_blind=True)
    assert blind["any_mixing"]["loss"] == pytest.approx(blind["words_loss"], abs=1e-5)
    assert blind["any_mixing"]["matched_alignment"] > 0.999
    expected = float(noiseclr_loss(edits[0], tau=0.1, sign_blind=True))
    assert blind["words_loss"] == pytest.approx(expected)
    # a mixing matrix's rows are read by direction only
    assert rotations.axis_alignment(torch.diag(torch.tensor([3.0, 0.5, 1.0, 2.0]))) == pytest.approx(1.0)


def test_binary_attributes_make_the_loss_prefer_their_own_axes():
    # each attribute moves half the images (those that lack it) ten times more than the others, as
    # "add glasses" moves a face without glasses: a mixture's edit then points a different way on
    # each image, so its positives fall, and only the axes keep every image's edit alike
    lacks = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1], [0, 1, 0, 1],
                          [1, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    cell = rotations.cell_result(_pure_edits(0.1 + 0.9 * lacks), tau=0.1, draws=200, seed=0, steps=100)
    assert cell["words_beat"] >= 0.95 and cell["optimised"]["alignment"] >= 0.9
    assert rotations.read_cell(cell) == "prefers the axes"
    assert cell["draws_alignment"]["mean"] < 0.7 and len(cell["optimised"]["rotation"]) == 4


def test_the_registered_reading_of_a_cell():
    def cell(beat, words, optimised, alignment):
        return {"words_beat": beat, "words_loss": words, "optimised": {"loss": optimised, "alignment": alignment}}

    assert rotations.read_cell(cell(0.95, -1.0, -1.0, 0.9)) == "prefers the axes"
    assert rotations.read_cell(cell(0.94, -1.0, -1.0, 1.0)) == "indifferent"      # too many draws below
    assert rotations.read_cell(cell(1.0, -1.0, -1.5, 0.89)) == "indifferent"      # its optimum drifts, a little
    assert rotations.read_cell(cell(1.0, -1.0, -1.02, 0.69)) == "prefers mixtures"
    assert rotations.read_cell(cell(0.5, -1.0, -1.005, 0.5)) == "indifferent"     # a mixture barely lower


def test_rotations_report_end_to_end_on_the_tiny_pipeline(tiny_pipe, tmp_path):
    settings = dict(out_dir=tmp_path, domains=["face", "cat"], images=3, timesteps=(200, 600), draws=20,
                    choice_draws=4, steps=5)
    logged = []
    result = rotations.rotations_report(tiny_pipe, tag="t", log=logged.append, **settings)
    assert [line.split(":")[0] for line in logged] == ["face", "cat"]
    assert not result["domains"]["face"]["from_cache"]
    assert json.loads((tmp_path / "rotations-t.json").read_text())["domains"] == result["domains"]
    page = (tmp_path / "rotations-t.md").read_text()
    for domain in ("face", "cat"):
        r = result["domains"][domain]
        assert r["words"] == rotations.attribute_words(domain) and len(r["choices"]) == 16
        assert r["reading"] == rotations.read_cell(r["cells"]["0.1"]) and set(r["cells"]) == {"0.1", "0.5"}
        read = r["cells"]["0.1"]
        assert (f"| {domain} | {', '.join(r['words'])} | 0.1 | {read['words_loss']:.3f} | "
                f"{read['draws']['mean']:.3f} ± {read['draws']['std']:.3f} | {read['words_beat']:.2f} |") in page
        assert f"| 0.5 | {r['cells']['0.5']['words_loss']:.3f} |" in page
        # the words' loss is vocabulary.py's set loss of the same pieces, from the same cached features
        ids, features, from_cache = vocabulary.domain_features(tiny_pipe, vocabulary.DEFAULT_SAMPLES, domain,
                                                               images=3, timesteps=(200, 600), out_dir=tmp_path,
                                                               resume=True)
        names = tiny_pipe.tokenizer.convert_ids_to_tokens(ids)
        members = [names.index(word + "</w>") for word in r["words"]]
        assert from_cache and read["words_loss"] == pytest.approx(
            vocabulary.set_loss(vocabulary.EditCosines.of(features), members, 0.1), abs=1e-4)
        # the choices' last is the read set, scored against the same seed's first draws
        assert r["choices"][-1]["words"] == r["words"]
        assert r["choices"][-1]["words_loss"] == pytest.approx(read["words_loss"])
        assert f"| {domain} | " in page.split("Every choice")[1]
    assert sum(result["overall"].values()) == 2
    again = rotations.rotations_report(tiny_pipe, tag="t", log=logged.append, **settings)
    assert again["domains"]["face"]["from_cache"]
    assert again["domains"]["face"]["cells"] == result["domains"]["face"]["cells"]   # seeded: the same page


def test_bad_settings_and_missing_words_are_refused_before_any_unet_work(tiny_pipe, tmp_path, monkeypatch):
    nowhere = dict(samples=tmp_path / "nowhere", out_dir=tmp_path, domains=["face"])
    for settings, message in (({"draws": 0}, "--draws 0"), ({"choice_draws": 0}, "--choice-draws 0"),
                              ({"steps": 0}, "--steps 0: take at least 1 gradient step")):
        with pytest.raises(SystemExit, match=message):
            rotations.rotations_report(tiny_pipe, **nowhere, **settings)
    with pytest.raises(SystemExit, match="nowhere/face is not a folder of face images"):
        rotations.rotations_report(tiny_pipe, **nowhere)
    # a tokenizer that writes only some of the words as single pieces
    monkeypatch.setattr(rotations, "word_indexes", lambda pipe, ids, domain: ([], {"smiling": 0, "frowning": 1}))
    with pytest.raises(SystemExit, match=r"face: the tokenizer does not write \['black', .* as single pieces"):
        rotations.rotations_report(tiny_pipe, **nowhere)


def test_features_of_another_vocabulary_are_refused(tiny_pipe, tmp_path, monkeypatch):
    monkeypatch.setattr(rotations, "domain_features", lambda *args: (list(range(7)), torch.zeros(1, 2, 7, 4), True))
    with pytest.raises(SystemExit, match=r"cached features of face are of another vocabulary; .*\(--no-resume\)"):
        rotations.rotations_report(tiny_pipe, out_dir=tmp_path, domains=["face"], steps=1)


def test_the_command_line_writes_the_tagged_page(tiny_pipe_dir, tiny_pipe, tmp_path):
    result = rotations.main(["--model", str(tiny_pipe_dir), "--out", str(tmp_path), "--tag", "cli",
                             "--domains", "car", "--context", "caption", "--images", "2", "--timesteps", "300",
                             "--draws", "3", "--choice-draws", "2", "--steps", "2"])
    assert result["settings"]["context"] == "caption" and list(result["domains"]) == ["car"]
    page = (tmp_path / "rotations-cli.md").read_text()
    assert "captions' context" in page and "| car | red, big, hardtop, night | 0.1 |" in page
    assert page.startswith("# Does the loss prefer") and not result["settings"]["sign_blind"]
    blind = rotations.main(["--model", str(tiny_pipe_dir), "--out", str(tmp_path), "--tag", "blind",
                            "--domains", "car", "--images", "2", "--timesteps", "300", "--draws", "3",
                            "--choice-draws", "2", "--steps", "2", "--sign-blind-negatives"])
    assert blind["settings"]["sign_blind"]
    assert (tmp_path / "rotations-blind.md").read_text().startswith("# Does the loss with sign-blind negatives")
    # the words' loss on the page is the sign-blind loss of the same cached features
    ids, features, from_cache = vocabulary.domain_features(tiny_pipe, vocabulary.DEFAULT_SAMPLES, "car", images=2,
                                                           timesteps=(300,), out_dir=tmp_path, resume=True)
    names = tiny_pipe.tokenizer.convert_ids_to_tokens(ids)
    edits = features[:, :, [names.index(word + "</w>") for word in blind["domains"]["car"]["words"]]].double()
    assert from_cache and blind["domains"]["car"]["cells"]["0.1"]["words_loss"] == pytest.approx(
        float(rotations.rotated_loss(edits, torch.eye(4), 0.1, sign_blind=True)))


def test_unit_edits_mix_the_words_at_length_one_and_leave_the_words_loss_alone(tiny_pipe_dir, tiny_pipe, tmp_path,
                                                                              monkeypatch):
    settings = ["--model", str(tiny_pipe_dir), "--out", str(tmp_path), "--domains", "face", "--images", "2",
                "--timesteps", "300", "--draws", "3", "--choice-draws", "2", "--steps", "3"]
    scored, words_and_draws = [], rotations._words_and_draws

    def recording(edits, *args):   # every set of edits the draws are scored on: the words' and each choice's
        scored.append(edits.norm(dim=-1))
        return words_and_draws(edits, *args)

    monkeypatch.setattr(rotations, "_words_and_draws", recording)
    plain = rotations.main([*settings, "--tag", "plain"])
    plain_norms, scored[:] = list(scored), []
    unit = rotations.main([*settings, "--tag", "unit", "--unit-edits"])
    # 2 temperatures' cells + 16 word choices, each at length 1 with --unit-edits and not without
    assert len(scored) == len(plain_norms) == 2 + 16
    assert all(torch.allclose(norms, torch.ones_like(norms)) for norms in scored)
    assert not any(torch.allclose(norms, torch.ones_like(norms)) for norms in plain_norms)
    assert unit["settings"]["unit_edits"] and not plain["settings"]["unit_edits"]
    assert "each at length 1" in (tmp_path / "rotations-unit.md").read_text().split("\n")[0]
    plain_cell, unit_cell = plain["domains"]["face"]["cells"]["0.1"], unit["domains"]["face"]["cells"]["0.1"]
    # the loss reads directions only: the words themselves score the same either way ...
    assert unit_cell["words_loss"] == pytest.approx(plain_cell["words_loss"])
    # ... but mixtures weigh the words by their shares alone: the page's cell is that of the unit edits
    ids, features, _ = vocabulary.domain_features(tiny_pipe, vocabulary.DEFAULT_SAMPLES, "face", images=2,
                                                  timesteps=(300,), out_dir=tmp_path, resume=True)
    names = tiny_pipe.tokenizer.convert_ids_to_tokens(ids)
    edits = features[:, :, [names.index(word + "</w>") for word in unit["domains"]["face"]["words"]]].double()
    expected = rotations.cell_result(torch.nn.functional.normalize(edits, dim=-1), 0.1, 3, 0, 3)
    assert unit_cell["draws"]["mean"] == pytest.approx(expected["draws"]["mean"])
    assert unit_cell["draws"]["mean"] != pytest.approx(plain_cell["draws"]["mean"])


def test_word_edits_pick_the_words_and_scale_each_edit_to_length_one_on_request():
    features = torch.randn(2, 3, 5, 7) * torch.tensor([1.0, 4.0, 0.1, 2.0, 9.0]).view(1, 1, 5, 1)
    index = {"smiling": 3, "blond": 1}
    plain = rotations._word_edits(features, index, ["smiling", "blond"], unit=False)
    assert plain.dtype == torch.float64 and torch.equal(plain, features[:, :, [3, 1]].double())
    unit = rotations._word_edits(features, index, ["smiling", "blond"], unit=True)
    assert torch.allclose(unit.norm(dim=-1), torch.ones(2, 3, 2, dtype=torch.float64))
    assert torch.allclose(unit * plain.norm(dim=-1, keepdim=True), plain)   # the same directions
