"""The bundled world: renders, captions, tokenizer, the training script (2 steps), oracle, samples."""

import json
import random

import numpy as np
import pytest
import torch

from noiseclr_lite.toyworld.domains import (DOMAIN_NAMES, DOMAINS, caption, get_domain, render, render_batch,
                                            sample_labels, vocabulary)


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_every_attribute_value_changes_the_picture(domain):
    dom = DOMAINS[domain]
    assert len(dom.attributes) >= 4 and all(len(v) >= 2 for v in dom.attributes.values())
    base = {a: 0 for a in dom.attributes}
    reference = np.asarray(render(domain, base, seed=3)).astype(int)
    assert reference.shape == (64, 64, 3)
    for attribute in dom.attributes:
        changed = np.asarray(render(domain, {**base, attribute: 1}, seed=3)).astype(int)
        # bold enough to read at 64 px: a visible share of pixels moves by a clear amount
        moved = (np.abs(changed - reference).sum(-1) > 60).mean()
        assert moved > 0.008, f"{domain}.{attribute} changes only {moved:.3%} of the pixels"


@pytest.mark.parametrize("skin", [0, 1])
@pytest.mark.parametrize("domain,attribute", [("face", "expression"), ("scene", "face_expression")])
def test_smiling_and_frowning_differ_in_brightness_not_only_in_shape(domain, attribute, skin):
    # a VAE that downsamples 4x keeps a white blob against a dark one; it lost the
    # direction in which a 3-px arc curved in one face out of five
    base = {**sample_labels(domain, random.Random(0)), ("skin" if domain == "face" else "face_skin"): skin}
    smile = np.asarray(render(domain, {**base, attribute: 1}, seed=11)).astype(int)
    frown = np.asarray(render(domain, {**base, attribute: 0}, seed=11)).astype(int)
    changed = np.abs(smile - frown).sum(-1) > 60
    teeth = (smile.min(-1) > 200) & changed  # near-white pixels that only the smile has
    assert teeth.sum() >= (12 if domain == "face" else 4)
    assert not ((frown.min(-1) > 200) & changed).any()  # no white at all where the frown differs


def test_rendering_is_seeded_and_nuisance_is_not_an_attribute():
    a, labels_a = render_batch(10, seed=5)
    b, labels_b = render_batch(10, seed=5)
    assert np.array_equal(a, b) and labels_a == labels_b
    labels = sample_labels("face", random.Random(0))
    one, two = np.asarray(render("face", labels, seed=1)), np.asarray(render("face", labels, seed=2))
    assert not np.array_equal(one, two)  # same attributes, other background/position


def test_batches_are_balanced_over_attribute_values():
    _, labels = render_batch(1000, seed=0, domains=["cat"])
    for attribute in DOMAINS["cat"].attributes:
        share = np.mean([lab[attribute] for _, lab in labels])
        assert 0.4 < share < 0.6, (attribute, share)


def test_captions_name_the_domain_and_drop_attributes_and_whole_captions():
    labels = {"fur": 1, "stripes": 1, "ears": 1, "eyes": 0}
    assert caption("cat", labels) == "a cat, orange fur, striped, pointy ears, blue eyes"
    rng = random.Random(0)
    captions = [caption("cat", labels, rng) for _ in range(3000)]
    empty = sum(c == "" for c in captions) / len(captions)
    assert 0.08 < empty < 0.12
    kept = [c for c in captions if c]
    assert all(c.startswith("a cat") for c in kept)
    assert 0.6 < np.mean(["striped" in c for c in kept]) < 0.8  # 30% attribute dropout


def test_unknown_domain_error_lists_the_known_ones():
    with pytest.raises(ValueError, match="face"):
        get_domain("dog")
    with pytest.raises(ValueError, match="lack"):
        render("face", {"hair": 1}, seed=0)


def test_every_caption_word_is_one_token(tmp_path):
    from noiseclr_lite.toyworld.model import build_tokenizer

    tokenizer = build_tokenizer(tmp_path)
    for word in vocabulary():
        assert len(tokenizer.tokenize(word)) == 1, word
    ids = tokenizer("a face, smiling, blond hair").input_ids
    assert len(ids) == 2 + 7  # bos, "a face , smiling , blond hair" (7 tokens), eos
    assert tokenizer.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]  # unknown words still tokenize


