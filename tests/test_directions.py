"""Directions: creation, installing only K rows, conditioning, files, compatibility, imports."""

import json
import random
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from noiseclr_lite.directions import (Directions, check_context, empty_conditioning, reference_prompt,
                                     textual_inversion_files, tokenizer_fingerprint)
from noiseclr_lite.testing import tiny_pipeline
from noiseclr_lite.toyworld.tokenizer import save_word_tokenizer


def prompt_embeds(pipe, prompt):
    """What StableDiffusionPipeline itself feeds the UNet for ``prompt`` (a string or a list; [B, L, H])."""
    return pipe.encode_prompt(prompt, "cpu", 1, False)[0]


def embedding_matrix(pipe):
    return pipe.text_encoder.get_input_embeddings().weight


def test_create_random_is_seeded_and_scaled(tiny_pipe):
    d = Directions.create(tiny_pipe, 5, prefix="face", seed=3)
    assert d.tokens == [f"<face_{k}>" for k in range(5)] and d.names == d.tokens
    assert d.embeddings.shape == (5, 32) and d.embeddings.dtype == torch.float32
    assert (d.num_directions, d.hidden_size) == (5, 32)
    assert torch.equal(d.embeddings, Directions.create(tiny_pipe, 5, prefix="face", seed=3).embeddings)
    assert not torch.allclose(d.embeddings, Directions.create(tiny_pipe, 5, prefix="face", seed=4).embeddings)
    typical = embedding_matrix(tiny_pipe).norm(dim=1).mean()
    assert 0.5 < d.embeddings.norm(dim=1).mean() / typical < 2.0
    assert d.metadata["hidden_size"] == 32 and d.metadata["seed"] == 3
    assert d.metadata["tokenizer_vocab_size"] == len(tiny_pipe.tokenizer)
    assert d.metadata["base_model"] is None  # built in code: no name to record
    assert Directions.create(tiny_pipe, 1, base_model="my/model").metadata["base_model"] == "my/model"


def test_create_from_word_starts_near_that_word(tiny_pipe):
    d = Directions.create(tiny_pipe, 3, init="smiling")
    word = embedding_matrix(tiny_pipe)[tiny_pipe.tokenizer.convert_tokens_to_ids("smiling</w>")]
    distance = (d.embeddings - word).norm(dim=1)
    assert (distance > 0).all() and (distance < 0.2 * word.norm()).all()
    assert not torch.allclose(d.embeddings[0], d.embeddings[1])
    with pytest.raises(ValueError, match="'smilingcat' is .* tokens"):
        Directions.create(tiny_pipe, 3, init="smilingcat")


def test_create_vocab_draws_from_the_vocabulary_statistics(tiny_pipe):
    rows = embedding_matrix(tiny_pipe).double()
    d = Directions.create(tiny_pipe, 4000, init="vocab", seed=0)
    drawn = d.embeddings.double()
    # the draws have the rows' mean and covariance (up to sampling error), not an isotropic spread
    assert (drawn.mean(0) - rows.mean(0)).norm() < 0.1 * rows.norm(dim=1).mean()
    covariance, drawn_covariance = torch.cov(rows.T), torch.cov(drawn.T)
    assert (drawn_covariance - covariance).norm() < 0.15 * covariance.norm()
    isotropic = Directions.create(tiny_pipe, 4000, seed=0).embeddings.double()
    assert (torch.cov(isotropic.T) - covariance).norm() > 3 * (drawn_covariance - covariance).norm()
    # seeded, and recorded
    assert torch.equal(d.embeddings[:3], Directions.create(tiny_pipe, 3, init="vocab", seed=0).embeddings)
    assert d.metadata["init"] == "vocab"


def test_create_ignores_direction_tokens_installed_earlier(tiny_pipe):
    # a notebook that installs a trained set and then trains another must start it as a fresh process would
    fresh = {init: Directions.create(tiny_pipe, 3, init=init, seed=1).embeddings for init in ("random", "vocab")}
    installed = Directions.create(tiny_pipe, 4, prefix="old", seed=2)
    installed.embeddings = installed.embeddings * 10
    installed.install(tiny_pipe)
    for init, embeddings in fresh.items():
        assert torch.equal(Directions.create(tiny_pipe, 3, init=init, seed=1).embeddings, embeddings)


