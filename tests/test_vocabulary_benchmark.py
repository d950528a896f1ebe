"""benchmarks/vocabulary.py: the NoiseCLR objective evaluated over the vocabulary."""

import json
import statistics
import sys
from pathlib import Path

import pytest
from PIL import Image
import torch

from noiseclr_lite.loss import edit_consistency, noiseclr_loss
from noiseclr_lite.train import vocabulary_rows

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import vocabulary  # noqa: E402


def _constructed_features() -> torch.Tensor:
    """[T=1, N=4, V=5, F=3]: pieces 0, 1, 2 push along e1, e2, e3 on every image (consistent and
    apart), piece 3 copies piece 0 (a perfect negative for it), piece 4 flips its sign halfway
    through the images (inconsistent)."""
    e1, e2, e3 = torch.eye(3)
    per_image = [[e1, e2, e3, e1, e2 if i < 2 else -e2] for i in range(4)]
    return torch.stack([torch.stack(row) for row in per_image]).unsqueeze(0)


def _official(cosines, tau=0.1):
    """The official loss of a set of the constructed pieces, as the page scores sets."""
    return lambda members: vocabulary.set_loss(cosines, members, tau)


def test_greedy_selection_takes_consistent_distinct_pieces_and_skips_copies_and_flips():
    cosines = vocabulary.EditCosines.of(_constructed_features())
    loss_of = _official(cosines)
    assert vocabulary.greedy_selection(loss_of, 5, 3, start=[0]) == [0, 1, 2]
    # the consistency it starts from: 1 for the steady pieces, below for the one that flips
    consistency = cosines.consistency()
    assert consistency[:4].tolist() == pytest.approx([1.0] * 4) and consistency[4] < 0.5
    with pytest.raises(SystemExit, match="-k 6: choose between 2 and the 5 pieces"):
        vocabulary.greedy_selection(loss_of, 5, 6, start=[0])
    # a longer start is kept as it is and the choice goes on from it: the copy's partner comes next
    assert vocabulary.greedy_selection(loss_of, 5, 3, start=[3, 2]) == [3, 2, 1]
    assert vocabulary.greedy_selection(loss_of, 5, 2, start=[4, 1]) == [4, 1]
    for start in ([], [0, 0], [0, 1, 2, 3], [5]):
        with pytest.raises(ValueError, match=r"start=.*: give 1 to k=3 distinct piece indexes in \[0, 4\]"):
            vocabulary.greedy_selection(loss_of, 5, 3, start=start)


def test_swap_search_replaces_the_copy_and_the_flip_and_stops_at_a_local_minimum():
    cosines = vocabulary.EditCosines.of(_constructed_features())
    loss_of = _official(cosines)
    # from {copy of e1, flipping e2, e3}: swaps bring in e1's original or e2, whichever lowers the loss most,
    # until the set is three steady, distinct pieces; each swapped-in piece takes its predecessor's place
    searched, converged = vocabulary.swap_search(loss_of, 5, [3, 4, 2])
    assert converged and searched[2] == 2 and sorted(searched[:2]) in ([0, 1], [1, 3])
    assert vocabulary.set_loss(cosines, searched, 0.1) < vocabulary.set_loss(cosines, [3, 4, 2], 0.1)
    # a set no swap improves is returned as it is, converged
    assert vocabulary.swap_search(loss_of, 5, [0, 1, 2]) == ([0, 1, 2], True)
    # out of swaps while one would still lower the loss: said so
    assert vocabulary.swap_search(loss_of, 5, [3, 4, 2], max_swaps=0) == ([3, 4, 2], False)
    # {e1, its copy, the flip} needs two swaps: with a budget of one, the search says it stopped short
    one, converged = vocabulary.swap_search(loss_of, 5, [3, 0, 4], max_swaps=1)
    assert sum(a != b for a, b in zip(one, [3, 0, 4])) == 1 and not converged
    assert vocabulary.swap_search(loss_of, 5, [3, 0, 4], max_swaps=2)[1]
    with pytest.raises(ValueError, match="max_swaps=-1: give 0 or more swaps"):
        vocabulary.swap_search(loss_of, 5, [3, 0, 4], max_swaps=-1)
    assert vocabulary.swap_search(loss_of, 5, searched, max_swaps=0) == (searched, True)


