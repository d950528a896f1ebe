"""Command line: ``python -m noiseclr_lite {train,consensus,edit,grid} --help``.

    python -m noiseclr_lite train --images data/samples/face --num-directions 8 --steps 300 --out face.safetensors
    python -m noiseclr_lite consensus --directions face-seed0.safetensors face-seed1.safetensors \\
        --images data/samples/face --out face-consensus.safetensors
    python -m noiseclr_lite edit --directions face.safetensors --image data/samples/face/0000.png \\
        --scale d_3=2.0 --out edited.png
    python -m noiseclr_lite grid --directions face.safetensors --image data/samples/face/0000.png --out grid.png

``--model`` defaults to the bundled world model; give a folder or a hub id such as
``stable-diffusion-v1-5/stable-diffusion-v1-5`` (with a GPU) to run the same on the real thing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .editing import COMPOSITIONS
from .train import EDIT_SPACES, PARAMETERIZATIONS, TrainConfig, check_config


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="diffusers folder or hub id (default: the bundled world model in data/models/toyworld-sd)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")


def _context(text: str) -> str:
    """argparse type of ``--context``: checked at parse time, so a bad one fails before a model loads."""
    from .directions import check_context

    try:
        return check_context(text, "--context")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m noiseclr_lite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="discover directions in a folder of unlabeled images")
    _model_flags(train)
    train.add_argument("--images", required=True, help="folder of .jpg/.jpeg/.png/.webp images (unlabeled)")
    train.add_argument("--image-size", type=int, default=None,
                       help="square size the images are cropped and resized to (default: the model's native size)")
    train.add_argument("--num-directions", type=int, default=8, help="K, the number of directions (default 8)")
    train.add_argument("--steps", type=int, default=200, help="optimisation steps (default 200)")
    train.add_argument("--out", required=True, help="where to write the directions (.safetensors)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    train.add_argument("--checkpoint-dir", default=None, help="checkpoint folder (default: OUT with .ckpt appended)")
    train.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (default 50)")
    train.add_argument("--lr", type=float, default=1e-2,
                       help="AdamW learning rate (default 1e-2 suits the bundled model; the paper used 1e-3 on SD 1.5)")
    train.add_argument("--tau", type=float, default=0.5, help="contrastive temperature (default 0.5)")
    train.add_argument("--loss", choices=["noiseclr", "infonce"], default="noiseclr", help="objective (default noiseclr)")
    train.add_argument("--batch-size", type=int, default=6, help="images per step per process (default 6)")
    train.add_argument("--negatives", type=int, default=20,
                       help="directions contrasted with each step's anchor; 0 means all (default 20)")
    train.add_argument("--anchors", choices=["one", "all"], default="one",
                       help="anchor directions per step: 'one' (the official loss, default) or 'all' the "
                            "contrasted ones (same UNet cost, every direction learns every step)")
    train.add_argument("--init", default="random",
                       help="how the directions start: random (isotropic, typical row norm), vocab (a Gaussian "
                            "with the vocabulary's mean and covariance) or a one-token word (default random)")
    train.add_argument("--strength-weight", type=float, default=0.0,
                       help="weight of a term that rewards stronger pushes (loss.push_strength_loss; "
                            "default 0: the official loss)")
    train.add_argument("--gain-weight", type=float, default=0.0,
                       help="weight of a term that asks each direction to explain some images better than the "
                            "reference prompt (loss.denoising_gain_loss; default 0: the official loss)")
    train.add_argument("--gain-top-share", type=float, default=TrainConfig.gain_top_share,
                       help="the share of a step's images each direction's gain is scored on, in (0, 1] "
                            "(with --gain-weight; default %(default)s)")
    train.add_argument("--gain-two-sided", action="store_true",
                       help="score each image's gain by +D or -D, the better end of the slider (with --gain-weight)")
    train.add_argument("--sign-blind-negatives", action="store_true",
                       help="score negatives by |cos|: two directions that are opposite ends of one attribute "
                            "count as the same slider (default: the official, signed negatives)")
    train.add_argument("--center-edits", action="store_true",
                       help="contrast what is specific to each direction: every edit feature minus the mean over "
                            "the step's directions on the same image (default: the official, uncentred features)")
    train.add_argument("--parameterization", choices=PARAMETERIZATIONS, default="embedding",
                       help="what is trained: embedding, each token's row (the official NoiseCLR, default), or "
                            "vocab-mixture, logits over the tokenizer's vocabulary whose softmax mixes its rows "
                            "(the heaviest words are kept in the file's metadata)")
    train.add_argument("--edit-space", choices=EDIT_SPACES, default="eps",
                       help="what the loss compares edits in: eps, the noise prediction (the official loss, "
                            "default), or hspace, the UNet's middle-block output")
    train.add_argument("--context", default="{}", type=_context,
                       help="the prompt each direction's token is used in, {} for the token: '{}' (alone, the "
                            "official, default) or e.g. 'a photo of a face, {}' to train (and later edit) in the "
                            "words your model's captions use")
    train.add_argument("--t-min", type=int, default=0, help="lowest training timestep (default 0)")
    train.add_argument("--t-max", type=int, default=1000, help="highest training timestep, exclusive (default 1000)")
    train.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    train.add_argument("--chunk-size", type=int, default=None,
                       help="max image x direction pairs per UNet call; lower it if you run out of memory")
    train.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no", help="GPU autocast")
    train.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for UNet memory (GPU)")
    train.add_argument("--prefix", default="d", help="token prefix: tokens are <PREFIX_0>..<PREFIX_K-1> (default d)")
    train.add_argument("--names", default=None, help="comma-separated names for the directions (optional)")

    consensus = sub.add_parser("consensus", help="keep the directions that several training runs (seeds) agree on")
    _model_flags(consensus)
    consensus.add_argument("--directions", nargs="+", required=True,
                           help="two or more .safetensors direction files of one recipe, e.g. trained with --seed 0, 1")
    consensus.add_argument("--images", required=True,
                           help="folder of images the runs' edits are compared on (their training images serve)")
    consensus.add_argument("--num-images", type=int, default=16,
                           help="how many of them, the first in name order (default 16)")
    consensus.add_argument("--image-size", type=int, default=None,
                           help="square size the images are resized to (default: the model's native size)")
    consensus.add_argument("--count", type=int, default=None, help="directions to keep (default: the first file's K)")
    consensus.add_argument("--prefix", default="consensus", help="token prefix of the kept directions")
    consensus.add_argument("--out", required=True, help="where to write the kept directions (.safetensors)")

    edit = sub.add_parser("edit", help="apply directions to an image (or to seeded noise) and save a PNG")
    _model_flags(edit)
    edit.add_argument("--directions", nargs="+", required=True, help="one or more .safetensors direction files")
    edit.add_argument("--image", default=None, help="image to edit (inverted first); omit to generate from --seed")
    edit.add_argument("--scale", action="append", default=[], metavar="NAME=VALUE",
                      help="a direction (token, name or index) and its scale; repeat for several")
    edit.add_argument("--window", action="append", default=[], metavar="NAME=HIGH:LOW",
                      help="apply NAME only while t/T is in [LOW, HIGH] (default 1:0)")
    edit.add_argument("--inversion", choices=["ddpm", "ddim"], default="ddpm",
                      help="ddpm (edit-friendly, exact reconstruction) or ddim (default ddpm)")
    edit.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    edit.add_argument("--prompt", default="", help="optional text prompt (default: none)")
    edit.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default 1)")
    edit.add_argument("--composition", choices=COMPOSITIONS, default="sum",
                      help="how directions from different files combine: sum (NoiseCLR's, default) or regions "
                           "(where two sets push against each other, the stronger one there acts)")
    edit.add_argument("--out", required=True, help="output PNG")

    grid = sub.add_parser("grid", help="save a labelled grid: each direction (rows) at several scales (columns)")
    _model_flags(grid)
    grid.add_argument("--directions", required=True, help=".safetensors direction file")
    grid.add_argument("--image", default=None, help="image to edit (inverted first); omit to generate from --seed")
    grid.add_argument("--scales", type=float, nargs="+", default=[-2.0, -1.0, 0.0, 1.0, 2.0], help="column scales")
    grid.add_argument("--only", nargs="*", default=None, help="directions to show (default: all)")
    grid.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    grid.add_argument("--out", required=True, help="output PNG")
    return parser


def _parse_pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        if "=" not in item:
            raise SystemExit(f"{flag} {item!r}: expected NAME=VALUE, e.g. {flag} d_3=2.0")
        name, value = item.rsplit("=", 1)
        pairs.append((name, value))
    return pairs


def parse_window(text: str) -> tuple[float, float]:
    """``"0.55:0"`` -> ``(0.55, 0.0)``: an edit window written ``HIGH:LOW`` on a command line.

    The window of ``editing.DirectionEdit``: fractions of the diffusion time, 1 = pure noise.
    Raises ``ValueError`` naming the text and the fix when it is not two numbers with
    ``1 >= HIGH >= LOW >= 0``.
    """
    try:
        high, low = (float(part) for part in text.split(":"))
    except ValueError:
        raise ValueError(f"edit window {text!r} is not HIGH:LOW (e.g. 1:0 or 0.55:0)") from None
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"edit window {text!r} needs 1 >= HIGH >= LOW >= 0 (1 = pure noise)")
    return high, low


def _find(direction_sets, key: str):
    """The (Directions, index) that ``key`` (token, name, or index into the first set) names."""
    for directions in direction_sets:
        try:
            return directions, directions.index(int(key) if key.isdigit() else key)
        except (KeyError, ValueError, IndexError):
            continue
    known = [n for d in direction_sets for n in d.names + d.tokens]
    raise SystemExit(f"no direction called {key!r}; known: {', '.join(known)}")


def _start(pipe, image_path, inversion, steps, seed):
    """Invert ``image_path`` (or return None to start from seeded noise)."""
    if image_path is None:
        return None
    from .data import load_images
    from .inversion import ddim_invert, ddpm_invert
    from .models import encode_images, image_size

    size = image_size(pipe)
    latents = encode_images(pipe, load_images([image_path], size))
    if inversion == "ddim":
        return ddim_invert(pipe, latents, num_inference_steps=steps)
    import torch
    return ddpm_invert(pipe, latents, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m noiseclr_lite`` and the ``noiseclr-lite`` script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":   # before the model loads: a usage error, not a minute's wait
        config = TrainConfig(
            num_directions=args.num_directions, steps=args.steps, learning_rate=args.lr, tau=args.tau,
            loss=args.loss, batch_size=args.batch_size, negatives_per_step=args.negatives or None,
            anchors=args.anchors, init=args.init, strength_weight=args.strength_weight,
            gain_weight=args.gain_weight, gain_top_share=args.gain_top_share, gain_two_sided=args.gain_two_sided,
            sign_blind_negatives=args.sign_blind_negatives, center_edits=args.center_edits,
            context=args.context, edit_space=args.edit_space, parameterization=args.parameterization,
            timestep_range=(args.t_min, args.t_max),
            grad_accum=args.grad_accum, chunk_size=args.chunk_size,
            mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
            seed=args.seed, prefix=args.prefix, checkpoint_every=args.checkpoint_every)
        try:
            check_config(config)
        except ValueError as err:
            parser.error(f"{err} (`noiseclr-lite train --help` names the option that sets each field)")
    from .directions import Directions
    from .models import image_size, load_pipeline

    accelerator = None
    if args.command == "train":
        from accelerate import Accelerator

        # under `accelerate launch` every process must put the model on its own device
        accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.device == "cpu")
        if args.device is None and accelerator.num_processes > 1:
            args.device = accelerator.device
    pipe = load_pipeline(args.model, device=args.device)
    if args.command == "train":
        from .data import load_images
        from .train import train_directions

        size = args.image_size or image_size(pipe)
        images = load_images(args.images, size)
        ckpt = args.checkpoint_dir or args.out + ".ckpt"
        directions = train_directions(pipe, images, config, output_dir=ckpt, resume=args.resume,
                                      accelerator=accelerator)
        if not accelerator.is_main_process:
            return 0
        directions.metadata["base_model"] = args.model or "bundled:toyworld-sd"
        directions.metadata["images"] = str(args.images)
        if args.names:
            names = [n.strip() for n in args.names.split(",")]
            if len(names) != directions.num_directions:
                raise SystemExit(f"--names has {len(names)} names for {directions.num_directions} directions; "
                                 f"give {directions.num_directions} comma-separated names")
            directions.names = names
        directions.save(args.out)
        print(f"saved {directions.num_directions} directions to {args.out}")
        return 0

    if args.command == "consensus":
        from .consensus import consensus_directions
        from .data import list_images, load_images
        from .models import encode_images

        if args.num_images < 1:
            raise SystemExit(f"--num-images {args.num_images}: give 1 or more (16 suffice on the bundled model)")
        runs = [Directions.load(path) for path in args.directions]
        # the first images in name order: the same ones whenever the command is run again
        images = load_images(list_images(args.images)[:args.num_images], args.image_size or image_size(pipe))
        try:
            kept = consensus_directions(pipe, runs, encode_images(pipe, images), count=args.count, prefix=args.prefix)
        except ValueError as error:
            raise SystemExit(f"consensus of {', '.join(args.directions)}: {error}") from None
        kept.save(args.out)
        agreement = ", ".join(f"{a:.2f}" for a in kept.metadata["consensus"]["agreement"])
        print(f"saved {kept.num_directions} directions to {args.out} (agreement across the runs: {agreement})")
        return 0

    from .editing import DirectionEdit, edit, edit_grid

    if args.command == "edit":
        sets = [Directions.load(path) for path in args.directions]
        windows = {name: value for name, value in _parse_pairs(args.window, "--window")}
        edits = []
        for name, value in _parse_pairs(args.scale, "--scale"):
            directions, index = _find(sets, name)
            try:
                window = parse_window(windows.get(name, "1:0"))
            except ValueError as e:
                raise SystemExit(f"--window {name}: {e}") from None
            edits.append(DirectionEdit(directions, index, float(value), window))
        inversion = _start(pipe, args.image, args.inversion, args.steps, args.seed)
        images = edit(pipe, edits, inversion=inversion, prompt=args.prompt, guidance_scale=args.guidance,
                      num_inference_steps=args.steps, seed=args.seed, composition=args.composition)
        images[0].save(args.out)
        print(f"saved {args.out}")
        return 0

    if args.command == "grid":
        from .grid import image_grid

        directions = Directions.load(args.directions)
        indices = [directions.index(int(k) if k.isdigit() else k) for k in args.only] if args.only else \
            list(range(directions.num_directions))
        inversion = _start(pipe, args.image, "ddpm", args.steps, args.seed)
        rows = edit_grid(pipe, directions, indices, args.scales, inversion=inversion,
                         num_inference_steps=args.steps, seed=args.seed)
        grid = image_grid(rows, row_labels=[directions.names[i] for i in indices],
                          col_labels=[f"{s:+g}" for s in args.scales])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        grid.save(args.out)
        print(f"saved {args.out}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
