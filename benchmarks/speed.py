"""Speed and memory of noiseclr-lite: training steps, time to directions, inversion, one slider update.

    python benchmarks/speed.py                          # every CPU part, tiny + bundled model; the GPU part if any
    python benchmarks/speed.py --only train-step        # just batched vs one-UNet-call-per-direction
    python benchmarks/speed.py --only gpu               # just Stable Diffusion 1.5's architecture on the GPU
    python benchmarks/speed.py --models tiny --repeats 1 --k 4 --n 4 --out /tmp/speed   # a smoke run

What is measured (CPU, for each of ``--models``):

* ``train-step``: seconds per training step with K directions all contrasted on N images,
  batched (one UNet call for all N*K rows) vs one UNet call per direction, alternated in one
  process; their ratio.
* ``memory``: the training step's peak RSS above the loaded model, in a fresh process per setting.
* ``recipe``: time to usable directions for one domain: the estimated wall time of the shipped
  recipe (``noiseclr_lite.toyworld.shipped.train_shipped_set``'s ``train_directions`` call: K=6,
  batch 6, 200 steps on ``data/samples/face``) = measured set-up and first step + 199 x the median
  of the measured later steps; next to how the shipped ``data/directions/face.safetensors`` was
  really trained (its recorded ``train_seconds``, steps, sets and seconds per step), when it exists.
* ``inversion``: one DDPM inversion and one slider update (one ``edit`` re-render from the
  cached inversion, as ``EditPanel`` does; 10 steps is the panel's default) at 10 and 25 steps
  with 1 and 3 active directions.

With a GPU (``--only gpu`` or by default): Stable Diffusion 1.5's architecture built from its
published configs with random weights (no download), at 512x512 (latents 4x64x64): step time
and peak ``torch.cuda.max_memory_allocated`` over a grid of N x K x precision x gradient
checkpointing (an out-of-memory setting is recorded as "OOM"), which settings fit a 16 GB T4,
batched vs per-direction, the recipe, and inversion + edit latency at 50 steps.

Timings are medians over ``--repeats`` runs after a warm-up; a comparison is a ratio measured
in one run.  Results go to ``<out>/speed.json`` and ``<out>/speed.md`` (default
``benchmarks/results/``), rewritten after every part so an interrupted run keeps what it
measured.  Parts not run this time are kept from the existing ``speed.json`` (each part records
its own machine and date); ``--fresh`` starts an empty report.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/speed.py` from anywhere
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
CPU_PARTS = ["train-step", "memory", "recipe", "inversion"]
PARTS = CPU_PARTS + ["gpu"]
#: the model name that builds Stable Diffusion 1.5's architecture with random weights
SD15_RANDOM = "sd15-random"
#: parameter counts of the published Stable Diffusion 1.5 components (diffusers' configs)
SD15_PARAMETERS = {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}
#: GiB a Colab T4 leaves to PyTorch's allocator: 16 GB nominal, 14.75 GiB reported by
#: ``get_device_properties().total_memory``, less ~0.75 GiB for the CUDA context and cuDNN workspaces
T4_USABLE_GIB = 14.0
#: the training precisions of the GPU grid: (weights dtype, ``train_directions``'s mixed_precision)
PRECISIONS = {
    "fp32": (torch.float32, "no"),        # fp32 weights, no autocast
    "autocast": (torch.float32, "fp16"),  # fp32 weights, fp16 autocast
    "fp16": (torch.float16, "fp16"),      # fp16 weights (load_pipeline's GPU default) + fp16 autocast
}
GIB = 2 ** 30


# ===================================================================================== machine
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    """Where a part ran: CPU model, cores, torch threads and version, and the GPU when ``device`` is cuda."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_conv=torch.backends.cudnn.allow_tf32)
    return info


def describe_machine(info: dict) -> str:
    """One line for the report: "AMD EPYC (2 cores, 1 torch thread), torch 2.x" (+ the GPU)."""
    threads = info["torch_threads"]
    text = f"{info['cpu']} ({info['cores']} cores, {threads} torch thread{'s' * (threads != 1)}), torch {info['torch']}"
    if "gpu" in info:
        text += (f"; GPU {info['gpu']} ({info['gpu_memory_gib']} GiB; TF32 matmul {info['tf32_matmul']}, "
                 f"TF32 conv {info['tf32_conv']})")
    return text


