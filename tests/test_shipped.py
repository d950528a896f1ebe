"""Naming directions by the oracle, and the shipped direction files."""

from pathlib import Path

import pytest
import torch

from noiseclr_lite.directions import Directions
from noiseclr_lite.metrics import DirectionScore
from noiseclr_lite.models import BUNDLED_MODEL, DIRECTIONS_DIR
from noiseclr_lite.toyworld.shipped import name_by_oracle


def _score(signed):
    effects = {k: abs(v) for k, v in signed.items()}
    return DirectionScore(name="", token="", domain="face", scale=1.0, effects=effects, signed_effects=signed,
                          plus_effects=signed, minus_effects=signed,
                          purity=max(effects.values()) / sum(effects.values()), strength=max(effects.values()),
                          target=max(effects, key=effects.get), pixel_change=0.05, off_target=0.0)


def test_name_by_oracle_names_the_value_the_plus_side_moves_towards():
    scores = [
        _score({"expression": 0.8, "hair": 0.05, "glasses": 0.0, "skin": 0.05}),    # smiles at +s
        _score({"expression": -0.7, "hair": 0.0, "glasses": 0.1, "skin": 0.0}),     # frowns at +s
        _score({"expression": 0.1, "hair": 0.4, "glasses": 0.0, "skin": -0.35}),    # mixed: purity 0.47
        _score({"expression": 0.05, "hair": 0.02, "glasses": 0.1, "skin": 0.0}),    # too weak
        _score({"expression": 0.0, "hair": 0.9, "glasses": 0.0, "skin": 0.0}),
        _score({"expression": 0.0, "hair": 0.6, "glasses": 0.0, "skin": 0.1}),     # the same again
    ]
    assert name_by_oracle(scores, "face") == ["smiling", "frowning", "mixed_hair+skin", "weak_glasses",
                                              "blond_hair", "blond_hair_2"]


def test_select_cleanest_keeps_visible_directions_first_and_at_most_two_per_attribute_value():
    from dataclasses import asdict

    from noiseclr_lite.toyworld.shipped import select_cleanest

    rows = [asdict(s) for s in [
        _score({"expression": 0.9, "hair": 0.0, "glasses": 0.0, "skin": 0.0}),     # 0 smiling, clean
        _score({"expression": 0.8, "hair": 0.0, "glasses": 0.0, "skin": 0.05}),    # 1 smiling again
        _score({"expression": 0.95, "hair": 0.0, "glasses": 0.0, "skin": 0.02}),   # 2 a third smile: over the cap
        _score({"expression": 0.0, "hair": 0.55, "glasses": 0.0, "skin": 0.3}),    # 3 visible, less pure
        _score({"expression": 0.0, "hair": 0.0, "glasses": -0.45, "skin": 0.0}),   # 4 pure but weak: not visible
        _score({"expression": -0.6, "hair": 0.0, "glasses": 0.0, "skin": 0.0}),    # 5 frowning: another value
        _score({"expression": 0.0, "hair": 0.3, "glasses": 0.3, "skin": 0.3}),     # 6 mixed
    ]]
    # visible ones first (by purity x strength), two smiles at most, then the invisible by purity x strength
    assert select_cleanest(rows, 5) == [2, 0, 5, 3, 4]
    # when the capped value is all that is left, it fills the set rather than leaving it short
    assert select_cleanest(rows, 7) == [2, 0, 5, 3, 4, 6, 1]
    with pytest.raises(ValueError, match="keep must be in 1..7"):
        select_cleanest(rows, 8)


def test_is_visible_needs_strength_purity_and_edits_that_stay_in_the_domain():
    from dataclasses import asdict

    from noiseclr_lite.toyworld.shipped import DOMAIN_KEPT_MIN, is_visible

    row = asdict(_score({"expression": 0.8, "hair": 0.1, "glasses": 0.0, "skin": 0.0}))
    assert is_visible(row)                                     # not measured (older readings): counts as kept
    assert is_visible({**row, "domain_kept": DOMAIN_KEPT_MIN})
    assert not is_visible({**row, "domain_kept": 0.5})         # half the faces became something else
    assert not is_visible({**row, "strength": 0.45})
    assert not is_visible({**row, "purity": 0.55})


