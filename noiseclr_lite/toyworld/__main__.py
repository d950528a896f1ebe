"""Command line of the bundled world: ``python -m noiseclr_lite.toyworld {train,...} --help``."""

from __future__ import annotations

import argparse
import dataclasses
import sys

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
    parser = argparse.ArgumentParser(prog="python -m noiseclr_lite.toyworld", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or resume training) the bundled Stable Diffusion-format model")
    _add_config_flags(train)
    args = parser.parse_args(argv)
    if args.command == "train":
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(WorldTrainingConfig) if f.name != "extra"}
        for key in ("vae_widths", "unet_widths"):
            values[key] = tuple(values[key])
        train_world_model(WorldTrainingConfig(**values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