def test_index_accepts_int_token_and_name(tiny_pipe):
    d = Directions.create(tiny_pipe, 3, prefix="cat")
    d.names[2] = "ears"
    assert [d.index(1), d.index(-1), d.index("<cat_1>"), d.index("ears")] == [1, 2, 1, 2]
    with pytest.raises(KeyError, match="<cat_0>.*ears"):
        d.index("tail")
    with pytest.raises(KeyError):
        d.index(3)


def test_install_changes_only_the_k_rows_and_is_idempotent(tiny_pipe):
    tokenizer = tiny_pipe.tokenizer
    before, n = embedding_matrix(tiny_pipe).clone(), len(tiny_pipe.tokenizer)
    d = Directions.create(tiny_pipe, 4, prefix="face")
    ids = d.install(tiny_pipe)
    after = embedding_matrix(tiny_pipe)
    assert ids == list(range(n, n + 4)) and after.shape == (n + 4, 32) and len(tokenizer) == n + 4
    assert torch.equal(after[:n], before)  # every old row bit-identical
    assert torch.equal(after[ids], d.embeddings)
    assert not after.requires_grad  # the frozen text encoder stays frozen
    for token, i in zip(d.tokens, ids):
        assert tokenizer(f"a {token} face", add_special_tokens=False).input_ids[1] == i

    assert d.install(tiny_pipe) == ids and len(tokenizer) == n + 4  # twice: nothing new
    other = Directions.create(tiny_pipe, 2, prefix="cat", seed=1)
    other_ids = other.install(tiny_pipe)
    assert other_ids == [n + 4, n + 5] and torch.equal(embedding_matrix(tiny_pipe)[ids], d.embeddings)

    replaced = Directions(d.embeddings + 1.0, d.tokens)  # same tokens, new values: overwritten
    snapshot = embedding_matrix(tiny_pipe).clone()
    assert replaced.install(tiny_pipe) == ids
    now = embedding_matrix(tiny_pipe)
    assert torch.equal(now[ids], d.embeddings + 1.0)
    keep = torch.ones(len(now), dtype=torch.bool)
    keep[ids] = False
    assert torch.equal(now[keep], snapshot[keep])


def test_a_set_refuses_a_repeated_token_and_names_it():
    with pytest.raises(ValueError, match=r"\['<d_1>'\] appear more than once"):
        Directions(torch.zeros(3, 32), ["<d_0>", "<d_1>", "<d_1>"])


def test_install_refuses_tokens_of_the_base_vocabulary(tiny_pipe):
    d = Directions(torch.zeros(1, 32), ["cat</w>"])
    before = embedding_matrix(tiny_pipe).clone()
    with pytest.raises(ValueError, match="base vocabulary"):
        d.install(tiny_pipe)
    assert torch.equal(embedding_matrix(tiny_pipe), before)


def test_conditioning_is_what_the_pipeline_encodes(tiny_pipe):
    d = Directions.create(tiny_pipe, 3)
    c = d.conditioning(tiny_pipe)  # installs the tokens on first use
    assert c.shape == (3, tiny_pipe.tokenizer.model_max_length, 32) and not c.requires_grad
    for k, token in enumerate(d.tokens):
        torch.testing.assert_close(c[k:k + 1], prompt_embeds(tiny_pipe, token), rtol=0, atol=1e-6)
    empty = empty_conditioning(tiny_pipe)
    assert empty.shape == (1, 16, 32)
    torch.testing.assert_close(empty, prompt_embeds(tiny_pipe, ""), rtol=0, atol=1e-6)
    assert not torch.allclose(c[0], empty[0])


def test_conditioning_in_a_context_is_the_token_in_that_prompt(tiny_pipe, tmp_path):
    alone = Directions.create(tiny_pipe, 3)
    d = Directions.create(tiny_pipe, 3, context="a face, {}")
    assert alone.context == "{}" and "context" not in alone.metadata  # the default is not written
    assert d.context == "a face, {}" and d.metadata["context"] == "a face, {}"
    c = d.conditioning(tiny_pipe)
    for k, token in enumerate(d.tokens):
        torch.testing.assert_close(c[k:k + 1], prompt_embeds(tiny_pipe, f"a face, {token}"), rtol=0, atol=1e-6)
    assert not torch.allclose(c, alone.conditioning(tiny_pipe))
    # its edits are measured from the context without the token
    assert alone.reference_prompt == "" and d.reference_prompt == "a face"
    torch.testing.assert_close(alone.reference_conditioning(tiny_pipe), empty_conditioning(tiny_pipe))
    torch.testing.assert_close(d.reference_conditioning(tiny_pipe), prompt_embeds(tiny_pipe, "a face"))
    # the context travels with the file, and trained rows read in it stay differentiable
    loaded = Directions.load(d.save(tmp_path / "faces.safetensors"))
    assert loaded.context == "a face, {}"
    torch.testing.assert_close(loaded.conditioning(tiny_pipe), c)
    rows = torch.nn.Parameter(d.embeddings.clone())
    d.conditioning(tiny_pipe, rows).sum().backward()
    assert rows.grad.abs().sum() > 0


