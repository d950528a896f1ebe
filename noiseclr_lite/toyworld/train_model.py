"""Train the bundled world model: first the VAE, then the text encoder and UNet together.

Stage 1 (``vae``): an AutoencoderKL on freshly rendered images (an endless stream, so
it cannot overfit), L1 + MSE reconstruction plus a tiny KL term, until a held-out PSNR
target or a step budget is reached.  Stage 2 (``latents``): a fixed set of rendered,
captioned images is encoded once; the latents' spread sets ``scaling_factor`` as in
Stable Diffusion.  Stage 3 (``unet``): the text encoder (from scratch) and the UNet learn
epsilon-prediction with min-SNR-5 loss weighting, caption dropout and an EMA copy.

Every stage checkpoints atomically into ``work_dir`` and resumes from there, so the run
can be killed at any moment.  Every ``export_every`` steps the EMA weights are written
as a complete diffusers folder (fp16 safetensors) into ``out_dir``, together with
``training_state.json`` (step, settings, wall time); a later run with an empty
``work_dir`` continues from that shipped folder instead of from scratch.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm
from transformers import CLIPTextModel

from .domains import caption, render_batch
from .model import assemble_pipeline, build_scheduler, build_text_encoder, build_tokenizer, build_unet, build_vae


@dataclass
class WorldTrainingConfig:
    """Every setting of a world-model training run (recorded in training_state.json)."""

    out_dir: str = "data/models/toyworld-sd"
    work_dir: str = "checkpoints/toyworld"
    seed: int = 0
    vae_steps: int = 4000
    vae_batch: int = 16
    vae_lr: float = 5e-4
    vae_target_psnr: float = 32.0
    vae_kl_weight: float = 1e-6
    vae_eval_images: int = 256
    num_images: int = 40000
    unet_steps: int = 200000
    unet_batch: int = 64
    unet_lr: float = 4e-4
    warmup_steps: int = 500
    min_snr_gamma: float = 5.0
    # std of a per-image, per-channel constant added to the training noise ("offset noise",
    # as diffusers' --noise_offset).  SD's schedule leaves 7% of the signal at t=999, so a
    # model trained on plain noise reads an image's overall brightness from the mean of its
    # starting noise and ignores the caption (measured: "a car, day" and "a car, night" give
    # the same sky for the same seed).  Offset noise makes that mean uninformative.
    noise_offset: float = 0.0
    attribute_dropout: float = 0.3
    caption_dropout: float = 0.1
    ema_max_decay: float = 0.9999
    checkpoint_every: int = 100
    export_every: int = 500
    vae_widths: tuple = (16, 32, 64)
    unet_widths: tuple = (64, 128, 128)
    unet_layers_per_block: int = 1
    threads: int = 0
    extra: dict = field(default_factory=dict)


def _atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves half a checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)  # our own checkpoints only


def _to_pixels(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """Mean PSNR in dB of images in [-1, 1] (peak-to-peak 2), over the batch."""
    mse = (reference.clamp(-1, 1) - estimate.clamp(-1, 1)).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean())


# --------------------------------------------------------------------------- stage 1: VAE
def _decay(step: int, total: int, start: float = 0.7, floor: float = 0.1) -> float:
    """Learning-rate factor: 1 until ``start * total``, then linear down to ``floor`` at ``total``."""
    begin = start * total
    if step < begin:
        return 1.0
    return max(floor, 1.0 - (1.0 - floor) * (step - begin) / max(1.0, total - begin))

def train_vae(cfg: WorldTrainingConfig, work: Path) -> AutoencoderKL:
    """Train (or resume, or load the finished) VAE; returns it in eval mode."""
    final = work / "vae"
    if (final / "config.json").exists():
        return AutoencoderKL.from_pretrained(final).eval()
    shipped = Path(cfg.out_dir) / "vae"
    if (shipped / "config.json").exists():  # continue from the shipped model, do not retrain
        vae = AutoencoderKL.from_pretrained(shipped, dtype=torch.float32)
        vae.save_pretrained(final)
        return vae.eval()
    torch.manual_seed(cfg.seed)
    vae = build_vae(tuple(cfg.vae_widths))
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ckpt_path, step, history = work / "vae_ckpt.pt", 0, []
    if ckpt_path.exists():
        state = _load(ckpt_path)
        vae.load_state_dict(state["model"]), opt.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
    held_out, _ = render_batch(cfg.vae_eval_images, seed=10**9)
    held_out = _to_pixels(held_out)
    bar = tqdm(total=cfg.vae_steps, initial=step, desc="vae")
    while step < cfg.vae_steps:
        images, _ = render_batch(cfg.vae_batch, seed=cfg.seed * 10**7 + step)
        x = _to_pixels(images)
        for group in opt.param_groups:  # constant, then a linear decay to 10% over the last 30%
            group["lr"] = cfg.vae_lr * _decay(step, cfg.vae_steps)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + cfg.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.vae_steps:
            with torch.no_grad():
                value = psnr(held_out, vae.decode(vae.encode(held_out).latent_dist.mode()).sample)
            history.append((step, value))
            bar.write(f"vae step {step}: held-out PSNR {value:.2f} dB")
            _atomic_save({"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": step,
                          "history": history}, ckpt_path)
            if value >= cfg.vae_target_psnr:
                break
    bar.close()
    vae.save_pretrained(final)
    (final / "history.json").write_text(json.dumps(history))
    return vae.eval()


def finetune_decoder(model_dir: str | Path, work_dir: str | Path, steps: int, batch: int = 16, lr: float = 2e-4,
                     seed: int = 0, checkpoint_every: int = 100, threads: int = 0, out: str | Path | None = None) -> float:
    """Train only the VAE *decoder* of a shipped model, on fresh renders; returns held-out PSNR.

    The encoder stays frozen, so the latent space (and with it the UNet, the text encoder
    and every learned direction) stays valid: this is how the reconstruction quality is
    raised after the UNet has started training (as Stable Diffusion's ft-MSE decoders do).
    Checkpoints to ``work_dir/decoder_ckpt.pt`` and resumes; writes the VAE (fp16) to ``out``
    (default ``model_dir/vae``), so it can run beside a UNet training that exports ``model_dir``.
    Beside the VAE folder it writes ``decoder_finetune.json`` (steps, batch, lr, seed, held-out
    PSNR, wall time), which the model card (``card.py``) reports.
    """
    if threads:
        torch.set_num_threads(threads)
    model_dir, work = Path(model_dir), Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL.from_pretrained(model_dir / "vae", dtype=torch.float32)
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ckpt_path, step, wall, untimed = work / "decoder_ckpt.pt", 0, 0.0, 0
    if ckpt_path.exists():
        state = _load(ckpt_path)
        vae.load_state_dict(state["model"]), opt.load_state_dict(state["optimizer"])
        step = state["step"]
        # checkpoints written before wall time was recorded: say how many steps were not timed
        wall, untimed = state.get("wall", 0.0), state.get("untimed_steps", 0 if "wall" in state else step)
    held_out = _to_pixels(render_batch(256, seed=10**9)[0])
    start = time.time() - wall
    for step in tqdm(range(step, steps), initial=step, total=steps, desc="decoder"):
        x = _to_pixels(render_batch(batch, seed=seed * 10**7 + 5_000_000 + step)[0])
        for group in opt.param_groups:
            group["lr"] = lr * _decay(step, steps)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample()
        recon = vae.decode(latents).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            _atomic_save({"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                          "wall": time.time() - start, "untimed_steps": untimed}, ckpt_path)
    with torch.no_grad():
        value = psnr(held_out, vae.decode(vae.encode(held_out).latent_dist.mode()).sample)
    out = Path(out) if out else model_dir / "vae"
    vae.to(torch.float16).save_pretrained(out, safe_serialization=True)
    record = {"steps": steps, "batch": batch, "lr": lr, "seed": seed, "held_out_psnr": round(value, 2),
              "wall_seconds": round(time.time() - start), "untimed_steps": untimed}
    (out.parent / "decoder_finetune.json").write_text(json.dumps(record, indent=1))
    return value


# ---------------------------------------------------------------------- stage 2: latents
def encode_dataset(cfg: WorldTrainingConfig, work: Path, vae: AutoencoderKL) -> dict:
    """Render ``num_images`` captionable images and cache their latent mean/std once."""
    path = work / "latents.pt"
    if path.exists():
        return _load(path)
    images, labels = render_batch(cfg.num_images, seed=cfg.seed + 1)
    means, stds = [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(images), 256), desc="encode"):
            dist = vae.encode(_to_pixels(images[start:start + 256])).latent_dist
            means.append(dist.mean), stds.append(dist.std)
    mean, std = torch.cat(means), torch.cat(stds)
    data = {"mean": mean.half(), "std": std.half(), "labels": labels,
            "scaling_factor": float(1.0 / mean.float().std())}
    _atomic_save(data, path)
    return data


# ------------------------------------------------------------------------- stage 3: UNet
def _export(cfg, vae, tokenizer, text_encoder, unet, ema, step, wall, out: Path, scaling_factor):
    """Write the EMA weights as a complete fp16 diffusers folder plus training_state.json."""
    import copy
    ema_text, ema_unet = copy.deepcopy(text_encoder), copy.deepcopy(unet)
    ema.copy_to(list(ema_text.parameters()) + list(ema_unet.parameters()))
    vae.register_to_config(scaling_factor=scaling_factor)
    pipe = assemble_pipeline(vae, ema_text, tokenizer, ema_unet, build_scheduler())
    tmp = out.with_name(out.name + ".tmp")
    pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    state = {"unet_step": step, "wall_seconds": round(wall), "config": asdict(cfg),
             "hardware": f"{os.cpu_count()} CPU cores ({torch.get_num_threads()} torch threads), torch {torch.__version__}"}
    previous = out / "training_state.json"
    if previous.exists():  # events of the run's history (e.g. a renderer change) travel from export to export
        state["notes"] = json.loads(previous.read_text()).get("notes", [])
    (tmp / "training_state.json").write_text(json.dumps(state, indent=1))
    from .card import write_card

    write_card(tmp)  # "not measured yet": evaluation.json belongs to the weights it measured
    if out.exists():
        import shutil
        shutil.rmtree(out)
    os.replace(tmp, out)
    vae.to(torch.float32)


def training_noise(latents: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise like ``latents`` [B, C, h, w], plus a per-image, per-channel constant of std ``offset``.

    ``offset=0`` is plain ``randn_like``; see ``WorldTrainingConfig.noise_offset`` for why not.
    """
    noise = torch.randn_like(latents)
    if offset:
        # on the latents' device and dtype, so that training on a GPU or in half precision works
        noise = noise + offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1,
                                             device=latents.device, dtype=latents.dtype)
    return noise


