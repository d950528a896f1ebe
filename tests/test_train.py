"""Training directions: only K rows move, determinism, chunking, checkpoints, resume after SIGKILL, NaN."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from noiseclr_lite.directions import Directions
from noiseclr_lite.inversion import encode_prompt
from noiseclr_lite.toyworld.domains import render_batch
from noiseclr_lite.models import encode_images
from noiseclr_lite.train import TrainConfig, direction_features, edit_features, train_directions

TOKEN_KEY = "embeddings.token_embedding.weight"  # CLIPTextModel state_dict key (transformers 5)
FAST = dict(num_directions=4, steps=3, batch_size=3, negatives_per_step=None, learning_rate=5e-2, seed=0)


def _images(n=6, seed=0):
    """n toyworld face renders at the tiny model's 32 px, in [-1, 1]."""
    images, _ = render_batch(n, seed=seed, domains=["face"])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return F.interpolate(pixels, size=(32, 32), mode="bilinear", antialias=True)


def test_only_the_direction_rows_change(tiny_pipe):
    before_text = {k: v.clone() for k, v in tiny_pipe.text_encoder.state_dict().items()}
    before_unet = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    vocab_before = len(tiny_pipe.tokenizer)
    directions = train_directions(tiny_pipe, _images(), progress=False, **FAST)

    weight = tiny_pipe.text_encoder.get_input_embeddings().weight
    ids = tiny_pipe.tokenizer.convert_tokens_to_ids(directions.tokens)
    assert sorted(ids) == list(range(vocab_before, vocab_before + 4))
    assert torch.equal(weight[:vocab_before], before_text[TOKEN_KEY])
    assert torch.equal(weight[ids], directions.embeddings)  # the trained rows are installed
    for key, value in tiny_pipe.text_encoder.state_dict().items():
        if key != TOKEN_KEY:
            assert torch.equal(value, before_text[key]), key
    for key, value in tiny_pipe.unet.state_dict().items():
        assert torch.equal(value, before_unet[key]), key
    # and the directions did move away from their initialisation
    init = Directions.create(tiny_pipe, 4, seed=0)
    assert not torch.allclose(directions.embeddings, init.embeddings)


def test_same_seed_gives_bit_identical_directions(tmp_path):
    from noiseclr_lite.testing import tiny_pipeline

    runs = [train_directions(tiny_pipeline(0, tmp_path / f"t{i}"), _images(), progress=False, **FAST) for i in range(2)]
    assert torch.equal(runs[0].embeddings, runs[1].embeddings)
    other = train_directions(tiny_pipeline(0, tmp_path / "t3"), _images(), progress=False, **{**FAST, "seed": 1})
    assert not torch.equal(runs[0].embeddings, other.embeddings)


def test_a_run_does_not_depend_on_what_trained_before_it_in_the_process(tmp_path):
    # benchmarks/quality.py trains many sets in one process on one pipeline; before the fix in
    # Directions.create, a set trained after another was installed started from a draw that
    # depended on that set, so a seed named different directions in a fresh process
    from noiseclr_lite.testing import tiny_pipeline

    fresh = train_directions(tiny_pipeline(0, tmp_path / "fresh"), _images(), progress=False, **{**FAST, "seed": 1})
    busy = tiny_pipeline(0, tmp_path / "busy")
    train_directions(busy, _images(), progress=False, prefix="earlier", **FAST)
    after = train_directions(busy, _images(), progress=False, prefix="later", **{**FAST, "seed": 1})
    assert torch.equal(after.embeddings, fresh.embeddings)


def test_loss_history_callback_and_metadata(tiny_pipe):
    seen = []
    directions = train_directions(tiny_pipe, _images(), progress=False, callback=lambda s, l: seen.append((s, l)), **FAST)
    assert [s for s, _ in seen] == [1, 2, 3]
    history = [round(l, 6) for _, l in seen]
    import json
    assert json.loads(directions.metadata["loss_history"]) == history
    assert json.loads(directions.metadata["training"])["num_directions"] == 4


def test_a_config_object_and_keyword_overrides_give_the_same_run(tmp_path):
    """``config=TrainConfig(...)`` and keywords are two spellings of one run; keywords win over the config."""
    from noiseclr_lite.testing import tiny_pipeline

    config = TrainConfig(**{**FAST, "steps": 50, "tau": 0.25})
    from_config = train_directions(tiny_pipeline(0, tmp_path / "a"), _images(), config, progress=False, steps=3)
    from_keywords = train_directions(tiny_pipeline(0, tmp_path / "b"), _images(), progress=False, **{**FAST, "tau": 0.25})
    assert torch.equal(from_config.embeddings, from_keywords.embeddings)
    recorded = json.loads(from_config.metadata["training"])
    assert recorded["steps"] == 3 and recorded["tau"] == 0.25  # the override and the config's own field
    assert config.steps == 50  # the caller's config is not changed


@pytest.mark.parametrize("chunk_size", [3, 6, 2])
@pytest.mark.parametrize("parameterization", ["embedding", "vocab-mixture"])
def test_chunked_training_matches_one_call(tmp_path, chunk_size, parameterization):
    from noiseclr_lite.testing import tiny_pipeline

    fast = {**FAST, "parameterization": parameterization}
    one_call = train_directions(tiny_pipeline(0, tmp_path / "a"), _images(), progress=False, **fast)
    chunked = train_directions(tiny_pipeline(0, tmp_path / "b"), _images(), progress=False,
                               chunk_size=chunk_size, **fast)
    assert torch.allclose(one_call.embeddings, chunked.embeddings, atol=1e-5)
    plain_chunks = train_directions(tiny_pipeline(0, tmp_path / "c"), _images(), progress=False,
                                    chunk_size=chunk_size, grad_cache=False, **fast)
    assert torch.allclose(one_call.embeddings, plain_chunks.embeddings, atol=1e-5)
    # and training moved the directions (the chunked paths' gradients reach the parameters)
    start = train_directions(tiny_pipeline(0, tmp_path / "d"), _images(), progress=False, **{**fast, "steps": 0})
    assert not torch.allclose(start.embeddings, chunked.embeddings, atol=1e-4)