def test_rendered_batches_do_not_depend_on_the_number_of_drawing_processes():
    from noiseclr_lite.toyworld.train_model import rendered_batches

    specs = [(5, 11), (3, 12), (5, 13), (2, 14)]
    alone = list(rendered_batches(specs, workers=0))
    pooled = list(rendered_batches(iter(specs), workers=2))  # a generator, as the VAE stage passes
    assert len(pooled) == len(specs)
    for (images_a, labels_a), (images_b, labels_b), (n, _) in zip(alone, pooled, specs):
        assert images_a.shape == (n, 64, 64, 3) and np.array_equal(images_a, images_b) and labels_a == labels_b


def test_reconstruction_psnr_reads_the_vae_through_its_latent_mode():
    from noiseclr_lite.toyworld.model import build_vae
    from noiseclr_lite.toyworld.train_model import psnr, reconstruction_psnr

    torch.manual_seed(0)
    vae = build_vae((16, 32, 64)).eval()
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = psnr(images, vae.decode(vae.encode(images).latent_dist.mode()).sample)
    assert reconstruction_psnr(vae, images) == pytest.approx(expected) and 0 < expected < 30
    assert psnr(images, images) == pytest.approx(10 * np.log10(4.0 / 1e-10))  # identical: the MSE floor


def test_resolve_device_names_the_fix_when_there_is_no_gpu():
    from noiseclr_lite.toyworld.train_model import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            resolve_device("cuda")


def test_world_training_stops_after_its_time_limit_exported_and_resumable(tmp_path):
    from noiseclr_lite.toyworld.train_model import WorldTrainingConfig, hardware, train_world_model

    cfg = WorldTrainingConfig(out_dir=str(tmp_path / "model"), work_dir=str(tmp_path / "work"),
                              vae_batch=4, num_images=12, unet_steps=50, unet_batch=2, checkpoint_every=1,
                              export_every=50, vae_eval_images=4, unet_widths=(32, 64, 64),
                              stop_after_minutes=1e-6,  # already over after the first UNet step
                              vae_steps=5, vae_max_minutes=1e-6)  # and the VAE stage after its first step
    train_world_model(cfg)
    state = json.loads((tmp_path / "model" / "training_state.json").read_text())
    assert state["unet_step"] == 1  # the limit stopped it long before step 50, and it exported anyway
    assert state["vae"]["steps"] == 1 and state["vae"]["held_out_psnr"] is not None
    card = (tmp_path / "model" / "README.md").read_text()
    assert f"held-out PSNR {state['vae']['held_out_psnr']} dB" in card
    train_world_model(cfg)  # resumes from the checkpoint written at the stop
    assert json.loads((tmp_path / "model" / "training_state.json").read_text())["unet_step"] == 2
    # the hand-over: an empty work folder continues from the exported folder, which keeps its VAE
    # record, and a change of hardware becomes a note (the card's wall time adds up every segment)
    state = json.loads((tmp_path / "model" / "training_state.json").read_text())
    state["hardware"] = "one NVIDIA H200 GPU"
    (tmp_path / "model" / "training_state.json").write_text(json.dumps(state))
    decoder = {"steps": 7, "batch": 4, "lr": 1e-4, "held_out_psnr": 31.5, "wall_seconds": 60}
    (tmp_path / "model" / "decoder_finetune.json").write_text(json.dumps(decoder))
    cfg.work_dir = str(tmp_path / "fresh-work")
    cfg.vae_lr = 1.0  # ignored: the VAE is loaded from the folder, and the record keeps the settings that made it
    train_world_model(cfg)
    state = json.loads((tmp_path / "model" / "training_state.json").read_text())
    assert state["unet_step"] == 3 and state["vae"]["steps"] == 1
    assert state["config"]["vae_lr"] == WorldTrainingConfig().vae_lr
    assert json.loads((tmp_path / "model" / "decoder_finetune.json").read_text()) == decoder
    assert "7 steps at batch 4, lr 0.0001 (L1 + MSE), held-out PSNR 31.50 dB" in (tmp_path / "model" / "README.md").read_text()
    assert state["hardware"] == hardware(torch.device("cpu")) and "CPU cores" in state["hardware"]
    assert state["notes"] == [{"unet_step": 2, "text": f"training moved from one NVIDIA H200 GPU to {state['hardware']}"}]


