"""Shared fixtures: the tiny in-code Stable Diffusion pipeline (no downloads)."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach a model hub
# One thread: the tiny model's ops are too small to gain from two, and a second thread
# that has to share its core with another process slows every call down about tenfold.
torch.set_num_threads(int(os.environ.get("NOISECLR_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_pipe_dir(tmp_path_factory):
    """The tiny pipeline saved once as a diffusers folder (for loading tests)."""
    from noiseclr_lite.testing import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny_sd")
    tiny_pipeline(seed=0, tokenizer_dir=folder / "tok").save_pretrained(folder / "pipe")
    return folder / "pipe"


@pytest.fixture
def tiny_pipe(tmp_path):
    """A fresh tiny pipeline per test (tests add tokens to it, so it is not shared)."""
    from noiseclr_lite.testing import tiny_pipeline

    return tiny_pipeline(seed=0, tokenizer_dir=tmp_path / "tok")