def test_fp16_weights_train_without_autocast(tiny_pipe):
    """load_pipeline gives fp16 weights on a GPU and mixed_precision defaults to "no": the
    conditioning must reach the UNet in fp16 although the trained rows are a float32 Parameter."""
    tiny_pipe.to(dtype=torch.float16)
    directions = train_directions(tiny_pipe, _images(), progress=False, **FAST)
    assert directions.embeddings.dtype == torch.float32 and torch.isfinite(directions.embeddings).all()
    assert tiny_pipe.text_encoder.dtype == torch.float16


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("parameterization", ["embedding", "vocab-mixture"])
def test_fp16_loss_scaling_with_and_without_gradient_caching(tmp_path, chunk_size, parameterization):
    """What Accelerate does on a GPU with mixed_precision="fp16" (a GradScaler), on the CPU: the
    gradient-caching path must scale through the scaler, or its step() finds no scale."""
    from noiseclr_lite.testing import tiny_pipeline
    from noiseclr_lite.train import _make_accelerator

    fast = {**FAST, "parameterization": parameterization}
    plain = train_directions(tiny_pipeline(0, tmp_path / "a"), _images(), progress=False, **fast)
    accelerator = _make_accelerator("no", cpu=True)
    accelerator.scaler = torch.amp.GradScaler("cpu")
    scaled = train_directions(tiny_pipeline(0, tmp_path / "b"), _images(), progress=False, accelerator=accelerator,
                              chunk_size=chunk_size, **fast)
    assert accelerator.scaler.get_scale() > 1  # the loss really was scaled
    assert torch.allclose(plain.embeddings, scaled.embeddings, atol=1e-5)


def test_edit_features_layout(tiny_pipe):
    torch.manual_seed(0)
    noisy = torch.randn(3, 4, 16, 16)
    cond = torch.randn(2, 16, 32)
    empty = torch.randn(3, 4, 16, 16)
    t = torch.tensor([500])
    features = edit_features(tiny_pipe.unet, noisy, t, cond, empty)
    assert features.shape == (3, 2, 4, 16, 16)
    expected = tiny_pipe.unet(noisy[2:3], t, cond[1:2]).sample - empty[2:3]
    assert torch.allclose(features[2, 1], expected[0], atol=1e-5)
    assert torch.allclose(edit_features(tiny_pipe.unet, noisy, t, cond, empty, chunk_size=2), features, atol=1e-5)


def test_edit_features_in_hspace_are_differences_of_the_middle_blocks_output(tiny_pipe):
    from noiseclr_lite.hspace import mid_block_output
    from noiseclr_lite.train import unet_features

    torch.manual_seed(0)
    noisy = torch.randn(3, 4, 16, 16)
    cond = torch.randn(2, 16, 32)
    reference_cond = torch.randn(3, 16, 32)
    t = torch.tensor([500])
    reference = unet_features(tiny_pipe.unet, noisy, t, reference_cond, "hspace")
    assert torch.equal(reference, mid_block_output(tiny_pipe.unet, noisy, t.expand(3), reference_cond))
    assert torch.equal(unet_features(tiny_pipe.unet, noisy, t, reference_cond),
                       tiny_pipe.unet(noisy, t.expand(3), reference_cond).sample)   # eps is the default
    features = edit_features(tiny_pipe.unet, noisy, t, cond, reference, edit_space="hspace")
    assert features.shape == (3, 2, 64, 8, 8)          # [N, K, C, h', w']: the tiny UNet's bottleneck
    expected = mid_block_output(tiny_pipe.unet, noisy[2:3], t, cond[1:2]) - reference[2:3]
    assert torch.allclose(features[2, 1], expected[0], atol=1e-5)
    assert torch.allclose(edit_features(tiny_pipe.unet, noisy, t, cond, reference, chunk_size=2, edit_space="hspace"),
                          features, atol=1e-5)
    with pytest.raises(ValueError, match="edit_space='h'; use 'eps'"):
        unet_features(tiny_pipe.unet, noisy, t, reference_cond, "h")


def test_training_in_hspace_learns_other_directions_and_records_the_space(tmp_path):
    from noiseclr_lite.testing import tiny_pipeline
    from noiseclr_lite.train import timestep_features

    official = train_directions(tiny_pipeline(0, tmp_path / "a"), _images(), progress=False, **FAST)
    pipe = tiny_pipeline(0, tmp_path / "b")
    in_hspace = train_directions(pipe, _images(), progress=False, edit_space="hspace", **FAST)
    assert not torch.allclose(in_hspace.embeddings, official.embeddings)
    assert json.loads(in_hspace.metadata["training"])["edit_space"] == "hspace"
    assert json.loads(official.metadata["training"])["edit_space"] == "eps"
    # the chunked, gradient-cached path trains the same directions
    chunked = train_directions(tiny_pipeline(0, tmp_path / "c"), _images(), progress=False, edit_space="hspace",
                               chunk_size=3, **FAST)
    assert torch.allclose(in_hspace.embeddings, chunked.embeddings, atol=1e-5)
    split = train_directions(tiny_pipeline(0, tmp_path / "e"), _images(), progress=False, edit_space="hspace",
                             chunk_size=2, **FAST)   # smaller than a direction's 3 images: the images are split too
    assert torch.allclose(in_hspace.embeddings, split.embeddings, atol=1e-5)
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    (h_features,) = timestep_features(pipe, in_hspace, latents, [300], edit_space="hspace")
    assert h_features.shape == (2, FAST["num_directions"], 64, 8, 8)
    with pytest.raises(ValueError, match="TrainConfig.edit_space='noise'"):
        train_directions(tiny_pipeline(0, tmp_path / "d"), _images(), progress=False, edit_space="noise", **FAST)


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tiny_pipe, tmp_path):
    ckpt = tmp_path / "ckpt"
    train_directions(tiny_pipe, _images(), output_dir=ckpt, progress=False, checkpoint_every=1, **FAST)
    good = torch.load(ckpt / "checkpoint.pt", weights_only=True)
    bad_latents = torch.full((6, 4, 16, 16), float("nan"))
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 1\b.*learning_rate"):
        train_directions(tiny_pipe, latents=bad_latents, output_dir=ckpt, progress=False, checkpoint_every=1, **FAST)
    # the NaN was caught before anything was checkpointed: the good checkpoint is untouched
    after = torch.load(ckpt / "checkpoint.pt", weights_only=True)
    assert int(after["step"]) == 3 and torch.equal(after["embeddings"], good["embeddings"])