def test_world_training_script_runs_resumes_and_loads(tmp_path):
    from diffusers import StableDiffusionPipeline

    from noiseclr_lite.toyworld.train_model import WorldTrainingConfig, train_world_model

    cfg = WorldTrainingConfig(out_dir=str(tmp_path / "model"), work_dir=str(tmp_path / "work"), vae_steps=2,
                              vae_batch=4, num_images=32, unet_steps=2, unet_batch=4, checkpoint_every=1,
                              export_every=2, vae_eval_images=4, vae_widths=(16, 32, 64),
                              unet_widths=(32, 64, 64))
    train_world_model(cfg)
    state = json.loads((tmp_path / "model" / "training_state.json").read_text())
    assert state["unet_step"] == 2 and state["config"]["unet_batch"] == 4
    # a note on the run's history (e.g. a renderer change) survives later exports and reaches the card
    state["notes"] = [{"unet_step": 2, "text": "mouths redrawn"}]
    (tmp_path / "model" / "training_state.json").write_text(json.dumps(state))
    cfg.unet_steps = 3
    train_world_model(cfg)  # resumes from the work folder at step 2
    state = json.loads((tmp_path / "model" / "training_state.json").read_text())
    assert state["unet_step"] == 3 and state["notes"] == [{"unet_step": 2, "text": "mouths redrawn"}]
    assert "- at UNet step 2: mouths redrawn" in (tmp_path / "model" / "README.md").read_text()
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "model", local_files_only=True, dtype=torch.float32)
    image = pipe("a cat, striped", num_inference_steps=2, output_type="pt").images
    assert image.shape == (1, 3, 64, 64)
    assert pipe.vae.config.scaling_factor != 0.18215  # measured from the data, not SD's constant