@pytest.mark.parametrize("context, reference", [
    ("a car, {}", "a car"), ("{}", ""), ("{}, a car", "a car"), ("a {} face", "a face"),
    ("a  photo of {},  smiling", "a photo of, smiling"), (" {} ", "")])
def test_the_reference_is_the_context_without_the_token_and_its_comma(context, reference):
    assert reference_prompt(context) == reference


@pytest.mark.parametrize("context", ["a face", "{} and {}", "a {face}, {}", "}{}", 3])
def test_a_context_needs_exactly_one_slot_for_the_token(tiny_pipe, tmp_path, context):
    with pytest.raises(ValueError, match=r"exactly one '\{\}'.*got"):
        check_context(context)
    with pytest.raises(ValueError, match="Directions context"):
        Directions.create(tiny_pipe, 2, context=context)
    # a file with a broken context (edited by hand) names the file when it is read
    d = Directions.create(tiny_pipe, 2)
    d.metadata["context"] = context
    path = d.save(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=f"the context in {path}"):
        Directions.load(path)
    assert check_context("a face, {}") == "a face, {}" and check_context("{}") == "{}"


def test_a_context_that_cuts_the_token_off_is_refused_when_encoded(tiny_pipe):
    limit = tiny_pipe.tokenizer.model_max_length
    late = Directions.create(tiny_pipe, 2, context="a face " * limit + "{}")   # the token after the limit
    with pytest.raises(ValueError, match=f"too long for its tokens: the tokenizer keeps {limit} tokens"):
        late.conditioning(tiny_pipe)
    early = Directions.create(tiny_pipe, 2, context="{} " + "a face " * limit)  # cut after the token: fine
    assert early.conditioning(tiny_pipe).shape[0] == 2


def test_the_context_check_runs_once_per_context_not_once_per_encoding(tiny_pipe, monkeypatch):
    """Training encodes the K prompts every step; the length check tokenizes them too, so it must
    run only when the context, tokens or tokenizer change."""
    d = Directions.create(tiny_pipe, 2, context="a face, {}")
    d.conditioning(tiny_pipe)
    calls = []
    tokenize = type(tiny_pipe.tokenizer).__call__
    monkeypatch.setattr(type(tiny_pipe.tokenizer), "__call__",
                        lambda self, *args, **kwargs: calls.append(args) or tokenize(self, *args, **kwargs))
    d.conditioning(tiny_pipe)
    assert len(calls) == 1                                  # the encoding's own, no second for the check
    d.metadata["context"] = "a face " * tiny_pipe.tokenizer.model_max_length + "{}"
    with pytest.raises(ValueError, match="too long for its tokens"):
        d.conditioning(tiny_pipe)                           # a new context is checked again


def test_conditioning_from_float32_parameter_rows_keeps_fp16_weights_dtype(tiny_pipe):
    """Training passes its rows as a float32 nn.Parameter; the text encoder must still read as
    (and return) fp16, so the conditioning fits an fp16 UNet without autocast."""
    tiny_pipe.to(dtype=torch.float16)
    d = Directions.create(tiny_pipe, 3)
    rows = torch.nn.Parameter(d.embeddings.clone())
    out = d.conditioning(tiny_pipe, rows)
    assert out.dtype == torch.float16 and out.requires_grad
    out.float().sum().backward()
    assert rows.grad.dtype == torch.float32 and rows.grad.abs().sum() > 0