def test_read_on_ladder_keeps_each_directions_cleanest_scale(tiny_pipe, monkeypatch):
    from dataclasses import replace

    from noiseclr_lite import metrics
    from noiseclr_lite.toyworld.shipped import read_on_ladder

    # a constructed reading per (direction, scale): direction 0 is visible only at 4 (at 8 it leaves
    # the domain), direction 1 is never visible and is cleanest (purity x strength) at 2
    table = {(0, 1.0): ({"expression": 0.2}, 1.0), (0, 2.0): ({"expression": 0.4}, 1.0),
             (0, 4.0): ({"expression": 0.7, "skin": 0.2}, 0.95), (0, 8.0): ({"expression": 0.9}, 0.6),
             (1, 1.0): ({"hair": 0.1}, 1.0), (1, 2.0): ({"hair": 0.3}, 1.0),
             (1, 4.0): ({"hair": 0.3, "skin": 0.3}, 1.0), (1, 8.0): ({"hair": 0.4, "skin": 0.4}, 0.8)}

    def fake_score(pipe, oracle, directions, k, start, domain, scale, window):
        assert window == (1.0, 0.0)
        effects, kept = table[k, scale]
        signed = {"expression": 0.0, "hair": 0.0, "glasses": 0.0, "skin": 0.0, **effects}
        return replace(_score(signed), scale=scale, domain_kept=kept)

    monkeypatch.setattr(metrics, "score_direction", fake_score)
    rows = read_on_ladder(tiny_pipe, None, Directions.create(tiny_pipe, 2, seed=0), "face", None, [1, 2, 4, 8])
    assert [row["scale"] for row in rows] == [4.0, 2.0]
    assert [row["window"] for row in rows] == [[1.0, 0.0]] * 2
    assert rows[0]["strength"] == 0.7 and rows[0]["target"] == "expression"
    assert [rung[0] for rung in rows[0]["ladder"]] == [1.0, 2.0, 4.0, 8.0]
    assert rows[0]["ladder"][3] == [8.0, 1.0, 0.9, 0.6]       # scale, purity, strength, share kept in the domain
    with pytest.raises(ValueError, match="slider scales must be positive"):
        read_on_ladder(tiny_pipe, None, Directions.create(tiny_pipe, 2, seed=0), "face", None, [0, 1])


def test_cached_ladder_reading_keeps_each_directions_cleanest_window_and_reads_only_new_windows(
        tiny_pipe, tmp_path, monkeypatch):
    from dataclasses import replace

    from noiseclr_lite import metrics
    from noiseclr_lite.toyworld import shipped

    # direction 0 is visible in the whole window; direction 1 leaves the domain there (kept 0.7)
    # and is visible only in the late window (0.5, 0), where its edit skips the noisiest steps
    table = {(0, (1.0, 0.0)): ({"hair": 0.8}, 1.0), (0, (0.5, 0.0)): ({"hair": 0.3}, 1.0),
             (1, (1.0, 0.0)): ({"glasses": 0.9}, 0.7), (1, (0.5, 0.0)): ({"glasses": 0.6}, 0.95)}
    calls = []

    def fake_score(pipe, oracle, directions, k, start, domain, scale, window):
        calls.append((k, window))
        effects, kept = table[k, window]
        signed = {"expression": 0.0, "hair": 0.0, "glasses": 0.0, "skin": 0.0, **effects}
        return replace(_score(signed), scale=scale, domain_kept=kept)

    monkeypatch.setattr(metrics, "score_direction", fake_score)
    directions = Directions.create(tiny_pipe, 2, seed=0)
    settings = {"seed": 0, "eval_images": 2, "inference_steps": 2}
    oracle = torch.nn.Linear(1, 1)     # only hashed into the cache key here
    read = lambda windows: shipped.cached_ladder_reading(tmp_path, tiny_pipe, oracle, directions, "face", None,
                                                         [4.0], settings, windows)
    rows = read([(1.0, 0.0)])
    assert [row["window"] for row in rows] == [[1.0, 0.0]] * 2 and len(calls) == 2
    assert (tmp_path / shipped.LADDER_CACHE_NAME).exists()
    rows = read([(1.0, 0.0), (0.5, 0.0)])                  # one more window: only it is read
    assert calls[2:] == [(0, (0.5, 0.0)), (1, (0.5, 0.0))]
    assert (tmp_path / "ladder-reading-window0.5-0.json").exists()
    assert [row["window"] for row in rows] == [[1.0, 0.0], [0.5, 0.0]]
    assert [row["target"] for row in rows] == ["hair", "glasses"] and rows[1]["strength"] == 0.6
    assert read([(1.0, 0.0), (0.5, 0.0)]) == rows and len(calls) == 4     # all cached now
    with pytest.raises(ValueError, match="windows is empty"):
        read([])


