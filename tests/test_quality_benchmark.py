"""The quality benchmark end to end on the tiny pipeline, and the h-space peer's hook."""

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from noiseclr_lite.directions import Directions
from noiseclr_lite.editing import denoise, edit
from noiseclr_lite.hspace import collect_hspace, edit_hspace, hspace_directions, hspace_edit, mid_block_output
from noiseclr_lite.metrics import balanced_start_images, prepare_start, score_direction
from noiseclr_lite.models import encode_images
from noiseclr_lite.testing import StatsOracle

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import quality  # noqa: E402


def tiny_settings(samples, **overrides):
    base = dict(domains=["face"], seeds=[0], num_directions=2, steps=2, batch_size=2, negatives=None,
                train_images=4, eval_images=2, inference_steps=2, calibration_images=1, calibration_iters=2,
                max_scale=4.0, hspace_max_scale=1.0, target_change=0.02, hspace_timesteps=(800, 300),
                interference_images=2, grid_images=2, model="tiny", oracle="StatsOracle", samples=str(samples))
    return quality.Settings(**{**base, **overrides})


# ----------------------------------------------------------------------------- h-space
def test_hspace_hook_adds_exactly_scale_times_direction_inside_the_window_only(tiny_pipe):
    unet = tiny_pipe.unet
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))
    seen = {}
    raw = unet.mid_block.register_forward_hook(lambda m, i, o: seen.__setitem__("raw", o.clone()))
    direction = torch.randn(64, 8, 8, generator=torch.Generator().manual_seed(2))
    try:
        with hspace_edit(tiny_pipe, direction, scale=1.5, window=(0.8, 0.4)):
            after = unet.mid_block.register_forward_hook(lambda m, i, o: seen.__setitem__("edited", o.clone()))
            for t, inside in ((600, True), (900, False), (100, False)):
                unet(x, t, encoder_hidden_states=cond)
                expected = seen["raw"] + 1.5 * direction if inside else seen["raw"]
                assert torch.equal(seen["edited"], expected), t
            # a per-row timestep tensor is checked row by row (keyword call, as in training)
            unet(x, timestep=torch.tensor([600, 900]), encoder_hidden_states=cond)
            assert torch.equal(seen["edited"][0], seen["raw"][0] + 1.5 * direction)
            assert torch.equal(seen["edited"][1], seen["raw"][1])
            after.remove()
        # the hooks are gone after the context
        unet(x, 600, encoder_hidden_states=cond)
        assert len(unet.mid_block._forward_hooks) == 1 and not unet._forward_pre_hooks
    finally:
        raw.remove()
    with pytest.raises(ValueError, match="window"):
        with hspace_edit(tiny_pipe, direction, 1.0, window=(0.2, 0.5)):
            pass


def test_edit_hspace_edits_an_inversion_only_when_its_scale_is_not_zero(tiny_pipe):
    images, _ = balanced_start_images("face", 1, seed=0, size=32)
    start = prepare_start(tiny_pipe, images, num_inference_steps=3, seed=0)
    direction = torch.randn(64, 8, 8, generator=torch.Generator().manual_seed(2))
    plain = edit(tiny_pipe, [], inversion=start.inversion)[0]
    assert list(edit_hspace(tiny_pipe, direction, 0.0, inversion=start.inversion)[0].getdata()) == list(plain.getdata())
    edited = edit_hspace(tiny_pipe, direction, 3.0, inversion=start.inversion)[0]
    assert edited.size == plain.size and list(edited.getdata()) != list(plain.getdata())
    # the hook is removed afterwards: the next plain edit is the plain one again
    assert list(edit(tiny_pipe, [], inversion=start.inversion)[0].getdata()) == list(plain.getdata())


def test_hspace_scale_zero_is_the_unedited_sample_and_a_wrong_shape_is_named(tiny_pipe):
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = denoise(tiny_pipe, latents_T=latents, num_inference_steps=3)
    direction = torch.randn(64, 8, 8)
    with hspace_edit(tiny_pipe, direction, scale=0.0):
        assert torch.equal(denoise(tiny_pipe, latents_T=latents, num_inference_steps=3), plain)
    with hspace_edit(tiny_pipe, direction, scale=2.0):
        edited = denoise(tiny_pipe, latents_T=latents, num_inference_steps=3)
    assert not torch.equal(edited, plain)
    with hspace_edit(tiny_pipe, direction, scale=2.0, window=(0.0, 0.0)):  # no step inside: no change
        assert torch.equal(denoise(tiny_pipe, latents_T=latents, num_inference_steps=3), plain)
    with pytest.raises(ValueError, match="middle block outputs"):
        with hspace_edit(tiny_pipe, torch.randn(32, 8, 8), scale=1.0):
            denoise(tiny_pipe, latents_T=latents, num_inference_steps=2)


def test_mid_block_output_is_the_full_calls_h_with_gradients_and_skips_the_up_blocks(tiny_pipe):
    unet = tiny_pipe.unet
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    seen = []
    raw = unet.mid_block.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        unet(x, 600, encoder_hidden_states=cond)
    finally:
        raw.remove()
    up_calls = []
    counter = unet.up_blocks[0].register_forward_hook(lambda m, i, o: up_calls.append(1))
    try:
        h = mid_block_output(unet, x, 600, cond)
    finally:
        counter.remove()
    assert len(seen) == 1 and torch.equal(h.detach(), seen[0]) and not up_calls
    h.square().sum().backward()  # the prompt reaches h through the down and middle blocks' cross-attention
    assert cond.grad is not None and cond.grad.abs().sum() > 0
    assert not unet.mid_block._forward_hooks  # its hook is gone, so the next call runs whole
    assert unet(x, 600, encoder_hidden_states=cond).sample.shape == x.shape
    with pytest.raises(RuntimeError):            # a call that fails on the way: the hook is removed all the same
        mid_block_output(unet, x, 600, torch.randn(2, 16, 7))
    assert not unet.mid_block._forward_hooks
    headless = type("Headless", (), {"mid_block": None})()
    with pytest.raises(ValueError, match="has no middle block .* use edit_space='eps'"):
        mid_block_output(headless, x, 600, cond)


