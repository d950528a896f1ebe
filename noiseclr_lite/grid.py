"""Labelled image grids with PIL alone (no matplotlib), for the CLI and saved figures."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont


def check_grid(rows, row_labels=None, col_labels=None, caller: str = "a grid") -> None:
    """Raise ValueError unless ``rows`` is a non-empty table with equal rows and matching label counts."""
    if not rows or not rows[0]:
        raise ValueError(f"{caller} needs at least one row with one image")
    n_cols = len(rows[0])
    if any(len(r) != n_cols for r in rows):
        raise ValueError(f"{caller}: every row must have {n_cols} images; got lengths {[len(r) for r in rows]}. "
                         f"Give every row one image per column")
    for labels, count, what in ((row_labels, len(rows), "row"), (col_labels, n_cols, "column")):
        if labels is not None and len(labels) != count:
            raise ValueError(f"{len(labels)} {what} labels for {count} {what}s in {caller}; give one per {what}, or none")


def image_grid(rows: list[list[Image.Image]], row_labels: list[str] | None = None,
               col_labels: list[str] | None = None, cell: int = 128, pad: int = 4) -> Image.Image:
    """Arrange ``rows`` (a list of equal-length lists of PIL images) into one labelled image.

    Every image is resized to ``cell`` x ``cell`` (nearest neighbour, so 64 px renders stay
    crisp).  Row labels go on the left, column labels on top.
    """
    check_grid(rows, row_labels, col_labels, "image_grid")
    n_cols = len(rows[0])
    font = ImageFont.load_default()
    left = 8 + max((int(font.getlength(s)) for s in row_labels), default=0) if row_labels else 0
    top = 18 if col_labels else 0
    width = left + n_cols * (cell + pad) + pad
    height = top + len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(col_labels or []):
        x = left + pad + c * (cell + pad) + cell // 2 - int(font.getlength(label)) // 2
        draw.text((x, 3), label, fill="black", font=font)
    for r, row in enumerate(rows):
        y = top + pad + r * (cell + pad)
        if row_labels:
            draw.text((4, y + cell // 2 - 6), row_labels[r], fill="black", font=font)
        for c, image in enumerate(row):
            resample = Image.NEAREST if image.width < cell else Image.LANCZOS
            canvas.paste(image.convert("RGB").resize((cell, cell), resample), (left + pad + c * (cell + pad), y))
    return canvas