def test_slider_windows_come_from_the_oracle_reading_or_every_step(tiny_pipe):
    from noiseclr_lite.toyworld.shipped import slider_windows

    directions = Directions.create(tiny_pipe, 2, seed=0)
    directions.names = ["a", "b"]
    assert slider_windows(directions) == {"a": (1.0, 0.0), "b": (1.0, 0.0)}
    directions.metadata["oracle_reading"] = [{"name": "a", "scale": 8.0, "window": [0.55, 0.0]},
                                             {"name": "b", "scale": 4.0}]   # read before windows were
    assert slider_windows(directions) == {"a": (0.55, 0.0), "b": (1.0, 0.0)}


def test_ranked_names_puts_the_cleanest_direction_first(tiny_pipe):
    from noiseclr_lite.toyworld.shipped import ranked_names

    directions = Directions.create(tiny_pipe, 3, seed=0)
    assert ranked_names(directions) == directions.names          # no oracle reading: own order
    directions.names = ["a", "b", "c"]
    directions.metadata["oracle_reading"] = [{"name": "a", "purity": 0.5, "strength": 0.2},
                                             {"name": "b", "purity": 0.9, "strength": 0.8},
                                             {"name": "c", "purity": 1.0, "strength": 0.3}]
    assert ranked_names(directions) == ["b", "c", "a"]
    # visible first: a strong, pure direction that sends 40% of its edits out of the domain ranks
    # after a visible one, although its purity x strength is larger
    directions.metadata["oracle_reading"] = [{"name": "a", "purity": 0.95, "strength": 0.95, "domain_kept": 0.6},
                                             {"name": "b", "purity": 0.7, "strength": 0.6, "domain_kept": 1.0},
                                             {"name": "c", "purity": 1.0, "strength": 0.3, "domain_kept": 1.0}]
    assert ranked_names(directions) == ["b", "a", "c"]


def test_slider_scales_come_from_the_oracle_reading_or_the_default(tiny_pipe):
    from noiseclr_lite.toyworld.shipped import slider_scales

    directions = Directions.create(tiny_pipe, 2, seed=0)
    directions.names = ["a", "b"]
    assert slider_scales(directions, default=3.0) == {"a": 3.0, "b": 3.0}
    directions.metadata["oracle_reading"] = [{"name": "a", "scale": 7.5}]
    assert slider_scales(directions) == {"a": 7.5, "b": 4.0}


@pytest.mark.parametrize("domain", ["face", "cat", "car", "painting"])
def test_every_domain_ships_named_directions_for_the_bundled_model(domain):
    path = DIRECTIONS_DIR / f"{domain}.safetensors"
    directions = Directions.load(path)
    assert directions.metadata["domain"] == domain
    assert len(set(directions.names)) == directions.num_directions          # names are unique slider labels
    reading = directions.metadata["oracle_reading"]
    assert [r["name"] for r in reading] == directions.names
    assert Path(directions.metadata["base_model"]).name == Path(BUNDLED_MODEL).name