def test_hspace_directions_are_principal_components(tiny_pipe):
    images, _ = balanced_start_images("face", 6, seed=0, size=32)
    latents = encode_images(tiny_pipe, images)
    h = collect_hspace(tiny_pipe, latents, [700, 200], seed=3)
    assert h.shape == (2, 6, 64, 8, 8)
    d = hspace_directions(tiny_pipe, latents, 3, [700, 200], seed=3)
    assert d.shape == (3, 64, 8, 8)
    flat = d.reshape(3, -1).double()
    norms = flat.norm(dim=1)
    assert torch.allclose(norms, norms[0].expand(3), rtol=1e-5)  # all scaled to the same typical norm
    unit = flat / norms[:, None]
    assert torch.allclose(unit @ unit.T, torch.eye(3, dtype=torch.float64), atol=1e-5)  # orthonormal
    centred = (h - h.mean(1, keepdim=True)).reshape(12, -1).double()
    variance = (centred @ unit.T).pow(2).sum(0)
    assert variance[0] >= variance[1] >= variance[2]  # strongest first
    assert torch.equal(hspace_directions(tiny_pipe, latents, 3, [700, 200], seed=3), d)  # seeded
    with pytest.raises(ValueError, match="principal components"):
        hspace_directions(tiny_pipe, latents, 11, [700, 200])


# ----------------------------------------------------------------------------- the scoring adapter
def test_the_render_adapter_scores_a_token_direction_like_metrics_score_direction(tiny_pipe):
    images, _ = balanced_start_images("face", 2, seed=0, size=32)
    start = prepare_start(tiny_pipe, images, num_inference_steps=2)
    directions = Directions.create(tiny_pipe, 2, prefix="adapt", seed=1)
    oracle = StatsOracle()
    kwargs = dict(target_change=0.02, calibration_images=1, max_scale=4.0, calibration_iters=2)
    expected = score_direction(tiny_pipe, oracle, directions, 1, start, "face", **kwargs)
    got = quality.score_rendered(lambda s, st: quality.render(tiny_pipe, directions, 1, s, st, (1.0, 0.0)), oracle,
                                 start, "face", expected.name, expected.token, **kwargs)
    assert got == expected and got.calibrated


