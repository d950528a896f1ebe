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

Everything trains on ``device`` ("cpu", "cuda" or "auto"); on a GPU the images are drawn
by ``render_workers`` processes so that the drawing keeps up with the GPU, and
``stop_after_minutes`` ends a run (checkpointed and exported) inside a rented time slot.
The training images do not depend on the device or the number of workers: every batch
and every dataset chunk has its own seed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
from collections import deque
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
from .widen import widen_vae


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
    # end the VAE stage after so many minutes of this run (0: no limit), as if vae_steps were reached
    vae_max_minutes: float = 0.0
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
    # share of every batch whose timesteps are drawn from [high_noise_from, 1000) instead of
    # [0, 1000) (as diffusers' --timestep_bias_strategy later).  At those noise levels the
    # whole loss is about the image's layout and overall colours, which the caption must
    # decide because the starting noise cannot (see noise_offset): a day sky or a night sky.
    high_noise_share: float = 0.0
    high_noise_from: int = 700
    attribute_dropout: float = 0.3
    caption_dropout: float = 0.1
    ema_max_decay: float = 0.9999
    checkpoint_every: int = 100
    export_every: int = 500
    vae_widths: tuple = (16, 32, 64)
    unet_widths: tuple = (64, 128, 128)
    unet_layers_per_block: int = 1
    threads: int = 0
    # "cpu", "cuda" or "auto" (cuda when torch sees a GPU)
    device: str = "cpu"
    # processes that draw training images ahead of the trainer (0 or 1: drawn in this process)
    render_workers: int = 0
    # end this run after so many minutes of wall time (0: no limit), checkpointed and exported;
    # the next run resumes.  Only the UNet stage stops early: the VAE must finish first.
    stop_after_minutes: float = 0.0
    extra: dict = field(default_factory=dict)

#: images per seeded chunk of the UNet's training set (a multiple of the 5 domains, so
#: every chunk cycles through the domains evenly)
DATASET_CHUNK = 5000


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; otherwise ``torch.device(name)``, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch {torch.__version__} sees no GPU here; "
                         f"use --device cpu (or auto)")
    return device


def rendered_batches(specs, workers: int = 0):
    """Yield ``render_batch(n, seed)`` for each ``(n, seed)`` in ``specs``, in order.

    With ``workers`` > 1 the batches are drawn ahead by that many processes (at most
    2 x workers batches wait in memory); the output is the same for any ``workers``.
    Spawned, not forked, processes: forking after CUDA has started is unsafe (so a script
    that calls this with workers > 1 needs an ``if __name__ == "__main__":`` guard).
    """
    if workers <= 1:
        for n, seed in specs:
            yield render_batch(n, seed)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending = deque()
        for spec in specs:
            pending.append(pool.apply_async(render_batch, spec))
            if len(pending) > 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def hardware(device: torch.device) -> str:
    """Where training ran, for the model card: the GPU's name, or the CPU cores and torch threads."""
    cpu = f"{os.cpu_count()} CPU cores ({torch.get_num_threads()} torch threads), torch {torch.__version__}"
    if device.type == "cuda":
        return f"one {torch.cuda.get_device_name(device)} GPU, {cpu}"
    return cpu


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
    """Mean PSNR in dB of images [B, C, H, W] in [-1, 1] (peak-to-peak 2), over the batch."""
    mse = (reference.clamp(-1, 1) - estimate.clamp(-1, 1)).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean())


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """PSNR (dB) of ``vae``'s reconstructions of ``images`` [B, 3, H, W] in [-1, 1], through the latent mode."""
    return psnr(images, vae.decode(vae.encode(images).latent_dist.mode()).sample)


# --------------------------------------------------------------------------- stage 1: VAE
def _decay(step: int, total: int, start: float = 0.7, floor: float = 0.1) -> float:
    """Learning-rate factor: 1 until ``start * total``, then linear down to ``floor`` at ``total``."""
    begin = start * total
    if step < begin:
        return 1.0
    return max(floor, 1.0 - (1.0 - floor) * (step - begin) / max(1.0, total - begin))

