"""Cross-domain composition on face+cat scenes: does a face edit plus a cat edit do both?

    python benchmarks/compose.py                       # shipped face and cat sets, every visible pair
    python benchmarks/compose.py --quick --out /tmp/c  # 2 pairs, 4 scenes each (a smoke run)

For each pair (face direction, cat direction) of the shipped sets that their card counts
visible (``shipped.is_visible``), the scenes of ``data/samples/scene`` where both edits have room to act
(the face attribute at the value the face direction moves *away* from, and the same for the cat)
are inverted once (edit-friendly DDPM) and edited four ways: the face edit alone, the cat edit
alone, and both together, composed by NoiseCLR's plain sum and by ``composition="regions"``
(``noiseclr_lite.editing.split_regions``).  The oracle reads the eight scene attributes.

Reported per pair and composition: the share of scenes whose face attribute flipped, whose cat
attribute flipped, and where both flipped (each read against the scene's label); and the largest
change of the six other attributes (mean over scenes) against the unedited reconstruction.  A
face edit can flip the pair's cat attribute by itself: the "face alone" row shows how often, and
"both" counts such a flip too.  Each direction runs at the scale the
shipped set chose for it (its slider scale, ``slider_scales``); the cat's is halved, as in notebook 06, since a
scene's cat is a quarter of the picture.  Writes ``<out>/compose.md`` and ``compose.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/compose.py` from anywhere
    sys.path.insert(0, str(REPO))

from noiseclr_lite import (DIRECTIONS_DIR, SAMPLES_DIR, DirectionEdit, Directions, ddpm_invert, edit,  # noqa: E402
                           encode_images, load_images, load_pipeline)
from noiseclr_lite.editing import COMPOSITIONS  # noqa: E402
from noiseclr_lite.metrics import attribute_probabilities, images_to_tensor  # noqa: E402
from noiseclr_lite.models import ORACLE_DIR  # noqa: E402
from noiseclr_lite.toyworld.domains import get_domain  # noqa: E402
from noiseclr_lite.toyworld.oracle import Oracle  # noqa: E402
from noiseclr_lite.toyworld.shipped import is_visible, slider_scales  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def visible_moves(directions: Directions) -> list[dict]:
    """The set's visible directions: name, scene attribute, from-value.

    Visible as the shipped card counts it (``shipped.is_visible``: strong, pure, and in its
    domain), so the pairs measured are the ones the card and notebook 06 offer.  ``from_value``
    is the value the direction moves away from at a positive scale (1 when its signed effect on
    P(value 1) is negative), so a scene at that value has room to change.
    """
    moves = []
    for row in directions.metadata.get("oracle_reading") or []:
        if is_visible(row):
            sign = row["signed_effects"][row["target"]]
            moves.append({"name": row["name"], "attribute": f"{row['domain']}_{row['target']}",
                          "from_value": int(sign < 0), "strength": row["strength"]})
    return moves


def scenes_with(labels: list[dict], wanted: dict[str, int]) -> list[str]:
    """File names of the scenes whose labels match every ``{attribute: value}`` in ``wanted``."""
    return [row["file"] for row in labels if all(int(row[a]) == v for a, v in wanted.items())]


def flip_share(probabilities: torch.Tensor, column: int, from_value: int) -> float:
    """Share of images the oracle now reads at the other value of attribute ``column``, in [0, 1].

    ``probabilities`` is the oracle's [M, A] P(value 1) after the edit; every image started at ``from_value``.
    """
    now_one = probabilities[:, column] >= 0.5
    return float((now_one if from_value == 0 else ~now_one).float().mean())


def measure_pair(pipe, oracle, face_set, cat_set, face: dict, cat: dict, labels: list[dict], scales: dict,
                 max_scenes: int, window: tuple[float, float], inversion_steps: int) -> dict | None:
    """Alone, and together by each composition, on the scenes where both edits have room; None if none."""
    files = scenes_with(labels, {face["attribute"]: face["from_value"], cat["attribute"]: cat["from_value"]})
    files = files[:max_scenes]
    if not files:
        return None
    images = torch.cat([load_images(SAMPLES_DIR / "scene" / f, size=64) for f in files])
    inversion = ddpm_invert(pipe, encode_images(pipe, images), num_inference_steps=inversion_steps, seed=0)
    names = list(get_domain("scene").attribute_names)
    face_col, cat_col = names.index(face["attribute"]), names.index(cat["attribute"])
    others = [i for i in range(len(names)) if i not in (face_col, cat_col)]
    face_edit = DirectionEdit(face_set, face["name"], scales[face["name"]], window=window)
    cat_edit = DirectionEdit(cat_set, cat["name"], scales[cat["name"]] / 2, window=window)

    def read(edits, composition="sum"):
        return attribute_probabilities(oracle, images_to_tensor(edit(pipe, edits, inversion=inversion,
                                                                     composition=composition)), "scene")

    unedited = read([])
    runs = {"face alone": read([face_edit]), "cat alone": read([cat_edit])}
    runs.update({f"both ({c})": read([face_edit, cat_edit], c) for c in COMPOSITIONS})
    rows = {}
    for label, probabilities in runs.items():
        face_flip = flip_share(probabilities, face_col, face["from_value"])
        cat_flip = flip_share(probabilities, cat_col, cat["from_value"])
        both = float(((probabilities[:, face_col] >= 0.5) != bool(face["from_value"]))
                     .logical_and((probabilities[:, cat_col] >= 0.5) != bool(cat["from_value"])).float().mean())
        leak = float((probabilities[:, others] - unedited[:, others]).abs().max(dim=1).values.mean())
        rows[label] = {"face flipped": face_flip, "cat flipped": cat_flip, "both flipped": both,
                       "others": leak}
    return {"face": face["name"], "cat": cat["name"], "face scale": face_edit.scale, "cat scale": cat_edit.scale,
            "scenes": len(files), "runs": rows}


def markdown(report: dict) -> str:
    """The report as Markdown: one table row per pair and run, then the mean over pairs."""
    lines = ["# Face + cat composition on scenes", "",
             f"Measured {report['date']} ({report['machine']}), {report['wall_minutes']:.1f} min; "
             f"`{report['command']}`.", "",
             f"Window {tuple(report['window'])}, {report['inversion_steps']}-step DDPM inversion, each direction "
             "at its slider scale (the cat's halved). Flipped = the oracle reads the attribute at its other "
             "value; others = the largest change among the six other scene attributes (mean over scenes).", "",
             "| face edit | cat edit | scenes | run | face flipped | cat flipped | both flipped | others |",
             "|---|---|---|---|---|---|---|---|"]
    for pair in report["pairs"]:
        for label, row in pair["runs"].items():
            lines.append(f"| {pair['face']} {pair['face scale']:+g} | {pair['cat']} {pair['cat scale']:+g} | "
                         f"{pair['scenes']} | {label} | {row['face flipped']:.2f} | {row['cat flipped']:.2f} | "
                         f"{row['both flipped']:.2f} | {row['others']:.2f} |")
    lines += ["", "Mean over pairs:", "", "| run | face flipped | cat flipped | both flipped | others |",
              "|---|---|---|---|---|"]
    for label, row in report["mean"].items():
        lines.append(f"| {label} | {row['face flipped']:.2f} | {row['cat flipped']:.2f} | {row['both flipped']:.2f} "
                     f"| {row['others']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    """Measure every visible (face, cat) pair; write compose.md/.json; return the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-scenes", type=int, default=16, help="scenes per pair, at most")
    parser.add_argument("--window", nargs=2, type=float, default=[0.9, 0.0], metavar=("START", "END"))
    parser.add_argument("--inversion-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="2 pairs, 4 scenes each")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    pipe = load_pipeline(None, device="cpu")
    oracle = Oracle.load(ORACLE_DIR)
    face_set = Directions.load(DIRECTIONS_DIR / "face.safetensors")
    cat_set = Directions.load(DIRECTIONS_DIR / "cat.safetensors")
    scales = {**slider_scales(face_set), **slider_scales(cat_set)}
    with open(SAMPLES_DIR / "scene" / "labels.csv") as f:
        labels = list(csv.DictReader(f))
    pairs = [(fm, cm) for fm in visible_moves(face_set) for cm in visible_moves(cat_set)]
    if args.quick:
        pairs, args.max_scenes = pairs[:2], 4
    results = []
    for face, cat in pairs:
        result = measure_pair(pipe, oracle, face_set, cat_set, face, cat, labels, scales, args.max_scenes,
                              tuple(args.window), args.inversion_steps)
        if result is not None:
            results.append(result)
            print(f"[compose] {face['name']} + {cat['name']}: "
                  + "; ".join(f"{k} both {v['both flipped']:.2f}" for k, v in result["runs"].items()), flush=True)
    if not results:
        raise SystemExit(f"no pair of visible face and cat directions (their cards' oracle readings) has scenes "
                         f"to act on in {SAMPLES_DIR / 'scene'}; retrain the sets (data/directions/README.md)")
    labels_run = list(results[0]["runs"])
    mean = {label: {key: sum(r["runs"][label][key] for r in results) / len(results)
                    for key in results[0]["runs"][label]} for label in labels_run}
    from benchmarks.speed import describe_machine, machine_info

    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": describe_machine(machine_info("cpu")),
              "command": " ".join(["python benchmarks/compose.py", *(sys.argv[1:] if argv is None else argv)]),
              "window": args.window, "inversion_steps": args.inversion_steps, "pairs": results, "mean": mean,
              "wall_minutes": (time.time() - start) / 60}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compose.json").write_text(json.dumps(report, indent=1))
    (args.out / "compose.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