# ----------------------------------------------------------------------------- the benchmark end to end
def test_quality_benchmark_end_to_end_on_the_tiny_pipeline_with_resume(tiny_pipe, tmp_path):
    # two domains so that the face+cat scene interference runs too; one bisection-free
    # calibration per direction keeps it fast (calibration itself is tested above and in test_metrics)
    settings = tiny_settings(Path(quality.DEFAULT_SAMPLES), domains=["face", "cat"], calibration_iters=0)
    logged = []
    report = quality.run_benchmark(tiny_pipe, StatsOracle(), settings, tmp_path, resume=True, progress=False,
                                   log=logged.append)
    md, data = (tmp_path / "quality.md").read_text(), quality.read_report(tmp_path / "quality.json.gz")
    # the protocol line says how the scale was searched (plain halving here: min_scale 0)
    assert (f"token and text scales searched in [0, {settings.max_scale:g}], "
            f"h-space in [0, {settings.hspace_max_scale:g}]") in md
    for method in quality.METHODS:
        assert f"| {method} | face |" in md and f"| {method} | cat |" in md and f"| {method} | all |" in md
        for domain in ("face", "cat"):
            runs = data["domains"][domain]["runs"][method]
            assert len(runs) == 1 and len(runs[0]["scores"]) == (4 if method == "text" else 2)
            assert all(s["calibrated"] for s in runs[0]["scores"])
    assert data["domains"]["face"]["runs"]["text"][0]["seed"] is None  # deterministic: one run
    # the stand-in oracle always says "face" (uniform domain logits): face edits stay, cat edits leave
    kept = {d: data["domains"][d]["table"][0]["mean_domain_kept"][0] for d in ("face", "cat")}
    assert kept == {"face": 1.0, "cat": 0.0} and "stays in domain" in md
    assert data["overall"][0]["mean_domain_kept"][0] == 0.5
    # purity over the directions that reached the target: pooled over every domain and seed
    for row in data["overall"]:
        pooled = [s for d in ("face", "cat") for r in data["domains"][d]["runs"][row["method"]] for s in r["scores"]]
        reached = [s["purity"] for s in pooled if not s["saturated"]]
        assert row["saturated"] == len(pooled) - len(reached)
        assert row["purity_reached"] == (pytest.approx(sum(reached) / len(reached)) if reached else None)
    assert "purity of unsaturated" in md
    assert set(data["comparisons"]["cat"]) >= {"coverage_margin_over_random", "text_purity_share", "clear_margin",
                                               "text_coverage_margin_over_random", "text_clear_margin",
                                               "text_coverage_margin_over_sized_random", "text_sized_clear_margin"}
    assert [b["bar"] for b in data["bars"]][:3] == ["coverage of all attributes", "mean purity",
                                                    "purity as a share of the text ceiling's"]
    assert set(data["interference"]) == set(quality.METHODS)
    assert 0.0 <= data["interference"]["NoiseCLR"]["leak"][0] <= 1.0
    for heading in ("## Overall", "## Bars", "## Where NoiseCLR loses", "## Cross-domain interference",
                    "## Wall time per stage", "## Settings", "![face"):
        assert heading in md
    assert "face: train NoiseCLR seed 0" in data["seconds"] and "cat: score h-space seed 0" in data["seconds"]
    from PIL import Image

    for domain in ("face", "cat"):
        with Image.open(tmp_path / f"quality_{domain}.png") as figure:  # 2 images x 3 scales, >= 5 method rows
            assert figure.width > 6 * 80 and figure.height > 5 * 80
            assert figure.mode == "P"                                       # a small palette PNG
    assert report["overall"][0]["method"] == "NoiseCLR" and logged
    sweep = quality.sweep_table(tmp_path)
    assert data["weights"] == quality.cache_key(tiny_pipe, StatsOracle())  # which weights the numbers describe
    assert f"weights {data['weights']}" in md
    assert f"| quality | {data['weights']} | face, cat | 1 | 2 | 2 | 0.01 | {settings.tau:g} |" in sweep  # ... lr, tau
    # the images it trained on (the shipped sample folder, its first train_images), then the
    # anchors, init and strength-weight columns
    assert (f"| {list(settings.timestep_range)} | {settings.batch_size} | "
            f"data/samples[:{settings.train_images}] | one | random | 0 |") in sweep
    assert f"| one | random | 0 | signed | [0, {settings.max_scale:g}] | " in sweep  # negatives, calibration bracket
    # and the pixel change it calibrates to, on how many images
    assert (f"| [0, {settings.max_scale:g}] | {settings.target_change:g} on {settings.calibration_images} | "
            f"{settings.window[0]:g}:{settings.window[1]:g} | ") in sweep      # the edit window
    nclr = data["overall"][0]
    assert f"| {nclr['saturated']} of {nclr['directions']} | " in sweep                 # one seed
    assert (tmp_path / "quality-sweep.md").exists()
    # the tau column is read from each report, not assumed: a report at another temperature shows it
    data["settings"]["tau"] = 0.125
    (tmp_path / "quality-tau.json").write_text(json.dumps(data))
    sweep_with_tau = quality.sweep_table(tmp_path)
    assert f"| quality-tau | {data['weights']} | face, cat | 1 | 2 | 2 | 0.01 | 0.125 |" in sweep_with_tau
    header, separator = sweep_with_tau.splitlines()[4:6]
    assert header.count(" | ") + 1 == separator.count("---|")                  # one separator per column

    # --resume: every finished unit is read back, nothing is trained or scored again
    folders = sorted((tmp_path / "cache").iterdir())  # scores, then trained-<training key>
    assert [f.name for f in folders] == [settings.fingerprint(data["weights"]),
                                         f"trained-{settings.training_fingerprint(data['weights'])}"]
    cache, trained = folders
    assert (trained / "face_NoiseCLR_seed0.safetensors").exists()
    assert (trained / "cat_h-space_seed0.safetensors").exists()
    assert (cache / "scene2_NoiseCLR_seed0.json").exists() and (cache / "face_NoiseCLR_seed0.json").exists()
    # an interrupted unit: trained directions saved, scores not yet -> scored, not retrained
    (cache / "cat_InfoNCE_seed0.json").unlink()
    resumed = quality.run_benchmark(tiny_pipe, StatsOracle(), dataclasses.replace(settings, domains=["cat"]),
                                    tmp_path, tag="resumed", resume=True, progress=False, log=lambda _: None)
    assert list(resumed["seconds"]) == ["cat: start images + inversion", "cat: score InfoNCE seed 0", "cat: figure"]
    assert resumed["domains"]["cat"]["table"] == report["domains"]["cat"]["table"]
    assert (tmp_path / "quality-resumed.md").exists() and (tmp_path / "quality-resumed_cat.png").exists()
    cached = {m: runs[0]["cached"] for m, runs in resumed["domains"]["cat"]["runs"].items()}
    assert cached == {m: m != "InfoNCE" for m in quality.METHODS}
    # scores whose directions file is gone are scored again (a random set is drawn again, the same one)
    (trained / "cat_random_seed0.safetensors").unlink()
    redrawn = quality.run_benchmark(tiny_pipe, StatsOracle(), dataclasses.replace(settings, domains=["cat"]),
                                    tmp_path, tag="redrawn", resume=True, progress=False, log=lambda _: None)
    assert [stage for stage in redrawn["seconds"] if "score" in stage] == ["cat: score random seed 0"]
    assert redrawn["domains"]["cat"]["table"] == report["domains"]["cat"]["table"]
    assert (trained / "cat_random_seed0.safetensors").exists()

    # a sweep-style run of fewer methods shares the cache (methods are not part of its key) and
    # reports only what it ran, the scene part included
    few = dataclasses.replace(settings, methods=quality.REQUIRED_METHODS)
    assert few.fingerprint("w") == settings.fingerprint("w")
    subset = quality.run_benchmark(tiny_pipe, StatsOracle(), few, tmp_path, tag="few", resume=True, progress=False,
                                   log=lambda _: None)
    assert set(subset["domains"]["face"]["runs"]) == set(quality.REQUIRED_METHODS) == set(subset["interference"])
    assert [r["method"] for r in subset["overall"]] == quality.REQUIRED_METHODS
    assert all(runs[0]["cached"] for runs in subset["domains"]["face"]["runs"].values())

    # a new protocol (a log-spaced calibration bracket) scores the same trained directions again: nothing retrains
    logged = dataclasses.replace(settings, domains=["cat"], interference=False, min_scale=0.25)
    rescored = quality.run_benchmark(tiny_pipe, StatsOracle(), logged, tmp_path, tag="logged", resume=True,
                                     progress=False, log=lambda _: None)
    assert not any("train" in stage or "PCA" in stage for stage in rescored["seconds"])
    assert sum("score" in stage for stage in rescored["seconds"]) == len(quality.METHODS)
    assert not any(runs[0]["cached"] for runs in rescored["domains"]["cat"]["runs"].values())
    assert len(list((tmp_path / "cache").iterdir())) == 3                         # two scores keys, one trained key

    # another phrase set for the words shares every other method's scores: only text is scored again,
    # into a unit of its own, and the default words' unit is left as it was
    captions = dataclasses.replace(settings, text_phrases="caption")
    assert captions.fingerprint("w") == settings.fingerprint("w")
    scene_words = f"scene{settings.interference_images}_text_seedNone.json"
    default_words = [(cache / name).read_text() for name in ("cat_text_seedNone.json", scene_words)]
    worded = quality.run_benchmark(tiny_pipe, StatsOracle(), captions, tmp_path, tag="captions", resume=True,
                                   progress=False, log=lambda _: None)
    assert [stage for stage in worded["seconds"] if "score" in stage] == ["face: score text", "cat: score text"]
    assert not any(method in stage for stage in worded["seconds"] for method in quality.METHODS if method != "text")
    assert (cache / "cat_text-caption_seedNone.json").exists()
    assert (cache / f"scene{settings.interference_images}_text-caption_seedNone.json").exists()   # the scenes too
    assert [(cache / name).read_text() for name in ("cat_text_seedNone.json", scene_words)] == default_words
    caption_tokens = [s["token"] for s in worded["domains"]["cat"]["runs"]["text"][0]["scores"]]
    assert caption_tokens == ["a cat, orange fur", "a cat, striped", "a cat, pointy ears", "a cat, green eyes"]

    # tokens trained in the captions' context are other directions: new keys for both the trained
    # directions and the scores; NoiseCLR, InfoNCE and the random floor all live in "a cat, {}"
    placed = dataclasses.replace(settings, domains=["cat"], interference=False, context="caption")
    assert placed.training_fingerprint("w") != settings.training_fingerprint("w")
    assert placed.fingerprint("w") != settings.fingerprint("w")
    in_context = quality.run_benchmark(tiny_pipe, StatsOracle(), placed, tmp_path, tag="context", resume=True,
                                       progress=False, log=lambda _: None)
    assert {"cat: train NoiseCLR seed 0", "cat: train InfoNCE seed 0"} <= set(in_context["seconds"])
    [placed_trained] = set((tmp_path / "cache").glob("trained-*")) - {trained}
    for method in ("NoiseCLR", "InfoNCE", "random"):
        placed_set = Directions.load(placed_trained / f"cat_{method}_seed0.safetensors")
        assert placed_set.context == "a cat, {}" and placed_set.reference_prompt == "a cat"
    assert Directions.load(trained / "cat_NoiseCLR_seed0.safetensors").context == "{}"   # left as it was
    assert "the prompt \"a cat, <token>\"" in (tmp_path / "quality-context.md").read_text()   # its own domain


