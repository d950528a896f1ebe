"""The bundled model's card: data/models/toyworld-sd/README.md, written from measurements.

``python -m noiseclr_lite.toyworld card`` reads ``training_state.json`` (written by the
training script at every export) and the ``evaluation.json`` that ``evaluate --save``
writes, and renders them as Markdown.  Nothing on the card is typed by hand, so it cannot
disagree with the weights beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .domains import DOMAINS


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def render_card(model_dir: str | Path) -> str:
    """The card's Markdown for the model in ``model_dir``."""
    model_dir = Path(model_dir)
    state = json.loads((model_dir / "training_state.json").read_text())
    cfg = state["config"]
    evaluation_path = model_dir / "evaluation.json"
    evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.exists() else None
    flags = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in cfg.items() if k not in ("extra", "out_dir", "work_dir"))
    lines = [
        "# toyworld-sd: the bundled world model",
        "",
        "A small text-to-image latent diffusion model in the standard diffusers Stable Diffusion layout,",
        "trained from scratch on procedurally drawn 64x64 images of faces, cats, cars, paintings and",
        "face+cat scenes whose attributes are known. Load it with",
        "`StableDiffusionPipeline.from_pretrained(\"data/models/toyworld-sd\")` (offline).",
        "",
        "| part | what |",
        "|---|---|",
        f"| VAE | `AutoencoderKL`, widths {_vae_widths(model_dir, cfg)}, 4x downsampling: 3x64x64 -> 4x16x16 |",
        f"| text encoder | `CLIPTextModel`, 128 wide, 3 layers, word-level CLIP tokenizer ({len(_words())} words) |",
        f"| UNet | `UNet2DConditionModel`, widths {tuple(cfg['unet_widths'])}, {cfg['unet_layers_per_block']} layer(s) per block, cross-attention at 16 and 8 px |",
        "| scheduler | Stable Diffusion 1.5's scaled-linear schedule, 1000 steps, epsilon prediction (DDIM for sampling) |",
        f"| size on disk | {_size_mb(model_dir):.1f} MB (fp16 safetensors, EMA weights) |",
        "",
        "## Training",
        "",
        f"- UNet + text encoder steps so far: **{state['unet_step']}** (batch {cfg['unet_batch']}, AdamW lr "
        f"{cfg['unet_lr']}, {cfg['warmup_steps']} warm-up steps, min-SNR-{cfg['min_snr_gamma']:g} weighting, "
        f"EMA up to {cfg['ema_max_decay']}, attribute dropout {cfg['attribute_dropout']}, caption dropout "
        f"{cfg['caption_dropout']}" + (f", offset noise {cfg['noise_offset']:g}" if cfg.get("noise_offset") else "")
        + (f", {cfg['high_noise_share']:g} of every batch at timesteps >= {cfg['high_noise_from']}"
           if cfg.get("high_noise_share") else "")
        + ("; the latest segment's settings, see the notes below for earlier ones)" if state.get("notes") else ")"),
        f"- VAE: up to {cfg['vae_steps']} steps at batch {cfg['vae_batch']}, lr {cfg['vae_lr']} (L1 + MSE + "
        f"{cfg['vae_kl_weight']:g} KL), on an endless stream of fresh renders; then frozen"
        + (f" (it stopped at step {state['vae']['steps']} with held-out PSNR {state['vae']['held_out_psnr']} dB, "
           f"after {state['vae']['wall_seconds'] / 60:.1f} min on {state['vae']['hardware']})"
           if state.get("vae") and state["vae"].get("held_out_psnr") is not None else ""),
        *_decoder_lines(model_dir),
        f"- training images for the UNet: {cfg['num_images']} renders, encoded once",
        f"- wall time of the UNet stage so far: {state['wall_seconds'] / 3600:.2f} h on {state['hardware']}",
        *[f"- at UNet step {n['unet_step']}: {n['text']}" for n in state.get("notes", [])],
        "- command (resumes from the work folder, or from these shipped weights when it is empty):",
        "",
        "```bash",
        f"python -m noiseclr_lite.toyworld train {flags}",
        "```",
        "",
        "## Measured (re-measure with `python -m noiseclr_lite.toyworld evaluate --save`)",
        "",
    ]
    if evaluation is None:
        lines.append("Not measured yet for these weights: run the command above.")
    else:
        lines += [f"Measured on {evaluation['date']} ({evaluation['machine']}), at UNet step "
                  f"{evaluation.get('unet_step', '?')}"
                  + (" with `--quick` (8 samples per attribute value instead of 32: a rough reading)"
                     if evaluation.get("quick") else "") + ".", "", "| bar | value | target | |", "|---|---|---|---|"]
        for bar in evaluation["bars"]:
            sign = ">=" if bar["at_least"] else "<="
            lines.append(f"| {bar['name']} | {bar['value']:.4g} | {sign} {bar['bar']:g} | "
                         f"{'pass' if bar['passed'] else '**FAIL**'} |")
        if evaluation.get("details"):
            lines += ["", "Per attribute value (text control):", ""]
            lines += [f"- {k}: {v:.2f}" for k, v in sorted(evaluation["details"].items())]
    lines += ["", "## Domains and attributes", ""]
    for domain in DOMAINS.values():
        attrs = "; ".join(f"{a}: {' / '.join(v)}" for a, v in domain.attributes.items())
        lines.append(f"- **{domain.name}** (\"{domain.noun}\"): {attrs}")
    return "\n".join(lines) + "\n"


def _vae_widths(model_dir: Path, cfg: dict) -> tuple[int, ...]:
    """The shipped VAE's widths (a widened decoder fine-tune changes them from the training config's)."""
    config = model_dir / "vae" / "config.json"
    if config.exists():
        return tuple(json.loads(config.read_text())["block_out_channels"])
    return tuple(cfg["vae_widths"])


def _decoder_lines(model_dir: Path) -> list[str]:
    """The card's lines on the decoder-only fine-tunes (``decoder_finetune.json``), oldest first."""
    path = model_dir / "decoder_finetune.json"
    if not path.exists():
        return []
    stages, record = [], json.loads(path.read_text())
    while record:  # each record keeps the one it continued from under "previous"
        stages.insert(0, record)
        record = record.get("previous")
    lines = []
    for d in stages:
        timed = d["steps"] - d.get("untimed_steps", 0)
        when = f"{d['wall_seconds'] / 60:.0f} min" + (f" for the last {timed} steps (the first {d['untimed_steps']} "
                                                      "were not timed)" if d.get("untimed_steps") else "")
        what = (f"the VAE widened from {tuple(d['widened_from'])} to {tuple(d['widths'])} by channel copies that "
                "keep its latents exactly (`noiseclr_lite/toyworld/widen.py`), and its *decoder* alone"
                if d.get("widened_from") else "the VAE *decoder* alone")
        flag = f" --widths {' '.join(map(str, d['widths']))}" if d.get("widened_from") else ""
        lines.append(f"- then {what} (the encoder, and so the latent space, frozen): "
                     f"{d['steps']} steps at batch {d['batch']}, lr {d['lr']} (L1 + MSE), held-out PSNR "
                     f"{d['held_out_psnr']:.2f} dB, {when}; `python -m noiseclr_lite.toyworld finetune-decoder "
                     f"--steps {d['steps']} --batch {d['batch']} --lr {d['lr']}{flag}`")
    return lines


def _words() -> list[str]:
    from .domains import vocabulary

    return vocabulary()


def write_card(model_dir: str | Path) -> Path:
    """Write ``README.md`` into ``model_dir`` and return its path."""
    path = Path(model_dir) / "README.md"
    path.write_text(render_card(model_dir))
    return path