def test_set_loss_is_the_official_loss_averaged_over_timesteps():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 7, 6, generator=generator)
    cosines = vocabulary.EditCosines.of(features)
    for members in ([4, 1, 6], [0, 1], list(range(7))):
        expected = statistics.fmean(noiseclr_loss(features[t][:, members], tau=0.3).item() for t in range(2))
        assert vocabulary.set_loss(cosines, members, tau=0.3) == pytest.approx(expected, abs=1e-5)
    # the consistency averages edit_consistency over the same timesteps
    expected = torch.stack([edit_consistency(features[t]) for t in range(2)]).mean(0)
    assert torch.allclose(cosines.consistency(), expected, atol=1e-6)
    with pytest.raises(SystemExit, match="a set needs at least 2 pieces to contrast; got 1"):
        vocabulary.set_loss(cosines, [3], tau=0.3)


def test_random_sets_are_drawn_from_the_pool_without_replacement():
    cosines = vocabulary.EditCosines.of(_constructed_features())
    whole_pool = vocabulary.random_set_losses(_official(cosines), [0, 1, 2], 3, draws=4,
                                              generator=torch.Generator().manual_seed(0))
    # a set as large as its pool is the pool itself, in some order: the same loss every draw
    assert whole_pool == pytest.approx([vocabulary.set_loss(cosines, [0, 1, 2], 0.1)] * 4)
    # from pieces 0 and 3, the only set of two is the copy pair: the worst loss there is
    pair = vocabulary.random_set_losses(_official(cosines), [0, 3], 2, draws=1, generator=torch.Generator())
    assert pair[0] > vocabulary.set_loss(cosines, [0, 1], 0.1)
    with pytest.raises(SystemExit, match="cannot draw sets of 4 from a pool of 3 pieces"):
        vocabulary.random_set_losses(_official(cosines), [0, 1, 2], 4, draws=1, generator=torch.Generator())


def test_domain_words_and_their_single_pieces(tiny_pipe):
    assert vocabulary.domain_words("face") == ["black", "blond", "dark", "frowning", "glasses", "hair", "light",
                                               "no", "skin", "smiling"]
    found = vocabulary.word_pieces(tiny_pipe, ["glasses", "zebra", "cat"])
    # "zebra" is not a word of the bundled captions: the tokenizer splits it, so it has no single row
    assert set(found) == {"glasses", "cat"}
    assert tiny_pipe.tokenizer.convert_ids_to_tokens([found["glasses"]]) == ["glasses</w>"]