def test_oracle_trains_saves_and_loads(tmp_path):
    from noiseclr_lite.toyworld.oracle import HEADS, Oracle, augment, label_targets, train_oracle

    card = train_oracle(tmp_path / "oracle", steps=3, batch=8, progress=False, held_out=50)
    assert set(card["held_out_renders"]) == {"domain"} | {f"{d}.{a}" for d, a in HEADS}
    oracle = Oracle.load(tmp_path / "oracle")
    images, labels = render_batch(4, seed=0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    probs = oracle.predict(x)
    assert probs["domain"].shape == (4, 5) and probs["attributes"].shape == (4, len(HEADS))
    assert torch.allclose(probs["domain"].sum(1), torch.ones(4))
    domain, values, mask = label_targets(labels)
    assert mask.sum(1).tolist() == [len(DOMAINS[d].attributes) for d, _ in labels]
    augmented = augment(x, torch.Generator().manual_seed(0))
    assert augmented.shape == x.shape and augmented.min() >= -1 and augmented.max() <= 1
    assert not torch.equal(augmented, x)
    with pytest.raises(FileNotFoundError, match="train-oracle"):
        Oracle.load(tmp_path / "missing")


def test_oracle_fine_tunes_from_an_earlier_one_and_its_card_keeps_the_chain(tmp_path):
    from noiseclr_lite.toyworld.oracle import Oracle, train_oracle

    train_oracle(tmp_path / "first", steps=2, batch=8, progress=False, held_out=20)
    first = Oracle.load(tmp_path / "first")
    card = train_oracle(tmp_path / "second", steps=2, batch=8, lr=1e-4, progress=False, held_out=20,
                        init=tmp_path / "first")
    assert card["init"] == str(tmp_path / "first")
    assert card["history"] == [{"steps": 2, "batch": 8, "lr": 2e-3, "seed": 0, "init": None}]
    second = Oracle.load(tmp_path / "second")
    # started from the first oracle's weights: close to them after two small steps, not random
    w1, w2 = first.head[-1].weight, second.head[-1].weight
    assert 0 < (w1 - w2).abs().max() < 0.05
    text = (tmp_path / "second" / "README.md").read_text()
    assert f"--init {tmp_path / 'first'}" in text and "from random weights" in text


def test_sample_folders_have_images_and_labels(tmp_path):
    from noiseclr_lite.data import list_images
    from noiseclr_lite.toyworld.samples import read_labels, write_sample_folders

    folders = write_sample_folders(tmp_path, per_domain=4, domains=["car", "scene"])
    for domain, folder in folders.items():
        assert len(list_images(folder)) == 4
        labels = read_labels(folder)
        assert set(labels) == {f"{i:04d}.png" for i in range(4)}
        assert set(next(iter(labels.values()))) == set(DOMAINS[domain].attributes)


def test_shipped_sample_folders_are_complete():
    from noiseclr_lite.data import list_images
    from noiseclr_lite.models import REPO_ROOT
    from noiseclr_lite.toyworld.samples import read_labels

    for domain in DOMAIN_NAMES:
        folder = REPO_ROOT / "data" / "samples" / domain
        assert len(list_images(folder)) >= 64
        assert len(read_labels(folder)) == len(list_images(folder))


def test_bars_report_pass_and_fail():
    from noiseclr_lite.toyworld.evaluate import Bar

    assert Bar("psnr", 31.0, 30.0).passed and not Bar("psnr", 29.0, 30.0).passed
    assert Bar("seconds", 2.0, 3.0, at_least=False).passed and "FAIL" in str(Bar("seconds", 4.0, 3.0, at_least=False))


def test_model_card_is_written_from_the_training_state_and_evaluation(tmp_path):
    from noiseclr_lite.toyworld.card import write_card
    from noiseclr_lite.toyworld.evaluate import Bar, save_evaluation
    from noiseclr_lite.toyworld.train_model import WorldTrainingConfig

    from dataclasses import asdict
    state = {"unet_step": 1234, "wall_seconds": 7200, "config": asdict(WorldTrainingConfig()), "hardware": "2 CPU cores"}
    (tmp_path / "training_state.json").write_text(json.dumps(state))
    card = write_card(tmp_path).read_text()
    assert "**1234**" in card and "2.00 h" in card and "Not measured yet" in card
    assert "python -m noiseclr_lite.toyworld train" in card and "--unet-batch 64" in card
    assert "of every batch at timesteps" not in card  # the default: uniform timesteps
    state["config"].update(high_noise_share=0.5, high_noise_from=800)
    (tmp_path / "training_state.json").write_text(json.dumps(state))
    card = write_card(tmp_path).read_text()
    assert "0.5 of every batch at timesteps >= 800" in card and "--high-noise-share 0.5" in card
    save_evaluation(str(tmp_path), [Bar("VAE reconstruction PSNR (dB)", 28.5, 30.0)], {"face.hair=blond hair": 0.9})
    card = write_card(tmp_path).read_text()
    assert "| VAE reconstruction PSNR (dB) | 28.5 | >= 30 | **FAIL** |" in card
    assert "face.hair=blond hair: 0.90" in card


def test_decoder_finetuning_keeps_the_latent_space(tmp_path):
    from diffusers import AutoencoderKL

    from noiseclr_lite.toyworld.model import build_vae
    from noiseclr_lite.toyworld.train_model import finetune_decoder

    torch.manual_seed(0)
    build_vae().save_pretrained(tmp_path / "model" / "vae")
    before = AutoencoderKL.from_pretrained(tmp_path / "model" / "vae")
    finetune_decoder(tmp_path / "model", tmp_path / "work", steps=2, batch=2, checkpoint_every=1)
    after = AutoencoderKL.from_pretrained(tmp_path / "model" / "vae", dtype=torch.float32)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(before.encode(x).latent_dist.mean, after.encode(x).latent_dist.mean, atol=1e-2)
        assert not torch.allclose(before.decoder.conv_out.weight, after.decoder.conv_out.weight.float())
    assert (tmp_path / "work" / "decoder_ckpt.pt").exists()
    record = json.loads((tmp_path / "model" / "decoder_finetune.json").read_text())
    assert record["steps"] == 2 and record["untimed_steps"] == 0 and record["held_out_psnr"] > 0
    finetune_decoder(tmp_path / "model", tmp_path / "work", steps=3, batch=2, checkpoint_every=1)  # resumes
    assert json.loads((tmp_path / "model" / "decoder_finetune.json").read_text())["steps"] == 3
    # a checkpoint from before wall time was recorded: its steps are reported as untimed
    legacy = torch.load(tmp_path / "work" / "decoder_ckpt.pt", weights_only=False)
    torch.save({k: v for k, v in legacy.items() if k not in ("wall", "untimed_steps")}, tmp_path / "work" / "decoder_ckpt.pt")
    finetune_decoder(tmp_path / "model", tmp_path / "work", steps=4, batch=2, checkpoint_every=1)
    assert json.loads((tmp_path / "model" / "decoder_finetune.json").read_text())["untimed_steps"] == 3

    from dataclasses import asdict

    from noiseclr_lite.toyworld.card import render_card
    from noiseclr_lite.toyworld.train_model import WorldTrainingConfig

    state = {"unet_step": 10, "wall_seconds": 60, "config": asdict(WorldTrainingConfig()), "hardware": "2 CPU cores"}
    (tmp_path / "model" / "training_state.json").write_text(json.dumps(state))
    card = render_card(tmp_path / "model")
    assert "finetune-decoder --steps 4 --batch 2" in card and "the first 3 were not timed" in card


def test_oracle_card_lists_every_head_against_its_bars(tmp_path):
    import json

    from noiseclr_lite.toyworld.oracle import write_oracle_card

    card = {"steps": 10, "batch": 4, "lr": 0.002, "seed": 0,
            "held_out_renders": {"domain": 1.0, "face.expression": 0.97, "face.hair": 0.99},
            "held_out_vae_reconstructions": {"domain": 1.0, "face.expression": 0.99, "face.hair": 0.94}}
    (tmp_path / "config.json").write_text(json.dumps({"width": 8, "card": card}))
    text = write_oracle_card(tmp_path).read_text()
    assert "| face.expression | 0.970 | 0.990 |" in text
    assert "**Below the bars:** face.expression, face.hair." in text    # 0.97 < 98% renders; 0.94 < 95% recon
    (tmp_path / "config.json").write_text(json.dumps({"width": 8}))
    with pytest.raises(ValueError, match="no training card"):
        write_oracle_card(tmp_path)


def test_offset_noise_moves_each_channel_mean_by_the_offset():
    from noiseclr_lite.toyworld.train_model import training_noise

    torch.manual_seed(0)
    latents = torch.zeros(512, 4, 16, 16)
    plain, offset = training_noise(latents, 0.0), training_noise(latents, 0.5)
    # a channel mean of plain noise over 256 values has std 1/16; the offset adds 0.5 in quadrature
    assert plain.mean((2, 3)).std() == pytest.approx(1 / 16, rel=0.1)
    assert offset.mean((2, 3)).std() == pytest.approx((0.5 ** 2 + 1 / 256) ** 0.5, rel=0.1)
    assert offset.shape == latents.shape and plain.std() == pytest.approx(1.0, rel=0.02)
    assert training_noise(latents.half(), 0.5).dtype == torch.float16   # not promoted by the offset


def test_a_fresh_optimizer_on_shipped_weights_warms_up_again():
    from noiseclr_lite.toyworld.train_model import warmup_lr

    assert warmup_lr(4e-4, 0, warmup_steps=500) == pytest.approx(4e-4 / 500)
    assert warmup_lr(4e-4, 6000, warm_from=0, warmup_steps=500) == 4e-4
    # taking over step-6000 weights with a new AdamW: its first step is a warm-up step again
    assert warmup_lr(4e-4, 6000, warm_from=6000, warmup_steps=50) == pytest.approx(4e-4 / 50)
    assert warmup_lr(4e-4, 6049, warm_from=6000, warmup_steps=50) == 4e-4


def test_training_timesteps_give_the_high_noise_levels_their_share():
    from noiseclr_lite.toyworld.train_model import training_timesteps

    torch.manual_seed(0)
    uniform = torch.cat([training_timesteps(32) for _ in range(200)])
    assert uniform.min() >= 0 and uniform.max() <= 999
    assert (uniform >= 700).float().mean() == pytest.approx(0.3, abs=0.03)
    biased = torch.stack([training_timesteps(32, high_noise_share=0.5, high_noise_from=700) for _ in range(200)])
    assert biased[:, :16].min() >= 700  # the first half of every batch is from the high range
    assert (biased[:, 16:] >= 700).float().mean() == pytest.approx(0.3, abs=0.03)  # the rest stays uniform
    assert biased.dtype == torch.int64
    with pytest.raises(ValueError, match="--high-noise-share"):
        training_timesteps(4, high_noise_share=1.5)


def test_widen_vae_keeps_its_latents_and_images_exactly():
    from noiseclr_lite.toyworld.model import build_vae
    from noiseclr_lite.toyworld.widen import copy_index, widen_vae

    torch.manual_seed(0)
    vae = build_vae((16, 32, 32)).eval()
    wide = widen_vae(vae, (32, 64, 64)).eval()
    assert tuple(wide.config.block_out_channels) == (32, 64, 64)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.mean
        assert torch.allclose(wide.encode(x).latent_dist.mean, latents, atol=1e-4)
        assert torch.allclose(wide.decode(latents).sample, vae.decode(latents).sample, atol=1e-4)
    # copies stay inside their old channel's GroupNorm group (16 groups: old group g -> new 2g, 2g+1)
    assert copy_index(32, 64, 16).tolist()[:8] == [0, 0, 1, 1, 2, 2, 3, 3]
    # the two copies of an input channel get unequal shares (so they can learn apart) that sum to the old weight
    old, new = vae.decoder.conv_out.weight, wide.decoder.conv_out.weight
    assert not torch.allclose(new[:, 0], new[:, 1])
    assert torch.allclose(new[:, 0] + new[:, 1], old[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        widen_vae(vae, (24, 64, 64))
    with pytest.raises(ValueError, match="levels"):
        widen_vae(vae, (32, 64))


def test_widened_decoder_finetune_is_recorded_after_the_one_it_continues(tmp_path):
    from diffusers import AutoencoderKL

    from noiseclr_lite.toyworld.card import _decoder_lines, _vae_widths
    from noiseclr_lite.toyworld.model import build_vae
    from noiseclr_lite.toyworld.train_model import finetune_decoder

    torch.manual_seed(0)
    build_vae((16, 32, 32)).save_pretrained(tmp_path / "model" / "vae")
    finetune_decoder(tmp_path / "model", tmp_path / "narrow", steps=1, batch=2, checkpoint_every=1)
    before = AutoencoderKL.from_pretrained(tmp_path / "model" / "vae", dtype=torch.float32)
    finetune_decoder(tmp_path / "model", tmp_path / "wide", steps=2, batch=2, checkpoint_every=1, widths=(32, 64, 64))
    after = AutoencoderKL.from_pretrained(tmp_path / "model" / "vae", dtype=torch.float32)
    assert tuple(after.config.block_out_channels) == (32, 64, 64)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():  # fp16 storage is the only difference in the latents
        assert torch.allclose(before.encode(x).latent_dist.mean, after.encode(x).latent_dist.mean, atol=1e-2)
    record = json.loads((tmp_path / "model" / "decoder_finetune.json").read_text())
    assert record["widened_from"] == [16, 32, 32] and record["widths"] == [32, 64, 64]
    assert record["previous"]["steps"] == 1 and record["previous"]["widened_from"] is None
    assert [step for step, _ in record["history"]] == [0, 1, 2]
    lines = _decoder_lines(tmp_path / "model")
    assert len(lines) == 2 and "--widths" not in lines[0]
    assert "widened from (16, 32, 32) to (32, 64, 64)" in lines[1] and "--widths 32 64 64" in lines[1]
    assert _vae_widths(tmp_path / "model", {"vae_widths": [16, 32, 32]}) == (32, 64, 64)
