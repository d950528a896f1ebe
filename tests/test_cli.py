"""The command line end to end on the tiny model saved as a folder: train, consensus, edit, grid, --help."""

import pytest
import torch
from PIL import Image

from noiseclr_lite.cli import _build_parser, main, parse_window
from noiseclr_lite.directions import Directions
from noiseclr_lite.toyworld.domains import render_batch


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    images, _ = render_batch(6, seed=0, domains=["face"])
    for i, image in enumerate(images):
        Image.fromarray(image).resize((32, 32), Image.LANCZOS).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def trained(tiny_pipe_dir, image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "faces.safetensors"
    code = main(["train", "--model", str(tiny_pipe_dir), "--device", "cpu", "--images", str(image_folder),
                 "--num-directions", "3", "--steps", "2", "--batch-size", "3", "--prefix", "face",
                 "--names", "one,two,three", "--checkpoint-every", "1", "--out", str(out)])
    assert code == 0
    return out


def test_train_writes_named_directions_and_a_checkpoint(trained, tiny_pipe_dir):
    directions = Directions.load(trained)
    assert directions.tokens == ["<face_0>", "<face_1>", "<face_2>"]
    assert directions.names == ["one", "two", "three"]
    assert directions.metadata["base_model"] == str(tiny_pipe_dir)
    assert (trained.parent / (trained.name + ".ckpt") / "checkpoint.pt").exists()


def test_resume_continues_from_the_checkpoint(trained, tiny_pipe_dir, image_folder, tmp_path):
    out = tmp_path / "more.safetensors"
    ckpt = trained.parent / (trained.name + ".ckpt")
    assert main(["train", "--model", str(tiny_pipe_dir), "--device", "cpu", "--images", str(image_folder),
                 "--num-directions", "3", "--steps", "3", "--batch-size", "3", "--prefix", "face",
                 "--checkpoint-dir", str(ckpt), "--resume", "--out", str(out)]) == 0
    history = Directions.load(out).metadata["loss_history"]
    assert len(__import__("json").loads(history)) == 3


def test_anchors_centring_context_edit_space_and_parameterization_flags_reach_training(tiny_pipe_dir, image_folder,
                                                                                      tmp_path):
    out = tmp_path / "all.safetensors"
    assert main(["train", "--model", str(tiny_pipe_dir), "--device", "cpu", "--images", str(image_folder),
                 "--num-directions", "3", "--steps", "1", "--batch-size", "3", "--anchors", "all", "--center-edits",
                 "--context", "a face, {}", "--edit-space", "hspace", "--parameterization", "vocab-mixture",
                 "--out", str(out)]) == 0
    trained = Directions.load(out)
    training = __import__("json").loads(trained.metadata["training"])
    assert training["anchors"] == "all" and training["center_edits"] is True and training["edit_space"] == "hspace"
    assert training["parameterization"] == "vocab-mixture"
    # the heaviest vocabulary pieces travel with the saved file
    assert list(__import__("json").loads(trained.metadata["vocab_mixture"])) == trained.tokens
    assert trained.context == "a face, {}"   # saved with the directions, so edits use the same prompt
    # the denoising-gain term (eps edits only) reaches training too
    gained = tmp_path / "gain.safetensors"
    assert main(["train", "--model", str(tiny_pipe_dir), "--device", "cpu", "--images", str(image_folder),
                 "--num-directions", "3", "--steps", "1", "--batch-size", "3", "--gain-weight", "5",
                 "--out", str(gained)]) == 0
    assert __import__("json").loads(Directions.load(gained).metadata["training"])["gain_weight"] == 5.0
    # and its share and sides
    shaped = tmp_path / "gain-shaped.safetensors"
    assert main(["train", "--model", str(tiny_pipe_dir), "--device", "cpu", "--images", str(image_folder),
                 "--num-directions", "3", "--steps", "1", "--batch-size", "3", "--gain-weight", "5",
                 "--gain-top-share", "1", "--gain-two-sided", "--out", str(shaped)]) == 0
    training = __import__("json").loads(Directions.load(shaped).metadata["training"])
    assert (training["gain_top_share"], training["gain_two_sided"]) == (1.0, True)


def test_a_bad_context_is_a_usage_error_before_the_model_loads(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--model", str(tmp_path / "no-model-here"), "--images", str(tmp_path), "--context", "a face",
              "--out", str(tmp_path / "x.safetensors")])
    assert stop.value.code == 2
    assert "--context must be a prompt with exactly one '{}'" in capsys.readouterr().err
    # every setting train_directions would refuse, likewise (train.check_config): the gain term's shape
    # without its weight, a share outside (0, 1], one direction
    for flags, message in ((["--gain-two-sided"], "shape the denoising-gain term, which is off"),
                           (["--gain-weight", "1", "--gain-top-share", "0"], "gain_top_share=0.0; give the share"),
                           (["--num-directions", "1"], "num_directions=1: the contrastive loss needs")):
        with pytest.raises(SystemExit) as stop:
            main(["train", "--model", str(tmp_path / "no-model-here"), "--images", str(tmp_path),
                  "--out", str(tmp_path / "x.safetensors"), *flags])
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_consensus_keeps_what_two_runs_share(trained, tiny_pipe_dir, image_folder, tmp_path, capsys):
    first = Directions.load(trained)
    # a second run that found the first's directions 0 and 2 again, and one of its own
    other = Directions(torch.stack([first.embeddings[2], torch.randn(first.hidden_size) * first.embeddings.std(),
                                    first.embeddings[0]]), ["<b_0>", "<b_1>", "<b_2>"], metadata=first.metadata)
    second = other.save(tmp_path / "second.safetensors")
    out = tmp_path / "kept.safetensors"
    assert main(["consensus", "--model", str(tiny_pipe_dir), "--device", "cpu", "--directions", str(trained),
                 str(second), "--images", str(image_folder), "--num-images", "3", "--count", "2",
                 "--out", str(out)]) == 0
    assert f"saved 2 directions to {out} (agreement across the runs: 1.00, 1.00)" in capsys.readouterr().out
    kept = Directions.load(out)
    assert kept.tokens == ["<consensus_0>", "<consensus_1>"]
    assert {tuple(row.tolist()) for row in kept.embeddings} == {tuple(first.embeddings[k].tolist()) for k in (0, 2)}
    assert kept.metadata["consensus"]["runs"] == [str(trained), str(second)]
    with pytest.raises(SystemExit, match="two or more runs' Directions; got 1"):
        main(["consensus", "--model", str(tiny_pipe_dir), "--device", "cpu", "--directions", str(trained),
              "--images", str(image_folder), "--out", str(out)])
    with pytest.raises(SystemExit, match="--num-images 0: give 1 or more"):
        main(["consensus", "--model", str(tiny_pipe_dir), "--device", "cpu", "--directions", str(trained),
              str(second), "--images", str(image_folder), "--num-images", "0", "--out", str(out)])