def test_vocabulary_report_end_to_end_on_the_tiny_pipeline(tiny_pipe, tmp_path):
    logged = []
    result = vocabulary.vocabulary_report(tiny_pipe, out_dir=tmp_path, tag="t", domains=["face", "car"], images=3,
                                          timesteps=(200, 600), k=4, draws=5, log=logged.append)
    assert len(logged) == 2 and logged[0].startswith("face: features ") and "cache" not in logged[0]
    page = (tmp_path / "vocabulary-t.md").read_text()
    assert json.loads((tmp_path / "vocabulary-t.json").read_text())["domains"]["car"] == result["domains"]["car"]
    assert "## The objective's own choice: 4 pieces" in page and "| **all** |" in page
    face = result["domains"]["face"]
    assert face["own_words"] == vocabulary.domain_words("face")
    own_pieces = {word + "</w>" for word in face["own_words"]}
    for how in ("greedy", "searched"):
        assert len(face[how]["pieces"]) == 4 and set(face[how]["own"]) <= own_pieces
    # the swaps only ever lower the loss, and the search from the words keeps the set's size
    assert face["searched"]["loss"] <= face["greedy"]["loss"]
    assert face["from_words"]["loss"] <= face["own_loss"] and len(face["from_words"]["pieces"]) == 10
    assert face["pieces"] == result["pieces"] == len(vocabulary_rows(tiny_pipe)[0])
    assert len(face["whole_draws"]["values"]) == 5
    for pool in ("whole", "piece"):
        beaten = [value > face["own_loss"] for value in face[f"{pool}_draws"]["values"]]
        assert face["own_below_whole" if pool == "whole" else "own_below_pieces"] == sum(beaten) / 5
    assert face["searched"]["converged"] and face["from_words"]["converged"] and "converged" not in face["greedy"]
    assert face["chance_own_among_whole"] == pytest.approx(4 * 10 / result["whole_words"])
    assert result["overall"]["chosen"] == 8
    searched_own = [len(result["domains"][domain]["searched"]["own"]) for domain in ("face", "car")]
    assert result["overall"]["searched_own"] == sum(searched_own)
    # the words' loss is the official loss of their rows' features, measured again here
    from noiseclr_lite.data import load_images
    from noiseclr_lite.models import encode_images, image_size

    pictures = load_images(Path(vocabulary.DEFAULT_SAMPLES) / "face", image_size(tiny_pipe))
    ids, features = vocabulary.vocabulary_features(tiny_pipe, encode_images(tiny_pipe, pictures[:3]), "{}", (200, 600))
    own = [ids.index(i) for i in vocabulary.word_pieces(tiny_pipe, face["own_words"]).values()]
    expected = statistics.fmean(noiseclr_loss(per_timestep[:, own], 0.1).item() for per_timestep in features)
    assert face["own_loss"] == pytest.approx(expected, abs=1e-5)
    # greedy starts from the most consistent piece
    assert face["greedy"]["pieces"][0] == face["most_consistent"][0][0]
    # --resume reads the features back from the cache: the same result, without the UNet
    logged.clear()
    again = vocabulary.vocabulary_report(tiny_pipe, out_dir=tmp_path, tag="t", domains=["face", "car"], images=3,
                                         timesteps=(200, 600), k=4, draws=5, resume=True, log=logged.append)
    assert all("(from the cache)" in line for line in logged)
    assert again["domains"] == result["domains"]


def test_a_tokenizer_without_the_words_is_refused_before_any_unet_work(tiny_pipe, tmp_path, monkeypatch):
    monkeypatch.setattr(vocabulary, "domain_words", lambda domain: ["zebra", "glasses"])
    with pytest.raises(SystemExit, match="writes 1 of face's words and 43 of the bundled captions' words"):
        vocabulary.vocabulary_report(tiny_pipe, samples=tmp_path / "nowhere", out_dir=tmp_path, domains=["face"])


def test_missing_images_and_a_large_vocabulary_are_refused(tiny_pipe, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=r"nowhere/face is not a folder of face images; give --samples"):
        vocabulary.vocabulary_report(tiny_pipe, samples=tmp_path / "nowhere", out_dir=tmp_path, domains=["face"])
    # the images every measurement of a domain shares: the first N of its folder, at the model's size
    pictures = vocabulary.domain_pictures(tiny_pipe, vocabulary.DEFAULT_SAMPLES, "face", images=3)
    assert pictures.shape == (3, 3, 32, 32) and -1 <= pictures.min() and pictures.max() <= 1
    lonely = tmp_path / "lonely" / "face"
    lonely.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(lonely / "one.png")
    with pytest.raises(SystemExit, match="holds 1 image"):
        vocabulary.domain_pictures(tiny_pipe, tmp_path / "lonely", "face")
    monkeypatch.setattr(vocabulary, "MAX_PIECES", 10)
    with pytest.raises(SystemExit, match="the tokenizer has 242 pieces"):
        vocabulary.vocabulary_features(tiny_pipe, torch.zeros(2, 4, 8, 8), "{}", (300,))


