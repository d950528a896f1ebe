"""The attribute oracle: a small CNN that reads the domain and every attribute of an image.

One network, several heads: a 5-way domain classifier and one binary logit per
(domain, attribute) pair — 24 in all, with a scene's face and cat attributes as their
own heads.  It is trained on fresh renders, augmented with blur, noise, colour jitter
and small shifts so that it also reads VAE reconstructions and model samples, which are
softer and noisier than the renders.  Shipped as ``data/models/oracle/`` (safetensors +
config.json); ``python -m noiseclr_lite.toyworld train-oracle`` retrains it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .domains import DOMAIN_NAMES, DOMAINS, render_batch

#: every (domain, attribute) head, in a fixed order
HEADS: list[tuple[str, str]] = [(d, a) for d in DOMAIN_NAMES for a in DOMAINS[d].attributes]
#: The same heads as ``"domain.attribute"`` names, as ``config.json`` stores them.
HEAD_NAMES: list[str] = [f"{d}.{a}" for d, a in HEADS]


class Oracle(nn.Module):
    """CNN over [B, 3, 64, 64] images in [-1, 1] -> domain logits [B, 5], attribute logits [B, 24]."""

    def __init__(self, width: int = 32):
        super().__init__()
        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1, stride=2), nn.BatchNorm2d(cout), nn.SiLU())
        # a strided stem: full-resolution convolutions are what costs most on a CPU
        self.features = nn.Sequential(nn.Conv2d(3, width, 4, stride=2, padding=1), nn.SiLU(),
                                      block(width, 2 * width), block(2 * width, 4 * width),
                                      block(4 * width, 4 * width))  # 64 -> 32 -> 16 -> 8 -> 4 px
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 16, 256), nn.SiLU(), nn.Dropout(0.1),
                                  nn.Linear(256, len(DOMAIN_NAMES) + len(HEADS)))
        self.width = width

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for images [B, 3, 64, 64] in [-1, 1]: ([B, 5] domain, [B, 24] attribute value 1).

        Training calls this; to read images, :meth:`predict` gives probabilities at any size.
        """
        out = self.head(self.features(images))
        return out[:, :len(DOMAIN_NAMES)], out[:, len(DOMAIN_NAMES):]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict:
        """Probabilities for images [B, 3, 64, 64] in [-1, 1] (other sizes are resized).

        Returns {"domain": [B, 5] softmax, "attributes": [B, 24] sigmoid = P(value index 1)}.
        """
        self.eval()
        images = images.float().to(next(self.parameters()).device)
        if images.shape[-1] != 64:
            images = F.interpolate(images, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
        domain_logits, attribute_logits = self(images)
        return {"domain": domain_logits.softmax(-1).cpu(), "attributes": attribute_logits.sigmoid().cpu()}

    def save(self, folder: str | os.PathLike, card: dict | None = None) -> None:
        """Write ``model.safetensors`` and ``config.json`` (width, heads, training card)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / "model.safetensors")
        config = {"width": self.width, "domains": DOMAIN_NAMES, "heads": HEAD_NAMES}
        (folder / "config.json").write_text(json.dumps({**config, **(card or {})}, indent=1))
        if card and "card" in card:
            write_oracle_card(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Oracle":
        """Load a saved oracle; the error names the folder and how to make one."""
        folder = Path(folder)
        if not (folder / "model.safetensors").exists():
            raise FileNotFoundError(f"no oracle in {folder} (model.safetensors missing); train one with "
                                    f"`python -m noiseclr_lite.toyworld train-oracle --out {folder}`")
        config = json.loads((folder / "config.json").read_text())
        if config["heads"] != HEAD_NAMES:
            raise ValueError(f"the oracle in {folder} was trained for other attributes (its heads "
                             f"{config['heads']}, this world's {HEAD_NAMES}); retrain it: "
                             f"`python -m noiseclr_lite.toyworld train-oracle --out {folder}`")
        oracle = cls(config["width"])
        oracle.load_state_dict(load_file(folder / "model.safetensors"))
        return oracle.eval()


#: The bars of the world-model issue: per-attribute accuracy on renders and on VAE reconstructions.
RENDER_BAR, RECONSTRUCTION_BAR = 0.98, 0.95


def write_oracle_card(folder: str | os.PathLike) -> Path:
    """Write ``folder/README.md``, the oracle's card, from the training card in ``config.json``.

    Lists the training settings and the held-out accuracy of every head on renders and on VAE
    reconstructions, each against its bar (>= 98% and >= 95%), and says which heads miss it.
    """
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    card = config.get("card")
    if not card:
        raise ValueError(f"{folder}/config.json has no training card; retrain with "
                         f"`python -m noiseclr_lite.toyworld train-oracle --out {folder}`")
    renders, recon = card["held_out_renders"], card.get("held_out_vae_reconstructions", {})
    lines = ["# The attribute oracle", "",
             "A small multi-head CNN that reads the bundled world's images: the domain (5 classes) and",
             "P(value 1) of each of the 24 binary attributes (`domain.attribute`). It is what",
             "`noiseclr_lite.metrics` scores directions with. Trained on fresh renders, augmented with blur,",
             "colour jitter, shifts and noise, and mixed with VAE reconstructions so that it also reads",
             "decoded and generated images.", "",
             f"- training: {card['steps']} steps, batch {card['batch']}, AdamW one-cycle lr {card['lr']}, "
             f"seed {card['seed']}" + (f", starting from the oracle in `{card['init']}`" if card.get("init") else ""),
             "- command: `python -m noiseclr_lite.toyworld train-oracle --vae data/models/toyworld-sd "
             f"--steps {card['steps']} --batch {card['batch']} --lr {card['lr']}"
             + (f" --init {card['init']}" if card.get("init") else "") + "`"]
    for i, earlier in enumerate(card.get("history", [])):
        lines.append(f"- before that ({i + 1}): {earlier['steps']} steps, batch {earlier['batch']}, lr {earlier['lr']}, "
                     f"seed {earlier['seed']}" + (f", from `{earlier['init']}`" if earlier.get("init") else
                                                  ", from random weights"))
    lines += ["",
             f"## Held-out accuracy (bars: renders >= {RENDER_BAR:.0%}, VAE reconstructions >= "
             f"{RECONSTRUCTION_BAR:.0%})", "",
             "| head | renders | VAE reconstructions |", "|---|---|---|"]
    missed = []
    for head, value in renders.items():
        other = recon.get(head)
        if value < RENDER_BAR or (other is not None and other < RECONSTRUCTION_BAR):
            missed.append(head)
        lines.append(f"| {head} | {value:.3f} | {'' if other is None else f'{other:.3f}'} |")
    lines += ["", ("Every head clears its bars." if not missed else
                   f"**Below the bars:** {', '.join(missed)}. Scores that involve these heads are less reliable; "
                   "read them with that in mind.")]
    path = folder / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def label_targets(labels: list[tuple[str, dict[str, int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets for a batch: domain index [B], attribute values [B, 24], mask [B, 24] (1 = head applies)."""
    domain = torch.tensor([DOMAIN_NAMES.index(d) for d, _ in labels])
    values = torch.zeros(len(labels), len(HEADS))
    mask = torch.zeros(len(labels), len(HEADS))
    for i, (d, lab) in enumerate(labels):
        for j, (hd, attr) in enumerate(HEADS):
            if hd == d:
                values[i, j], mask[i, j] = lab[attr], 1.0
    return domain, values, mask


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur, noise, colour jitter and shifts that mimic VAE reconstructions and samples.

    images: [B, 3, 64, 64] in [-1, 1]; returns the same shape and range.
    """
    b = images.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    # blur a random half with a separable 5-tap Gaussian of random width
    sigma = 0.3 + 1.2 * u(b)
    k = torch.arange(-2, 3).float()
    kernel = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # [B, 5]
    x = images.reshape(1, b * 3, 64, 64)
    kx = kernel.repeat_interleave(3, 0)[:, None, None, :]
    ky = kernel.repeat_interleave(3, 0)[:, None, :, None]
    horizontal = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), kx, groups=b * 3)
    blurred = F.conv2d(F.pad(horizontal, (0, 0, 2, 2), mode="replicate"), ky, groups=b * 3)
    blurred = blurred.reshape(b, 3, 64, 64)
    use_blur = (u(b) < 0.5).float()[:, None, None, None]
    images = use_blur * blurred + (1 - use_blur) * images
    # colour jitter: per-image brightness/contrast and per-channel gain
    gain = 1 + 0.08 * (2 * u(b, 3, 1, 1) - 1)
    offset = 0.06 * (2 * u(b, 1, 1, 1) - 1)
    images = images * gain + offset
    # shifts of up to 3 px
    shift = (u(2) * 7).long() - 3
    images = torch.roll(images, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
    # pixel noise
    images = images + 0.06 * u(b, 1, 1, 1) * torch.randn(images.shape, generator=generator)
    return images.clamp(-1, 1)


def _pixels(images_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def accuracy(oracle: Oracle, images: torch.Tensor, labels) -> dict:
    """Per-head accuracy (threshold 0.5) and domain accuracy on ``images`` [B, 3, 64, 64] in [-1, 1]."""
    domain, values, mask = label_targets(labels)
    probs = {"domain": [], "attributes": []}
    for start in range(0, len(images), 256):
        p = oracle.predict(images[start:start + 256])
        probs["domain"].append(p["domain"]), probs["attributes"].append(p["attributes"])
    domain_probs, attr_probs = torch.cat(probs["domain"]), torch.cat(probs["attributes"])
    result = {"domain": float((domain_probs.argmax(1) == domain).float().mean())}
    correct = ((attr_probs > 0.5).float() == values).float()
    for j, name in enumerate(HEAD_NAMES):
        if mask[:, j].sum() > 0:
            result[name] = float((correct[:, j] * mask[:, j]).sum() / mask[:, j].sum())
    return result


def train_oracle(out: str | os.PathLike, steps: int = 3000, batch: int = 64, lr: float = 2e-3, seed: int = 0,
                 vae=None, vae_fraction: float = 0.25, progress: bool = True, held_out: int = 2000,
                 init: str | os.PathLike | None = None) -> dict:
    """Train the oracle on fresh renders (plus VAE reconstructions if ``vae`` is given).

    ``init``: an oracle folder to start from instead of random weights, so that a change to
    one attribute's drawing costs a short fine-tune rather than a full retraining.
    Returns and saves a card with held-out accuracies on renders (and reconstructions).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    oracle, history = Oracle(), None
    if init is not None:
        oracle = Oracle.load(init).train()
        # the chain of trainings the starting oracle went through, oldest first, then that training itself
        init_card = json.loads((Path(init) / "config.json").read_text()).get("card")
        history = [] if init_card is None else init_card.get("history", []) + [
            {key: init_card[key] for key in ("steps", "batch", "lr", "seed")} | {"init": init_card.get("init")}]
    opt = torch.optim.AdamW(oracle.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    bar = tqdm(range(steps), desc="oracle", disable=not progress)
    for step in bar:
        images_u8, labels = render_batch(batch, seed=seed * 10**7 + 7 * step + 3)
        images = _pixels(images_u8)
        if vae is not None:
            n_vae = int(batch * vae_fraction)
            with torch.no_grad():
                images[:n_vae] = vae.decode(vae.encode(images[:n_vae]).latent_dist.mode()).sample.clamp(-1, 1)
        images = augment(images, generator)
        domain, values, mask = label_targets(labels)
        oracle.train()
        domain_logits, attr_logits = oracle(images)
        attr_loss = (F.binary_cross_entropy_with_logits(attr_logits, values, reduction="none") * mask).sum() / mask.sum()
        loss = F.cross_entropy(domain_logits, domain) + attr_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    oracle.eval()
    held_u8, held_labels = render_batch(held_out, seed=123_456_789)
    held = _pixels(held_u8)
    card = {"steps": steps, "batch": batch, "lr": lr, "seed": seed,
            "held_out_renders": accuracy(oracle, held, held_labels)}
    if init is not None:
        card.update(init=str(init), history=history)
    if vae is not None:
        with torch.no_grad():
            recon = torch.cat([vae.decode(vae.encode(held[s:s + 250]).latent_dist.mode()).sample.clamp(-1, 1)
                               for s in range(0, len(held), 250)])
        card["held_out_vae_reconstructions"] = accuracy(oracle, recon, held_labels)
    oracle.save(out, {"card": card})
    return card