def test_conditioning_is_differentiable_in_the_given_rows_only(tiny_pipe):
    d = Directions.create(tiny_pipe, 3)
    d.install(tiny_pipe)
    weight_before = embedding_matrix(tiny_pipe).clone()
    module_before = tiny_pipe.text_encoder.get_input_embeddings()
    stored = d.conditioning(tiny_pipe)

    rows = d.embeddings.clone().requires_grad_(True)
    same = d.conditioning(tiny_pipe, rows)
    torch.testing.assert_close(same, stored, rtol=0, atol=1e-6)
    (same[1] * torch.randn_like(same[1])).sum().backward()
    assert rows.grad[1].abs().sum() > 0  # the gradient reaches the row it came from ...
    assert rows.grad[[0, 2]].abs().sum() == 0  # ... and no other
    assert all(p.grad is None for p in tiny_pipe.text_encoder.parameters())

    moved = d.embeddings.clone()
    moved[2] += 0.5
    out = d.conditioning(tiny_pipe, moved)
    assert torch.equal(out[:2], stored[:2]) and not torch.allclose(out[2], stored[2])
    # nothing inside the text encoder was changed or left behind
    assert tiny_pipe.text_encoder.get_input_embeddings() is module_before
    assert torch.equal(embedding_matrix(tiny_pipe), weight_before)
    with pytest.raises(ValueError, match=r"\(3, 32\)"):
        d.conditioning(tiny_pipe, torch.zeros(2, 32))


def test_save_load_roundtrip(tiny_pipe, tmp_path):
    d = Directions.create(tiny_pipe, 4, prefix="face", seed=7, base_model="toy/model")
    d.names[0] = "smile"
    d.metadata["training"] = {"steps": 10, "tau": 0.5}
    path = d.save(tmp_path / "sub" / "face.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["face.safetensors"]  # no temporary file left
    loaded = Directions.load(path)
    assert torch.equal(loaded.embeddings, d.embeddings)
    assert loaded.tokens == d.tokens and loaded.names == ["smile", "<face_1>", "<face_2>", "<face_3>"]
    assert loaded.metadata == d.metadata and loaded.metadata["training"]["tau"] == 0.5
    assert loaded.source == str(path)
    assert load_file(path)["embeddings"].shape == (4, 32)  # plain safetensors, readable by anyone


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        Directions.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ValueError, match="junk.safetensors is not a safetensors file"):
        Directions.load(junk)
    ti = tmp_path / "ti.safetensors"
    save_file({"<x>": torch.zeros(32)}, str(ti))
    with pytest.raises(ValueError, match="ti.safetensors is not a noiseclr_lite directions file.*textual-inversion"):
        Directions.load(ti)


def test_refuses_directions_for_another_model(tiny_pipe, tmp_path):
    d = Directions.create(tiny_pipe, 2, base_model="tiny-a")
    path = d.save(tmp_path / "a.safetensors")
    loaded = Directions.load(path)

    wide = CLIPTextModel(CLIPTextConfig(vocab_size=len(tiny_pipe.tokenizer), hidden_size=48, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=16))
    other = SimpleNamespace(tokenizer=tiny_pipe.tokenizer, text_encoder=wide, name_or_path="tiny-b")
    message = r"a\.safetensors were trained for hidden size 32 \(tiny-a\).* has 48 \(tiny-b\); load directions made"
    with pytest.raises(ValueError, match=message):
        loaded.install(other)
    assert len(tiny_pipe.tokenizer) == d.metadata["tokenizer_vocab_size"]  # refused before touching anything

    words = save_word_tokenizer(["dog", "tree", "house"], tmp_path / "other_tok", model_max_length=16)
    same_width = CLIPTextModel(CLIPTextConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=16))
    other = SimpleNamespace(tokenizer=words, text_encoder=same_width, name_or_path="tiny-c")
    with pytest.raises(ValueError, match=r"tokenizer of tiny-a .* \(tiny-c\) has a different tokenizer"):
        loaded.check_compatible(other)
    loaded.check_compatible(tiny_pipeline(seed=1, tokenizer_dir=tmp_path / "tok1"))  # same model family: fine


def test_fingerprint_ignores_added_tokens_and_survives_save(tiny_pipe, tmp_path):
    before = tokenizer_fingerprint(tiny_pipe.tokenizer)
    Directions.create(tiny_pipe, 3).install(tiny_pipe)
    assert tokenizer_fingerprint(tiny_pipe.tokenizer) == before
    tiny_pipe.tokenizer.save_pretrained(tmp_path / "saved")
    from transformers import CLIPTokenizer
    assert tokenizer_fingerprint(CLIPTokenizer.from_pretrained(tmp_path / "saved")) == before


def test_base_model_is_the_folder_of_a_loaded_pipeline(tiny_pipe_dir):
    from noiseclr_lite.models import load_pipeline

    pipe = load_pipeline(tiny_pipe_dir, device="cpu")
    assert Directions.create(pipe, 1).metadata["base_model"] == str(tiny_pipe_dir)