def test_weights_key_follows_the_weights_and_ignores_learned_direction_tokens(tiny_pipe):
    import torch

    from noiseclr_lite.models import weights_key

    modules = (tiny_pipe.text_encoder, tiny_pipe.unet, tiny_pipe.vae)
    before = weights_key(*modules)
    assert weights_key(*modules) == before
    Directions.create(tiny_pipe, 3, prefix="k").install(tiny_pipe)   # appends token rows: same model
    assert weights_key(*modules) == before
    with torch.no_grad():
        tiny_pipe.vae.decoder.conv_out.bias.add_(1e-3)               # a fine-tuned decoder: another model
    assert weights_key(*modules) != before


def test_train_shipped_set_and_the_card_end_to_end(tiny_pipe_dir, tmp_path, monkeypatch):
    """The `directions` command's two steps on the tiny model: a named, described set, then its card."""
    import torch

    from noiseclr_lite.toyworld.oracle import Oracle
    from noiseclr_lite.toyworld.samples import write_sample_folders
    from noiseclr_lite.toyworld.shipped import train_shipped_set, write_directions_card

    torch.manual_seed(0)
    Oracle(width=8).save(tmp_path / "oracle")     # untrained: the names are arbitrary, the plumbing is not
    write_sample_folders(tmp_path / "samples", per_domain=4, domains=["cat"])
    path = train_shipped_set("cat", tmp_path / "out", model=str(tiny_pipe_dir), oracle_dir=str(tmp_path / "oracle"),
                             samples_dir=tmp_path / "samples", num_directions=2, steps=2, batch_size=2, seed=3,
                             eval_images=2, inference_steps=2, checkpoint_dir=tmp_path / "ckpt")

    assert path == tmp_path / "out" / "cat.safetensors"
    directions = Directions.load(path)
    meta = directions.metadata
    assert directions.num_directions == 2 and len(set(directions.names)) == 2
    assert meta["domain"] == "cat" and meta["images"].startswith("data/samples/cat (4 images")
    assert [r["name"] for r in meta["oracle_reading"]] == directions.names
    # the recorded command remakes this file: every setting that changes it is on it
    assert meta["command"] == ("python -m noiseclr_lite.toyworld directions --domains cat --steps 2 "
                               "--num-directions 2 --lr 0.01 --batch-size 2 --seed 3 --eval-images 2")
    # checkpoints went where asked, not into the repository, in a folder named after K, the init and the
    # seed (another of them starts afresh instead of failing on a mismatched checkpoint)
    assert [p.name.rsplit("-", 1)[0] for p in (tmp_path / "ckpt").iterdir()] == ["cat-k2-random-s3"]
    vocab = train_shipped_set("cat", tmp_path / "vocab", model=str(tiny_pipe_dir), oracle_dir=str(tmp_path / "oracle"),
                              samples_dir=tmp_path / "samples", num_directions=2, steps=2, batch_size=2, seed=3,
                              init="vocab", eval_images=2, inference_steps=2, checkpoint_dir=tmp_path / "ckpt")
    vocab_meta = Directions.load(vocab).metadata
    assert vocab_meta["command"] == meta["command"] + " --init vocab" and vocab_meta["init"] == "vocab"
    assert sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "ckpt").iterdir()) == [
        "cat-k2-random-s3", "cat-k2-vocab-s3"]
    # another learning rate starts afresh too, rather than resuming (and keeping) the saved one
    faster = train_shipped_set("cat", tmp_path / "faster", model=str(tiny_pipe_dir),
                               oracle_dir=str(tmp_path / "oracle"), samples_dir=tmp_path / "samples",
                               num_directions=2, steps=2, batch_size=2, seed=3, learning_rate=0.05, eval_images=2,
                               inference_steps=2, checkpoint_dir=tmp_path / "ckpt")
    assert "--lr 0.05 " in Directions.load(faster).metadata["command"]
    assert sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "ckpt").iterdir()) == [
        "cat-k2-random-lr0.05-s3", "cat-k2-random-s3", "cat-k2-vocab-s3"]

    card = write_directions_card(tmp_path / "out").read_text()
    assert "## cat (`cat.safetensors`)" in card and meta["command"] in card
    for name in directions.names:
        assert f"| {name} |" in card

    # --pool 2: two sets of K trained (the first resumed from its checkpoint), K kept, read again elsewhere
    from noiseclr_lite.toyworld import shipped

    inverted = []
    real_start = shipped.reading_start
    monkeypatch.setattr(shipped, "reading_start", lambda *a, **k: inverted.append(a[2]) or real_start(*a, **k))
    pooled = Directions.load(train_shipped_set(
        "cat", tmp_path / "pooled", model=str(tiny_pipe_dir), oracle_dir=str(tmp_path / "oracle"),
        samples_dir=tmp_path / "samples", num_directions=2, steps=2, batch_size=2, seed=3, pool=2, eval_images=2,
        inference_steps=2, checkpoint_dir=tmp_path / "ckpt"))
    pool = pooled.metadata["pool"]
    assert pooled.num_directions == 2 and pooled.tokens == ["<cat_0>", "<cat_1>"]
    assert pool["seeds"] == [3, 4] and len(pool["selection_reading"]) == 4 and len(pool["kept"]) == 2
    candidates = {3: directions}
    for (seed, index), row in zip(pool["kept"], pooled.embeddings):
        if seed == 3:  # a kept candidate of the first set is that set's very row
            assert torch.equal(row, candidates[3].embeddings[index])
    assert pooled.metadata["reading"]["seed"] == 3 + 100                    # named on other renders
    assert inverted == [3, 3 + 100]          # one inversion for both candidate sets, one for the confirmation
    assert pooled.metadata["command"] == meta["command"] + " --pool 2"
    assert sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "ckpt").iterdir()) == [
        "cat-k2-random-lr0.05-s3", "cat-k2-random-s3", "cat-k2-random-s4", "cat-k2-vocab-s3"]
    assert "Kept 2 of 4 candidates" in write_directions_card(tmp_path / "pooled").read_text()