# ===================================================================================== pipelines
def sd15_unet():
    """Stable Diffusion 1.5's UNet (859.5M parameters), random weights, on the current default device."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
        flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, center_input_sample=False)


def sd15_text_encoder():
    """Stable Diffusion 1.5's CLIP ViT-L/14 text encoder (123.1M parameters), random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
        bos_token_id=0, eos_token_id=2, pad_token_id=1))


def sd15_vae():
    """Stable Diffusion 1.5's AutoencoderKL (83.7M parameters, 8x downsampling), random weights."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, act_fn="silu", norm_num_groups=32, sample_size=512, scaling_factor=0.18215)


def sd15_scheduler():
    """Stable Diffusion 1.5's published scheduler (PNDM; the library re-uses its noise schedule in DDIM)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)


def sd15_random_pipeline(device: str | torch.device = "cuda", dtype: torch.dtype = torch.float32,
                         tokenizer_dir: str | Path | None = None):
    """Stable Diffusion 1.5's architecture with random weights, built directly on ``device``.

    SD 1.5's CLIP tokenizer cannot be downloaded, so the pipeline gets a word-level CLIP
    tokenizer (``noiseclr_lite.toyworld.tokenizer``) padding to SD's 77 positions: a direction's
    prompt is still [BOS, its token, EOS, padding...] and its conditioning [77, 768], as on SD 1.5.
    Its ids stay far below the text encoder's 49408 rows, so the placeholder tokens reuse existing rows.
    """
    from diffusers import StableDiffusionPipeline

    from noiseclr_lite.toyworld.tokenizer import save_word_tokenizer

    tokenizer_dir = Path(tokenizer_dir or tempfile.mkdtemp(prefix="sd15_tokenizer_"))
    tokenizer = save_word_tokenizer(["a", "photo", "of", "person", "face"], tokenizer_dir, model_max_length=77)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: ~1B random weights in seconds, not minutes
        unet, text_encoder, vae = sd15_unet(), sd15_text_encoder(), sd15_vae()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sd15_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    if dtype != torch.float32:  # built in float32; converting a float32 pipeline only prints a warning
        pipe = pipe.to(dtype=dtype)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_benchmark_pipeline(model: str, device: str | None = None):
    """``"tiny"`` (the test model), ``"bundled"``, ``"sd15-random"`` or a diffusers folder / hub id."""
    if model == "tiny":
        from noiseclr_lite.testing import tiny_pipeline

        return tiny_pipeline(0)
    if model == SD15_RANDOM:
        return sd15_random_pipeline(device or "cuda")
    from noiseclr_lite.models import load_pipeline

    return load_pipeline(None if model == "bundled" else model, device=device or "cpu")


def random_latents(pipe, n: int, seed: int = 0) -> torch.Tensor:
    """Seeded float32 latents [n, C, s, s] at the UNet's sample size, on the CPU."""
    size = pipe.unet.config.sample_size
    return torch.randn(n, pipe.unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(seed))


def _sync(pipe) -> None:
    """Wait for the GPU so that a timestamp means the work is done."""
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()


# ===================================================================================== training
def timed_training(pipe, k: int, n: int, steps: int, images: torch.Tensor | None = None,
                   **train_options) -> tuple[float, list[float]]:
    """Run ``train_directions`` for ``steps`` steps; return (seconds from the call to the end of
    step 1, [seconds of each later step]).

    ``images`` [M, 3, H, W] in [-1, 1] are VAE-encoded by the call (as the recipe does); without
    them N random latents are trained on.  All K directions are contrasted in every step
    (``negatives_per_step=None``) unless ``train_options`` says otherwise.  Gradient
    checkpointing, which ``train_directions`` switches on and leaves on, is switched off after.
    """
    from noiseclr_lite.train import train_directions

    options = {"negatives_per_step": None, **train_options}
    latents = None if images is not None else random_latents(pipe, n)
    stamps = []

    def stamp(step, loss):
        _sync(pipe)
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    try:
        train_directions(pipe, images, latents=latents, num_directions=k, steps=steps, batch_size=n, progress=False,
                         callback=stamp, **options)
    finally:
        if options.get("gradient_checkpointing"):
            pipe.unet.disable_gradient_checkpointing()  # the next setting must start without it
    return stamps[0] - start, [b - a for a, b in zip(stamps, stamps[1:])]