def test_edit_by_name_token_and_index(trained, tiny_pipe_dir, image_folder, tmp_path):
    base = ["edit", "--model", str(tiny_pipe_dir), "--device", "cpu", "--directions", str(trained),
            "--image", str(image_folder / "0.png"), "--steps", "4"]
    outputs = {}
    for key in ("two", "<face_1>", "1"):
        out = tmp_path / f"{key.strip('<>')}.png"
        assert main(base + ["--scale", f"{key}=3", "--out", str(out)]) == 0
        outputs[key] = torch.tensor(list(Image.open(out).getdata()))
    assert torch.equal(outputs["two"], outputs["<face_1>"]) and torch.equal(outputs["two"], outputs["1"])
    zero = tmp_path / "zero.png"
    assert main(base + ["--scale", "two=0", "--out", str(zero)]) == 0
    assert not torch.equal(torch.tensor(list(Image.open(zero).getdata())), outputs["two"])
    with pytest.raises(SystemExit, match="no direction called 'smile'"):
        main(base + ["--scale", "smile=1", "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        main(base + ["--scale", "two", "--out", str(tmp_path / "x.png")])


def test_edit_passes_the_composition_on(trained, tiny_pipe_dir, image_folder, tmp_path, monkeypatch):
    import noiseclr_lite.editing

    seen, real_edit = [], noiseclr_lite.editing.edit
    monkeypatch.setattr(noiseclr_lite.editing, "edit",
                        lambda *a, **kw: (seen.append(kw["composition"]), real_edit(*a, **kw))[1])
    base = ["edit", "--model", str(tiny_pipe_dir), "--device", "cpu", "--directions", str(trained),
            "--image", str(image_folder / "0.png"), "--steps", "3", "--scale", "two=3"]
    assert main(base + ["--out", str(tmp_path / "a.png")]) == 0
    assert main(base + ["--composition", "regions", "--out", str(tmp_path / "b.png")]) == 0
    assert seen == ["sum", "regions"]
    with pytest.raises(SystemExit):
        main(base + ["--composition", "mean", "--out", str(tmp_path / "c.png")])


def test_grid_has_a_row_per_direction_and_a_column_per_scale(trained, tiny_pipe_dir, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["grid", "--model", str(tiny_pipe_dir), "--device", "cpu", "--directions", str(trained),
                 "--scales", "-2", "0", "2", "--steps", "3", "--only", "one", "three", "--out", str(out)]) == 0
    grid = Image.open(out)
    assert grid.height > 2 * 128 and grid.width > 3 * 128


def test_help_documents_every_flag(capsys):
    parser = _build_parser()
    for command in ("train", "consensus", "edit", "grid"):
        sub = parser._subparsers._group_actions[0].choices[command]
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{command} {action.option_strings} has no help"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--num-directions" in capsys.readouterr().out


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["grid", "--model", str(tmp_path / "nope") + "/", "--directions", "x", "--out", "y"])


def test_parse_window_reads_high_low_and_names_a_bad_window(trained, tiny_pipe_dir, tmp_path):
    assert parse_window("0.55:0") == (0.55, 0.0) and parse_window("1:0") == (1.0, 0.0)
    for text, why in [("0.5", "is not HIGH:LOW"), ("0.2:0.5", "1 >= HIGH >= LOW >= 0"), ("a:b", "is not HIGH:LOW")]:
        with pytest.raises(ValueError, match=why) as err:
            parse_window(text)
        assert repr(text) in str(err.value)
    # the edit command says which direction's window is wrong, instead of a traceback
    with pytest.raises(SystemExit, match=r"--window one: edit window '0\.5' is not HIGH:LOW"):
        main(["edit", "--model", str(tiny_pipe_dir), "--directions", str(trained), "--scale", "one=1.0",
              "--window", "one=0.5", "--steps", "2", "--out", str(tmp_path / "x.png")])
