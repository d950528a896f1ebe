"""Sample image folders: what every notebook starts from, "a folder of unlabeled images".

``write_sample_folders("data/samples")`` writes ``data/samples/<domain>/0000.png`` ... and
a ``labels.csv`` beside the images (the library's image loader reads only image files, so
the labels stay out of training; the metrics read them).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from PIL import Image

from .domains import DOMAIN_NAMES, DOMAINS, render_batch


def write_sample_folders(root: str | os.PathLike, per_domain: int = 64, seed: int = 2024,
                         domains: list[str] | None = None) -> dict[str, Path]:
    """Render ``per_domain`` images per domain into ``root/<domain>/`` with a labels.csv.

    Attributes are balanced: every value of every attribute appears in close to half the
    images.  Returns {domain: folder}.
    """
    folders = {}
    for offset, domain in enumerate(domains or DOMAIN_NAMES):
        folder = Path(root) / domain
        folder.mkdir(parents=True, exist_ok=True)
        images, labels = render_batch(per_domain, seed=seed + 1000 * offset, domains=[domain])
        attributes = list(DOMAINS[domain].attributes)
        with open(folder / "labels.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file"] + attributes)
            for i, (image, (_, lab)) in enumerate(zip(images, labels)):
                name = f"{i:04d}.png"
                Image.fromarray(image).save(folder / name, optimize=True)
                writer.writerow([name] + [lab[a] for a in attributes])
        folders[domain] = folder
    return folders


def read_labels(folder: str | os.PathLike) -> dict[str, dict[str, int]]:
    """``labels.csv`` of a sample folder as {file name: {attribute: value index}}."""
    path = Path(folder) / "labels.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; sample folders come from "
                                f"`python -m noiseclr_lite.toyworld samples`")
    with open(path, newline="") as f:
        return {row.pop("file"): {k: int(v) for k, v in row.items()} for row in csv.DictReader(f)}