def train_vae(cfg: WorldTrainingConfig, work: Path, device: torch.device = torch.device("cpu")) -> AutoencoderKL:
    """Train (or resume, or load the finished) VAE on ``device``; returns it in eval mode there.

    Beside the finished VAE, ``history.json`` holds the held-out PSNR at every checkpoint
    and ``vae_training.json`` the steps run, the final PSNR and the wall time (for the card).
    """
    final = work / "vae"
    if (final / "config.json").exists():
        return AutoencoderKL.from_pretrained(final).to(device).eval()
    shipped = Path(cfg.out_dir) / "vae"
    if (shipped / "config.json").exists():  # continue from the shipped model, do not retrain
        vae = AutoencoderKL.from_pretrained(shipped, dtype=torch.float32)
        vae.save_pretrained(final)
        return vae.to(device).eval()
    torch.manual_seed(cfg.seed)
    vae = build_vae(tuple(cfg.vae_widths)).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ckpt_path, step, history, wall = work / "vae_ckpt.pt", 0, [], 0.0
    if ckpt_path.exists():
        state = _load(ckpt_path)
        vae.load_state_dict(state["model"]), opt.load_state_dict(state["optimizer"])
        step, history, wall = state["step"], state["history"], state.get("wall", 0.0)
    held_out, _ = render_batch(cfg.vae_eval_images, seed=10**9)
    held_out = _to_pixels(held_out).to(device)
    run_start = time.time()
    start = run_start - wall
    bar = tqdm(total=cfg.vae_steps, initial=step, desc="vae")
    batches = rendered_batches(((cfg.vae_batch, cfg.seed * 10**7 + s) for s in range(step, cfg.vae_steps)),
                               cfg.render_workers)
    for images, _ in batches:
        x = _to_pixels(images).to(device)
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
        if step % 25 == 0:  # .item() waits for the GPU: not every step
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.vae_steps:
            value = reconstruction_psnr(vae, held_out)
            history.append((step, value))
            bar.write(f"vae step {step}: held-out PSNR {value:.2f} dB")
            _atomic_save({"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": step,
                          "history": history, "wall": time.time() - start}, ckpt_path)
            if value >= cfg.vae_target_psnr:
                break
        if cfg.vae_max_minutes and time.time() - run_start >= 60 * cfg.vae_max_minutes:
            bar.write(f"vae: --vae-max-minutes {cfg.vae_max_minutes:g} reached at step {step}")
            if not history or history[-1][0] != step:  # the final PSNR belongs to the final weights
                history.append((step, reconstruction_psnr(vae, held_out)))
            break
    batches.close()  # stops the drawing processes when the PSNR target ends the stage early
    bar.close()
    vae.save_pretrained(final)
    (final / "history.json").write_text(json.dumps(history))
    (final / "vae_training.json").write_text(json.dumps(
        {"steps": step, "held_out_psnr": round(history[-1][1], 2) if history else None,
         "wall_seconds": round(time.time() - start), "hardware": hardware(device)}, indent=1))
    return vae.eval()


