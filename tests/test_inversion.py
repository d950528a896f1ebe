"""DDIM and edit-friendly DDPM inversion on the tiny random pipeline (few steps, CPU)."""

import types

import pytest
import torch

from noiseclr_lite.inversion import (DDIMInversion, DDPMInversion, ddim_invert, ddpm_invert, encode_prompt,
                                     make_scheduler, reconstruct)
from noiseclr_lite.models import encode_images


def _image_latents(pipe, n=1, seed=0):
    """Scaled VAE latents [n, 4, 16, 16] of smooth random images in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g) * 2 - 1, size=32, mode="bilinear")
    return encode_images(pipe, images)


def test_ddpm_inversion_reconstructs_exactly(tiny_pipe):
    """Replaying the noise maps gives the input back.  (VAE latents come channels-last; the
    CPU convolutions then round differently than on the sampler's copies, ~2e-5 here, unless
    every UNet input is made contiguous: this test caught that.)"""
    x0 = _image_latents(tiny_pipe, n=2)
    inv = ddpm_invert(tiny_pipe, x0, num_inference_steps=6)
    assert isinstance(inv, DDPMInversion)
    assert inv.latents_T.shape == x0.shape and inv.noise_maps.shape == (6, 2, 4, 16, 16)
    assert inv.timesteps.tolist() == make_scheduler(tiny_pipe, 6).timesteps.tolist()  # noisiest first
    assert inv.timesteps[0] > inv.timesteps[-1]
    error = (reconstruct(tiny_pipe, inv) - x0).abs().max().item()
    print(f"DDPM inversion round trip, 6 steps: max abs error {error:.2e}")
    assert error < 1e-4


def test_ddpm_inversion_skip_and_prompt(tiny_pipe):
    """Skipping the noisiest steps and inverting under a prompt both stay exact."""
    x0 = _image_latents(tiny_pipe, seed=1)
    cond = encode_prompt(tiny_pipe, "photo of person")
    inv = ddpm_invert(tiny_pipe, x0, num_inference_steps=8, skip=5, prompt_embeds=cond)
    assert inv.noise_maps.shape[0] == 3 and len(inv.timesteps) == 3 and inv.skip == 5
    assert inv.timesteps.tolist() == make_scheduler(tiny_pipe, 8).timesteps[5:].tolist()
    assert torch.equal(inv.prompt_embeds, cond)
    assert (reconstruct(tiny_pipe, inv) - x0).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="skip"):
        ddpm_invert(tiny_pipe, x0, num_inference_steps=4, skip=4)


def test_ddpm_inversion_is_seeded(tiny_pipe):
    x0 = _image_latents(tiny_pipe)
    a = ddpm_invert(tiny_pipe, x0, num_inference_steps=2, seed=7)
    b = ddpm_invert(tiny_pipe, x0, num_inference_steps=2, generator=torch.Generator().manual_seed(7))
    c = ddpm_invert(tiny_pipe, x0, num_inference_steps=2, seed=8)
    assert torch.equal(a.noise_maps, b.noise_maps) and torch.equal(a.latents_T, b.latents_T)
    assert not torch.allclose(a.noise_maps, c.noise_maps)


def test_ddim_inversion_is_exact_when_the_noise_prediction_is_constant(tiny_pipe):
    """With eps independent of x the DDIM step is invertible in closed form: this checks that the
    inverse and forward schedulers agree on every timestep and alpha (no UNet is run)."""
    tiny_pipe.unet.forward = lambda sample, t, encoder_hidden_states: types.SimpleNamespace(
        sample=torch.full_like(sample, 0.3))
    x0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    for steps in (7, 50):
        inv = ddim_invert(tiny_pipe, x0, num_inference_steps=steps)
        assert len(inv.trajectory) == steps + 1 and torch.equal(inv.trajectory[0], x0)
        assert torch.equal(inv.trajectory[-1], inv.latents_T)
        assert (reconstruct(tiny_pipe, inv) - x0).abs().max().item() < 1e-4


def test_ddim_inversion_round_trip_error(tiny_pipe):
    """A real UNet makes DDIM inversion approximate; report the error, check it stays bounded.

    The tiny pipeline's UNet is random: its noise prediction changes far more between
    neighbouring steps than a trained model's, so the round trip error is large and has no
    clear trend at few steps (measured on unit-variance latents: 3 steps mean abs 0.48, max
    2.3; 6 steps 0.94, 5.3; 10/50/200 steps mean 1.09/0.90/0.57).  This guards against a
    blow-up; the test below checks convergence on a smooth stand-in model.
    """
    x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))  # like SD's scaled latents
    errors = {}
    for steps in (3, 6):
        inv = ddim_invert(tiny_pipe, x0, num_inference_steps=steps)
        assert isinstance(inv, DDIMInversion) and inv.latents_T.shape == x0.shape
        diff = reconstruct(tiny_pipe, inv) - x0
        errors[steps] = (diff.abs().mean().item(), diff.abs().max().item())
        print(f"DDIM inversion round trip, {steps} steps: mean abs error {errors[steps][0]:.3f}, "
              f"max {errors[steps][1]:.3f}")
    assert all(torch.isfinite(torch.tensor(e)).all() for e in errors.values())
    for mean_error, max_error in errors.values():  # more steps does not blow up
        assert mean_error < 2.0 and max_error < 12.0


def test_ddim_inversion_error_shrinks_with_steps_for_a_smooth_model(tiny_pipe):
    """With a smooth, x- and t-dependent stand-in for the UNet, the round trip error of DDIM
    inversion is first order in the step size (measured mean abs error: 10 steps 0.29,
    20 steps 0.17, 40 steps 0.085)."""
    tiny_pipe.unet.forward = lambda sample, t, encoder_hidden_states: types.SimpleNamespace(
        sample=0.5 * sample + 0.3 * torch.sin(3 * sample) * (1 + t / 1000))
    x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    errors = [(reconstruct(tiny_pipe, ddim_invert(tiny_pipe, x0, steps)) - x0).abs().mean().item()
              for steps in (10, 20, 40)]
    print("DDIM round trip error, smooth stand-in UNet, 10/20/40 steps:", [round(e, 3) for e in errors])
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.4 * errors[0]


@pytest.mark.parametrize("scheduler", ["pndm", "alpha_one", "trailing", "linspace"])
def test_ddpm_inversion_is_exact_under_other_scheduler_configs(tiny_pipe, scheduler):
    """SD 1.5 ships a PNDM scheduler; schedules may end at alpha = 1 or space steps differently.
    (A smooth stand-in for the UNet keeps this fast; exactness does not depend on the model.)"""
    from diffusers import DDIMScheduler, PNDMScheduler

    config = dict(tiny_pipe.scheduler.config)
    tiny_pipe.scheduler = {
        "pndm": lambda: PNDMScheduler.from_config(config, skip_prk_steps=True),
        "alpha_one": lambda: DDIMScheduler.from_config(config, set_alpha_to_one=True),
        "trailing": lambda: DDIMScheduler.from_config(config, timestep_spacing="trailing"),
        "linspace": lambda: DDIMScheduler.from_config(config, timestep_spacing="linspace"),
    }[scheduler]()
    tiny_pipe.unet.forward = lambda sample, t, encoder_hidden_states: types.SimpleNamespace(
        sample=0.5 * sample + 0.3 * torch.sin(3 * sample) * (1 + t / 1000))
    x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    inv = ddpm_invert(tiny_pipe, x0, num_inference_steps=7)
    assert torch.isfinite(inv.noise_maps).all()
    assert (reconstruct(tiny_pipe, inv) - x0).abs().max().item() < 1e-4
    ddim = ddim_invert(tiny_pipe, x0, num_inference_steps=7)
    assert ddim.timesteps.tolist() == inv.timesteps.tolist()
    assert (reconstruct(tiny_pipe, ddim) - x0).abs().mean().item() < 1.0
