"""Speed and memory of noiseclr-lite: training steps, inversion, one slider update.

    python benchmarks/speed.py                    # CPU: tiny model + bundled model (if shipped); GPU part if any
    python benchmarks/speed.py --only train-step  # just the batched vs one-call-per-direction comparison

Timings are medians over ``--repeats`` runs after a warm-up; comparisons (batched vs
per-direction) alternate A and B in one process so both see the same machine state.
Peak memory is measured in a fresh subprocess per setting (peak RSS on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU).  Results go to stdout as a Markdown table
and to ``benchmarks/results/speed.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _pipe(model: str):
    from noiseclr_lite.models import load_pipeline
    from noiseclr_lite.testing import tiny_pipeline

    return tiny_pipeline(0) if model == "tiny" else load_pipeline(None if model == "bundled" else model)


def _latents(pipe, n: int) -> torch.Tensor:
    size = pipe.unet.config.sample_size
    return torch.randn(n, pipe.unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))


def train_step_seconds(pipe, k: int, n: int, per_direction: bool, steps: int = 3) -> float:
    """Median wall seconds of one training step (K directions, all contrasted; N images).

    Times are taken between progress callbacks inside one run, so model loading, direction
    set-up and latent encoding are not counted; the first step (warm-up) is dropped.
    """
    from noiseclr_lite.train import train_directions

    stamps = []
    train_directions(pipe, latents=_latents(pipe, n), num_directions=k, steps=steps + 1, batch_size=n,
                     negatives_per_step=None, chunk_size=n if per_direction else None, grad_cache=False,
                     progress=False, callback=lambda step, loss: stamps.append(time.perf_counter()))
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def compare_train_step(model: str, k: int, n: int, repeats: int) -> dict:
    """Batched (one UNet call) vs one UNet call per direction, alternating, medians and ratio."""
    pipe = _pipe(model)
    batched, per_direction = [], []
    for _ in range(repeats):
        batched.append(train_step_seconds(pipe, k, n, False))
        per_direction.append(train_step_seconds(pipe, k, n, True))
    b, p = statistics.median(batched), statistics.median(per_direction)
    return {"model": model, "K": k, "N": n, "repeats": repeats, "batched_s": round(b, 4),
            "per_direction_s": round(p, 4), "per_direction_over_batched": round(p / b, 3),
            "batched_runs": [round(x, 4) for x in batched], "per_direction_runs": [round(x, 4) for x in per_direction]}


def peak_memory_mb(model: str, k: int, n: int, per_direction: bool) -> float:
    """Peak RSS (MB) of a fresh process that builds the model and runs 2 training steps,
    minus the peak of one that only builds the model: the training step's own memory."""
    code = ("import resource,sys,torch; sys.path.insert(0, {root!r}); from benchmarks.speed import _pipe, train_step_seconds;"
            "p=_pipe({model!r}); base=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            "{run}"
            "print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    root = str(Path(__file__).resolve().parent.parent)
    run = f"train_step_seconds(p, {k}, {n}, {per_direction}, steps=2);"
    out = subprocess.run([sys.executable, "-c", code.format(root=root, model=model, run=run)],
                         capture_output=True, text=True, check=True).stdout.split()
    base, peak = int(out[-2]), int(out[-1])
    return round((peak - base) / 1024, 1)


def inversion_and_slider(model: str, repeats: int, steps: int) -> dict:
    """Seconds for one DDPM inversion and for one edit re-render (one slider move)."""
    from noiseclr_lite.directions import Directions
    from noiseclr_lite.editing import DirectionEdit, edit
    from noiseclr_lite.inversion import ddpm_invert

    pipe = _pipe(model)
    latents = _latents(pipe, 1)
    directions = Directions.create(pipe, 3, prefix="bench", seed=0)
    directions.install(pipe)
    inv_times, edit_times = [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        inversion = ddpm_invert(pipe, latents, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
        mid = time.perf_counter()
        edit(pipe, [DirectionEdit(directions, 0, 1.0 + i), DirectionEdit(directions, 1, -1.0)], inversion=inversion,
             num_inference_steps=steps)
        end = time.perf_counter()
        if i:
            inv_times.append(mid - start), edit_times.append(end - mid)
    return {"model": model, "steps": steps, "inversion_s": round(statistics.median(inv_times), 4),
            "slider_update_s": round(statistics.median(edit_times), 4), "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["train-step", "memory", "inversion"], default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=["tiny", "bundled"])
    args = parser.parse_args()
    from noiseclr_lite.models import BUNDLED_MODEL

    models = [m for m in args.models if m != "bundled" or (Path(BUNDLED_MODEL) / "model_index.json").exists()]
    report = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
              "date": time.strftime("%Y-%m-%d"), "cuda": torch.cuda.is_available(), "results": []}
    for model in models:
        if args.only in (None, "train-step"):
            report["results"].append({"what": "train step", **compare_train_step(model, args.k, args.n, args.repeats)})
        if args.only in (None, "memory"):
            report["results"].append({"what": "train step peak memory (MB above the loaded model)", "model": model,
                                      "batched_mb": peak_memory_mb(model, args.k, args.n, False),
                                      "per_direction_mb": peak_memory_mb(model, args.k, args.n, True)})
        if args.only in (None, "inversion"):
            report["results"].append({"what": "inversion and slider update", **inversion_and_slider(model, args.repeats, 25)})
    if not torch.cuda.is_available():
        report["gpu"] = "no GPU on this machine: the Stable Diffusion 1.5 measurements were skipped"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