def test_bad_settings_are_refused(tiny_pipe):
    with pytest.raises(ValueError, match="at least 2 directions"):
        train_directions(tiny_pipe, _images(), progress=False, **{**FAST, "num_directions": 1})
    with pytest.raises(ValueError, match="batch_size=1"):
        train_directions(tiny_pipe, _images(), progress=False, **{**FAST, "batch_size": 1})
    with pytest.raises(ValueError, match="give images"):
        train_directions(tiny_pipe, progress=False, **FAST)
    with pytest.raises(ValueError, match=r"need >= 2 images per step \(got 1 images"):
        train_directions(tiny_pipe, latents=torch.randn(1, 4, 16, 16), progress=False, **FAST)
    with pytest.raises(ValueError, match="TrainConfig.context must be a prompt with exactly one"):
        train_directions(tiny_pipe, _images(), progress=False, **{**FAST, "context": "a face"})


def test_check_config_refuses_bad_settings_without_a_model():
    """Front ends call ``check_config`` before loading anything: it needs only the settings."""
    from noiseclr_lite.train import TrainConfig, check_config

    check_config(TrainConfig())   # the defaults train
    check_config(TrainConfig(gain_weight=10.0, gain_top_share=1.0, gain_two_sided=True))
    for fields, message in (({"num_directions": 1}, "num_directions=1: the contrastive loss"),
                            ({"batch_size": 1}, "batch_size=1: need >= 2 images per step"),
                            ({"gain_two_sided": True}, "gain_two_sided=True, gain_top_share=0.25 with gain_weight=0"),
                            ({"gain_weight": 1.0, "gain_top_share": 1.5}, r"gain_top_share=1.5; .*in \(0, 1\]"),
                            ({"context": "a face"}, "TrainConfig.context must be a prompt with exactly one"),
                            ({"mixed_precision": "fp8"}, "mixed_precision='fp8'"),
                            ({"loss": "triplet"}, "unknown loss 'triplet'"),
                            ({"timestep_range": (500, 500)}, r"timestep_range=\(500, 500\): .*0 <= low < high"),
                            ({"grad_accum": 0}, "grad_accum=0"),
                            ({"chunk_size": 0}, "chunk_size=0 must be a positive number")):
        with pytest.raises(ValueError, match=message):
            check_config(TrainConfig(**fields))


def test_a_context_trains_the_tokens_in_that_prompt(tmp_path):
    """Directions trained in "a face, {}" carry that context, and their steps contrast the
    tokens in it: the run differs from the same seed trained alone."""
    from noiseclr_lite.testing import tiny_pipeline

    alone = train_directions(tiny_pipeline(0, tmp_path / "a"), _images(), progress=False, **FAST)
    pipe = tiny_pipeline(0, tmp_path / "b")
    seen, hidden_states = [], []
    original = Directions.conditioning
    # every text conditioning the UNet receives during training, one row per image or direction
    hook = pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: hidden_states.append(kwargs.get("encoder_hidden_states", None)
                                                          if len(args) < 3 else args[2]), with_kwargs=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Directions, "conditioning", lambda self, *a, **k: seen.append(self.context) or
                      original(self, *a, **k))
        placed = train_directions(pipe, _images(), progress=False, **{**FAST, "context": "a face, {}"})
    hook.remove()
    assert seen and set(seen) == {"a face, {}"}
    # the pushes are measured from "a face", never from the empty prompt
    face, empty = (encode_prompt(pipe, prompt)[0] for prompt in ("a face", ""))
    rows = [row for batch in hidden_states for row in batch.detach()]
    assert any(torch.equal(row, face) for row in rows)
    assert not any(torch.equal(row, empty) for row in rows)
    assert placed.context == "a face, {}" and json.loads(placed.metadata["training"])["context"] == "a face, {}"
    assert alone.context == "{}"
    assert not torch.allclose(placed.embeddings, alone.embeddings)
    assert json.loads(placed.metadata["loss_history"]) != json.loads(alone.metadata["loss_history"])


_RUN = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from noiseclr_lite.testing import tiny_pipeline
    from noiseclr_lite.train import train_directions
    sys.path.insert(0, {tests!r})
    from test_train import _images, FAST
    out, kill_at, resume, result = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
    def die(step, loss):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)   # no cleanup, no atexit: a real crash
    cfg = dict(FAST, steps=7, checkpoint_every=2)
    d = train_directions(tiny_pipeline(0, out + "_tok"), _images(), output_dir=out, resume=resume,
                         progress=False, callback=die, **cfg)
    d.save(result)
