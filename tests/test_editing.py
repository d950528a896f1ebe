"""Direction-conditioned denoising on the tiny random pipeline (few steps, CPU)."""

import types
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from noiseclr_lite.directions import Directions, empty_conditioning
from noiseclr_lite.editing import DirectionEdit, denoise, edit, edit_grid, generate, split_regions
from noiseclr_lite.inversion import ddim_invert, ddpm_invert, encode_prompt, make_scheduler, reconstruct
from noiseclr_lite.testing import tiny_pipeline

STEPS = 5  # timesteps 801, 601, 401, 201, 1


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One pipeline with two direction sets ("face", "cat") and a DDPM-inverted latent."""
    pipe = tiny_pipeline(seed=0, tokenizer_dir=tmp_path_factory.mktemp("tok"))
    faces = Directions.create(pipe, 3, prefix="face", seed=1)
    cats = Directions.create(pipe, 2, prefix="cat", seed=2)
    x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    inversion = ddpm_invert(pipe, x0, num_inference_steps=STEPS)
    return types.SimpleNamespace(pipe=pipe, faces=faces, cats=cats, x0=x0, inversion=inversion,
                                 plain=reconstruct(pipe, inversion))


@contextmanager
def unet_batches(pipe):
    """Record the batch size of every UNet call."""
    sizes = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        yield sizes
    finally:
        handle.remove()


def test_zero_scales_reproduce_the_inverted_image(world):
    edits = [DirectionEdit(world.faces, 0, 0.0), DirectionEdit(world.cats, "<cat_1>", 0.0)]
    with unet_batches(world.pipe) as sizes:
        images, latents = edit(world.pipe, edits, inversion=world.inversion, return_latents=True)
    assert sizes == [1] * STEPS  # zero-scale directions are not even computed
    assert torch.equal(latents, world.plain)  # exactly the unedited sampler
    assert (latents - world.x0).abs().max().item() < 1e-4  # = the inverted input (DDPM inversion)
    assert len(images) == 1 and images[0].size == (32, 32) and images[0].mode == "RGB"


def test_a_direction_changes_the_image_with_one_unet_call_per_step(world):
    with unet_batches(world.pipe) as sizes:
        _, latents = edit(world.pipe, [DirectionEdit(world.faces, 1, 3.0)], inversion=world.inversion,
                          return_latents=True)
    assert sizes == [2] * STEPS  # [empty, <face_1>] stacked in one call
    assert latents.shape == world.x0.shape
    assert (latents - world.plain).abs().mean().item() > 1e-2


def test_step_windows(world):
    """A window excluding every timestep is no edit; a half window only calls the direction early."""
    never = DirectionEdit(world.faces, 0, 5.0, window=(0.0, 0.0))
    with unet_batches(world.pipe) as sizes:
        _, latents = edit(world.pipe, [never], inversion=world.inversion, return_latents=True)
    assert sizes == [1] * STEPS and torch.equal(latents, world.plain)

    early = DirectionEdit(world.faces, 0, 5.0, window=(1.0, 0.5))
    with unet_batches(world.pipe) as sizes:
        edit(world.pipe, [early], inversion=world.inversion)
    assert sizes == [2 if t / 1000 >= 0.5 else 1 for t in world.inversion.timesteps.tolist()] == [2, 2, 1, 1, 1]


def test_two_direction_sets_and_a_prompt_follow_the_formula(world):
    """eps_hat = eps_u + g (eps_c - eps_u) + sum_k s_k (eps_k - eps_u), checked step by step
    against separate UNet calls, for directions from two sets and a guided prompt."""
    pipe, faces, cats = world.pipe, world.faces, world.cats
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    edits = [DirectionEdit(faces, "<face_2>", 1.5), DirectionEdit(cats, 1, -2.0)]
    with unet_batches(pipe) as sizes:
        _, latents = edit(pipe, edits, latents_T=z, prompt="photo of person", guidance_scale=3.0,
                          num_inference_steps=2, return_latents=True)
    assert sizes == [4, 4]  # [empty, prompt, <face_2>, <cat_1>] in one call per step

    conds = {"u": empty_conditioning(pipe), "c": encode_prompt(pipe, "photo of person"),
             "f": faces.conditioning(pipe)[2:3], "k": cats.conditioning(pipe)[1:2]}
    assert not torch.allclose(conds["f"], conds["k"])
    scheduler = make_scheduler(pipe, 2)
    x = z.clone()
    for t in scheduler.timesteps:
        eps = {name: pipe.unet(x, t, encoder_hidden_states=c).sample for name, c in conds.items()}
        eps_hat = (eps["u"] + 3.0 * (eps["c"] - eps["u"]) + 1.5 * (eps["f"] - eps["u"])
                   - 2.0 * (eps["k"] - eps["u"]))
        x = scheduler.step(eps_hat, t, x).prev_sample
    torch.testing.assert_close(latents, x, atol=1e-4, rtol=1e-4)


def test_directions_in_a_context_push_from_that_context(world):
    """A set trained in "a face, {}" pushes by eps(c_k) - eps("a face") (its reference), a set used
    alone by eps(c_k) - eps(""); two sets of one context share one reference row."""
    pipe = world.pipe
    placed = Directions.create(pipe, 2, prefix="placed", seed=3, context="a face, {}")
    twin = Directions.create(pipe, 2, prefix="twin", seed=4, context="a face, {}")
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(6))
    edits = [DirectionEdit(placed, 0, 2.0), DirectionEdit(world.cats, 1, -1.0), DirectionEdit(twin, 1, 0.5)]
    with unet_batches(pipe) as sizes:
        _, latents = edit(pipe, edits, latents_T=z, num_inference_steps=2, return_latents=True)
    assert sizes == [5, 5]  # [empty, "a face", placed_0, cat_1, twin_1] in one call per step

    conds = {"u": empty_conditioning(pipe), "face": encode_prompt(pipe, "a face"),
             "p": placed.conditioning(pipe)[0:1], "k": world.cats.conditioning(pipe)[1:2],
             "t": twin.conditioning(pipe)[1:2]}
    torch.testing.assert_close(placed.reference_conditioning(pipe), conds["face"])
    scheduler = make_scheduler(pipe, 2)
    x = z.clone()
    for t in scheduler.timesteps:
        eps = {name: pipe.unet(x, t, encoder_hidden_states=c).sample for name, c in conds.items()}
        eps_hat = (eps["u"] + 2.0 * (eps["p"] - eps["face"]) - 1.0 * (eps["k"] - eps["u"])
                   + 0.5 * (eps["t"] - eps["face"]))
        x = scheduler.step(eps_hat, t, x).prev_sample
    torch.testing.assert_close(latents, x, atol=1e-4, rtol=1e-4)
    # a set in a context alone, under a prompt without guidance: no empty row is needed
    with unet_batches(pipe) as sizes:
        edit(pipe, [DirectionEdit(placed, 1, 1.0)], latents_T=z, num_inference_steps=2, prompt="a cat")
    assert sizes == [3, 3]  # [prompt, "a face", placed_1]


def test_a_reference_that_is_the_prompt_reuses_the_prompts_row(world):
    """Under the prompt "a face", directions trained in "a face, {}" push from the prompt's own
    prediction: the batch holds no second copy of it, and the result follows the formula."""
    pipe = world.pipe
    placed = Directions.create(pipe, 2, prefix="placed", seed=3, context="a face, {}")
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(6))
    with unet_batches(pipe) as sizes:
        _, latents = edit(pipe, [DirectionEdit(placed, 1, 1.5)], latents_T=z, num_inference_steps=2,
                          prompt="a face", return_latents=True)
    assert sizes == [2, 2]  # ["a face" (prompt and reference), placed_1]
    face, direction = encode_prompt(pipe, "a face"), placed.conditioning(pipe)[1:2]
    scheduler = make_scheduler(pipe, 2)
    x = z.clone()
    for t in scheduler.timesteps:
        eps_face = pipe.unet(x, t, encoder_hidden_states=face).sample
        eps_direction = pipe.unet(x, t, encoder_hidden_states=direction).sample
        x = scheduler.step(eps_face + 1.5 * (eps_direction - eps_face), t, x).prev_sample
    torch.testing.assert_close(latents, x, atol=1e-4, rtol=1e-4)
    # with guidance the empty row comes back for the guidance, still without a second "a face"
    with unet_batches(pipe) as sizes:
        edit(pipe, [DirectionEdit(placed, 0, 1.0)], latents_T=z, num_inference_steps=2, prompt="a face",
             guidance_scale=3.0)
    assert sizes == [3, 3]  # [empty, "a face", placed_0]


def test_split_regions_settles_conflicts_by_relative_strength_and_keeps_agreeing_pushes():
    left, middle, right = (torch.zeros(1, 4, 2, 6) for _ in range(3))
    left[..., :2], middle[..., 2:4], right[..., 4:] = 1.0, 1.0, 1.0
    face = 100.0 * left + 1.0 * right + 50.0 * middle   # strong, mostly left; also pushes right
    face_2 = 0.5 * face                                  # a second face edit: moves with the first
    cat = -0.1 * right - 0.01 * left + 0.05 * middle     # faint, mostly right, *against* the face there;
    kept_face, kept_face_2, kept_cat = split_regions([face, face_2, cat], owners=["face", "face", "cat"])
    # left: the face wins and the opposing cat push goes; right: relative strength decides, not size,
    # so the faint cat wins and the opposing face push goes; middle: both push the same way, both stay
    torch.testing.assert_close(kept_face, 100.0 * left + 50.0 * middle)
    torch.testing.assert_close(kept_face_2, 50.0 * left + 25.0 * middle)
    torch.testing.assert_close(kept_cat, -0.1 * right + 0.05 * middle)
    assert split_regions([face, cat], owners=["face", "face"]) == [face, cat]  # one set: the plain sum
    sets = [object(), object()]  # owners only need to be hashable (the Directions objects themselves)
    assert all(torch.equal(a, b) for a, b in zip(split_regions([face, cat], sets),
                                                   split_regions([face, cat], ["face", "cat"])))


def test_denoise_records_no_autograd_graph(world):
    latents_T = torch.randn(1, 4, 16, 16, requires_grad=True)
    out = denoise(world.pipe, [DirectionEdit(world.faces, 0, 2.0), DirectionEdit(world.cats, 1, 2.0)],
                  latents_T=latents_T, num_inference_steps=2, composition="regions")
    assert not out.requires_grad


def test_regions_composition_changes_only_cross_set_edits(world):
    same_set = [DirectionEdit(world.faces, 0, 2.0), DirectionEdit(world.faces, 1, -1.5)]
    plain = edit(world.pipe, same_set, inversion=world.inversion, return_latents=True)[1]
    regions = edit(world.pipe, same_set, inversion=world.inversion, return_latents=True, composition="regions")[1]
    assert torch.equal(plain, regions)  # one set: nothing to split
    two_sets = [DirectionEdit(world.faces, 0, 2.0), DirectionEdit(world.cats, 1, 2.0)]
    summed = edit(world.pipe, two_sets, inversion=world.inversion, return_latents=True)[1]
    split = edit(world.pipe, two_sets, inversion=world.inversion, return_latents=True, composition="regions")[1]
    assert (summed - split).abs().max().item() > 1e-3
    with pytest.raises(ValueError, match="composition must be one of"):
        edit(world.pipe, two_sets, inversion=world.inversion, composition="average")


def test_generation_from_noise_is_seeded(world):
    pipe, steps = world.pipe, 2
    images = generate(pipe, seed=3, num_inference_steps=steps, batch_size=2)
    again, latents = edit(pipe, seed=3, num_inference_steps=steps, batch_size=2, return_latents=True)
    assert len(images) == 2 and all(im.size == (32, 32) for im in images)
    assert latents.shape == (2, 4, 16, 16)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, again))
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    _, from_z = edit(pipe, latents_T=z, num_inference_steps=steps, return_latents=True)
    assert torch.equal(from_z, latents)  # the seed only picks the start noise
    _, other = edit(pipe, seed=4, num_inference_steps=1, return_latents=True)
    assert not torch.allclose(other, latents[:1])
    _, noisy = edit(pipe, seed=3, num_inference_steps=1, eta=1.0, return_latents=True)
    _, noisy_again = edit(pipe, seed=3, num_inference_steps=1, eta=1.0, return_latents=True)
    _, quiet = edit(pipe, seed=3, num_inference_steps=1, return_latents=True)
    assert torch.equal(noisy, noisy_again) and not torch.allclose(noisy, quiet)
    wide = edit(pipe, num_inference_steps=1, height=48, width=64)
    assert wide[0].size == (64, 48)


def test_edit_from_ddim_inversion(world):
    inversion = ddim_invert(world.pipe, world.x0, num_inference_steps=2)
    _, zero = edit(world.pipe, [DirectionEdit(world.faces, 0, 0.0)], inversion=inversion, return_latents=True)
    assert torch.equal(zero, reconstruct(world.pipe, inversion))
    _, edited = edit(world.pipe, [DirectionEdit(world.faces, 0, 2.0)], inversion=inversion, return_latents=True)
    assert not torch.allclose(edited, zero)


def test_edit_grid(world):
    with unet_batches(world.pipe) as sizes:
        grid = edit_grid(world.pipe, world.faces, [0, "<face_1>"], [-2.0, 0.0, 2.0], num_inference_steps=1, seed=1)
    assert len(grid) == 2 and all(len(row) == 3 for row in grid)
    assert grid[0][1] is grid[1][1]  # the unedited column is computed once
    assert sizes == [2, 1, 2, 2, 2]  # row 0: -2, 0, +2; row 1: -2, (0 reused), +2; one step each
    assert not np.array_equal(np.asarray(grid[0][0]), np.asarray(grid[0][2]))


def test_edit_grid_edits_a_batch_of_images_in_one_call_per_scale(world):
    scales = [-2.0, 0.0, 2.0]
    with unet_batches(world.pipe) as sizes:
        grid = edit_grid(world.pipe, world.faces, [0], scales, num_inference_steps=1, seed=1, batch_size=2)
    assert sizes == [4, 2, 4]                         # 2 images x (edit + empty) per edited scale
    assert len(grid[0]) == 6                          # image-major: image 0 at -2, 0, +2, then image 1
    alone = edit(world.pipe, [DirectionEdit(world.faces, 0, 2.0)], num_inference_steps=1, seed=1, batch_size=2)
    assert np.array_equal(np.asarray(grid[0][2]), np.asarray(alone[0]))
    assert np.array_equal(np.asarray(grid[0][5]), np.asarray(alone[1]))


def test_bad_arguments(world):
    with pytest.raises(ValueError, match="window"):
        DirectionEdit(world.faces, 0, 1.0, window=(0.2, 0.8))
    with pytest.raises(ValueError, match="not both"):
        edit(world.pipe, latents_T=world.x0, inversion=world.inversion)
    with pytest.raises(KeyError):
        edit(world.pipe, [DirectionEdit(world.faces, "<nope>", 1.0)], num_inference_steps=1)
