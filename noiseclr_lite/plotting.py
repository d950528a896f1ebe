"""Labelled matplotlib figures for the notebooks: image rows, edit grids, similarity
matrices, live loss curves and oracle effect tables.

Every function returns the ``matplotlib.figure.Figure`` it drew (a notebook displays it;
a script can ``fig.savefig``).  Images may be ``PIL.Image`` objects or float tensors
[3, H, W] / [N, 3, H, W] in [-1, 1], as the rest of the library produces them.
Importing ``noiseclr_lite`` does not import this module (nor matplotlib).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from .data import to_pil
from .grid import check_grid


def _as_pil_list(images) -> list[Image.Image]:
    """PIL images from a PIL image, a list of PIL images or a tensor [N, 3, H, W] / [3, H, W] in [-1, 1]."""
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"image tensors must be [N, 3, H, W] in [-1, 1]; got shape {tuple(images.shape)}")
        return [to_pil(image) for image in images]
    return [image if isinstance(image, Image.Image) else _as_pil_list(image)[0] for image in images]


def _cell(ax, image: Image.Image, title: str | None = None, fontsize: int = 9) -> None:
    # nearest neighbour: a 64 px image enlarged stays crisp, every pixel visible
    ax.imshow(np.asarray(image.convert("RGB")), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def show_images(images, titles: Sequence[str] | None = None, ncols: int | None = None, size: float = 1.8,
                suptitle: str | None = None):
    """Images in rows of ``ncols`` (default: all in one row, at most 8), each with an optional title.

    Args:
        images: PIL images or a float tensor [N, 3, H, W] in [-1, 1].
        titles: one per image, or None.
        size: inches per image.
    """
    pils = _as_pil_list(images)
    if titles is not None and len(titles) != len(pils):
        raise ValueError(f"{len(titles)} titles for {len(pils)} images; give one title per image, or none")
    ncols = ncols or min(len(pils), 8)
    nrows = -(-len(pils) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index < len(pils):
            _cell(ax, pils[index], titles[index] if titles is not None else None)
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_grid(grid: Sequence[Sequence], row_labels: Sequence[str] | None = None,
              col_labels: Sequence[str] | None = None, title: str | None = None, size: float = 1.4):
    """A table of images: ``grid[row][col]`` (e.g. ``edit_grid``: directions x scales).

    Row labels are written on the left of each row, column labels above the first row.
    """
    check_grid(grid, row_labels, col_labels, "show_grid")
    rows = [_as_pil_list(row) for row in grid]
    ncols = len(rows[0])
    fig, axes = plt.subplots(len(rows), ncols, figsize=(size * ncols + 1.2, size * len(rows) + 0.5), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            _cell(axes[r, c], image, col_labels[c] if (col_labels is not None and r == 0) else None)
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_similarity(matrix: torch.Tensor, num_images: int, direction_labels: Sequence[str] | None = None,
                    title: str = "cosine similarity of edit features"):
    """Heat map of ``loss.similarity_matrix`` with the direction blocks outlined.

    Args:
        matrix: [K*N, K*N] in [-1, 1], direction-major.
        num_images: N, the block size.
        direction_labels: K labels, one per block (default ``d0..d{K-1}``).
    """
    matrix = torch.as_tensor(matrix).float()
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] % num_images:
        raise ValueError(f"matrix must be square [K*N, K*N] with N={num_images}; got {tuple(matrix.shape)}")
    k = matrix.shape[0] // num_images
    labels = list(direction_labels) if direction_labels is not None else [f"d{i}" for i in range(k)]
    if len(labels) != k:
        raise ValueError(f"{len(labels)} direction labels for {k} directions (a {matrix.shape[0]}-row matrix over "
                         f"{num_images} images); give one label per direction, or none")
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    shown = ax.imshow(matrix.numpy(), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    centres = [num_images * i + (num_images - 1) / 2 for i in range(k)]
    ax.set_xticks(centres, labels, rotation=90, fontsize=8)
    ax.set_yticks(centres, labels, fontsize=8)
    for i in range(k):   # outline the positive blocks: same direction, different images
        ax.add_patch(plt.Rectangle((num_images * i - 0.5, num_images * i - 0.5), num_images, num_images,
                                   fill=False, edgecolor="black", linewidth=1.2))
    fig.colorbar(shown, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


class LiveLoss:
    """A loss curve that redraws itself in the notebook while training runs.

    Pass it as ``train_directions(..., callback=LiveLoss())``; it is called as
    ``live(step, loss)`` and redraws every ``every`` steps (one output, updated in place).
    Outside IPython it only records.  ``steps`` and ``losses`` hold the history, ``figure``
    the plot.
    """

    def __init__(self, every: int = 5, title: str = "NoiseCLR loss (lower = more distinct, more consistent)"):
        self.every, self.title = every, title
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.figure, self._ax = plt.subplots(figsize=(6, 2.6))
        plt.close(self.figure)   # shown through the display handle only, not again at cell end
        self._handle = None

    def _draw(self) -> None:
        ax = self._ax
        ax.clear()
        ax.plot(self.steps, self.losses, color="tab:gray", alpha=0.4, linewidth=1, label="per step")
        if len(self.losses) >= 5:
            width = max(5, len(self.losses) // 10)
            smooth = np.convolve(self.losses, np.ones(width) / width, mode="valid")
            ax.plot(self.steps[width - 1:], smooth, color="tab:blue", linewidth=2, label=f"mean of {width}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(self.title, fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        self.figure.tight_layout()

    def __call__(self, step: int, loss: float) -> None:
        self.steps.append(step)
        self.losses.append(float(loss))
        if step % self.every == 0:
            self.show()

    def show(self) -> None:
        """Redraw now (called every ``every`` steps; call once more after training)."""
        self._draw()
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        if get_ipython() is None:
            return
        if self._handle is None:
            self._handle = display(self.figure, display_id=True)
        else:
            self._handle.update(self.figure)


def show_effects(scores: Sequence, attribute_names: Sequence[str] | None = None, signed: bool = True,
                 title: str = "what the oracle reads: effect of each direction on each attribute"):
    """Directions x attributes heat map of oracle effects, with purity and strength per row.

    Args:
        scores: ``metrics.DirectionScore`` objects (``metrics.score_directions``).
        attribute_names: the columns (default: the first score's attributes, in order).
        signed: show ``signed_effects`` (red: +s raises P(value 1), blue: lowers it) instead
            of the two-sided ``effects`` in [0, 1].
    """
    if not scores:
        raise ValueError("show_effects needs at least one DirectionScore")
    names = list(attribute_names or scores[0].effects)
    table = np.array([[(s.signed_effects if signed else s.effects)[a] for a in names] for s in scores])
    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 3.2, 0.42 * len(scores) + 1.4))
    ax.imshow(table, cmap="RdBu_r" if signed else "Reds", vmin=-1 if signed else 0, vmax=1, aspect="auto")
    for r in range(table.shape[0]):
        for c in range(table.shape[1]):
            ax.text(c, r, f"{table[r, c]:+.2f}" if signed else f"{table[r, c]:.2f}", ha="center", va="center",
                    fontsize=8, color="white" if abs(table[r, c]) > 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=9)
    ax.set_yticks(range(len(scores)), [f"{s.name}  (purity {s.purity:.2f}, strength {s.strength:.2f})"
                                       for s in scores], fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_bars(values: Mapping[str, float], ylabel: str, title: str | None = None, reference: float | None = None):
    """A bar chart of named numbers (e.g. reconstruction error per method), with an optional reference line."""
    fig, ax = plt.subplots(figsize=(max(3.0, 1.1 * len(values) + 1), 2.8))
    ax.bar(list(values), list(values.values()), color="tab:blue")
    for i, v in enumerate(values.values()):
        ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    if reference is not None:
        ax.axhline(reference, color="tab:red", linestyle="--", linewidth=1)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