""")


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_RUN.format(tests=os.path.dirname(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def run(out, kill_at, resume, result):
        return subprocess.run([sys.executable, str(script), str(out), str(kill_at), resume, str(result)],
                              env=env, capture_output=True, text=True, timeout=300)

    full = run(tmp_path / "full", -1, "0", tmp_path / "full.safetensors")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = run(tmp_path / "crash", 5, "0", tmp_path / "never.safetensors")
    assert killed.returncode == -9  # SIGKILL after step 5; last checkpoint is step 4
    assert not (tmp_path / "never.safetensors").exists()
    assert int(torch.load(tmp_path / "crash" / "checkpoint.pt", weights_only=True)["step"]) == 4
    resumed = run(tmp_path / "crash", -1, "1", tmp_path / "resumed.safetensors")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = Directions.load(tmp_path / "full.safetensors")
    b = Directions.load(tmp_path / "resumed.safetensors")
    assert torch.equal(a.embeddings, b.embeddings)


def test_train_seconds_sum_over_resumed_runs_and_an_old_checkpoint_says_none(tiny_pipe, tmp_path):
    first = train_directions(tiny_pipe, _images(), output_dir=tmp_path, progress=False, checkpoint_every=1, **FAST)
    spent = first.metadata["train_seconds"]
    assert spent > 0
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert abs(saved["train_seconds"] - spent) <= 0.05        # the same clock reading, rounded
    # resuming a finished run trains nothing: the recorded time is the first run's, not ~0 s
    again = train_directions(tiny_pipe, _images(), output_dir=tmp_path, resume=True, progress=False, **FAST)
    assert again.metadata["train_seconds"] == spent
    del saved["train_seconds"]                       # a checkpoint written before the time was recorded
    torch.save(saved, tmp_path / "checkpoint.pt")
    legacy = train_directions(tiny_pipe, _images(), output_dir=tmp_path, resume=True, progress=False, **FAST)
    assert legacy.metadata["train_seconds"] is None


def test_resume_refuses_other_settings(tiny_pipe, tmp_path):
    train_directions(tiny_pipe, _images(), output_dir=tmp_path, progress=False, checkpoint_every=1, **FAST)
    with pytest.raises(ValueError, match="num_directions=4"):
        train_directions(tiny_pipe, _images(), output_dir=tmp_path, resume=True, progress=False,
                         **{**FAST, "num_directions": 5})
    with pytest.raises(ValueError, match="init='random' but this run has init='vocab'"):
        train_directions(tiny_pipe, _images(), output_dir=tmp_path, resume=True, progress=False,
                         **{**FAST, "init": "vocab"})
    with pytest.raises(ValueError, match="strength_weight=0.0 but this run has strength_weight=0.5"):
        train_directions(tiny_pipe, _images(), output_dir=tmp_path, resume=True, progress=False,
                         **{**FAST, "strength_weight": 0.5})
    with pytest.raises(ValueError, match="sign_blind_negatives=False but this run has sign_blind_negatives=True"):
        train_directions(tiny_pipe, _images(), output_dir=tmp_path, resume=True, progress=False,
                         **{**FAST, "sign_blind_negatives": True})
    with pytest.raises(ValueError, match="center_edits=False but this run has center_edits=True"):
        train_directions(tiny_pipe, _images(), output_dir=tmp_path, resume=True, progress=False,
                         **{**FAST, "center_edits": True})
    with pytest.raises(ValueError, match="edit_space='eps' but this run has edit_space='hspace'"):
        train_directions(tiny_pipe, _images(), output_dir=tmp_path, resume=True, progress=False,
                         **{**FAST, "edit_space": "hspace"})
    with pytest.raises(ValueError, match="parameterization='embedding' but this run has parameterization='vocab-m"):
        train_directions(tiny_pipe, _images(), output_dir=tmp_path, resume=True, progress=False,
                         **{**FAST, "parameterization": "vocab-mixture"})
    with pytest.raises(ValueError, match=r"context='\{\}' but this run has context='a face, \{\}'"):
        train_directions(tiny_pipe, _images(), output_dir=tmp_path, resume=True, progress=False,
                         **{**FAST, "context": "a face, {}"})
    with pytest.raises(ValueError, match="learning_rate=0.05 but this run has learning_rate=0.001"):
        train_directions(tiny_pipe, _images(), output_dir=tmp_path, resume=True, progress=False,
                         **{**FAST, "learning_rate": 1e-3})


def test_out_of_memory_suggests_the_memory_flags(tiny_pipe, monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tiny_pipe.unet, "forward", no_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError, match=r"step 1 .*--chunk-size .*--mixed-precision"):
        train_directions(tiny_pipe, _images(), progress=False, **FAST)


def test_gradient_checkpointing_gives_the_same_directions(tmp_path):
    from noiseclr_lite.testing import tiny_pipeline

    plain = train_directions(tiny_pipeline(0, tmp_path / "a"), _images(), progress=False, **FAST)
    pipe = tiny_pipeline(0, tmp_path / "b")
    checkpointed = train_directions(pipe, _images(), progress=False, gradient_checkpointing=True, **FAST)
    assert torch.allclose(plain.embeddings, checkpointed.embeddings, atol=1e-5)
    assert not pipe.unet.is_gradient_checkpointing     # the caller's pipeline is left as it came


def test_bf16_autocast_runs_and_stays_close(tmp_path):
    from noiseclr_lite.testing import tiny_pipeline

    plain = train_directions(tiny_pipeline(0, tmp_path / "a"), _images(), progress=False, **FAST)
    bf16 = train_directions(tiny_pipeline(0, tmp_path / "b"), _images(), progress=False, mixed_precision="bf16", **FAST)
    assert torch.isfinite(bf16.embeddings).all()
    init = Directions.create(tiny_pipeline(0, tmp_path / "c"), 4, seed=0).embeddings
    # bf16 rounds, but it must move the directions the same way as fp32 does
    cos = torch.nn.functional.cosine_similarity((bf16.embeddings - init).flatten(), (plain.embeddings - init).flatten(), 0)
    assert cos > 0.9


def test_direction_features_are_what_one_training_step_contrasts(tiny_pipe):
    from noiseclr_lite.directions import empty_conditioning
    from noiseclr_lite.train import direction_features, edit_features

    directions = Directions.create(tiny_pipe, 3, seed=0)
    latents = torch.randn(2, 4, 8, 8)
    features = direction_features(tiny_pipe, directions, latents, timestep=300, seed=1)
    assert features.shape == (2, 3, 4, 8, 8) and not features.requires_grad
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([300])
    noisy = tiny_pipe.scheduler.add_noise(latents, noise, t)
    with torch.no_grad():
        empty = tiny_pipe.unet(noisy, t.expand(2), empty_conditioning(tiny_pipe).expand(2, -1, -1)).sample
        expected = edit_features(tiny_pipe.unet, noisy, t, directions.conditioning(tiny_pipe), empty)
    assert torch.allclose(features, expected, atol=1e-6)
    # chunking bounds the UNet batch (for SD 1.5) and must not change the features
    calls = []
    hook = tiny_pipe.unet.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
    try:
        chunked = direction_features(tiny_pipe, directions, latents, timestep=300, seed=1, chunk_size=4)
    finally:
        hook.remove()
    assert calls == [2, 4, 2]       # the empty prompt on both images, then 6 pairs in chunks of 4
    assert torch.allclose(chunked, features, atol=1e-5)
    # directions in a context: the features are measured from the context without the token
    placed = Directions.create(tiny_pipe, 3, seed=0, context="a face, {}")
    with torch.no_grad():
        reference_cond = placed.reference_conditioning(tiny_pipe).expand(2, -1, -1)
        reference = tiny_pipe.unet(noisy, t.expand(2), reference_cond).sample
        expected = edit_features(tiny_pipe.unet, noisy, t, placed.conditioning(tiny_pipe), reference)
    torch.testing.assert_close(direction_features(tiny_pipe, placed, latents, timestep=300, seed=1), expected,
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"timestep=1000 is outside \[0, 1000\)"):
        direction_features(tiny_pipe, directions, latents, timestep=1000)
    with pytest.raises(ValueError, match="chunk_size=0 must be a positive number"):
        direction_features(tiny_pipe, directions, latents, chunk_size=0)


def test_direction_consistency_is_edit_consistency_averaged_over_timesteps(tiny_pipe):
    from noiseclr_lite.loss import edit_consistency
    from noiseclr_lite.metrics import PromptDirections
    from noiseclr_lite.train import direction_consistency

    directions = Directions.create(tiny_pipe, 3, seed=0)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    scores = direction_consistency(tiny_pipe, directions, latents, timesteps=(100, 700))
    by_hand = [edit_consistency(direction_features(tiny_pipe, directions, latents, timestep=t, seed=t))
               for t in (100, 700)]
    assert scores.shape == (3,) and torch.allclose(scores, (by_hand[0] + by_hand[1]) / 2, atol=1e-6)
    assert bool(((scores >= -1) & (scores <= 1)).all())
    # a direction's score does not depend on the others scored with it
    alone = Directions(directions.embeddings[1:2].clone(), ["<solo>"])
    assert torch.allclose(direction_consistency(tiny_pipe, alone, latents, timesteps=(100, 700)), scores[1:2],
                          atol=1e-5)
    # prompts are scored the same way (the attributes' own words in benchmarks/consistency.py)
    assert direction_consistency(tiny_pipe, PromptDirections(["smiling", "striped"]), latents, (300,)).shape == (2,)
    assert torch.allclose(direction_consistency(tiny_pipe, directions, latents, timesteps=(100, 700), chunk_size=2),
                          scores, atol=1e-5)
    with pytest.raises(ValueError, match="at least one timestep"):
        direction_consistency(tiny_pipe, directions, latents, timesteps=())


def test_over_timesteps_averages_any_measure_of_the_edit_features(tiny_pipe):
    from noiseclr_lite.loss import shared_edit_share
    from noiseclr_lite.train import over_timesteps

    directions = Directions.create(tiny_pipe, 3, seed=0)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    share = over_timesteps(shared_edit_share, tiny_pipe, directions, latents, timesteps=(100, 700))
    by_hand = [shared_edit_share(direction_features(tiny_pipe, directions, latents, timestep=t, seed=t))
               for t in (100, 700)]
    assert share.shape == () and share.item() == pytest.approx((by_hand[0].item() + by_hand[1].item()) / 2, rel=1e-5)
    assert 0.0 <= share.item() <= 1.0
    with pytest.raises(ValueError, match="needs at least one timestep"):
        over_timesteps(shared_edit_share, tiny_pipe, directions, latents, timesteps=())


def test_timestep_features_are_each_timesteps_features_with_noise_seeded_by_it(tiny_pipe):
    from noiseclr_lite.train import timestep_features

    directions = Directions.create(tiny_pipe, 2, seed=0)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    features = timestep_features(tiny_pipe, directions, latents, timesteps=(100, 700))
    assert len(features) == 2 and features[0].shape == (3, 2, 4, 8, 8)
    for t, got in zip((100, 700), features):
        assert torch.equal(got, direction_features(tiny_pipe, directions, latents, timestep=t, seed=t))
    # another set meets the same noisy images: one direction alone gives its own features unchanged
    alone = Directions(directions.embeddings[1:2].clone(), ["<solo>"])
    torch.testing.assert_close(timestep_features(tiny_pipe, alone, latents, timesteps=(100, 700))[1],
                               features[1][:, 1:2], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs at least one timestep"):
        timestep_features(tiny_pipe, directions, latents, timesteps=[])


def test_denoising_gain_is_the_drop_in_denoising_error_against_the_reference(tiny_pipe):
    from noiseclr_lite.metrics import PromptDirections
    from noiseclr_lite.train import denoising_gain

    directions = Directions.create(tiny_pipe, 2, seed=0)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    gains = denoising_gain(tiny_pipe, directions, latents, timesteps=(100, 700))
    assert gains.shape == (2, 3) and gains.dtype == torch.float32
    # by hand: the noise seeded by the timestep, the errors of the reference and of each prompt
    by_hand = torch.zeros(2, 3)
    reference, conditions = directions.reference_conditioning(tiny_pipe), directions.conditioning(tiny_pipe)
    with torch.no_grad():
        for t in (100, 700):
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(t))
            noisy = tiny_pipe.scheduler.add_noise(latents, noise, torch.tensor([t]))
            steps = torch.tensor([t]).expand(3)
            error_ref = (noise - tiny_pipe.unet(noisy, steps, reference.expand(3, -1, -1)).sample).pow(2)
            for k in range(2):
                error_k = (noise - tiny_pipe.unet(noisy, steps, conditions[k:k + 1].expand(3, -1, -1)).sample).pow(2)
                by_hand[k] += (error_ref - error_k).flatten(1).mean(1) / 2
    assert gains.abs().max() > 1e-3          # large enough for the tolerance below to mean something
    torch.testing.assert_close(gains, by_hand, atol=1e-5, rtol=1e-4)
    assert torch.allclose(denoising_gain(tiny_pipe, directions, latents, (100, 700), chunk_size=2), gains, atol=1e-5)
    # the reference prompt itself gains nothing on any image; another prompt does gain or lose
    prompts = denoising_gain(tiny_pipe, PromptDirections(["", "smiling"]), latents, timesteps=(300,))
    # (the reference's two passes differ in batch size, so "nothing" is up to float rounding)
    assert prompts[0].abs().max() < 1e-3 * prompts[1].abs().max()
    with pytest.raises(ValueError, match="give at least one; got none"):
        denoising_gain(tiny_pipe, directions, latents, timesteps=())
    with pytest.raises(ValueError, match="timestep=1000 is outside"):
        denoising_gain(tiny_pipe, directions, latents, timesteps=(1000,))
    v_model = type("Pipe", (), {"scheduler": type("S", (), {"config": {"prediction_type": "v_prediction"}})()})()
    with pytest.raises(ValueError, match="prediction_type is 'v_prediction'"):
        denoising_gain(v_model, directions, latents, timesteps=(100,))


def test_all_anchors_contrast_every_direction_and_match_chunked(tmp_path, monkeypatch):
    import noiseclr_lite.train as train_module
    from noiseclr_lite.loss import noiseclr_loss
    from noiseclr_lite.testing import tiny_pipeline

    anchors_seen = []

    def recording_loss(name):
        def loss(features, tau, anchor, sign_blind):
            anchors_seen.append(anchor)
            return noiseclr_loss(features, tau, anchor=anchor, sign_blind=sign_blind)
        return loss

    monkeypatch.setattr(train_module, "get_loss", recording_loss)
    one = train_directions(tiny_pipeline(0, tmp_path / "a"), _images(), progress=False, **FAST)
    assert anchors_seen == [0, 0, 0]   # the official loss: the step's anchor only
    anchors_seen.clear()
    every = train_directions(tiny_pipeline(0, tmp_path / "b"), _images(), progress=False, anchors="all", **FAST)
    assert anchors_seen == [None, None, None]   # the mean of L_k over every contrasted direction
    assert not torch.allclose(one.embeddings, every.embeddings)
    chunked = train_directions(tiny_pipeline(0, tmp_path / "c"), _images(), progress=False, anchors="all",
                               chunk_size=3, **FAST)
    assert torch.allclose(every.embeddings, chunked.embeddings, atol=1e-5)


def test_anchors_setting_is_checked_and_kept_on_resume(tiny_pipe, tmp_path):
    with pytest.raises(ValueError, match="anchors='some'"):
        train_directions(tiny_pipe, _images(), progress=False, **{**FAST, "anchors": "some"})
    train_directions(tiny_pipe, _images(), output_dir=tmp_path, progress=False, checkpoint_every=1, **FAST)
    with pytest.raises(ValueError, match="anchors='one'"):
        train_directions(tiny_pipe, _images(), output_dir=tmp_path, resume=True, progress=False,
                         **{**FAST, "anchors": "all"})


def test_strength_weight_makes_pushes_stronger_and_zero_is_the_official_loss(tiny_pipe):
    from noiseclr_lite.loss import push_strength_loss

    official = train_directions(tiny_pipe, _images(), progress=False, **FAST)
    zero = train_directions(tiny_pipe, _images(), progress=False, strength_weight=0.0, **FAST)
    assert torch.equal(official.embeddings, zero.embeddings)          # 0 adds nothing, not even noise
    strong = train_directions(tiny_pipe, _images(), progress=False, strength_weight=5.0, **FAST)
    assert not torch.allclose(strong.embeddings, official.embeddings)
    latents = encode_images(tiny_pipe, _images())
    push = {name: push_strength_loss(direction_features(tiny_pipe, d, latents, timestep=500, seed=0)).item()
            for name, d in [("official", official), ("strong", strong)]}
    assert push["strong"] < push["official"]                          # lower = longer edit features
    assert json.loads(strong.metadata["training"])["strength_weight"] == 5.0
    with pytest.raises(ValueError, match="strength_weight=-1"):
        train_directions(tiny_pipe, _images(), progress=False, strength_weight=-1.0, **FAST)


def test_sign_blind_negatives_train_towards_unrelated_edits(tiny_pipe):
    from noiseclr_lite.loss import noiseclr_loss

    settings = {**FAST, "steps": 12, "learning_rate": 0.2, "timestep_range": (500, 501)}
    official = train_directions(tiny_pipe, _images(), progress=False, **settings)
    blind = train_directions(tiny_pipe, _images(), progress=False, sign_blind_negatives=True, **settings)
    assert not torch.allclose(blind.embeddings, official.embeddings)
    assert json.loads(blind.metadata["training"])["sign_blind_negatives"] is True
    latents = encode_images(tiny_pipe, _images())
    # the sign-blind run ends lower on its objective than the official run does (seeds 0-3 on this
    # tiny model: by 0.14 to 0.37), on features drawn with other noise than training's
    features = {name: direction_features(tiny_pipe, d, latents, timestep=500, seed=1)
                for name, d in [("official", official), ("blind", blind)]}
    blind_objective = {name: noiseclr_loss(f, sign_blind=True).item() for name, f in features.items()}
    assert blind_objective["blind"] < blind_objective["official"]


def test_center_edits_contrasts_the_centred_features_and_is_kept(tmp_path, monkeypatch):
    import noiseclr_lite.train as train_module
    from noiseclr_lite.loss import noiseclr_loss
    from noiseclr_lite.testing import tiny_pipeline

    sums_over_directions = []

    def recording_loss(name):
        def loss(features, tau, anchor, sign_blind):
            sums_over_directions.append(float(features.detach().sum(dim=1).abs().max() / features.detach().abs().max()))
            return noiseclr_loss(features, tau, anchor=anchor, sign_blind=sign_blind)
        return loss

    monkeypatch.setattr(train_module, "get_loss", recording_loss)
    official = train_directions(tiny_pipeline(0, tmp_path / "a"), _images(), progress=False, **FAST)
    assert min(sums_over_directions) > 1e-3          # the official loss sees the raw edit features
    sums_over_directions.clear()
    centred = train_directions(tiny_pipeline(0, tmp_path / "b"), _images(), progress=False, center_edits=True,
                               **FAST)
    assert max(sums_over_directions) < 1e-5          # each image's features sum to zero over the directions
    assert not torch.allclose(centred.embeddings, official.embeddings)
    assert json.loads(centred.metadata["training"])["center_edits"] is True
    sums_over_directions.clear()   # the chunked, gradient-cached path centres the whole step's features too
    chunked = train_directions(tiny_pipeline(0, tmp_path / "c"), _images(), progress=False, center_edits=True,
                               chunk_size=3, **FAST)
    assert max(sums_over_directions) < 1e-5
    assert torch.allclose(centred.embeddings, chunked.embeddings, atol=1e-5)
    # two centred edits are always opposite: centring needs three or more directions per step
    with pytest.raises(ValueError, match="center_edits=True with 2 directions per step"):
        train_directions(tiny_pipeline(0, tmp_path / "d"), _images(), progress=False, center_edits=True,
                         **{**FAST, "negatives_per_step": 1})


def test_vocab_mixture_directions_are_mixtures_of_the_vocabulary_and_resume(tmp_path):
    from noiseclr_lite.testing import tiny_pipeline
    from noiseclr_lite.train import MIXTURE_LOGIT_STD, heaviest_words, vocabulary_rows

    pipe = tiny_pipeline(0, tmp_path / "a")
    ids, rows = vocabulary_rows(pipe)
    assert set(ids).isdisjoint(pipe.tokenizer.all_special_ids) and len(ids) == pipe.tokenizer.vocab_size - len(
        set(pipe.tokenizer.all_special_ids))
    mixed = train_directions(pipe, _images(), progress=False, parameterization="vocab-mixture", **FAST)
    assert json.loads(mixed.metadata["training"])["parameterization"] == "vocab-mixture"
    heaviest = json.loads(mixed.metadata["vocab_mixture"])
    assert list(heaviest) == mixed.tokens and all(len(top) == 3 for top in heaviest.values())
    # the heaviest weights come in decreasing order, the largest of a softmax over V pieces at least 1/V
    for top in heaviest.values():
        weights = [w for _, w in top]
        assert weights == sorted(weights, reverse=True) and 1 / len(ids) - 1e-3 <= weights[0] <= 1
    # the start: logits of std MIXTURE_LOGIT_STD drawn from the seed (0 steps trains nothing)
    start = train_directions(tiny_pipeline(0, tmp_path / "b"), _images(), progress=False,
                             parameterization="vocab-mixture", **{**FAST, "steps": 0})
    logits = torch.randn(FAST["num_directions"], len(ids), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(start.embeddings, (logits * MIXTURE_LOGIT_STD).softmax(-1) @ rows, atol=1e-6)
    assert json.loads(start.metadata["vocab_mixture"]) == dict(zip(start.tokens, heaviest_words(
        pipe, logits * MIXTURE_LOGIT_STD, ids)))
    assert not torch.allclose(start.embeddings, mixed.embeddings)
    # resuming a checkpoint (which holds the logits) ends where one uninterrupted run ends
    train_directions(tiny_pipeline(0, tmp_path / "c"), _images(), output_dir=tmp_path / "run", progress=False,
                     checkpoint_every=1, parameterization="vocab-mixture", **{**FAST, "steps": 2})
    resumed = train_directions(tiny_pipeline(0, tmp_path / "d"), _images(), output_dir=tmp_path / "run",
                               resume=True, progress=False, parameterization="vocab-mixture", **FAST)
    assert torch.allclose(resumed.embeddings, mixed.embeddings, atol=1e-6)
    # the checkpoint holds the trained logits, and each row is their softmax mixture of the vocabulary's rows
    trained_logits = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["embeddings"]
    assert trained_logits.shape == (FAST["num_directions"], len(ids))
    assert torch.allclose(trained_logits.softmax(-1) @ rows, mixed.embeddings, atol=1e-6)
    assert json.loads(mixed.metadata["vocab_mixture"]) == dict(zip(mixed.tokens, heaviest_words(
        pipe, trained_logits, ids)))
    with pytest.raises(ValueError, match="parameterization='vocab'; use one of 'embedding', 'vocab-mixture'"):
        train_directions(tiny_pipeline(0, tmp_path / "e"), _images(), progress=False, parameterization="vocab",
                         **FAST)
    with pytest.raises(ValueError, match="init='vocab' with parameterization='vocab-mixture'"):
        train_directions(tiny_pipeline(0, tmp_path / "e"), _images(), progress=False, init="vocab",
                         parameterization="vocab-mixture", **FAST)


def test_a_vocab_mixture_is_computed_in_float32_under_autocast():
    from noiseclr_lite.train import _VocabMixtureParameters

    generator = torch.Generator().manual_seed(0)
    logits, rows = torch.randn(3, 7, generator=generator), torch.randn(7, 5, generator=generator)
    mixture = _VocabMixtureParameters(logits, rows)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = mixture()
        assert (torch.randn(2, 7) @ rows).dtype == torch.bfloat16   # autocast is on for other matmuls
    assert inside.dtype == torch.float32
    assert torch.allclose(inside, logits.softmax(-1) @ rows, atol=1e-6)
    assert "vocabulary_rows" not in dict(mixture.named_buffers())  # not a buffer DDP would broadcast


def test_reference_residuals_are_what_the_reference_prompt_misses_on_the_features_noisy_images(tiny_pipe):
    from noiseclr_lite.train import reference_residuals

    directions = Directions.create(tiny_pipe, 2, seed=0)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    residuals = reference_residuals(tiny_pipe, directions, latents, timesteps=(100, 700))
    assert residuals.shape == (2, 3, 4, 8, 8) and residuals.dtype == torch.float32
    reference = directions.reference_conditioning(tiny_pipe).expand(3, -1, -1)
    with torch.no_grad():
        for residual, t in zip(residuals, (100, 700)):
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(t))   # seeded as the features
            noisy = tiny_pipe.scheduler.add_noise(latents, noise, torch.tensor([t]))
            by_hand = noise - tiny_pipe.unet(noisy, torch.tensor([t]).expand(3), reference).sample
            torch.testing.assert_close(residual, by_hand, atol=1e-5, rtol=1e-4)
    # paired with the features, the gain term's per-image gain is denoising_gain's (relative to |r|^2)
    from noiseclr_lite.loss import denoising_gain_loss
    from noiseclr_lite.train import denoising_gain, timestep_features
    features = timestep_features(tiny_pipe, directions, latents, timesteps=(300,))[0]
    residual = reference_residuals(tiny_pipe, directions, latents, timesteps=(300,))[0]
    absolute = denoising_gain(tiny_pipe, directions, latents, timesteps=(300,))           # [K, N], mean over elements
    relative = absolute / residual.flatten(1).pow(2).mean(1)
    expected = -relative.max(dim=1).values.mean()                                         # the best of 3 images
    assert denoising_gain_loss(features, residual, 1 / 3).item() == pytest.approx(expected.item(), rel=1e-3, abs=1e-6)
    with pytest.raises(ValueError, match="give at least one; got none"):
        reference_residuals(tiny_pipe, directions, latents, timesteps=())
    with pytest.raises(ValueError, match="timestep=1000 is outside"):
        reference_residuals(tiny_pipe, directions, latents, timesteps=(1000,))
    v_model = type("Pipe", (), {"scheduler": type("S", (), {"config": {"prediction_type": "v_prediction"}})()})()
    with pytest.raises(ValueError, match="reference_residuals compares .* prediction_type is 'v_prediction'"):
        reference_residuals(v_model, directions, latents, timesteps=(100,))


def test_gain_weight_adds_the_denoising_gain_term_and_is_kept(tmp_path, monkeypatch):
    import noiseclr_lite.train as train_module
    from noiseclr_lite.loss import denoising_gain_loss
    from noiseclr_lite.testing import tiny_pipeline

    calls = []

    def recording_gain_loss(features, residual, top_share, two_sided):
        calls.append((tuple(features.shape), tuple(residual.shape), top_share, two_sided, residual.requires_grad))
        return denoising_gain_loss(features, residual, top_share, two_sided)

    monkeypatch.setattr(train_module, "denoising_gain_loss", recording_gain_loss)
    official = train_directions(tiny_pipeline(0, tmp_path / "a"), _images(), progress=False, **FAST)
    assert calls == []                                    # off by default: the official loss alone
    gained = train_directions(tiny_pipeline(0, tmp_path / "b"), _images(), progress=False, gain_weight=10.0,
                              gain_top_share=0.5, **FAST)
    # every step scores all 4 directions on the step's 3 images, against the reference's residual
    assert calls == [((3, 4, 4, 16, 16), (3, 4, 16, 16), 0.5, False, False)] * FAST["steps"]
    assert not torch.allclose(gained.embeddings, official.embeddings)
    history = json.loads(gained.metadata["loss_history"])
    assert history != json.loads(official.metadata["loss_history"])
    training = json.loads(gained.metadata["training"])
    assert training["gain_weight"] == 10.0 and training["gain_top_share"] == 0.5
    assert training["gain_two_sided"] is False
    # two-sided: the flag reaches the term, and scoring each image by the better end changes the rows
    calls.clear()
    two_sided = train_directions(tiny_pipeline(0, tmp_path / "b2"), _images(), progress=False, gain_weight=10.0,
                                 gain_top_share=0.5, gain_two_sided=True, **FAST)
    assert [call[3] for call in calls] == [True] * FAST["steps"]
    assert not torch.allclose(two_sided.embeddings, gained.embeddings)
    assert json.loads(two_sided.metadata["training"])["gain_two_sided"] is True
    # the chunked, gradient-cached path adds the same term
    chunked = train_directions(tiny_pipeline(0, tmp_path / "c"), _images(), progress=False, gain_weight=10.0,
                               gain_top_share=0.5, chunk_size=3, **FAST)
    assert torch.allclose(gained.embeddings, chunked.embeddings, atol=1e-5)
    assert json.loads(chunked.metadata["loss_history"]) == pytest.approx(history, abs=1e-4)
    # a checkpoint written with the term is not resumed without it, nor with another share
    out = tmp_path / "resume"
    train_directions(tiny_pipeline(0, tmp_path / "d"), _images(), progress=False, output_dir=out, gain_weight=10.0,
                     **FAST)
    with pytest.raises(ValueError, match="gain_weight=10.0 but this run has gain_weight=0.0"):
        train_directions(tiny_pipeline(0, tmp_path / "d"), _images(), progress=False, output_dir=out, resume=True,
                         **{**FAST, "steps": FAST["steps"] + 1})
    with pytest.raises(ValueError, match="gain_top_share=0.25 but this run has gain_top_share=0.5"):
        train_directions(tiny_pipeline(0, tmp_path / "d"), _images(), progress=False, output_dir=out, resume=True,
                         gain_weight=10.0, gain_top_share=0.5, **{**FAST, "steps": FAST["steps"] + 1})
    with pytest.raises(ValueError, match="gain_two_sided=False but this run has gain_two_sided=True"):
        train_directions(tiny_pipeline(0, tmp_path / "d"), _images(), progress=False, output_dir=out, resume=True,
                         gain_weight=10.0, gain_two_sided=True, **{**FAST, "steps": FAST["steps"] + 1})
    # the term compares the UNet's output with the noise: a model that predicts something else is refused
    v_pipe = tiny_pipeline(0, tmp_path / "v")
    v_pipe.scheduler.register_to_config(prediction_type="v_prediction")
    with pytest.raises(ValueError, match="prediction_type is 'v_prediction'"):
        train_directions(v_pipe, _images(), progress=False, gain_weight=1.0, **FAST)
    for bad, match in (({"gain_weight": -1.0}, "gain_weight=-1.0"), ({"gain_weight": math.inf}, "gain_weight=inf"),
                       ({"gain_top_share": 0.0}, "gain_top_share=0.0"),
                       ({"gain_two_sided": True}, "with gain_weight=0: they shape the denoising-gain term"),
                       ({"gain_top_share": 0.5}, "gain_top_share=0.5 with gain_weight=0"),
                       ({"gain_weight": 1.0, "edit_space": "hspace"}, "needs edit_space='eps'")):
        with pytest.raises(ValueError, match=match):
            train_directions(tiny_pipeline(0, tmp_path / "e"), _images(), progress=False, **{**FAST, **bad})