def train_step_seconds(pipe, k: int, n: int, per_direction: bool = False, steps: int = 3, **train_options) -> float:
    """Median wall seconds of one training step (K directions, all contrasted; N images).

    The first step (warm-up: allocator, kernel selection) and everything before it (direction
    set-up, empty-prompt encoding) are not counted: ``steps`` later steps are.
    ``per_direction`` makes one UNet call per direction (``chunk_size=N``, no gradient caching,
    so the only difference from the batched step is the number of calls).
    """
    if per_direction:
        train_options = {**train_options, "chunk_size": n, "grad_cache": False}
    _, step_times = timed_training(pipe, k, n, steps + 1, **train_options)
    return statistics.median(step_times)


def compare_train_step(pipe, k: int, n: int, repeats: int, steps: int = 3, **train_options) -> dict:
    """Batched (one UNet call) vs one UNet call per direction, alternated ``repeats`` times.

    Returns medians over the repeats (each repeat's number is itself the median of ``steps``
    steps after a warm-up step) and ``per_direction_over_batched``, their ratio (> 1: batching is faster).
    """
    batched, per_direction = [], []
    for _ in range(repeats):
        batched.append(train_step_seconds(pipe, k, n, False, steps, **train_options))
        per_direction.append(train_step_seconds(pipe, k, n, True, steps, **train_options))
    b, p = statistics.median(batched), statistics.median(per_direction)
    return {"K": k, "N": n, "repeats": repeats, "batched_s": round(b, 4), "per_direction_s": round(p, 4),
            "per_direction_over_batched": round(p / b, 3), "batched_runs": [round(x, 4) for x in batched],
            "per_direction_runs": [round(x, 4) for x in per_direction]}


def _rss_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}: the memory probe needs Linux")


def memory_probe(model: str, k: int, n: int, per_direction: bool) -> tuple[float, float]:
    """In this process: load ``model``, run 2 training steps; return (MB the steps added to the RSS
    after loading, MB of the process's peak RSS during the steps).  Run in a fresh process."""
    pipe = load_benchmark_pipeline(model, "cpu")
    gc.collect()
    # reset the peak RSS to the current RSS, so loading's transient peak does not hide the step's
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kib("VmRSS")
    train_step_seconds(pipe, k, n, per_direction, steps=1)
    peak = _rss_kib("VmHWM")
    return round((peak - base) / 1024, 1), round(peak / 1024, 1)


def training_rss_mb(model: str, k: int, n: int, per_direction: bool) -> tuple[float, float]:
    """(MB the training step itself needs, MB peak RSS of the whole process), from a fresh process
    that loads ``model`` and runs 2 training steps (:func:`memory_probe`); CPU, Linux."""
    code = (f"import sys, torch; sys.path.insert(0, {str(REPO)!r}); torch.set_num_threads({torch.get_num_threads()}); "
            f"from benchmarks.speed import memory_probe; print(*memory_probe({model!r}, {k}, {n}, {per_direction}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the memory probe for model={model!r} K={k} N={n} failed (its error below); run it "
                           f"alone to debug: {sys.executable} -c {code!r}\n{done.stderr[-2000:]}")
    step_mb, peak_mb = map(float, done.stdout.split()[-2:])
    return step_mb, peak_mb


def recipe_settings() -> dict:
    """The shipped directions' recipe: ``train_shipped_set``'s defaults (K, batch size, steps, ...)."""
    from noiseclr_lite.toyworld.shipped import train_shipped_set

    defaults = {name: p.default for name, p in inspect.signature(train_shipped_set).parameters.items()}
    return {key: defaults[key] for key in ("num_directions", "batch_size", "steps", "learning_rate", "seed")}


def shipped_training(domain: str = "face") -> dict | None:
    """How ``data/directions/<domain>.safetensors`` was trained, put per step (None if not shipped).

    Returns ``train_seconds`` (its recorded training time, summed over every set of a pool), ``steps``
    (per set), ``sets`` (1, or the pool's size: ``--pool N`` trains N sets and keeps the cleanest K)
    and ``step_s`` = train_seconds / (steps x sets), the number to put next to a measured step: a
    shipped set need not follow the recipe (the face set is the cleanest 6 of 4 sets of 300 steps).
    """
    from noiseclr_lite.directions import Directions
    from noiseclr_lite.models import DIRECTIONS_DIR

    path = Path(DIRECTIONS_DIR) / f"{domain}.safetensors"
    if not path.exists():
        return None
    metadata = Directions.load(path).metadata
    if metadata.get("train_seconds") is None:
        return None
    seconds = float(metadata["train_seconds"])
    steps = int(_as_dict(metadata.get("training", {})).get("steps", 0)) or None
    sets = len(_as_dict(metadata.get("pool", {})).get("seeds", [None]))
    return {"train_seconds": round(seconds, 1), "steps": steps, "sets": sets,
            "step_s": round(seconds / (steps * sets), 4) if steps else None}


