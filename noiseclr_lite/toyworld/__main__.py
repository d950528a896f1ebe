"""Command line of the bundled world: ``python -m noiseclr_lite.toyworld {train,...} --help``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .train_model import WorldTrainingConfig, train_world_model


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(WorldTrainingConfig):
        if f.name == "extra":
            continue
        default = f.default
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, tuple):
            parser.add_argument(flag, type=int, nargs="+", default=list(default), help=f"(default {default})")
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"(default {default})")


def main(argv: list[str] | None = None) -> int:
    """``python -m noiseclr_lite.toyworld COMMAND``: parse ``argv`` (default: ``sys.argv[1:]``) and
    run the command (train, samples, train-oracle, evaluate, finetune-decoder, card, directions);
    returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m noiseclr_lite.toyworld", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or resume training) the bundled Stable Diffusion-format model")
    _add_config_flags(train)
    samples = sub.add_parser("samples", help="write the sample image folders (PNG + labels.csv per domain)")
    samples.add_argument("--out", default="data/samples", help="root folder (default data/samples)")
    samples.add_argument("--per-domain", type=int, default=64, help="images per domain (default 64)")
    samples.add_argument("--seed", type=int, default=2024, help="(default 2024)")
    oracle = sub.add_parser("train-oracle", help="train the attribute oracle on renders (+ VAE reconstructions)")
    oracle.add_argument("--out", default="data/models/oracle", help="output folder (default data/models/oracle)")
    oracle.add_argument("--steps", type=int, default=3000, help="(default 3000)")
    oracle.add_argument("--batch", type=int, default=64, help="(default 64)")
    oracle.add_argument("--lr", type=float, default=2e-3, help="(default 2e-3)")
    oracle.add_argument("--seed", type=int, default=0, help="(default 0)")
    oracle.add_argument("--vae", default=None,
                        help="a diffusers model folder whose VAE reconstructions are mixed into training")
    oracle.add_argument("--threads", type=int, default=0, help="torch threads (default: all)")
    oracle.add_argument("--init", default=None,
                        help="an oracle folder to fine-tune instead of training from random weights")
    evaluate = sub.add_parser("evaluate", help="re-measure the bundled model card's numbers; exit 1 if a bar is missed")
    evaluate.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    evaluate.add_argument("--oracle", default=None, help="oracle folder (default data/models/oracle)")
    evaluate.add_argument("--quick", action="store_true", help="fewer samples (a smoke test, not the card)")
    evaluate.add_argument("--save", action="store_true",
                          help="write evaluation.json beside the weights and refresh the model card")
    decoder = sub.add_parser("finetune-decoder", help="raise VAE reconstruction quality without touching the latent space")
    decoder.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    decoder.add_argument("--work-dir", default="checkpoints/toyworld-decoder", help="checkpoint folder")
    decoder.add_argument("--steps", type=int, default=2000, help="(default 2000)")
    decoder.add_argument("--batch", type=int, default=16, help="(default 16)")
    decoder.add_argument("--lr", type=float, default=2e-4, help="(default 2e-4)")
    decoder.add_argument("--threads", type=int, default=0, help="torch threads (default: all)")
    decoder.add_argument("--checkpoint-every", type=int, default=100,
                         help="steps between checkpoints and held-out PSNR (default 100)")
    decoder.add_argument("--out", default=None, help="where to write the VAE (default: MODEL/vae)")
    decoder.add_argument("--widths", type=int, nargs="+", default=None,
                         help="first widen the VAE to these widths (multiples of its own, e.g. 32 64 128), "
                              "keeping its latents exactly (default: keep its widths)")
    card = sub.add_parser("card", help="rewrite the model card (README.md) from training_state.json + evaluation.json")
    card.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    shipped = sub.add_parser("directions", help="train the shipped direction sets (data/directions) and name them "
                                                "by the oracle")
    shipped.add_argument("--domains", nargs="+", default=["face", "cat", "car", "painting"],
                         help="domains to train, one set each (default: face cat car painting)")
    shipped.add_argument("--out", default=None, help="output folder (default data/directions)")
    shipped.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    shipped.add_argument("--oracle", default=None, help="oracle folder (default data/models/oracle)")
    shipped.add_argument("--num-directions", type=int, default=6, help="K per domain (default 6)")
    shipped.add_argument("--steps", type=int, default=200, help="training steps per domain (default 200)")
    shipped.add_argument("--lr", type=float, default=1e-2, help="learning rate (default 1e-2)")
    shipped.add_argument("--batch-size", type=int, default=6, help="images per step (default 6)")
    shipped.add_argument("--seed", type=int, default=0, help="(default 0)")
    shipped.add_argument("--init", default="random",
                         help="how the directions start: random, vocab or a one-token word (default random)")
    shipped.add_argument("--strength-weight", type=float, default=0.0,
                         help="weight of the push-strength term added to the loss (default 0: the official loss)")
    shipped.add_argument("--pool", type=int, default=1,
                         help="train this many sets of K (seeds --seed, --seed + 1, ...) and keep the K the oracle "
                              "reads cleanest (default 1: no choosing)")
    shipped.add_argument("--eval-images", type=int, default=12, help="held-out renders for naming (default 12)")
    shipped.add_argument("--confirmation-images", type=int, default=None,
                         help="held-out renders for the second reading of a chosen set (--pool or --scale-ladder), "
                              "whose numbers go on the card (default: --eval-images)")
    shipped.add_argument("--max-scale", type=float, default=None,
                         help="largest scale the reading's calibration tries (default 16; --reread: the file's)")
    shipped.add_argument("--scale-ladder", type=float, nargs="+", default=None, metavar="S",
                         help="read every candidate at each of these scales and ship it at the one it reads "
                              "cleanest at, e.g. 1 2 4 8 16 32 64 (default: one scale calibrated to a common "
                              "pixel change)")
    shipped.add_argument("--window-ladder", nargs="+", default=None, metavar="HIGH:LOW",
                         help="with --scale-ladder: read every candidate in each of these edit windows too "
                              "(fractions of the diffusion time, 1 = pure noise) and ship it in the one it reads "
                              "cleanest in, e.g. 1:0 0.55:0 (default: every step, 1:0)")
    shipped.add_argument("--threads", type=int, default=0, help="torch threads (default: all)")
    shipped.add_argument("--reread", action="store_true",
                         help="do not train: read the saved sets in --out again with the current model and oracle "
                              "(after a decoder fine-tune or a new oracle); renames directions whose reading changed")
    args = parser.parse_args(argv)
    if args.command == "samples":
        from .samples import write_sample_folders

        for domain, folder in write_sample_folders(args.out, args.per_domain, args.seed).items():
            print(f"{domain}: {folder}")
    elif args.command == "train-oracle":
        import json

        import torch

        from .oracle import train_oracle

        if args.threads:
            torch.set_num_threads(args.threads)
        vae = None
        if args.vae:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(args.vae, subfolder="vae", dtype=torch.float32).eval()
        card = train_oracle(args.out, args.steps, args.batch, args.lr, args.seed, vae=vae, init=args.init)
        print(json.dumps(card, indent=1))
    elif args.command == "evaluate":
        from ..models import BUNDLED_MODEL, REPO_ROOT
        from .evaluate import evaluate as run_evaluation

        details: dict = {}
        model = args.model or BUNDLED_MODEL
        bars = run_evaluation(model, args.oracle or str(REPO_ROOT / "data/models/oracle"), quick=args.quick,
                              details=details)
        for key, share in sorted(details.items()):
            print(f"      text control {key}: {share:.2f}")
        for bar in bars:
            print(bar)
        if args.save:
            from .card import write_card
            from .evaluate import save_evaluation

            print(f"wrote {save_evaluation(model, bars, details, quick=args.quick)} and {write_card(model)}")
        return 0 if all(bar.passed for bar in bars) else 1
    elif args.command == "finetune-decoder":
        from ..models import BUNDLED_MODEL
        from .train_model import finetune_decoder

        value = finetune_decoder(args.model or BUNDLED_MODEL, args.work_dir, args.steps, args.batch, args.lr,
                                 checkpoint_every=args.checkpoint_every, threads=args.threads, out=args.out,
                                 widths=args.widths)
        print(f"held-out PSNR after decoder fine-tuning: {value:.2f} dB")
    elif args.command == "directions":
        import torch

        from ..cli import parse_window
        from ..models import DIRECTIONS_DIR
        from .shipped import READING_MAX_SCALE, reread_shipped_set, train_shipped_set, write_directions_card

        if args.threads:
            torch.set_num_threads(args.threads)
        out = args.out or DIRECTIONS_DIR
        try:
            window_ladder = [parse_window(text) for text in args.window_ladder] if args.window_ladder else None
        except ValueError as e:
            parser.error(f"--window-ladder: {e}")
        for domain in args.domains:
            if args.reread:
                renamed = reread_shipped_set(Path(out) / f"{domain}.safetensors", model=args.model,
                                             oracle_dir=args.oracle, max_scale=args.max_scale)
                changes = [f"{a} -> {b}" for a, b in renamed.items() if a != b]
                print(f"{domain}: read again; " + (f"renamed {', '.join(changes)}" if changes else "same names"))
                continue
            path = train_shipped_set(domain, out, model=args.model, oracle_dir=args.oracle,
                                     num_directions=args.num_directions, steps=args.steps, learning_rate=args.lr,
                                     batch_size=args.batch_size, seed=args.seed, init=args.init,
                                     strength_weight=args.strength_weight, pool=args.pool,
                                     eval_images=args.eval_images, max_scale=args.max_scale or READING_MAX_SCALE,
                                     scale_ladder=args.scale_ladder, window_ladder=window_ladder,
                                     confirmation_images=args.confirmation_images)
            print(f"wrote {path}")
        print(f"wrote {write_directions_card(out)}")
    elif args.command == "card":
        from ..models import BUNDLED_MODEL
        from .card import write_card

        print(f"wrote {write_card(args.model or BUNDLED_MODEL)}")
    elif args.command == "train":
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(WorldTrainingConfig) if f.name != "extra"}
        for key in ("vae_widths", "unet_widths"):
            values[key] = tuple(values[key])
        train_world_model(WorldTrainingConfig(**values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
