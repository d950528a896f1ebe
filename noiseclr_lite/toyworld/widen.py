"""Widen a trained VAE without changing what it computes (Net2Net-style channel copies).

``AutoencoderKL`` gives its encoder and decoder the same widths, so a wider *decoder*
(more reconstruction quality) needs a wider *encoder* too, and a retrained encoder would
move the latent space out from under the trained UNet and every learned direction.
Instead every channel of the old VAE is copied ``r`` times into the wider one:

- a layer's output channels are copies of the old channels, so its activations are copies;
- a layer's input weights are split over the ``r`` copies of each old input channel with
  random shares that sum to one, so the sum is the old one, and the copies of a decoder
  channel get different gradients (plain ``1/r`` shares would keep them copies forever);
- the copies of an old channel stay inside its GroupNorm group, so the group's mean and
  variance are the old ones;
- the mid-block attention's query is scaled by ``1/sqrt(r)``, because its dot products now
  sum over ``r`` copies and its ``1/sqrt(width)`` scale only takes back ``sqrt(r)``.

The widened VAE encodes to the same latents and decodes to the same images (up to float
rounding: tested); then only its decoder is trained (``train_model.finetune_decoder``).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL


def copy_index(old: int, new: int, groups: int) -> torch.Tensor:
    """For each of ``new`` channels, the old channel it copies; copies stay in the old channel's group.

    ``old`` channels in ``groups`` groups of ``old // groups``; ``new = r * old``. New channel
    ``j`` in group ``g`` copies old channel ``g * (old // groups) + (j % (new // groups)) // r``.
    """
    if new % old or old % groups:
        raise ValueError(f"cannot widen {old} channels to {new} in {groups} groups: "
                         f"the new width must be a multiple of the old, and the old of the group count")
    ratio, old_per_group, new_per_group = new // old, old // groups, new // groups
    j = torch.arange(new)
    return (j // new_per_group) * old_per_group + (j % new_per_group) // ratio


def _split_shares(index: torch.Tensor, shape_out: int, spread: float, generator: torch.Generator) -> torch.Tensor:
    """[out, new_in] random shares that sum to one over the copies of each old input channel."""
    ratio = len(index) // (int(index.max()) + 1)
    noise = torch.randn(shape_out, len(index), generator=generator)
    old_in = int(index.max()) + 1
    # zero-mean over the copies of each old channel, so the shares of one old channel sum to one
    mean = torch.zeros(shape_out, old_in).index_add_(1, index, noise) / ratio
    return (1.0 + spread * (noise - mean[:, index])) / ratio


@torch.no_grad()
def widen_vae(vae: AutoencoderKL, widths: tuple[int, ...], spread: float = 0.5, seed: int = 0) -> AutoencoderKL:
    """A VAE with ``widths`` (each a multiple ``r`` of the old width) computing the same function.

    ``spread`` is how unequal the random shares of a split input weight are (0: all ``1/r``).
    Returns a new float32 ``AutoencoderKL``; ``vae`` is not changed.
    """
    old_widths = tuple(vae.config.block_out_channels)
    if len(widths) != len(old_widths):
        raise ValueError(f"widths {tuple(widths)} must have as many levels as the VAE's {old_widths}")
    if any(new % old for new, old in zip(widths, old_widths)):
        raise ValueError(f"widths {tuple(widths)}: each must be a multiple of the VAE's own {old_widths}, "
                         f"e.g. {tuple(2 * w for w in old_widths)}")
    config = dict(vae.config)
    config["block_out_channels"] = tuple(widths)
    wide = AutoencoderKL.from_config(config)
    groups = vae.config.norm_num_groups
    generator = torch.Generator().manual_seed(seed)
    old_state = {k: v.float() for k, v in vae.state_dict().items()}
    new_state = {}
    for name, target in wide.state_dict().items():
        value = old_state[name]
        # dim 0 is a layer's output channels (or a bias/norm's only dim); dim 1 its input channels
        if target.shape[0] != value.shape[0]:
            value = value[copy_index(value.shape[0], target.shape[0], groups)]
        if value.dim() >= 2 and target.shape[1] != value.shape[1]:
            index = copy_index(value.shape[1], target.shape[1], groups)
            shares = _split_shares(index, value.shape[0], spread, generator)
            value = value[:, index] * shares.view(*shares.shape, *([1] * (value.dim() - 2)))
        if name.endswith(("attentions.0.to_q.weight", "attentions.0.to_q.bias")):
            value = value * (old_widths[-1] / widths[-1]) ** 0.5
        if value.shape != target.shape:
            raise ValueError(f"{name}: widened to {tuple(value.shape)}, expected {tuple(target.shape)}")
        new_state[name] = value
    wide.load_state_dict(new_state)
    return wide