def test_the_command_line_writes_the_tagged_page(tiny_pipe_dir, tmp_path):
    result = vocabulary.main(["--model", str(tiny_pipe_dir), "--out", str(tmp_path), "--tag", "cli",
                              "--domains", "cat", "--context", "caption", "--images", "2", "--timesteps", "300",
                              "-k", "2", "--draws", "2"])
    assert result["settings"]["context"] == "caption" and list(result["domains"]) == ["cat"]
    assert "captions' context" in (tmp_path / "vocabulary-cli.md").read_text()
    # the features were measured in the cat's caption context: the cache holds them under that prompt's key
    from noiseclr_lite.data import load_images
    from noiseclr_lite.models import image_size, load_pipeline

    pipe = load_pipeline(str(tiny_pipe_dir))
    pictures = load_images(Path(vocabulary.DEFAULT_SAMPLES) / "cat", image_size(pipe))[:2]
    cached = list((tmp_path / "cache" / "vocabulary").iterdir())
    assert cached == [vocabulary.features_cache_path(pipe, tmp_path, "a cat, {}", pictures, [300])]


def test_pipeline_from_args_sets_the_threads_and_loads_the_named_model(tiny_pipe_dir, monkeypatch):
    threads = []
    monkeypatch.setattr(vocabulary.torch, "set_num_threads", threads.append)
    args = vocabulary.parse_args(["--model", str(tiny_pipe_dir), "--threads", "3"])
    pipe = vocabulary.pipeline_from_args(args)
    assert threads == [3]
    assert list(pipe.unet.config.block_out_channels) == [32, 64]   # the tiny model's, not the bundled one's
    threads.clear()
    vocabulary.pipeline_from_args(vocabulary.parse_args(["--model", str(tiny_pipe_dir)]))
    assert threads == []                        # no --threads: torch's own count is left alone


def test_bad_settings_are_refused_before_any_unet_work(tiny_pipe, tmp_path):
    for settings, message in (({"k": 1}, "-k 1: choose between 2 and 100"), ({"draws": 0}, "--draws 0"),
                              ({"tau": 0.0}, "--tau 0.0: the loss temperature must be positive")):
        with pytest.raises(SystemExit, match=message):
            vocabulary.vocabulary_report(tiny_pipe, samples=tmp_path / "nowhere", out_dir=tmp_path, **settings)


def test_the_features_cache_is_named_by_everything_the_features_depend_on(tiny_pipe, tmp_path):
    images = torch.zeros(2, 3, 32, 32)
    path = vocabulary.features_cache_path(tiny_pipe, tmp_path, "{}", images, (300,))
    assert path.parent == tmp_path / "cache" / "vocabulary"
    assert path == vocabulary.features_cache_path(tiny_pipe, tmp_path, "{}", images.clone(), [300])
    others = {vocabulary.features_cache_path(tiny_pipe, tmp_path, "a face, {}", images, (300,)),
              vocabulary.features_cache_path(tiny_pipe, tmp_path, "{}", images, (300, 600)),
              vocabulary.features_cache_path(tiny_pipe, tmp_path, "{}", images + 1, (300,))}
    assert path not in others and len(others) == 3
    embeddings = tiny_pipe.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        embeddings[5] += 1.0                      # another vocabulary row: another file
        changed_row = vocabulary.features_cache_path(tiny_pipe, tmp_path, "{}", images, (300,))
        tiny_pipe.unet.conv_out.bias.add_(1.0)   # other weights: another file
        changed_unet = vocabulary.features_cache_path(tiny_pipe, tmp_path, "{}", images, (300,))
        tiny_pipe.vae.encoder.conv_in.bias.add_(1.0)   # another VAE encodes the images otherwise
        changed_vae = vocabulary.features_cache_path(tiny_pipe, tmp_path, "{}", images, (300,))
    assert len({path, changed_row, changed_unet, changed_vae}) == 4


def test_features_of_another_vocabulary_are_refused(tiny_pipe, tmp_path, monkeypatch):
    # a cache written for another tokenizer: its pieces are not this one's, and the page would misname them
    monkeypatch.setattr(vocabulary, "domain_features", lambda *args: (list(range(7)), torch.zeros(1, 2, 7, 4), True))
    with pytest.raises(SystemExit, match="cached features of face are of another vocabulary; .*without --resume"):
        vocabulary.vocabulary_report(tiny_pipe, out_dir=tmp_path, domains=["face"])