def test_textual_inversion_export_loads_into_a_fresh_pipeline(tiny_pipe, tmp_path):
    d = Directions.create(tiny_pipe, 3, prefix="face", seed=2)
    d.install(tiny_pipe)
    files = d.export_textual_inversion(tmp_path / "ti")
    assert files == textual_inversion_files(tmp_path / "ti") and len(files) == 3
    assert "<face_0>" in (tmp_path / "ti" / "README.md").read_text()
    for k, file in enumerate(files):
        content = load_file(file)
        assert list(content) == [d.tokens[k]] and torch.equal(content[d.tokens[k]], d.embeddings[k])

    fresh = tiny_pipeline(seed=0, tokenizer_dir=tmp_path / "fresh_tok")
    fresh.load_textual_inversion([str(f) for f in files], token=d.tokens, use_safetensors=True)
    ours, theirs = prompt_embeds(tiny_pipe, d.tokens), prompt_embeds(fresh, d.tokens)  # [3, L, H] each
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # one batched UNet call per pipeline: the same noise prediction
        eps_ours = tiny_pipe.unet(latents, 500, encoder_hidden_states=ours).sample
        eps_theirs = fresh.unet(latents, 500, encoder_hidden_states=theirs).sample
    torch.testing.assert_close(eps_theirs, eps_ours, rtol=0, atol=1e-5)
    torch.testing.assert_close(d.conditioning(fresh), d.conditioning(tiny_pipe), rtol=0, atol=1e-6)
    assert not torch.allclose(prompt_embeds(fresh, d.tokens[0]), prompt_embeds(fresh, d.tokens[1]))

    with pytest.raises(FileExistsError, match="000_face_0.safetensors"):
        Directions.create(tiny_pipe, 1, prefix="cat").export_textual_inversion(tmp_path / "ti")
    with pytest.raises(FileNotFoundError, match="empty"):
        textual_inversion_files(tmp_path / "empty")


def make_official_release(pipe, folder, k=12):
    """A folder in the official NoiseCLR layout: text_encoder/ + tokenizer/ with <t1>..<tk>."""
    tokens = [f"<t{i}>" for i in range(1, k + 1)]
    random.Random(0).shuffle(tokens)  # ids not in k order: the import must sort by k
    pipe.tokenizer.add_tokens(tokens)
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer), mean_resizing=False)
    rows = torch.randn(k, 32, generator=torch.Generator().manual_seed(5)) * 0.1
    weight = embedding_matrix(pipe)
    with torch.no_grad():
        for i in range(1, k + 1):
            weight[pipe.tokenizer.convert_tokens_to_ids(f"<t{i}>")] = rows[i - 1]
    pipe.text_encoder.save_pretrained(folder / "text_encoder")
    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    return rows


def test_from_official_reads_t1_to_tk_in_order(tiny_pipe, tmp_path):
    rows = make_official_release(tiny_pipe, tmp_path / "release")
    d = Directions.from_official(tmp_path / "release", base_model="tiny")
    assert d.tokens == [f"<t{i}>" for i in range(1, 13)]  # <t10> after <t9>, not after <t1>
    assert torch.equal(d.embeddings, rows)
    assert d.metadata["base_model"] == "tiny" and d.metadata["hidden_size"] == 32

    fresh = tiny_pipeline(seed=0, tokenizer_dir=tmp_path / "fresh_tok")
    assert d.metadata["tokenizer_fingerprint"] == tokenizer_fingerprint(fresh.tokenizer)[0]
    torch.testing.assert_close(d.conditioning(fresh)[2:3], prompt_embeds(tiny_pipe, "<t3>"), rtol=0, atol=1e-6)

    renamed = Directions.from_official(tmp_path / "release", prefix="face")
    assert renamed.tokens[:2] == ["<face_0>", "<face_1>"] and renamed.names[:2] == ["<t1>", "<t2>"]
    assert torch.equal(renamed.embeddings, rows)
    with pytest.raises(FileNotFoundError, match=r"nothing.*text_encoder"):
        Directions.from_official(tmp_path / "nothing")


def test_saved_header_is_plain_json(tiny_pipe, tmp_path):
    from safetensors import safe_open

    path = Directions.create(tiny_pipe, 2, prefix="x").save(tmp_path / "x.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert header["format"] == "noiseclr_lite.directions" and header["format_version"] == "1"
    assert json.loads(header["tokens"]) == ["<x_0>", "<x_1>"]
