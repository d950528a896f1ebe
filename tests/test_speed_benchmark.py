"""The speed benchmark's measuring functions on the tiny pipeline, its report writer, and the
Stable Diffusion 1.5 architecture it builds for the GPU part (on the meta device: no memory)."""

import json
import sys
from pathlib import Path

import pytest
import torch

from noiseclr_lite.directions import Directions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import speed  # noqa: E402


def unet_calls(pipe):
    """Record the batch size of every UNet call; returns (the list, the hook handle)."""
    sizes = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(len(args[0])),
                                                 with_kwargs=True)
    return sizes, handle


# ----------------------------------------------------------------------------- training
def test_batched_and_per_direction_steps_make_the_unet_calls_they_claim(tiny_pipe):
    sizes, handle = unet_calls(tiny_pipe)
    try:
        speed.train_step_seconds(tiny_pipe, k=3, n=2, per_direction=False, steps=1)
        batched, sizes[:] = list(sizes), []
        speed.train_step_seconds(tiny_pipe, k=3, n=2, per_direction=True, steps=1)
    finally:
        handle.remove()
    # per step: the empty prompt on N images, then the contrast on all N*K rows
    assert batched == [2, 6] * 2
    assert sizes == [2, 2, 2, 2] * 2  # ... or one call of N rows per direction


def test_compare_train_step_reports_medians_and_their_ratio(tiny_pipe):
    row = speed.compare_train_step(tiny_pipe, k=2, n=2, repeats=1, steps=1)
    assert row["K"] == 2 and row["N"] == 2 and row["repeats"] == 1
    assert row["batched_s"] > 0 and row["per_direction_s"] > 0
    assert row["batched_runs"] == [row["batched_s"]] and row["per_direction_runs"] == [row["per_direction_s"]]
    assert row["per_direction_over_batched"] == pytest.approx(row["per_direction_s"] / row["batched_s"], rel=1e-2)


def test_recipe_time_estimates_the_full_run_from_a_few_steps(tiny_pipe, monkeypatch):
    assert speed.recipe_settings() == {"num_directions": 6, "batch_size": 6, "steps": 200, "learning_rate": 1e-2,
                                       "seed": 0}  # the shipped recipe, read from train_shipped_set
    # a smaller recipe keeps the test fast; the measuring is the same
    monkeypatch.setattr(speed, "recipe_settings", lambda: {"num_directions": 2, "batch_size": 2, "steps": 200,
                                                           "learning_rate": 1e-2, "seed": 0})
    row = speed.recipe_time(tiny_pipe, "face", repeats=1)
    faces = len(list((Path(speed.REPO) / "data" / "samples" / "face").glob("*.png")))
    assert (row["K"], row["N"], row["steps"], row["images"], row["repeats"]) == (2, 2, 200, faces, 1)
    assert row["estimated_s"] == pytest.approx(row["first_step_s"] + 199 * row["step_s"], abs=0.1)
    assert "<face_1>" in tiny_pipe.tokenizer.get_added_vocab()  # trained under the domain's prefix, as shipped