def _as_dict(value) -> dict:
    """A metadata value that is a dict (``pool``) or a dict saved as a JSON string (``training``)."""
    return value if isinstance(value, dict) else json.loads(value)


def recipe_time(pipe, domain: str = "face", repeats: int = 5, steps: int | None = None, **train_options) -> dict:
    """Time to usable directions for one domain, estimated from a short run of the shipped recipe.

    Runs the recipe's ``train_directions`` call (images from ``data/samples/<domain>``, encoded by
    the call) for 1 + ``repeats`` steps and returns the estimate ``first_s + (steps - 1) x step_s``
    where ``first_s`` = the call's set-up (encoding, directions) and first step, and ``step_s`` =
    the median later step.  ``steps`` defaults to the recipe's (200); loading the model is excluded.
    """
    from noiseclr_lite.data import load_images
    from noiseclr_lite.models import SAMPLES_DIR, image_size
    from noiseclr_lite.train import TrainConfig

    recipe = recipe_settings()
    steps = steps or recipe["steps"]
    images = load_images(Path(SAMPLES_DIR) / domain, size=image_size(pipe))
    first, later = timed_training(pipe, recipe["num_directions"], recipe["batch_size"], 1 + repeats, images=images,
                                  learning_rate=recipe["learning_rate"], seed=recipe["seed"], prefix=domain,
                                  negatives_per_step=TrainConfig().negatives_per_step, **train_options)
    step = statistics.median(later)
    return {"domain": domain, "images": len(images), "K": recipe["num_directions"], "N": recipe["batch_size"],
            "steps": steps, "repeats": repeats, "first_step_s": round(first, 3), "step_s": round(step, 4),
            "estimated_s": round(first + (steps - 1) * step, 1), **_shipped_columns(shipped_training(domain))}


def _shipped_columns(shipped: dict | None) -> dict:
    """The recipe row's ``shipped_*`` columns (all None when the domain ships no timed set)."""
    shipped = shipped or {}
    return {f"shipped_{key}": shipped.get(key) for key in ("train_seconds", "steps", "sets", "step_s")}



# ===================================================================================== editing
def inversion_and_slider(pipe, steps: int, active: list[int], repeats: int) -> list[dict]:
    """Seconds of one DDPM inversion and of one slider update, at ``steps`` sampler steps.

    A slider update is what ``EditPanel`` does when a slider moves: ``edit`` from the cached
    inversion with the active directions, VAE decode included (PNG encoding for the widget not).
    One row per entry of ``active`` (how many directions have a nonzero slider); medians over
    ``repeats`` after one warm-up round.  Each round moves the sliders so no two renders are alike.
    """
    from noiseclr_lite.directions import Directions
    from noiseclr_lite.editing import DirectionEdit, edit
    from noiseclr_lite.inversion import ddpm_invert

    latents = random_latents(pipe, 1)
    directions = Directions.create(pipe, max(active), prefix="bench", seed=0)
    directions.install(pipe)
    inversion_s, update_s = [], {count: [] for count in active}
    for round_ in range(repeats + 1):
        start = time.perf_counter()
        inversion = ddpm_invert(pipe, latents, num_inference_steps=steps, seed=round_)
        inverted = time.perf_counter()
        for count in active:
            sliders = [DirectionEdit(directions, j, 1.0 + 0.5 * round_) for j in range(count)]
            begin = time.perf_counter()
            edit(pipe, sliders, inversion=inversion)
            if round_:
                update_s[count].append(time.perf_counter() - begin)
        if round_:
            inversion_s.append(inverted - start)
    inversion_median = round(statistics.median(inversion_s), 4)
    return [{"steps": steps, "active": count, "inversion_s": inversion_median,
             "slider_update_s": round(statistics.median(update_s[count]), 4), "repeats": repeats} for count in active]