def train_unet(cfg: WorldTrainingConfig, work: Path, vae: AutoencoderKL, data: dict) -> None:
    """Train text encoder + UNet on the cached latents, with EMA, checkpoints and exports."""
    out = Path(cfg.out_dir)
    tokenizer = build_tokenizer(work / "tokenizer")
    scheduler = build_scheduler()
    torch.manual_seed(cfg.seed)
    text_encoder = build_text_encoder(len(tokenizer))
    unet = build_unet(tuple(cfg.unet_widths), cfg.unet_layers_per_block)
    params = list(text_encoder.parameters()) + list(unet.parameters())
    ckpt_path, step, wall = work / "unet_ckpt.pt", 0, 0.0
    state = _load(ckpt_path) if ckpt_path.exists() else None
    if state is None and (out / "unet" / "config.json").exists():
        # continue from the shipped EMA weights (the committed hand-over between sessions)
        shipped = json.loads((out / "training_state.json").read_text())
        text_encoder = CLIPTextModel.from_pretrained(out / "text_encoder", dtype=torch.float32)
        unet = UNet2DConditionModel.from_pretrained(out / "unet", dtype=torch.float32)
        params = list(text_encoder.parameters()) + list(unet.parameters())
        step, wall = shipped["unet_step"], shipped["wall_seconds"]
        print(f"resuming from the shipped EMA weights in {out} at step {step}")
    ema = EMAModel(params, decay=cfg.ema_max_decay, use_ema_warmup=True, power=2 / 3)
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    if state is not None:
        text_encoder.load_state_dict(state["text_encoder"]), unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["optimizer"]), ema.load_state_dict(state["ema"])
        step, wall = state["step"], state["wall"]
        torch.set_rng_state(state["torch_rng"])
    elif step:
        ema.optimization_step = step
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    loss_weight = torch.clamp(snr, max=cfg.min_snr_gamma) / snr  # min-SNR-gamma for epsilon
    num = len(data["mean"])
    scaling = data["scaling_factor"]
    rng = random.Random(cfg.seed * 7919 + step)
    bar = tqdm(total=cfg.unet_steps, initial=step, desc="unet")
    text_encoder.train(), unet.train()
    start = time.time() - wall
    while step < cfg.unet_steps:
        idx = torch.randint(0, num, (cfg.unet_batch,))
        latents = (data["mean"][idx].float() + data["std"][idx].float() * torch.randn(cfg.unet_batch, 4, 16, 16)) * scaling
        prompts = [caption(*data["labels"][i], rng=rng, attribute_dropout=cfg.attribute_dropout,
                           caption_dropout=cfg.caption_dropout) for i in idx.tolist()]
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        noise = training_noise(latents, cfg.noise_offset)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.unet_batch,))
        noisy = scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, text_encoder(ids)[0]).sample
        per_sample = (pred - noise).pow(2).flatten(1).mean(1)
        loss = (per_sample * loss_weight[t]).mean()
        for group in opt.param_groups:
            group["lr"] = cfg.unet_lr * min(1.0, (step + 1) / cfg.warmup_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step(params)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % cfg.checkpoint_every == 0:
            _atomic_save({"text_encoder": text_encoder.state_dict(), "unet": unet.state_dict(),
                          "optimizer": opt.state_dict(), "ema": ema.state_dict(), "step": step,
                          "wall": time.time() - start, "torch_rng": torch.get_rng_state()}, ckpt_path)
        if step % cfg.export_every == 0 or step == cfg.unet_steps:
            _export(cfg, vae, tokenizer, text_encoder, unet, ema, step, time.time() - start, out, scaling)
            bar.write(f"exported EMA weights at step {step} to {out}")
    bar.close()


def train_world_model(cfg: WorldTrainingConfig) -> None:
    """Run all three stages, resuming each from ``cfg.work_dir`` where it stopped."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    vae = train_vae(cfg, work)
    vae.requires_grad_(False)
    data = encode_dataset(cfg, work, vae)
    train_unet(cfg, work, vae, data)