def test_shipped_training_puts_a_pooled_set_per_step(tiny_pipe, tmp_path, monkeypatch):
    import noiseclr_lite.models

    monkeypatch.setattr(noiseclr_lite.models, "DIRECTIONS_DIR", tmp_path)
    assert speed.shipped_training("face") is None
    directions = Directions.create(tiny_pipe, 2, prefix="face")
    directions.metadata["train_seconds"] = 120.0
    directions.metadata["training"] = json.dumps({"steps": 300, "num_directions": 2})
    directions.save(tmp_path / "face.safetensors")
    # no pool: one set, so 120 s over 300 steps
    assert speed.shipped_training("face") == {"train_seconds": 120.0, "steps": 300, "sets": 1, "step_s": 0.4}
    # a pool of 4 sets (as train_shipped_set records it) took 4 x the steps
    directions.metadata["pool"] = {"seeds": [0, 1, 2, 3], "kept": [[0, 1], [2, 0]]}
    directions.save(tmp_path / "face.safetensors")
    assert speed.shipped_training("face") == {"train_seconds": 120.0, "steps": 300, "sets": 4, "step_s": 0.1}
    # the recipe row's columns
    assert speed._shipped_columns(None) == {"shipped_train_seconds": None, "shipped_steps": None,
                                            "shipped_sets": None, "shipped_step_s": None}
    assert speed._shipped_columns(speed.shipped_training("face"))["shipped_step_s"] == 0.1


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the memory probe reads Linux's /proc")
def test_memory_probe_measures_the_step_above_the_loaded_model():
    step_mb, peak_mb = speed.memory_probe("tiny", 2, 2, False)
    assert 0 <= step_mb < peak_mb


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the memory probe reads Linux's /proc")
def test_training_rss_runs_the_probe_in_a_fresh_process_and_says_how_to_rerun_a_failure():
    step_mb, peak_mb = speed.training_rss_mb("tiny", 2, 2, False)
    assert 0 <= step_mb < peak_mb
    with pytest.raises(RuntimeError, match="run it alone to debug") as failed:
        speed.training_rss_mb("/no/such/model", 2, 2, False)
    assert "/no/such/model" in str(failed.value)


# ----------------------------------------------------------------------------- the GPU grid's logic (runs on a CPU)
def test_gpu_setting_times_a_step_and_switches_checkpointing_back_off(tiny_pipe):
    row = speed.gpu_setting(tiny_pipe, n=2, k=2, precision="fp32", checkpointing=True, repeats=1)
    assert row["status"] == "ok" and row["step_s"] > 0 and row["unet_rows"] == 4
    assert "peak_allocated_gib" not in row  # no CUDA memory to read on a CPU pipeline
    assert not tiny_pipe.unet.is_gradient_checkpointing
    with pytest.raises(ValueError, match="needs torch.float16 weights"):
        speed.gpu_setting(tiny_pipe, 2, 2, "fp16", False, 1)