def finetune_decoder(model_dir: str | Path, work_dir: str | Path, steps: int, batch: int = 16, lr: float = 2e-4,
                     seed: int = 0, checkpoint_every: int = 100, threads: int = 0, out: str | Path | None = None,
                     widths: tuple[int, ...] | None = None) -> float:
    """Train only the VAE *decoder* of a shipped model, on fresh renders; returns held-out PSNR.

    The encoder stays frozen, so the latent space (and with it the UNet, the text encoder
    and every learned direction) stays valid: this is how the reconstruction quality is
    raised after the UNet has started training (as Stable Diffusion's ft-MSE decoders do).
    Checkpoints to ``work_dir/decoder_ckpt.pt`` and resumes; writes the VAE (fp16) to ``out``
    (default ``model_dir/vae``), so it can run beside a UNet training that exports ``model_dir``.
    Beside the VAE folder it writes ``decoder_finetune.json`` (steps, batch, lr, seed, held-out
    PSNR, wall time), which the model card (``card.py``) reports.

    ``widths`` (each a multiple of the VAE's own) first widens the VAE with ``widen.widen_vae``,
    which keeps the encoder's latents exactly, so that the decoder has more room to learn.
    """
    if threads:
        torch.set_num_threads(threads)
    model_dir, work = Path(model_dir), Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL.from_pretrained(model_dir / "vae", dtype=torch.float32)
    old_widths = tuple(vae.config.block_out_channels)
    if widths and tuple(widths) != old_widths:
        vae = widen_vae(vae, tuple(widths), seed=seed)
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    out = Path(out) if out else model_dir / "vae"
    # the record of the fine-tune this one continues from (if any) stays in the new record
    earlier = out.parent / "decoder_finetune.json"
    previous = json.loads(earlier.read_text()) if earlier.exists() else None
    ckpt_path, step, wall, untimed, history = work / "decoder_ckpt.pt", 0, 0.0, 0, []
    if ckpt_path.exists():
        state = _load(ckpt_path)
        vae.load_state_dict(state["model"]), opt.load_state_dict(state["optimizer"])
        step, history, previous = state["step"], state.get("history", []), state.get("previous")
        # checkpoints written before wall time was recorded: say how many steps were not timed
        wall, untimed = state.get("wall", 0.0), state.get("untimed_steps", 0 if "wall" in state else step)
    held_out = _to_pixels(render_batch(256, seed=10**9)[0])
    start = time.time() - wall
    if not history:
        history.append((step, round(reconstruction_psnr(vae, held_out), 2)))
    bar = tqdm(range(step, steps), initial=step, total=steps, desc="decoder")
    for step in bar:
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
            history.append((step + 1, round(reconstruction_psnr(vae, held_out), 2)))
            bar.write(f"decoder step {step + 1}: held-out PSNR {history[-1][1]:.2f} dB")
            _atomic_save({"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                          "wall": time.time() - start, "untimed_steps": untimed, "history": history,
                          "previous": previous}, ckpt_path)
    # the last checkpoint measured the final weights already
    value = history[-1][1] if history[-1][0] == steps else reconstruction_psnr(vae, held_out)
    vae.to(torch.float16).save_pretrained(out, safe_serialization=True)
    record = {"steps": steps, "batch": batch, "lr": lr, "seed": seed, "held_out_psnr": round(value, 2),
              "wall_seconds": round(time.time() - start), "untimed_steps": untimed,
              "widened_from": list(old_widths) if widths and tuple(widths) != old_widths else None,
              "widths": list(vae.config.block_out_channels), "history": history, "previous": previous}
    (out.parent / "decoder_finetune.json").write_text(json.dumps(record, indent=1))
    return value


# ---------------------------------------------------------------------- stage 2: latents
def encode_dataset(cfg: WorldTrainingConfig, work: Path, vae: AutoencoderKL) -> dict:
    """Render ``num_images`` captionable images and cache their latent mean/std (on the CPU) once.

    The images are drawn in chunks of ``DATASET_CHUNK``, chunk c with seed
    ``(seed + 1) * 1000 + c``, so that several processes can draw them.
    """
    path = work / "latents.pt"
    if path.exists():
        return _load(path)
    device = next(vae.parameters()).device
    chunks = [(min(DATASET_CHUNK, cfg.num_images - first), (cfg.seed + 1) * 1000 + c)
              for c, first in enumerate(range(0, cfg.num_images, DATASET_CHUNK))]
    means, stds, labels = [], [], []
    with torch.no_grad():
        for images, chunk_labels in tqdm(rendered_batches(chunks, cfg.render_workers), total=len(chunks),
                                         desc="render + encode"):
            labels += chunk_labels
            for start in range(0, len(images), 256):
                dist = vae.encode(_to_pixels(images[start:start + 256]).to(device)).latent_dist
                means.append(dist.mean.cpu()), stds.append(dist.std.cpu())
    mean, std = torch.cat(means), torch.cat(stds)
    data = {"mean": mean.half(), "std": std.half(), "labels": labels,
            "scaling_factor": float(1.0 / mean.float().std())}
    _atomic_save(data, path)
    return data