def test_slider_scales_are_chosen_on_selection_renders_and_read_again_elsewhere(tiny_pipe_dir, tmp_path, monkeypatch):
    """``--scale-ladder`` end to end on the tiny model: each kept direction is read again at its chosen scale."""
    import torch

    from noiseclr_lite.toyworld.oracle import Oracle
    from noiseclr_lite.toyworld.samples import write_sample_folders
    from noiseclr_lite.toyworld.shipped import (reread_shipped_set, slider_scales, slider_windows,
                                                train_shipped_set, write_directions_card)

    torch.manual_seed(0)
    Oracle(width=8).save(tmp_path / "oracle")
    write_sample_folders(tmp_path / "samples", per_domain=4, domains=["cat"])
    common = dict(model=str(tiny_pipe_dir), oracle_dir=str(tmp_path / "oracle"), samples_dir=tmp_path / "samples",
                  num_directions=2, steps=2, batch_size=2, seed=3, eval_images=2, inference_steps=2,
                  checkpoint_dir=tmp_path / "ckpt")
    path = train_shipped_set("cat", tmp_path / "out", scale_ladder=[0.5, 2.0], confirmation_images=3, **common)
    meta = Directions.load(path).metadata
    chosen = meta["pool"]["selection_reading"]
    assert meta["pool"]["scale_ladder"] == [0.5, 2.0] and meta["pool"]["seeds"] == [3]
    assert all(row["scale"] in (0.5, 2.0) and len(row["ladder"]) == 2 for row in chosen)
    # read again on other renders, each at the scale its selection reading chose, and not calibrated
    kept_scales = [chosen[i]["scale"] for i in (index for _, index in meta["pool"]["kept"])]
    assert meta["reading"] == {"seed": 103, "eval_images": 3, "inference_steps": 2, "scales": kept_scales}
    assert [row["scale"] for row in meta["oracle_reading"]] == kept_scales
    assert not any(row["calibrated"] for row in meta["oracle_reading"])
    assert list(slider_scales(Directions.load(path)).values()) == kept_scales
    assert meta["command"].endswith("--eval-images 2 --confirmation-images 3 --scale-ladder 0.5 2")
    card = write_directions_card(tmp_path / "out").read_text()
    assert "at the slider scales they read cleanest at among 0.5, 2; read again on 3 renders of seed 104" in card
    assert "| pixels | in domain |" in card
    # a reread keeps the slider scales; a calibration bracket does not apply to them
    reread_shipped_set(path, model=str(tiny_pipe_dir), oracle_dir=str(tmp_path / "oracle"))
    assert Directions.load(path).metadata["reading"]["scales"] == kept_scales
    with pytest.raises(ValueError, match="own slider scale"):
        reread_shipped_set(path, model=str(tiny_pipe_dir), oracle_dir=str(tmp_path / "oracle"), max_scale=8)
    with pytest.raises(ValueError, match="needs a chosen set"):   # only a chosen set has a second reading
        train_shipped_set("cat", tmp_path / "plain", confirmation_images=3, **common)

    # a larger pool reads only its new candidate: the first one's ladder reading is cached next to its checkpoint
    from noiseclr_lite.toyworld import shipped

    read_seeds, real_read = [], shipped.read_on_ladder
    monkeypatch.setattr(shipped, "read_on_ladder",
                        lambda pipe, oracle, directions, *a: read_seeds.append(directions.metadata["seed"])
                        or real_read(pipe, oracle, directions, *a))
    pooled = Directions.load(train_shipped_set("cat", tmp_path / "pooled", scale_ladder=[0.5, 2.0], pool=2,
                                               confirmation_images=3, **common)).metadata
    assert read_seeds == [4]
    assert pooled["pool"]["selection_reading"][:2] == chosen                # the cached rows, as first read
    assert sorted(p.name for p in (tmp_path / "ckpt").glob(f"*/{shipped.LADDER_CACHE_NAME}")) == [
        shipped.LADDER_CACHE_NAME] * 2
    # another ladder (or other weights, renders or embeddings) is read again, and the cache rewritten
    train_shipped_set("cat", tmp_path / "pooled", scale_ladder=[1.0, 2.0], pool=2, confirmation_images=3, **common)
    assert read_seeds == [4, 3, 4]

    # --window-ladder: one more window reads every candidate in it only; each kept direction is read
    # again, and shipped, in the window it read cleanest in
    windowed = train_shipped_set("cat", tmp_path / "windowed", scale_ladder=[1.0, 2.0], pool=2,
                                 window_ladder=[(1.0, 0.0), (0.5, 0.0)], confirmation_images=3, **common)
    assert read_seeds == [4, 3, 4, 3, 4]
    meta = Directions.load(windowed).metadata
    assert meta["pool"]["window_ladder"] == [[1.0, 0.0], [0.5, 0.0]]
    chosen_windows = [meta["pool"]["selection_reading"][2 * (seed - 3) + index]["window"]
                      for seed, index in meta["pool"]["kept"]]
    assert [row["window"] for row in meta["oracle_reading"]] == chosen_windows
    assert list(slider_windows(Directions.load(windowed)).values()) == [tuple(w) for w in chosen_windows]
    assert meta["command"].endswith("--scale-ladder 1 2 --window-ladder 1:0 0.5:0")
    assert "and the edit windows among 1:0, 0.5:0" in write_directions_card(tmp_path / "windowed").read_text()
    reread_shipped_set(windowed, model=str(tiny_pipe_dir), oracle_dir=str(tmp_path / "oracle"))
    assert list(slider_windows(Directions.load(windowed)).values()) == [tuple(w) for w in chosen_windows]
    with pytest.raises(ValueError, match="window_ladder needs scale_ladder"):
        train_shipped_set("cat", tmp_path / "plain", window_ladder=[(0.5, 0.0)], **common)