# ===================================================================================== GPU grid
def gpu_setting(pipe, n: int, k: int, precision: str, checkpointing: bool, repeats: int) -> dict:
    """Step time and peak memory of one training setting; OOM (and a non-finite loss) are results.

    The pipeline's weights must already be in ``PRECISIONS[precision]``'s dtype.  Peak memory is
    ``torch.cuda.max_memory_allocated`` (and ``_reserved``) over the whole ``train_directions``
    call, weights included (on a CPU pipeline: None).
    """
    weights_dtype, mixed_precision = PRECISIONS[precision]
    if pipe.unet.dtype != weights_dtype:
        raise ValueError(f"precision {precision!r} needs {weights_dtype} weights but the UNet is {pipe.unet.dtype}; "
                         f"convert it first (pipe.to(dtype={weights_dtype}))")
    row = {"precision": precision, "checkpointing": checkpointing, "N": n, "K": k, "unet_rows": n * k}
    cuda = pipe.device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        step = train_step_seconds(pipe, k, n, steps=repeats, mixed_precision=mixed_precision,
                                  gradient_checkpointing=checkpointing)
        row.update(status="ok", step_s=round(step, 4))
    except torch.cuda.OutOfMemoryError:
        row.update(status="OOM", step_s=None)
    except FloatingPointError:  # random weights in fp16 can overflow; say so instead of a time
        row.update(status="non-finite loss", step_s=None)
    if cuda:
        row.update(peak_allocated_gib=round(torch.cuda.max_memory_allocated() / GIB, 2),
                   peak_reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 2))
        row["fits_t4"] = fits_t4(row)
        gc.collect()
        torch.cuda.empty_cache()  # an OOM leaves cached blocks behind
    return row


def fits_t4(row: dict) -> str:
    """"yes" (peak reserved <= T4_USABLE_GIB), "probably" (only peak allocated is), "no" (or OOM here)."""
    if row["status"] == "OOM" or row.get("peak_allocated_gib") is None:
        return "no"
    if row["peak_reserved_gib"] <= T4_USABLE_GIB:
        return "yes"
    return "probably" if row["peak_allocated_gib"] <= T4_USABLE_GIB else "no"


def gpu_train_grid(pipe, ns: list[int], ks: list[int], precisions: list[str], checkpointing: list[bool],
                   repeats: int, on_row: Callable[[dict], None] = lambda row: None) -> list[dict]:
    """Every (precision, checkpointing, N, K) setting; the pipeline is converted to each precision's dtype.

    Settings are grouped by weights dtype (fp32 first) so the weights are converted once.  A
    setting at least as large (N and K) as one that ran out of memory under the same precision
    and checkpointing is not run: it is recorded as "OOM (inferred)".  ``on_row`` sees each row.
    """
    rows = []
    for precision in sorted(precisions, key=lambda p: PRECISIONS[p][0] != torch.float32):
        pipe.to(dtype=PRECISIONS[precision][0])
        for checkpoint in checkpointing:
            ran_out = []
            for n in sorted(ns):
                for k in sorted(ks):
                    if any(n >= n0 and k >= k0 for n0, k0 in ran_out):
                        row = {"precision": precision, "checkpointing": checkpoint, "N": n, "K": k,
                               "unet_rows": n * k, "status": "OOM (inferred)", "step_s": None, "fits_t4": "no"}
                    else:
                        row = gpu_setting(pipe, n, k, precision, checkpoint, repeats)
                        if row["status"] == "OOM":
                            ran_out.append((n, k))
                    rows.append(row)
                    on_row(row)
    return rows


# ===================================================================================== report
def _fmt(value) -> str:
    """A table cell: 3 significant digits for floats (no exponent), "-" for None."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table: ``columns`` are (key, title); a missing key prints "-"."""
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