# ------------------------------------------------------------------------- stage 3: UNet
def _export(cfg, vae, tokenizer, text_encoder, unet, ema, step, wall, out: Path, scaling_factor, work: Path):
    """Write the EMA weights as a complete fp16 diffusers folder plus training_state.json."""
    import copy
    ema_text, ema_unet = copy.deepcopy(text_encoder), copy.deepcopy(unet)
    ema.copy_to(list(ema_text.parameters()) + list(ema_unet.parameters()))
    vae.register_to_config(scaling_factor=scaling_factor)
    pipe = assemble_pipeline(vae, ema_text, tokenizer, ema_unet, build_scheduler())
    tmp = out.with_name(out.name + ".tmp")
    pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    state = {"unet_step": step, "wall_seconds": round(wall), "config": asdict(cfg),
             "hardware": hardware(next(unet.parameters()).device)}
    previous_path = out / "training_state.json"
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else {}
    vae_record = work / "vae" / "vae_training.json"
    if vae_record.exists():
        state["vae"] = json.loads(vae_record.read_text())
    elif previous:
        # resumed from a shipped folder: its VAE was loaded, not trained by this run, so the
        # VAE's record and settings are still those of the run that made it
        if "vae" in previous:
            state["vae"] = previous["vae"]
        state["config"].update({k: v for k, v in previous.get("config", {}).items() if k.startswith("vae_")})
    # events of the run's history (e.g. a renderer change) travel from export to export
    state["notes"] = list(previous.get("notes", []))
    if previous.get("hardware") and previous["hardware"] != state["hardware"]:
        # the card's wall time adds up every segment: say where each part ran
        state["notes"].append({"unet_step": previous["unet_step"],
                               "text": f"training moved from {previous['hardware']} to {state['hardware']}"})
    if not state["notes"]:
        del state["notes"]
    (tmp / "training_state.json").write_text(json.dumps(state, indent=1))
    if (out / "decoder_finetune.json").exists():  # the decoder-only fine-tunes of the VAE kept here
        (tmp / "decoder_finetune.json").write_text((out / "decoder_finetune.json").read_text())
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