@pytest.mark.parametrize("folder", [BUNDLED_MODEL, Path(BUNDLED_MODEL).parent / "oracle"])
def test_each_shipped_model_stays_within_20_megabytes(folder):
    # the repository stays light: a shipped model is at most 20 MB (fp16 weights and their cards)
    size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    assert 0 < size <= 20 * 1024 * 1024, f"{folder} holds {size / 2**20:.1f} MB; the limit is 20 MB"


def test_reread_shipped_set_reads_a_saved_set_again_without_training(tiny_pipe_dir, tmp_path):
    import torch

    from noiseclr_lite.models import load_pipeline, weights_key
    from noiseclr_lite.toyworld.oracle import Oracle
    from noiseclr_lite.toyworld.shipped import _reading_settings, reread_shipped_set

    torch.manual_seed(0)
    Oracle(width=8).save(tmp_path / "oracle")
    pipe = load_pipeline(str(tiny_pipe_dir))
    directions = Directions.create(pipe, 2, prefix="cat", seed=0)
    directions.metadata.update({"domain": "cat", "command": "python -m noiseclr_lite.toyworld directions "
                                "--domains cat --steps 2 --seed 3 --eval-images 2"})
    path = directions.save(tmp_path / "cat.safetensors")
    assert _reading_settings(directions.metadata) == {"seed": 3, "eval_images": 2}   # an older file: from its command
    renamed = reread_shipped_set(path, model=str(tiny_pipe_dir), oracle_dir=str(tmp_path / "oracle"))
    again = Directions.load(path)
    assert list(renamed) == directions.names and list(renamed.values()) == again.names
    assert torch.equal(again.embeddings, directions.embeddings)          # read, not trained
    assert [r["name"] for r in again.metadata["oracle_reading"]] == again.names
    assert again.metadata["reading"] == {"seed": 3, "eval_images": 2, "inference_steps": 10, "target_change": 0.06,
                                         "max_scale": 16.0, "min_scale": 0.125}
    # a narrower calibration bracket: every scale stays inside it, and the file records it
    reread_shipped_set(path, model=str(tiny_pipe_dir), oracle_dir=str(tmp_path / "oracle"), max_scale=0.5)
    narrow = Directions.load(path).metadata
    assert narrow["reading"]["max_scale"] == 0.5 and all(r["scale"] <= 0.5 for r in narrow["oracle_reading"])
    assert _reading_settings(narrow)["max_scale"] == 0.5   # the next --reread keeps it
    oracle = Oracle.load(tmp_path / "oracle")
    assert again.metadata["reading_weights"] == weights_key(pipe.text_encoder, pipe.unet, pipe.vae, oracle)
    from noiseclr_lite.toyworld.shipped import write_directions_card

    assert f"weights `{again.metadata['reading_weights']}`" in write_directions_card(tmp_path).read_text()


def test_shipped_readings_were_made_with_the_shipped_model_and_oracle():
    # after a new decoder or oracle, `toyworld directions --reread` must follow, or the card is stale
    from noiseclr_lite.models import ORACLE_DIR, load_pipeline, weights_key
    from noiseclr_lite.toyworld.oracle import Oracle

    pipe = load_pipeline(None)
    shipped = weights_key(pipe.text_encoder, pipe.unet, pipe.vae, Oracle.load(ORACLE_DIR))
    for domain in ["face", "cat", "car", "painting"]:
        meta = Directions.load(DIRECTIONS_DIR / f"{domain}.safetensors").metadata
        assert meta.get("reading_weights") == shipped, f"{domain}: reread with `toyworld directions --reread`"


def test_window_ladder_flag_names_a_bad_window(capsys):
    from noiseclr_lite.toyworld.__main__ import main

    for text, why in [("0.5", "is not HIGH:LOW"), ("0.2:0.5", "1 >= HIGH >= LOW >= 0")]:
        with pytest.raises(SystemExit):
            main(["directions", "--scale-ladder", "1", "--window-ladder", text])
        err = capsys.readouterr().err
        assert f"edit window '{text}'" in err and why in err