SECTIONS = {  # part -> (heading, what it means, columns)
    "train-step": ("Training step: batched vs one UNet call per direction",
                   "Median seconds of one training step, K directions all contrasted on N images; batched = one "
                   "UNet call on all N*K rows, per direction = K calls of N rows (`chunk_size=N`). Ratio > 1: "
                   "batching is faster. Both alternate in one process.",
                   [("model", "model"), ("K", "K"), ("N", "N"), ("batched_s", "batched (s/step)"),
                    ("per_direction_s", "one call per direction (s/step)"),
                    ("per_direction_over_batched", "ratio"), ("repeats", "repeats")]),
    "memory": ("Training step peak memory (CPU)",
               "A fresh process per setting loads the model, then runs two training steps. Step = its peak "
               "RSS during the steps minus its RSS before them (MB the training step itself needs); process = "
               "the whole process's peak RSS (model, Python and PyTorch included).",
               [("model", "model"), ("K", "K"), ("N", "N"), ("batched_mb", "batched: step (MB)"),
                ("batched_peak_mb", "batched: process (MB)"), ("per_direction_mb", "one call per direction: step (MB)"),
                ("per_direction_peak_mb", "one call per direction: process (MB)")]),
    "recipe": ("Time to usable directions (one domain)",
               "Estimated wall time of the shipped recipe's `train_directions` call (K directions, batch N, "
               "`steps` steps on `data/samples/<domain>`; model loading excluded) = measured set-up and first "
               "step + (steps - 1) x the median of the measured later steps. `shipped` is how "
               "`data/directions/<domain>.safetensors` was really trained (on whatever machine made it): its "
               "recorded `train_seconds`, summed over the sets of a pool, its steps per set and sets, and "
               "seconds per step = train_seconds / (steps x sets), to compare with the median step.",
               [("model", "model"), ("domain", "domain"), ("images", "images"), ("K", "K"), ("N", "N"),
                ("steps", "steps"), ("first_step_s", "set-up + first step (s)"), ("step_s", "median step (s)"),
                ("estimated_s", "estimated total (s)"), ("estimated_min", "(min)"),
                ("shipped_train_seconds", "shipped: train_seconds (s)"), ("shipped_steps", "shipped: steps"),
                ("shipped_sets", "shipped: sets"), ("shipped_step_s", "shipped: s per step"),
                ("repeats", "steps timed")]),
    "inversion": ("Inversion and one slider update",
                  "Median seconds of one DDPM inversion of one image and of one slider update: `edit` from the "
                  "cached inversion with that many active directions, VAE decode included (what `EditPanel` "
                  "does on a slider move; its default is 10 steps).",
                  [("model", "model"), ("steps", "steps"), ("active", "active directions"),
                   ("inversion_s", "inversion (s)"), ("slider_update_s", "slider update (s)"), ("repeats", "repeats")]),
    "gpu-grid": ("Stable Diffusion 1.5 (random weights), 512x512: training step grid",
                 "Seconds per training step and peak GPU memory (`max_memory_allocated` / `_reserved` over the "
                 "`train_directions` call, weights included: UNet + text encoder + VAE). Precision: fp32 = fp32 "
                 "weights; autocast = fp32 weights + fp16 autocast; fp16 = fp16 weights (what `load_pipeline` "
                 f"gives on a GPU) + fp16 autocast. T4 = fits a 16 GB Colab T4: yes if peak reserved <= "
                 f"{T4_USABLE_GIB} GiB, probably if only peak allocated is. OOM = ran out of this GPU's memory; "
                 "OOM (inferred) = not run because a smaller setting ran out.",
                 [("precision", "precision"), ("checkpointing", "grad. checkpointing"), ("N", "N"), ("K", "K"),
                  ("unet_rows", "rows per UNet call"), ("status", "status"), ("step_s", "s/step"),
                  ("peak_allocated_gib", "peak allocated (GiB)"), ("peak_reserved_gib", "peak reserved (GiB)"),
                  ("fits_t4", "T4 16 GB")]),
    "gpu-train-step": ("Stable Diffusion 1.5: batched vs one UNet call per direction", None,
                       [("precision", "precision"), ("checkpointing", "grad. checkpointing"), ("K", "K"), ("N", "N"),
                        ("status", "status"), ("batched_s", "batched (s/step)"), ("per_direction_s", "one call per direction (s/step)"),
                        ("per_direction_over_batched", "ratio"), ("repeats", "repeats")]),
    "gpu-recipe": ("Stable Diffusion 1.5: time to usable directions (the recipe, 512x512 samples)", None,
                   [("precision", "precision"), ("checkpointing", "grad. checkpointing"), ("K", "K"), ("N", "N"),
                    ("status", "status"), ("steps", "steps"), ("first_step_s", "set-up + first step (s)"), ("step_s", "median step (s)"),
                    ("estimated_s", "estimated total (s)"), ("estimated_min", "(min)"), ("repeats", "steps timed")]),
    "gpu-edit": ("Stable Diffusion 1.5: inversion and edit latency", "fp16 weights, as `load_pipeline` gives on a GPU.",
                 [("steps", "steps"), ("active", "active directions"), ("inversion_s", "inversion (s)"),
                  ("slider_update_s", "edit (s)"), ("repeats", "repeats")]),
}


