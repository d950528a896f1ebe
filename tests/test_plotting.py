"""The notebook figures: each draws what it says, and rejects shapes it cannot draw."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from noiseclr_lite.metrics import DirectionScore  # noqa: E402
from noiseclr_lite.plotting import (LiveLoss, plot_bars, show_effects, show_grid, show_images,  # noqa: E402
                                    show_similarity)


def test_show_images_takes_tensors_and_pil_and_lays_out_rows():
    tensor = -torch.ones(5, 3, 8, 8)
    tensor[:, 0] = 1.0  # red in [-1, 1]
    fig = show_images(tensor, titles=[f"i{k}" for k in range(5)], ncols=3)
    axes = fig.axes
    assert len(axes) == 6 and [a.get_title() for a in axes[:5]] == ["i0", "i1", "i2", "i3", "i4"]
    shown = axes[0].get_images()[0].get_array()
    assert shown.shape == (8, 8, 3) and tuple(shown[0, 0]) == (255, 0, 0)   # [-1, 1] -> uint8, exact colour
    assert not axes[5].axison                                                 # the spare cell is blank
    fig = show_images([Image.new("RGB", (4, 4), "blue")])
    assert len(fig.axes) == 1
    with pytest.raises(ValueError, match="2 titles for 1 images"):
        show_images([Image.new("RGB", (4, 4))], titles=["a", "b"])
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        show_images(torch.zeros(2, 4, 8, 8))


def test_show_grid_labels_rows_and_columns():
    grid = [[Image.new("RGB", (4, 4), c) for c in ("red", "green", "blue")] for _ in range(2)]
    fig = show_grid(grid, row_labels=["smile", "hair"], col_labels=["-2", "0", "+2"], title="t")
    assert [a.get_title() for a in fig.axes[:3]] == ["-2", "0", "+2"]
    assert fig.axes[0].get_ylabel() == "smile" and fig.axes[3].get_ylabel() == "hair"
    with pytest.raises(ValueError, match="every row must have 3 images"):
        show_grid([grid[0], grid[1][:2]])
    with pytest.raises(ValueError, match="1 row labels for 2 rows"):
        show_grid(grid, row_labels=["x"])


def test_show_similarity_outlines_one_block_per_direction():
    matrix = torch.eye(6)
    fig = show_similarity(matrix, num_images=2, direction_labels=["a", "b", "c"])
    ax = fig.axes[0]
    assert len(ax.patches) == 3 and [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="N=4"):
        show_similarity(matrix, num_images=4)


def test_live_loss_records_every_step_and_draws_a_smoothed_curve():
    live = LiveLoss(every=3)
    for step in range(1, 13):
        live(step, 1.0 / step)
    assert live.steps == list(range(1, 13)) and live.losses[-1] == pytest.approx(1 / 12)
    lines = live.figure.axes[0].get_lines()
    assert len(lines) == 2                                      # raw and running mean
    assert np.allclose(lines[0].get_ydata(), live.losses)
    live(13, 0.5)  # between redraws it only records
    assert len(live.figure.axes[0].get_lines()[0].get_ydata()) == 12
    live.show()    # the final redraw after training (outside IPython it draws and displays nothing)
    assert np.allclose(live.figure.axes[0].get_lines()[0].get_ydata(), live.losses) and len(live.losses) == 13


def _score(name, signed):
    effects = {k: abs(v) for k, v in signed.items()}
    total = sum(effects.values())
    return DirectionScore(name=name, token=f"<{name}>", domain="face", scale=1.0, effects=effects,
                          signed_effects=signed, plus_effects=signed, minus_effects=signed,
                          purity=max(effects.values()) / total, strength=max(effects.values()),
                          target=max(effects, key=effects.get), pixel_change=0.05, off_target=0.0)


def test_show_effects_writes_every_number_and_the_purity():
    scores = [_score("smile", {"expression": 0.8, "hair": -0.1}), _score("blond", {"expression": 0.0, "hair": 0.6})]
    fig = show_effects(scores)
    ax = fig.axes[0]
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(["+0.80", "-0.10", "+0.00", "+0.60"])
    assert "purity 0.89" in ax.get_yticklabels()[0].get_text()
    with pytest.raises(ValueError, match="at least one"):
        show_effects([])


def test_plot_bars_annotates_values():
    fig = plot_bars({"DDIM": 0.25, "DDPM": 1e-8}, ylabel="error", reference=0.1)
    assert {t.get_text() for t in fig.axes[0].texts} == {"0.25", "1e-08"}
