"""Two CPU processes under ``accelerate launch`` (gloo) end with identical directions."""

import os
import subprocess
import sys
import textwrap

import torch

from noiseclr_lite.directions import Directions

_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from accelerate import Accelerator
    from noiseclr_lite.testing import tiny_pipeline
    from noiseclr_lite.train import train_directions
    sys.path.insert(0, {tests!r})
    from test_train import _images, FAST
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    pipe = tiny_pipeline(0, sys.argv[1] + f"/tok{{rank}}")
    # each rank sees different images: only gradient averaging can keep them identical
    images = _images(6, seed=rank)
    d = train_directions(pipe, images, accelerator=accelerator, progress=False, **FAST)
    d.metadata["world_size"] = accelerator.num_processes
    d.save(sys.argv[1] + f"/rank{{rank}}.safetensors")
""")


def test_two_processes_end_with_identical_directions(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(_SCRIPT.format(tests=os.path.dirname(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "29533", str(script), str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rank0 = Directions.load(tmp_path / "rank0.safetensors")
    rank1 = Directions.load(tmp_path / "rank1.safetensors")
    assert rank0.metadata["world_size"] == 2 and rank0.metadata["num_processes"] == 2
    assert torch.equal(rank0.embeddings, rank1.embeddings)
    # and training moved them (so equality is not just the shared initialisation)
    from noiseclr_lite.testing import tiny_pipeline
    init = Directions.create(tiny_pipeline(0, tmp_path / "tok_init"), 4, seed=0)
    assert not torch.allclose(rank0.embeddings, init.embeddings)