def markdown_report(report: dict) -> str:
    """The Markdown version of a report: the machines and dates, then one table per part measured."""
    parts = report.get("parts", {})
    lines = ["# noiseclr-lite speed benchmark", "",
             "Written by `benchmarks/speed.py`. Timings are medians of repeated runs after a warm-up; a ratio "
             "compares two numbers measured in one run.", "", "| part | machine | date | command |", "|---|---|---|---|"]
    for name, part in parts.items():
        lines.append(f"| {name} | {describe_machine(part['machine'])} | {part['date']} | `{part['command']}` |")
    for name, (heading, meaning, columns) in SECTIONS.items():
        if name not in parts:
            continue
        lines += ["", f"## {heading}", ""] + ([meaning, ""] if meaning else []) + [table(parts[name]["rows"], columns)]
        lines += [line for note in parts[name].get("notes", []) for line in ("", f"_{note}_")]
    if not any(name.startswith("gpu") for name in parts):
        lines += ["", "## Stable Diffusion 1.5 on a GPU", "",
                  report.get("gpu_note", "Not measured: no GPU on the machine that ran the benchmark.")]
    return "\n".join(lines) + "\n"


def load_report(out: Path, fresh: bool) -> dict:
    """The existing ``out/speed.json`` (its parts are kept unless re-run), or an empty report."""
    path = out / "speed.json"
    if not fresh and path.exists():
        report = json.loads(path.read_text())
        if "parts" in report:  # an older report without parts has nothing to keep
            return report
    return {"parts": {}}


