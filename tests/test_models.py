"""Loading pipelines offline, device/dtype defaults, and the VAE helpers."""

import socket

import pytest
import torch

from noiseclr_lite.models import (BUNDLED_MODEL, decode_latents, default_device, default_dtype, encode_images,
                                  image_size, load_pipeline)


def test_local_folder_loads_with_the_network_cut(tiny_pipe_dir, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("load_pipeline tried to reach the network for a local folder")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    pipe = load_pipeline(tiny_pipe_dir, device="cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.safety_checker is None
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    assert not pipe.unet.training


def test_dtype_and_device_defaults():
    assert default_dtype("cpu") == torch.float32 and default_dtype("cuda") == torch.float16
    assert default_device().type in ("cpu", "cuda", "mps")


def test_explicit_dtype_is_honoured(tiny_pipe_dir):
    assert load_pipeline(tiny_pipe_dir, device="cpu", dtype=torch.bfloat16).unet.dtype == torch.bfloat16


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(str(tmp_path / "missing") + "/")
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline(tmp_path)


def test_bundled_model_is_the_default_path():
    assert BUNDLED_MODEL.endswith("data/models/toyworld-sd")


def test_image_size_is_the_unets_latent_size_times_the_vae_factor(tiny_pipe):
    latent = tiny_pipe.unet.config.sample_size
    assert image_size(tiny_pipe) == latent * 2 ** (len(tiny_pipe.vae.config.block_out_channels) - 1)
    assert image_size(tiny_pipe) == decode_latents(tiny_pipe, torch.zeros(1, 4, latent, latent))[0].width


def test_encode_decode_shapes_and_ranges(tiny_pipe):
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    latents = encode_images(tiny_pipe, images, batch_size=2)
    assert latents.shape == (3, 4, 16, 16) and latents.dtype == torch.float32
    assert torch.allclose(latents, encode_images(tiny_pipe, images), atol=1e-5)  # the posterior mean: deterministic
    sampled = encode_images(tiny_pipe, images, sample=True, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(sampled, latents)
    pictures = decode_latents(tiny_pipe, latents, batch_size=2)
    assert len(pictures) == 3 and pictures[0].size == (32, 32) and pictures[0].mode == "RGB"


def test_loading_a_local_folder_prints_no_progress_bars_and_restores_logging(tiny_pipe_dir, capfd):
    import diffusers.utils.logging as diffusers_logging

    before = diffusers_logging.get_verbosity()
    load_pipeline(tiny_pipe_dir, device="cpu")
    err = capfd.readouterr().err
    assert "Loading" not in err and "it/s" not in err
    assert diffusers_logging.get_verbosity() == before and diffusers_logging.is_progress_bar_enabled()