def test_gpu_setting_records_out_of_memory_as_a_result(tiny_pipe, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(speed, "train_step_seconds", out_of_memory)
    row = speed.gpu_setting(tiny_pipe, 8, 16, "autocast", False, 1)
    assert row["status"] == "OOM" and row["step_s"] is None


def test_run_gpu_parts_runs_every_part_on_a_tiny_pipeline(monkeypatch):
    """The whole GPU part's logic on the CPU: fp32 grid, fp16 weights (no autocast on a CPU, so a
    float32 tensor reaching the fp16 UNet fails here), batched vs per direction, recipe, editing."""
    from noiseclr_lite.testing import tiny_pipeline

    monkeypatch.setattr(speed, "sd15_random_pipeline", lambda device, dtype: tiny_pipeline(0))
    args = speed.parse_args(["--only", "gpu", "--gpu-n", "2", "--gpu-k", "2", "--gpu-precisions", "fp32", "fp16",
                             "--gpu-repeats", "1", "--gpu-ratio-k", "2", "--gpu-ratio-n", "2",
                             "--gpu-edit-steps", "2", "--active", "1", "--recipe-steps", "3"])
    seen = {}
    speed.run_gpu_parts(args, lambda part, rows, notes: seen.__setitem__(part, rows))
    assert [(r["precision"], r["status"]) for r in seen["gpu-grid"]] == [("fp32", "ok")] * 2 + [("fp16", "ok")] * 2
    assert seen["gpu-train-step"][0]["batched_s"] > 0 and seen["gpu-recipe"][0]["step_s"] > 0
    assert seen["gpu-edit"][0]["slider_update_s"] > 0


def test_run_gpu_parts_records_a_non_finite_loss_and_goes_on(monkeypatch):
    def overflow(*args, **kwargs):
        raise FloatingPointError("NoiseCLR loss became nan")

    pipe = type("Pipe", (), {"to": lambda self, dtype=None: self})()
    monkeypatch.setattr(speed, "sd15_random_pipeline", lambda device, dtype: pipe)
    monkeypatch.setattr(speed, "gpu_train_grid", lambda *args, **kwargs: [])
    monkeypatch.setattr(speed, "compare_train_step", overflow)
    monkeypatch.setattr(speed, "recipe_time", overflow)
    monkeypatch.setattr(speed, "inversion_and_slider", lambda *args: [{"steps": 2}])
    seen = {}
    speed.run_gpu_parts(speed.parse_args(["--only", "gpu"]), lambda part, rows, notes: seen.__setitem__(part, rows))
    assert seen["gpu-train-step"][0]["status"] == seen["gpu-recipe"][0]["status"] == "non-finite loss"
    assert seen["gpu-edit"] == [{"steps": 2}]


def test_gpu_grid_skips_settings_larger_than_one_that_ran_out_and_converts_weights_once(monkeypatch):
    class Pipe:
        dtypes = []

        def to(self, dtype):
            self.dtypes.append(dtype)

    ran = []

    def fake_setting(pipe, n, k, precision, checkpointing, repeats):
        ran.append((precision, checkpointing, n, k))
        status = "OOM" if n * k >= 16 and not checkpointing else "ok"
        return {"precision": precision, "checkpointing": checkpointing, "N": n, "K": k, "status": status}

    monkeypatch.setattr(speed, "gpu_setting", fake_setting)
    seen = []
    rows = speed.gpu_train_grid(Pipe(), [4, 2], [8, 4], ["fp16", "fp32"], [False, True], 1, on_row=seen.append)
    assert Pipe.dtypes == [torch.float32, torch.float16]  # fp32 weights first, then converted once
    assert seen == rows and len(rows) == 2 * 2 * 4
    no_ckpt = [(r["N"], r["K"], r["status"]) for r in rows if r["precision"] == "fp32" and not r["checkpointing"]]
    assert no_ckpt == [(2, 4, "ok"), (2, 8, "OOM"), (4, 4, "OOM"), (4, 8, "OOM (inferred)")]
    assert ("fp32", False, 4, 8) not in ran and ("fp32", True, 4, 8) in ran


def test_fits_t4_reads_reserved_then_allocated_memory():
    ok = {"status": "ok", "peak_allocated_gib": 9.0, "peak_reserved_gib": 10.0}
    assert speed.fits_t4(ok) == "yes"
    assert speed.fits_t4({**ok, "peak_reserved_gib": 15.0}) == "probably"
    assert speed.fits_t4({**ok, "peak_allocated_gib": 15.0, "peak_reserved_gib": 16.0}) == "no"
    assert speed.fits_t4({**ok, "status": "OOM"}) == "no"


# ----------------------------------------------------------------------------- Stable Diffusion 1.5's architecture
def test_sd15_builders_have_the_published_parameter_counts():
    with torch.device("meta"):  # shapes only: instant, no memory
        models = {"unet": speed.sd15_unet(), "text_encoder": speed.sd15_text_encoder(), "vae": speed.sd15_vae()}
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    assert counts == speed.SD15_PARAMETERS
    assert [round(counts[name] / 1e6, 1) for name in ("unet", "text_encoder", "vae")] == [859.5, 123.1, 83.7]
    assert models["unet"].config.sample_size == 64 and models["unet"].config.cross_attention_dim == 768
    assert models["text_encoder"].config.hidden_act == "quick_gelu"
    assert speed.sd15_scheduler().config.beta_schedule == "scaled_linear"


# ----------------------------------------------------------------------------- report
def constructed_report():
    machine = {"cpu": "Test CPU 3000", "cores": 2, "torch_threads": 1, "torch": "2.x", "python": "3.x"}
    gpu = {**machine, "gpu": "Test GPU", "gpu_memory_gib": 80.0, "tf32_matmul": False, "tf32_conv": True}

    def part(rows, on=machine, notes=()):
        return {"machine": on, "date": "2030-01-02 03:04", "command": "python benchmarks/speed.py", "rows": rows,
                "notes": list(notes)}

    return {"parts": {
        "train-step": part([{"model": "tiny", "K": 8, "N": 8, "batched_s": 0.1234, "per_direction_s": 0.4321,
                             "per_direction_over_batched": 3.502, "repeats": 5}]),
        "recipe": part([{"model": "bundled", "domain": "face", "images": 64, "K": 6, "N": 6, "steps": 200,
                         "first_step_s": 2.5, "step_s": 1.25, "estimated_s": 251.25, "estimated_min": 4.2,
                         "shipped_train_seconds": None, "shipped_steps": None, "shipped_sets": None,
                         "shipped_step_s": None, "repeats": 5}], notes=["no shipped file"]),
        "gpu-grid": part([{"precision": "fp32", "checkpointing": False, "N": 8, "K": 16, "unet_rows": 128,
                           "status": "OOM", "step_s": None, "peak_allocated_gib": 79.1, "fits_t4": "no"},
                          {"precision": "fp16", "checkpointing": True, "N": 2, "K": 4, "unet_rows": 8,
                           "status": "ok", "step_s": 0.5678, "peak_allocated_gib": 5.5, "peak_reserved_gib": 6.0,
                           "fits_t4": "yes"}], on=gpu),
    }}


def test_markdown_report_shows_the_machine_date_and_every_number():
    md = speed.markdown_report(constructed_report())
    assert "Test CPU 3000 (2 cores, 1 torch thread), torch 2.x" in md and "2030-01-02 03:04" in md
    assert "GPU Test GPU (80.0 GiB" in md
    assert "| tiny | 8 | 8 | 0.123 | 0.432 | 3.5 | 5 |" in md
    assert "| bundled | face | 64 | 6 | 6 | 200 | 2.5 | 1.25 | 251 | 4.2 | - | - | - | - | 5 |" in md
    assert "_no shipped file_" in md
    assert "| fp32 | no | 8 | 16 | 128 | OOM | - | 79.1 | - | no |" in md
    assert "| fp16 | yes | 2 | 4 | 8 | ok | 0.568 | 5.5 | 6 | yes |" in md
    assert "## Inversion and one slider update" not in md  # parts not measured are left out
    without_gpu = speed.markdown_report({"parts": {"train-step": constructed_report()["parts"]["train-step"]}})
    assert "Not measured: no GPU" in without_gpu


def test_reports_keep_the_parts_not_rerun_unless_fresh(tmp_path):
    speed.save_report(constructed_report(), tmp_path)
    assert speed.load_report(tmp_path, fresh=False)["parts"].keys() == constructed_report()["parts"].keys()
    assert speed.load_report(tmp_path, fresh=True) == {"parts": {}}
    assert (tmp_path / "speed.md").read_text() == speed.markdown_report(constructed_report())


def test_main_measures_inversion_and_slider_updates_and_says_when_there_is_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    speed.main(["--only", "inversion", "gpu", "--models", "tiny", "--repeats", "1", "--inversion-steps", "2",
                "--active", "1", "2", "--out", str(tmp_path), "--fresh"])
    report = json.loads((tmp_path / "speed.json").read_text())
    rows = report["parts"]["inversion"]["rows"]
    assert [(r["model"], r["steps"], r["active"]) for r in rows] == [("tiny", 2, 1), ("tiny", 2, 2)]
    assert all(r["inversion_s"] > 0 and r["slider_update_s"] > 0 for r in rows)
    assert rows[0]["inversion_s"] == rows[1]["inversion_s"]  # one inversion, shared by both updates
    assert report["parts"]["inversion"]["machine"]["cpu"] == speed.cpu_model()
    md = (tmp_path / "speed.md").read_text()
    assert "| tiny | 2 | 2 |" in md and "had no GPU; run" in md and "--only gpu" in md