def warmup_lr(base_lr: float, step: int, warm_from: int = 0, warmup_steps: int = 500) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up over ``warmup_steps`` counted from
    ``warm_from`` (the step at which the optimizer began), then ``base_lr``."""
    return base_lr * min(1.0, (step + 1 - warm_from) / max(1, warmup_steps))


def training_timesteps(batch: int, num_train_timesteps: int = 1000, high_noise_share: float = 0.0,
                       high_noise_from: int = 700, device: torch.device | str = "cpu") -> torch.Tensor:
    """Timesteps [batch] (int64) for one training batch: uniform over [0, num_train_timesteps),
    except the first ``round(high_noise_share * batch)``, drawn from [high_noise_from, num_train_timesteps).

    See ``WorldTrainingConfig.high_noise_share`` for why a share of high noise levels helps.
    """
    if not 0.0 <= high_noise_share <= 1.0 or not 0 <= high_noise_from < num_train_timesteps:
        raise ValueError(f"high_noise_share={high_noise_share} must be in [0, 1] and high_noise_from="
                         f"{high_noise_from} in [0, {num_train_timesteps}): fix --high-noise-share/--high-noise-from")
    t = torch.randint(0, num_train_timesteps, (batch,), device=device)
    num_high = round(high_noise_share * batch)
    if num_high:
        t[:num_high] = torch.randint(high_noise_from, num_train_timesteps, (num_high,), device=device)
    return t


def train_unet(cfg: WorldTrainingConfig, work: Path, vae: AutoencoderKL, data: dict,
               device: torch.device = torch.device("cpu"), deadline: float | None = None) -> None:
    """Train text encoder + UNet on the cached latents, with EMA, checkpoints and exports.

    Runs on ``device``; at ``deadline`` (a ``time.time()`` value) it checkpoints, exports and returns.
    """
    out = Path(cfg.out_dir)
    tokenizer = build_tokenizer(work / "tokenizer")
    scheduler = build_scheduler()
    torch.manual_seed(cfg.seed)
    text_encoder = build_text_encoder(len(tokenizer))
    unet = build_unet(tuple(cfg.unet_widths), cfg.unet_layers_per_block)
    params = list(text_encoder.parameters()) + list(unet.parameters())
    # warm_from: the step at which this optimizer started, so that a fresh AdamW that takes
    # over shipped weights warms its learning rate up again instead of starting at full rate
    ckpt_path, step, wall, warm_from = work / "unet_ckpt.pt", 0, 0.0, 0
    state = _load(ckpt_path) if ckpt_path.exists() else None
    if state is None and (out / "unet" / "config.json").exists():
        # continue from the shipped EMA weights (the committed hand-over between sessions)
        shipped = json.loads((out / "training_state.json").read_text())
        text_encoder = CLIPTextModel.from_pretrained(out / "text_encoder", dtype=torch.float32)
        unet = UNet2DConditionModel.from_pretrained(out / "unet", dtype=torch.float32)
        params = list(text_encoder.parameters()) + list(unet.parameters())
        step, wall = shipped["unet_step"], shipped["wall_seconds"]
        warm_from = step
        print(f"resuming from the shipped EMA weights in {out} at step {step}")
    text_encoder.to(device), unet.to(device)
    ema = EMAModel(params, decay=cfg.ema_max_decay, use_ema_warmup=True, power=2 / 3)
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    if state is not None:
        text_encoder.load_state_dict(state["text_encoder"]), unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["optimizer"]), ema.load_state_dict(state["ema"])
        ema.to(device)  # the checkpoint was loaded onto the CPU
        step, wall = state["step"], state["wall"]
        warm_from = state.get("warm_from", 0)
        torch.set_rng_state(state["torch_rng"])  # the CPU generator; a GPU's noise is not replayed
    elif step:
        ema.optimization_step = step
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    loss_weight = (torch.clamp(snr, max=cfg.min_snr_gamma) / snr).to(device)  # min-SNR-gamma for epsilon
    latent_mean, latent_std = data["mean"].to(device), data["std"].to(device)
    num = len(latent_mean)
    scaling = data["scaling_factor"]
    rng = random.Random(cfg.seed * 7919 + step)
    bar = tqdm(total=cfg.unet_steps, initial=step, desc="unet")
    text_encoder.train(), unet.train()
    start = time.time() - wall
    while step < cfg.unet_steps:
        idx = torch.randint(0, num, (cfg.unet_batch,))
        prompts = [caption(*data["labels"][i], rng=rng, attribute_dropout=cfg.attribute_dropout,
                           caption_dropout=cfg.caption_dropout) for i in idx.tolist()]
        idx = idx.to(device)
        latents = (latent_mean[idx].float()
                   + latent_std[idx].float() * torch.randn(cfg.unet_batch, 4, 16, 16, device=device)) * scaling
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(device)
        noise = training_noise(latents, cfg.noise_offset)
        t = training_timesteps(cfg.unet_batch, scheduler.config.num_train_timesteps, cfg.high_noise_share,
                               cfg.high_noise_from, device)
        noisy = scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, text_encoder(ids)[0]).sample
        per_sample = (pred - noise).pow(2).flatten(1).mean(1)
        loss = (per_sample * loss_weight[t]).mean()
        for group in opt.param_groups:
            group["lr"] = warmup_lr(cfg.unet_lr, step, warm_from, cfg.warmup_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step(params)
        step += 1
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        out_of_time = deadline is not None and time.time() >= deadline
        if step % cfg.checkpoint_every == 0 or out_of_time:
            _atomic_save({"text_encoder": text_encoder.state_dict(), "unet": unet.state_dict(),
                          "optimizer": opt.state_dict(), "ema": ema.state_dict(), "step": step,
                          "wall": time.time() - start, "torch_rng": torch.get_rng_state(), "warm_from": warm_from},
                         ckpt_path)
        if step % cfg.export_every == 0 or step == cfg.unet_steps or out_of_time:
            _export(cfg, vae, tokenizer, text_encoder, unet, ema, step, time.time() - start, out, scaling, work)
            bar.write(f"exported EMA weights at step {step} to {out}")
        if out_of_time:
            bar.write(f"stopped at step {step}: --stop-after-minutes {cfg.stop_after_minutes:g} reached; "
                      f"run the same command again to resume")
            break
    bar.close()


def train_world_model(cfg: WorldTrainingConfig) -> None:
    """Run all three stages, resuming each from ``cfg.work_dir`` where it stopped."""
    deadline = time.time() + 60 * cfg.stop_after_minutes if cfg.stop_after_minutes else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if device.type == "cuda":  # TF32 matmuls and tuned convolutions: a small model, so speed not precision
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    vae = train_vae(cfg, work, device)
    vae.requires_grad_(False)
    data = encode_dataset(cfg, work, vae)
    train_unet(cfg, work, vae, data, device, deadline)