def save_report(report: dict, out: Path) -> None:
    """Write ``out/speed.json`` and ``out/speed.md`` (called after every part)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "speed.md").write_text(markdown_report(report))


# ===================================================================================== running
def _minutes(row: dict) -> dict:
    return {**row, "estimated_min": round(row["estimated_s"] / 60, 1)}


def run_cpu_parts(args, record: Callable[[str, list, list], None]) -> None:
    """The CPU parts in ``args.only``, on every model of ``--models`` (the bundled one only if shipped).

    ``record(part, rows, notes)`` is called after every measurement with the part's rows so far.
    """
    from noiseclr_lite.models import BUNDLED_MODEL

    bundled_missing = not (Path(BUNDLED_MODEL) / "model_index.json").exists()
    models = [m for m in args.models if not (m == "bundled" and bundled_missing)]
    notes = [f"The bundled model is not in {BUNDLED_MODEL}: it was skipped."] if len(models) < len(args.models) else []
    rows = {part: [] for part in CPU_PARTS}
    for model in models:
        needs_pipe = set(args.only) & {"train-step", "recipe", "inversion"}  # memory probes load their own
        pipe = load_benchmark_pipeline(model, "cpu") if needs_pipe else None
        if "train-step" in args.only:
            rows["train-step"].append({"model": model, **compare_train_step(pipe, args.k, args.n, args.repeats)})
            record("train-step", rows["train-step"], notes)
        if "memory" in args.only:
            (batched, batched_peak), (per_direction, per_direction_peak) = (
                training_rss_mb(model, args.k, args.n, False), training_rss_mb(model, args.k, args.n, True))
            rows["memory"].append({"model": model, "K": args.k, "N": args.n, "batched_mb": batched,
                                   "per_direction_mb": per_direction, "batched_peak_mb": batched_peak,
                                   "per_direction_peak_mb": per_direction_peak})
            record("memory", rows["memory"], notes)
        if "recipe" in args.only:
            row = _minutes(recipe_time(pipe, args.domain, args.repeats, args.recipe_steps))
            rows["recipe"].append({"model": model, **row})
            missing = [] if row["shipped_train_seconds"] is not None else [
                f"data/directions/{args.domain}.safetensors is not shipped (or has no train_seconds): "
                "no recorded training time to compare with."]
            record("recipe", rows["recipe"], notes + missing)
        if "inversion" in args.only:
            for steps in args.inversion_steps:
                rows["inversion"] += [{"model": model, **row}
                                      for row in inversion_and_slider(pipe, steps, args.active, args.repeats)]
            record("inversion", rows["inversion"], notes)


def run_gpu_parts(args, record: Callable[[str, list, list], None]) -> None:
    """Stable Diffusion 1.5's architecture on the GPU: the grid, batched vs per direction, the recipe, editing.

    After the grid the weights stay fp16 and training uses fp16 autocast + gradient checkpointing:
    what ``python -m noiseclr_lite train --mixed-precision fp16 --gradient-checkpointing`` runs on a GPU.
    """
    pipe = sd15_random_pipeline("cuda", torch.float32)
    grid = []
    gpu_train_grid(pipe, args.gpu_n, args.gpu_k, args.gpu_precisions, [False, True], args.gpu_repeats,
                   on_row=lambda row: (grid.append(row), record("gpu-grid", grid, [])))
    pipe.to(dtype=torch.float16)
    options = {"mixed_precision": "fp16", "gradient_checkpointing": True}
    setting = {"precision": "fp16", "checkpointing": True}
    for part, measure in (
            ("gpu-train-step", lambda: compare_train_step(pipe, args.gpu_ratio_k, args.gpu_ratio_n, args.gpu_repeats,
                                                          **options)),
            ("gpu-recipe", lambda: _minutes(recipe_time(pipe, args.domain, args.gpu_repeats, args.recipe_steps,
                                                        **options)))):
        try:
            record(part, [{**setting, **measure()}], [])
        except torch.cuda.OutOfMemoryError:  # a measured result, like in the grid
            record(part, [{**setting, "status": "OOM"}], [])
        except FloatingPointError:  # as in the grid: fp16 random weights can overflow; keep going to gpu-edit
            record(part, [{**setting, "status": "non-finite loss"}], [])
        gc.collect()
        torch.cuda.empty_cache()
    record("gpu-edit", inversion_and_slider(pipe, args.gpu_edit_steps, args.active, args.gpu_repeats), [])


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (``argv``, default ``sys.argv[1:]``) as a namespace."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=PARTS, default=PARTS, help="which parts to run (default: all)")
    parser.add_argument("--models", nargs="+", default=["tiny", "bundled"],
                        help="CPU models: tiny, bundled, or a diffusers folder (default: tiny bundled)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per CPU measurement (after a warm-up)")
    parser.add_argument("--k", type=int, default=8, help="directions per step for train-step and memory")
    parser.add_argument("--n", type=int, default=8, help="images per step for train-step and memory")
    parser.add_argument("--domain", default="face", help="the recipe's sample folder, data/samples/<domain>")
    parser.add_argument("--recipe-steps", type=int, default=None,
                        help="steps of the recipe to estimate for (default: the shipped recipe's 200)")
    parser.add_argument("--inversion-steps", type=int, nargs="+", default=[10, 25],
                        help="sampler steps of inversion and slider update (default: 10 = EditPanel's, 25)")
    parser.add_argument("--active", type=int, nargs="+", default=[1, 3], help="active directions per slider update")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    parser.add_argument("--gpu-n", type=int, nargs="+", default=[2, 4, 8], help="GPU grid: images per step")
    parser.add_argument("--gpu-k", type=int, nargs="+", default=[4, 8, 16], help="GPU grid: directions per step")
    parser.add_argument("--gpu-precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--gpu-repeats", type=int, default=3, help="timed steps / repeats per GPU measurement")
    parser.add_argument("--gpu-ratio-k", type=int, default=8, help="GPU batched vs per direction: directions")
    parser.add_argument("--gpu-ratio-n", type=int, default=4, help="GPU batched vs per direction: images")
    parser.add_argument("--gpu-edit-steps", type=int, default=50, help="GPU inversion and edit: sampler steps")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for speed.json and speed.md")
    parser.add_argument("--fresh", action="store_true", help="start an empty report instead of updating speed.json")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.gpu_repeats < 1:
        parser.error(f"--repeats ({args.repeats}) and --gpu-repeats ({args.gpu_repeats}) must be at least 1")
    return args


def main(argv=None) -> dict:
    """Run the parts asked for; returns the report (also written to ``--out``)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = " ".join(["python benchmarks/speed.py", *(sys.argv[1:] if argv is None else argv)])
    report = load_report(args.out, args.fresh)

    def record(part: str, rows: list, notes: list) -> None:
        device = "cuda" if part.startswith("gpu") else "cpu"
        report["parts"][part] = {"machine": machine_info(device), "date": time.strftime("%Y-%m-%d %H:%M"),
                                 "command": command, "rows": rows, "notes": notes}
        save_report(report, args.out)  # after every measurement: an interrupted run keeps what it measured
        print(f"[speed] {part}: {json.dumps(rows[-1])}", flush=True)

    if set(args.only) & set(CPU_PARTS):
        run_cpu_parts(args, record)
    if "gpu" in args.only:
        if torch.cuda.is_available():
            report.pop("gpu_note", None)
            run_gpu_parts(args, record)
        else:
            report["gpu_note"] = (f"Not measured: the last run that asked for this part ({time.strftime('%Y-%m-%d')}) "
                                  f"had no GPU; run `python benchmarks/speed.py --only gpu` on one.")
            print("[speed] no GPU (torch.cuda.is_available() is False): the Stable Diffusion 1.5 part was skipped")
    save_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