def test_merging_two_reports_of_different_seeds_gives_the_tables_of_one_run_of_both(tiny_pipe, tmp_path):
    settings = tiny_settings(Path(quality.DEFAULT_SAMPLES), domains=["face", "cat"], calibration_iters=0,
                             methods=quality.REQUIRED_METHODS)
    quiet = dict(resume=True, progress=False, log=lambda _: None)
    for seed in (0, 1):
        quality.run_benchmark(tiny_pipe, StatsOracle(), dataclasses.replace(settings, seeds=[seed]), tmp_path,
                              tag=f"seed{seed}", **quiet)
    # both seeds in one run, read back from the cache the two runs filled
    together = quality.run_benchmark(tiny_pipe, StatsOracle(), dataclasses.replace(settings, seeds=[0, 1]),
                                     tmp_path, tag="together", **quiet)
    # by tag and by path, in either order: seeds are sorted as one run orders them
    merged = quality.main(["--merge", "seed1", str(tmp_path / "quality-seed0.json.gz"), "--out", str(tmp_path),
                           "--tag", "merged"])
    together, merged = (json.loads(json.dumps(r, default=list)) for r in (together, merged))  # tuples as lists
    for key in ("overall", "comparisons", "bars", "losses", "interference"):
        assert merged[key] == together[key], key
    for domain in ("face", "cat"):
        assert merged["domains"][domain]["table"] == together["domains"][domain]["table"]
        assert merged["domains"][domain]["figure"] == f"quality-seed0_{domain}.png"
        assert [r["seed"] for r in merged["domains"][domain]["runs"]["NoiseCLR"]] == [0, 1]
        assert len(merged["domains"][domain]["runs"]["text"]) == 1
    assert merged["settings"]["seeds"] == [0, 1] and merged["overall"][0]["runs"] == 2
    md = (tmp_path / "quality-merged.md").read_text()
    assert "Pooled" in md and "`quality-seed0` (seeds [0]" in md and "`quality-seed1` (seeds [1]" in md
    assert "quality-seed1: face: train NoiseCLR seed 1" in merged["seconds"]
    # what cannot be pooled is refused with the setting, both values and the fix
    other = quality.read_report(tmp_path / "quality-seed1.json.gz")
    other["settings"]["steps"] = 7
    (tmp_path / "quality-steps7.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="has steps = 7 but .*quality-seed0.json.gz has 2: only one protocol"):
        quality.merge_reports(["seed0", "steps7"], tmp_path)
    with pytest.raises(SystemExit, match="seed 0 is in both .* leave one of the two reports out"):
        quality.merge_reports(["seed0", "together"], tmp_path)
    other = quality.read_report(tmp_path / "quality-seed1.json.gz")
    other["settings"]["domains"] = ["face"]
    (tmp_path / "quality-face.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="pooling adds seeds and methods, not domains"):
        quality.merge_reports(["seed0", "face"], tmp_path)
    # a report without the scene part pools, and the scenes are left out; an option the older report
    # predates reads as its default (here the calibration bracket's min_scale 0)
    other = quality.read_report(tmp_path / "quality-seed1.json.gz")
    other["interference"], other["settings"]["interference"] = None, False
    del other["settings"]["min_scale"]
    other["settings"]["hspace_max_scale"] = 9.0  # h-space did not run, so its bracket does not count
    (tmp_path / "quality-scenes.json").write_text(json.dumps(other))
    unscened = quality.merge_reports(["seed0", "scenes"], tmp_path, tag="unscened", log=lambda _: None)
    assert unscened["interference"] is None and unscened["settings"]["interference"] is False
    assert json.loads(json.dumps(unscened["overall"], default=list)) == merged["overall"]
    # text is deterministic and taken from the first report; a report whose text scores differ is named
    other = quality.read_report(tmp_path / "quality-seed1.json.gz")
    other["domains"]["cat"]["runs"]["text"][0]["summary"]["mean_purity"] += 0.5
    (tmp_path / "quality-text.json").write_text(json.dumps(other))
    said = []
    texted = quality.merge_reports(["seed0", "text"], tmp_path, tag="texted", log=said.append)
    assert texted["text_differs"] == ["quality-text (cat)"] and "differ" in said[0]
    assert "its scores differ in quality-text (cat)" in (tmp_path / "quality-texted.md").read_text()
    assert json.loads(json.dumps(texted["overall"], default=list)) == merged["overall"]
    with pytest.raises(SystemExit, match="no report 'absent'"):
        quality.merge_reports(["seed0", "absent"], tmp_path)
    with pytest.raises(SystemExit, match="needs two or more"):
        quality.merge_reports(["seed0"], tmp_path)


def test_a_peer_scored_later_merges_into_a_finished_report_as_one_run_of_every_method(tiny_pipe, tmp_path):
    settings = tiny_settings(Path(quality.DEFAULT_SAMPLES), domains=["face", "cat"], calibration_iters=0,
                             seeds=[0, 1], interference=False)
    quiet = dict(resume=True, progress=False, log=lambda _: None)
    full = dataclasses.replace(settings, methods=quality.REQUIRED_METHODS)
    quality.run_benchmark(tiny_pipe, StatsOracle(), full, tmp_path, tag="full", **quiet)
    peer = quality.run_benchmark(tiny_pipe, StatsOracle(), dataclasses.replace(settings, methods=["h-space"]),
                                 tmp_path, tag="peer", **quiet)
    # a report without NoiseCLR, random or text has its tables but no bars, and says what it is for
    assert peer["lacks"] == ["NoiseCLR", "random", "text"] and peer["bars"] == [] and peer["comparisons"] == {}
    assert [row["method"] for row in peer["overall"]] == ["h-space"]
    peer_md = (tmp_path / "quality-peer.md").read_text()
    assert "## A partial report" in peer_md and "## Bars" not in peer_md and "--merge FULL THIS" in peer_md
    # every unit read back from the cache the two runs filled: one run of all four methods
    together = quality.run_benchmark(tiny_pipe, StatsOracle(), dataclasses.replace(
        settings, methods=quality.REQUIRED_METHODS + ["h-space"]), tmp_path, tag="together", **quiet)
    merged = quality.merge_reports(["full", "peer"], tmp_path, tag="merged", log=lambda _: None)
    together, merged = (json.loads(json.dumps(r, default=list)) for r in (together, merged))
    assert merged["lacks"] == [] and merged["settings"]["methods"] == ["NoiseCLR", "random", "text", "h-space"]
    for key in ("overall", "comparisons", "bars", "losses"):
        assert merged[key] == together[key], key
    for domain in ("face", "cat"):
        assert merged["domains"][domain]["table"] == together["domains"][domain]["table"]
        assert merged["domains"][domain]["figure"] == f"quality-full_{domain}.png"  # the first report's
        assert [r["seed"] for r in merged["domains"][domain]["runs"]["h-space"]] == [0, 1]
    assert "methods h-space" in (tmp_path / "quality-merged.md").read_text()
    # the sweep table has a row for the full and merged reports, none for the partial one
    sweep = quality.sweep_table(tmp_path)
    assert "| quality-merged |" in sweep and "| quality-full |" in sweep and "quality-peer" not in sweep
    # a unit twice, or methods that would end with different seeds, are refused with the fix
    with pytest.raises(SystemExit, match="h-space seed 0 is in both .* each unit may be pooled once"):
        quality.merge_reports(["together", "peer"], tmp_path)
    quality.run_benchmark(tiny_pipe, StatsOracle(), dataclasses.replace(settings, methods=["h-space"], seeds=[0]),
                          tmp_path, tag="peer0", **quiet)
    with pytest.raises(SystemExit, match=r"different seeds \(NoiseCLR \[0, 1\]; random \[0, 1\]; h-space \[0\]\)"):
        quality.merge_reports(["full", "peer0"], tmp_path)
    # the h-space settings are compared between the reports that ran h-space only
    other = quality.read_report(tmp_path / "quality-peer.json.gz")
    other["settings"]["hspace_max_scale"] = 9.0
    (tmp_path / "quality-peer9.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="has hspace_max_scale = 9.0 but .*quality-together.json.gz has 1.0"):
        quality.merge_reports(["full", "together", "peer9"], tmp_path)
    assert quality.merge_reports(["full", "peer9"], tmp_path, log=lambda _: None)["settings"]["hspace_max_scale"] == 9.0


def test_merge_with_methods_pools_only_those_of_reports_that_ran_more(tiny_pipe, tmp_path):
    # seed 0 ran every method, seed 1 skipped the peers (as a settings sweep does): pooled whole they
    # would end with different seeds, pooled for NoiseCLR, random and text they are one run of both seeds
    settings = tiny_settings(Path(quality.DEFAULT_SAMPLES), domains=["face"], calibration_iters=0, interference=False)
    quiet = dict(resume=True, progress=False, log=lambda _: None)
    quality.run_benchmark(tiny_pipe, StatsOracle(), dataclasses.replace(
        settings, seeds=[0], methods=quality.REQUIRED_METHODS + ["h-space"]), tmp_path, tag="all0", **quiet)
    quality.run_benchmark(tiny_pipe, StatsOracle(), dataclasses.replace(
        settings, seeds=[1], methods=quality.REQUIRED_METHODS), tmp_path, tag="three1", **quiet)
    with pytest.raises(SystemExit, match=r"different seeds .*h-space \[0\]"):
        quality.merge_reports(["all0", "three1"], tmp_path)
    merged = quality.main(["--merge", "all0", "three1", "--methods", *quality.REQUIRED_METHODS,
                           "--out", str(tmp_path), "--tag", "three"])
    together = quality.run_benchmark(tiny_pipe, StatsOracle(), dataclasses.replace(
        settings, seeds=[0, 1], methods=quality.REQUIRED_METHODS), tmp_path, tag="together", **quiet)
    together, merged = (json.loads(json.dumps(r, default=list)) for r in (together, merged))
    assert merged["settings"]["methods"] == quality.REQUIRED_METHODS and merged["settings"]["seeds"] == [0, 1]
    assert set(merged["domains"]["face"]["runs"]) == set(quality.REQUIRED_METHODS)
    for key in ("overall", "comparisons", "bars"):
        assert merged[key] == together[key], key
    assert merged["domains"]["face"]["table"] == together["domains"]["face"]["table"]
    with pytest.raises(SystemExit, match="quality-three1.json.gz has none of --methods h-space"):
        quality.merge_reports(["all0", "three1"], tmp_path, methods=["h-space"])


def test_command_line_flags_and_quick_defaults():
    # both defaults calibrate in the log-spaced bracket the README's headline uses, not the [0, 16] of the
    # first reports (which saturated most directions and flattered NoiseCLR)
    quick = quality.settings_from_args(quality.parse_args(["--quick"]), "m")
    full = quality.settings_from_args(quality.parse_args([]), "m")
    for defaults in (quick, full):
        assert (defaults.min_scale, defaults.max_scale, defaults.hspace_min_scale, defaults.hspace_max_scale) == \
            (0.125, 256.0, 0.0625, 16.0)
    # and the bare command is the headline's protocol (K = 6, 150 steps, seeds 0-3, 8 images, 10 steps, 6
    # bisection steps on 2 images, 4 scenes), so it reproduces the README's table
    assert (full.num_directions, full.steps, full.seeds, full.eval_images, full.inference_steps,
            full.calibration_images, full.calibration_iters, full.interference_images, full.quick) == \
        (6, 150, [0, 1, 2, 3], 8, 10, 2, 6, 4, False)
    # the plain-halving bracket of the first reports, explicitly (the settings whose cache key predates it)
    args = quality.parse_args(["--quick", "--steps", "7", "--negatives", "all", "--domains", "face", "car",
                               "--min-scale", "0", "--hspace-min-scale", "0", "--max-scale", "16",
                               "--hspace-max-scale", "4"])
    settings = quality.settings_from_args(args, "some/model")
    assert (settings.min_scale, settings.max_scale) == (0.0, 16.0) == (quality.Settings().min_scale,
                                                                       quality.Settings().max_scale)
    assert settings.steps == 7 and settings.seeds == quality.QUICK["seeds"] and settings.negatives is None
    assert settings.eval_images == quality.QUICK["eval_images"] and settings.domains == ["face", "car"]
    assert full.fingerprint() != settings.fingerprint()
    # anchors: the official "one" leaves the key as it was before the option existed (old caches stay
    # valid); "all" trains other directions, so it is another key, and it reaches train_directions
    assert settings.anchors == "one"
    every = quality.settings_from_args(quality.parse_args(["--quick", "--steps", "7", "--negatives", "all",
                                                           "--domains", "face", "car", "--anchors", "all"]), "some/model")
    assert every.fingerprint() != dataclasses.replace(every, anchors="one").fingerprint()
    assert every.train_overrides("noiseclr", 0)["anchors"] == "all"
    # init likewise: "random" keeps the old key; "vocab" is another key and reaches train_directions
    assert settings.init == "random"
    vocab = dataclasses.replace(settings, init="vocab")
    assert vocab.fingerprint() != settings.fingerprint() and vocab.train_overrides("noiseclr", 0)["init"] == "vocab"
    assert quality.settings_from_args(quality.parse_args(["--init", "vocab"]), "m").init == "vocab"
    # and the strength term: 0 (the official loss) keeps the key
    assert settings.strength_weight == 0.0
    pushed = quality.settings_from_args(quality.parse_args(["--strength-weight", "0.25"]), "m")
    assert pushed.strength_weight == 0.25 and pushed.train_overrides("infonce", 1)["strength_weight"] == 0.25
    assert pushed.fingerprint() != dataclasses.replace(pushed, strength_weight=0.0).fingerprint()
    # the denoising-gain term likewise, and it changes the trained directions' key too
    assert settings.gain_weight == 0.0
    gained = quality.settings_from_args(quality.parse_args(["--gain-weight", "10"]), "m")
    assert gained.gain_weight == 10.0 and gained.train_overrides("noiseclr", 0)["gain_weight"] == 10.0
    plain = dataclasses.replace(gained, gain_weight=0.0)
    assert gained.fingerprint() != plain.fingerprint() and gained.training_fingerprint() != plain.training_fingerprint()
    assert quality._loss_options(dataclasses.asdict(gained)) == "official loss with denoising-gain term 10"
    # its share and sides: the defaults keep the keys the term had before they existed (commit cb4caff);
    # others change both keys, reach train_directions and are named
    term_alone = quality.Settings(model="m", samples="data/samples", gain_weight=10.0)
    assert (term_alone.training_fingerprint("w"), term_alone.fingerprint("w")) == ("14f8cb4458cd", "2d7babf1b5c5")
    shaped = quality.settings_from_args(quality.parse_args(["--gain-weight", "10", "--gain-top-share", "1",
                                                            "--gain-two-sided"]), "m")
    assert {k: shaped.train_overrides("noiseclr", 0)[k] for k in ("gain_top_share", "gain_two_sided")} == {
        "gain_top_share": 1.0, "gain_two_sided": True}
    for other in (dataclasses.replace(shaped, gain_top_share=0.25), dataclasses.replace(shaped, gain_two_sided=False)):
        assert other.fingerprint() != shaped.fingerprint()
        assert other.training_fingerprint() != shaped.training_fingerprint() != gained.training_fingerprint()
    assert quality._loss_options(dataclasses.asdict(shaped)) == (
        "official loss with denoising-gain term 10 (two-sided, on all the images)")
    assert quality._gain_words({"gain_weight": 10, "gain_top_share": 0.5}) == (
        ", gain term 10 (on the best 0.5 of the images)")
    assert quality._gain_words({"gain_weight": 0}) == ""
    # refused before the model loads, by train.check_config, with the option named by --help
    for argv, message in ((["--gain-two-sided"], "gain_two_sided=True, gain_top_share=0.25 with gain_weight=0"),
                          (["--gain-top-share", "0.5"], "gain_two_sided=False, gain_top_share=0.5 with gain_weight=0"),
                          (["--gain-weight", "1", "--gain-top-share", "1.5"], r"1.5; give the share.*\(0, 1\]"),
                          (["-k", "1"], "num_directions=1: the contrastive loss")):
        with pytest.raises(SystemExit, match=message):
            quality.main(argv)
    # without a trained method nothing is trained, so training's settings are not checked: the run
    # goes on to load the model
    def loading(*args, **kwargs):
        raise RuntimeError("loads")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("noiseclr_lite.models.load_pipeline", loading)
        with pytest.raises(RuntimeError, match="loads"):
            quality.main(["--methods", "text", "h-space", "-k", "1"])
    # sign-blind negatives and centred edits: off (the official loss) keeps both keys; on, both change
    # and reach train_directions
    for flag, option in (("--sign-blind-negatives", "sign_blind_negatives"), ("--center-edits", "center_edits")):
        on = quality.settings_from_args(quality.parse_args([flag]), "m")
        assert getattr(settings, option) is False and getattr(on, option) is True
        assert on.train_overrides("noiseclr", 0)[option] is True
        off = dataclasses.replace(on, **{option: False})
        assert on.fingerprint() != off.fingerprint() and on.training_fingerprint() != off.training_fingerprint()
    centred = quality.settings_from_args(quality.parse_args(["--center-edits"]), "m")
    # and a report names the loss it trained with
    assert quality._loss_options(dataclasses.asdict(settings)) == "official loss"
    assert quality._loss_options(dataclasses.asdict(centred)) == "official loss with centred edits"
    assert quality._loss_options({"sign_blind_negatives": True, "center_edits": True, "strength_weight": 0.25}) == (
        "official loss with sign-blind negatives and centred edits and strength term 0.25")
    # what edits are compared in: eps (the official) keeps both keys; hspace changes both and reaches training
    assert settings.edit_space == "eps"
    in_hspace = quality.settings_from_args(quality.parse_args(["--edit-space", "hspace"]), "m")
    assert in_hspace.edit_space == "hspace" and in_hspace.train_overrides("noiseclr", 0)["edit_space"] == "hspace"
    in_eps = dataclasses.replace(in_hspace, edit_space="eps")
    assert in_hspace.fingerprint() != in_eps.fingerprint()
    assert in_hspace.training_fingerprint() != in_eps.training_fingerprint()
    assert quality._loss_options(dataclasses.asdict(in_hspace)) == "official loss with edits compared in h-space"
    # what is trained: the token rows (the official) keeps both keys; vocabulary mixtures change both
    assert settings.parameterization == "embedding"
    mixed = quality.settings_from_args(quality.parse_args(["--parameterization", "vocab-mixture"]), "m")
    assert mixed.train_overrides("noiseclr", 0)["parameterization"] == "vocab-mixture"
    rows = dataclasses.replace(mixed, parameterization="embedding")
    assert mixed.fingerprint() != rows.fingerprint() and mixed.training_fingerprint() != rows.training_fingerprint()
    assert quality._loss_options(dataclasses.asdict(mixed)) == (
        "official loss with directions trained as vocabulary mixtures")
    # the prompt context: "alone" (the official) keeps both keys; "caption" changes both
    assert settings.context == "alone"
    placed = quality.settings_from_args(quality.parse_args(["--context", "caption"]), "m")
    assert placed.context == "caption"
    alone = dataclasses.replace(placed, context="alone")
    assert placed.fingerprint() != alone.fingerprint() and placed.training_fingerprint() != alone.training_fingerprint()
    # the log-spaced calibration bracket: a protocol setting, so a new scores key but the same trained directions
    assert settings.min_scale == 0.0 and settings.hspace_min_scale == 0.0
    logged = quality.settings_from_args(quality.parse_args(["--quick", "--steps", "7", "--negatives", "all",
                                                            "--domains", "face", "car", "--min-scale", "0.25",
                                                            "--hspace-min-scale", "0.1", "--max-scale", "16",
                                                            "--hspace-max-scale", "4"]), "some/model")
    assert (logged.min_scale, logged.hspace_min_scale) == (0.25, 0.1)
    assert logged.fingerprint() != settings.fingerprint()
    assert logged.training_fingerprint() == settings.training_fingerprint() != vocab.training_fingerprint()
    legacy = {k: v for k, v in dataclasses.asdict(settings).items()
              if k not in ("anchors", "init", "strength_weight", "gain_weight", "gain_top_share", "gain_two_sided",
                           "min_scale", "hspace_min_scale",
                           "sign_blind_negatives", "context", "center_edits", "edit_space",
                           "parameterization")}
    legacy_key = hashlib.sha256(json.dumps({**{k: v for k, v in legacy.items() if k not in
                                               {"domains", "seeds", "methods", "interference", "grid_images",
                                                "interference_images", "quick"}}, "weights": ""},
                                           sort_keys=True, default=list).encode()).hexdigest()[:12]
    assert settings.fingerprint() == legacy_key
    # the trained directions' key of the default settings, as the code before --edit-space computed it
    # (commit 9058d52): options that are off must keep every earlier trained cache
    assert quality.Settings(model="m", samples="data/samples").training_fingerprint("w") == "3d6f0f97af0a"
    assert quality.text_directions("cat").prompts == ["orange fur", "striped", "pointy ears", "green eyes"]
    assert len(quality.text_directions("car", "both").prompts) == 8
    captions = quality.text_directions("car", "caption")
    assert captions.prompts == ["a car, red", "a car, big wheels", "a car, hardtop", "a car, night"]
    assert captions.names == ["red", "big wheels", "hardtop", "night"]     # named by the attribute's phrase
    with pytest.raises(ValueError, match="one of positive, both, caption; got 'nouns'"):
        quality.text_directions("car", "nouns")
    assert quality.parse_args(["--text-phrases", "caption"]).text_phrases == "caption"
    assert quality.settings_from_args(quality.parse_args(["--methods", "text", "random", "NoiseCLR"]),
                                      "m").methods == ["NoiseCLR", "random", "text"]      # report order
    with pytest.raises(SystemExit, match="has random but not NoiseCLR; .* so add NoiseCLR"):
        quality.main(["--methods", "random", "text"])


def test_dtype_flag_picks_the_weights_dtype_and_the_report_says_where_the_model_ran(tiny_pipe, monkeypatch):
    # no flag: load_pipeline's default (float16 on a GPU); float32 keeps a GPU run comparable with the CPU's
    assert quality.parse_args([]).dtype is None
    assert quality.DTYPES[quality.parse_args(["--dtype", "float32"]).dtype] is torch.float32
    assert quality.DTYPES[quality.parse_args(["--dtype", "float16"]).dtype] is torch.float16
    with pytest.raises(SystemExit):
        quality.parse_args(["--dtype", "bfloat8"])
    assert quality.machine(tiny_pipe).endswith(f"; model on cpu in {str(tiny_pipe.unet.dtype)[len('torch.'):]}")
    assert "model on" not in quality.machine()
    # and main hands the dtype to load_pipeline (stopped there: nothing is run)
    import noiseclr_lite.models

    class Loaded(Exception):
        pass

    def fake_load(model, device=None, dtype=None):
        raise Loaded(dtype)

    monkeypatch.setattr(noiseclr_lite.models, "load_pipeline", fake_load)
    for flag, dtype in ((["--dtype", "float32"], torch.float32), ([], None)):
        with pytest.raises(Loaded) as loaded:
            quality.main(["--quick", "--domains", "face", *flag])
        assert loaded.value.args == (dtype,)


def test_processes_split_the_domains_and_write_the_report_of_one_process(tmp_path):
    """--processes 2 on the bundled model: two children, one domain each, then one report read back
    from the cache, with the tables a single process writes; the parts' own files are gone."""
    flags = ["--quick", "--resume", "--domains", "face", "cat", "--seeds", "0", "-k", "2", "--steps", "2",
             "--train-images", "4", "--eval-images", "2", "--inference-steps", "2", "--calibration-images", "1",
             "--calibration-iters", "1", "--grid-images", "1", "--methods", "NoiseCLR", "--no-interference",
             "--no-progress", "--threads", "1", "--tag", "t"]
    with pytest.raises(SystemExit, match="--processes 2 hands the units over through the cache; add --resume"):
        quality.main([f for f in flags if f != "--resume"] + ["--processes", "2"])
    with pytest.raises(SystemExit, match="--processes 0: give 1 .* or more"):
        quality.main(flags + ["--processes", "0"])
    split = quality.main(flags + ["--processes", "2", "--out", str(tmp_path / "split")])
    one = quality.main(flags + ["--out", str(tmp_path / "one")])
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == [
        "cache", "quality-t.json.gz", "quality-t.md", "quality-t_cat.png", "quality-t_face.png"]
    assert [k for k in split["seconds"] if "processes" in k] == ["2 processes: face | cat"]
    assert set(split["cached_seconds"]) == {"face: NoiseCLR seed 0", "cat: NoiseCLR seed 0"}  # trained by the parts
    for domain in ("face", "cat"):
        assert split["domains"][domain]["table"] == one["domains"][domain]["table"]
    assert split["settings"] == one["settings"]
    # one domain is not split: no child process, the report of one process at once
    alone = quality.main(flags + ["--domains", "face", "--processes", "2", "--out", str(tmp_path / "one")])
    assert not [k for k in alone["seconds"] if "processes" in k]
    assert alone["domains"]["face"]["table"] == one["domains"]["face"]["table"]
    # a part that fails is named, with its domains
    with pytest.raises(SystemExit, match=r"part 0 \(face\) exited with [1-9].*run the same command again"):
        quality.main(flags + ["--processes", "2", "--out", str(tmp_path / "bad"), "--samples", str(tmp_path)])


def test_the_sweep_table_names_the_training_images_of_each_report():
    shipped = {"samples": "/anywhere/repo/data/samples", "train_images": None}
    assert quality._training_images(shipped) == "data/samples"
    assert quality._training_images({**shipped, "train_images": 32}) == "data/samples[:32]"
    assert quality._training_images({"samples": "benchmarks/results/cache/samples256"}) == "samples256"
    assert quality._training_images({}) == "data/samples"  # reports from before the setting: the shipped folder


def test_the_cache_key_follows_the_weights_not_only_the_paths(tiny_pipe):
    """A retrained oracle (or model) saved in the same folder must not read back old scores."""
    from noiseclr_lite.toyworld.oracle import Oracle

    torch.manual_seed(0)
    oracle = Oracle(width=8)
    settings = quality.Settings()
    before = settings.fingerprint(quality.cache_key(tiny_pipe, oracle))
    assert settings.fingerprint(quality.cache_key(tiny_pipe, oracle)) == before          # deterministic
    with torch.no_grad():
        oracle.head[-1].bias.add_(1e-3)                                                   # the oracle retrained
    after_oracle = settings.fingerprint(quality.cache_key(tiny_pipe, oracle))
    assert after_oracle != before
    with torch.no_grad():
        tiny_pipe.vae.decoder.conv_out.bias.add_(1e-3)       # a fine-tuned decoder changes every decoded edit
    assert settings.fingerprint(quality.cache_key(tiny_pipe, oracle)) != after_oracle
    assert quality.cache_key(tiny_pipe, StatsOracle()) == quality.cache_key(tiny_pipe, StatsOracle())


def test_overall_table_means_over_domains_then_seeds_and_keeps_unmeasured_numbers_none():
    def run(domain, seed, purity, kept):
        summary = {"domain": domain, "directions": 2, "coverage": 0.5, "covered": ["a"], "mean_purity": purity,
                   "mean_strength": 0.3, "mean_off_target": 0.1, "mean_pixel_change": 0.05, "saturated": 0,
                   "mean_domain_kept": kept}
        return quality.MethodRun("NoiseCLR", domain, seed, None, [], summary)

    per_domain = {"face": {"NoiseCLR": [run("face", 0, 0.4, 1.0), run("face", 1, 0.6, 0.8)]},
                  "cat": {"NoiseCLR": [run("cat", 0, 0.8, 0.6), run("cat", 1, 1.0, None)]}}
    (row,) = quality.overall_table(per_domain)
    assert row["directions"] == 4 and row["runs"] == 2
    assert row["mean_purity"][0] == pytest.approx(0.7)                 # seeds 0.6 and 0.8
    assert row["mean_purity"][1] == pytest.approx(0.1414, abs=1e-4)
    assert row["mean_domain_kept"] is None                              # seed 1's cat score predates it
    assert row["covered"] == ["face.a", "cat.a"]


def test_matched_random_draws_the_training_init_at_the_trained_norm(tiny_pipe):
    trained = Directions.create(tiny_pipe, 3, prefix="face", seed=5)
    trained.embeddings = trained.embeddings * torch.tensor([[2.0], [3.0], [4.0]])
    for init in ("random", "vocab"):
        floor = quality.matched_random(tiny_pipe, trained, seed=1, prefix="face_random1", init=init)
        start = Directions.create(tiny_pipe, 3, prefix="x", init=init, seed=1).embeddings
        # the rows of the init the trained set started from (same seed and init), only rescaled
        assert torch.allclose(torch.nn.functional.cosine_similarity(floor.embeddings, start, dim=1), torch.ones(3))
        assert torch.allclose(floor.embeddings.norm(dim=1), trained.embeddings.norm(dim=1).mean().expand(3))
        assert floor.tokens == ["<face_random1_0>", "<face_random1_1>", "<face_random1_2>"]
        assert floor.context == "{}"
    # the floor is used in the trained set's prompt context
    placed = Directions.create(tiny_pipe, 3, prefix="face", seed=5, context="a face, {}")
    assert quality.matched_random(tiny_pipe, placed, seed=1, prefix="face_random1").context == "a face, {}"


def test_direction_context_puts_the_token_after_the_domains_noun():
    assert quality.direction_context("car") == "{}"
    assert quality.direction_context("car", "caption") == "a car, {}"
    assert quality.direction_context("face", "caption").format("<face_0>") == "a face, <face_0>"
    with pytest.raises(ValueError, match="context must be one of alone, caption; got 'prompt'"):
        quality.direction_context("car", "prompt")


def test_reports_are_written_compressed_and_read_either_way(tmp_path):
    report = {"settings": {"seeds": (0, 1), "tau": 0.1}, "overall": [{"method": "NoiseCLR", "mean_purity": [0.6, 0.01]}]}
    written = quality.write_report_json(report, tmp_path / "quality-a.json.gz")
    assert written.read_bytes()[:2] == b"\x1f\x8b"                              # gzip, not text
    assert quality.read_report(written) == {**report, "settings": {"seeds": [0, 1], "tau": 0.1}}  # tuples as lists
    again = quality.write_report_json(report, tmp_path / "quality-b.json.gz")
    assert again.read_bytes() == written.read_bytes()                           # same report, same bytes
    (tmp_path / "quality-old.json").write_text(json.dumps(report, indent=1, default=list))  # a report before 2026-12-05
    assert quality.read_report(tmp_path / "quality-old.json")["overall"] == report["overall"]
    assert [quality.report_stem(p) for p in ("quality-a.json.gz", tmp_path / "quality-old.json")] == ["quality-a",
                                                                                                      "quality-old"]
    # a tag finds either kind; a report kept both ways counts once, as its compressed file
    assert quality._find_report("old", tmp_path) == tmp_path / "quality-old.json"
    assert quality._find_report("a", tmp_path) == written
    quality.write_report_json(report, tmp_path / "quality-old.json.gz")
    assert quality._find_report("old", tmp_path) == tmp_path / "quality-old.json.gz"
    assert [p.name for p in quality._report_files(tmp_path)] == ["quality-a.json.gz", "quality-b.json.gz",
                                                                 "quality-old.json.gz"]
    (tmp_path / "quality-broken.json").write_text("{ not json")
    with pytest.raises(SystemExit, match="quality-broken.json is not a report"):
        quality.read_report(tmp_path / "quality-broken.json")
    (tmp_path / "quality-cut.json.gz").write_bytes(written.read_bytes()[:20])   # a write cut off half-way
    with pytest.raises(SystemExit, match="quality-cut.json.gz is not a report"):
        quality.read_report(tmp_path / "quality-cut.json.gz")
    with pytest.raises(SystemExit, match="^benchmarks/quality.py --merge: no report 'missing'.*quality-missing.json"):
        quality._find_report("missing", tmp_path)
    with pytest.raises(SystemExit, match="^benchmarks/ladder.py: no report 'missing'"):  # names the script run
        quality._find_report("missing", tmp_path, "benchmarks/ladder.py")


def test_reports_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    target = quality.write_atomically(tmp_path / "quality-x.md", "first")
    assert target.read_text() == "first" and quality.write_atomically(target, b"second").read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["quality-x.md"]                # no temporary file left
    assert target.stat().st_mode & 0o777 == 0o644

    def stopped(*_):                                                               # the run stops before the rename
        raise KeyboardInterrupt
    monkeypatch.setattr(quality.os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        quality.write_atomically(target, "third")
    assert target.read_text() == "second"                                          # the old file is whole
    assert [p.name for p in tmp_path.iterdir()] == ["quality-x.md"]                # and the half-written one gone
