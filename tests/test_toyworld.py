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
    cfg.unet_steps = 3
    train_world_model(cfg)  # resumes from the work folder at step 2
    assert json.loads((tmp_path / "model" / "training_state.json").read_text())["unet_step"] == 3
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
