"""noiseclr_lite.grid: the PIL-only labelled grid of the CLI's `grid` command."""

import pytest
from PIL import Image

from noiseclr_lite.grid import check_grid, image_grid


def test_image_grid_places_every_image_in_its_cell_and_leaves_room_for_the_labels():
    red, blue = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("L", (64, 64), 30)
    plain = image_grid([[red, blue], [blue, red]], cell=32, pad=4)
    assert plain.size == (2 * (32 + 4) + 4, 2 * (32 + 4) + 4) and plain.mode == "RGB"
    assert plain.getpixel((4 + 16, 4 + 16)) == (255, 0, 0)              # row 0, column 0: red, upscaled
    assert plain.getpixel((4 + 36 + 16, 4 + 16)) == (30, 30, 30)        # row 0, column 1: grey as RGB
    assert plain.getpixel((2, 2)) == (255, 255, 255)                    # the padding stays white
    labelled = image_grid([[red, blue], [blue, red]], row_labels=["smile", "a long row label"],
                          col_labels=["-2", "+2"], cell=32, pad=4)
    assert labelled.width > plain.width and labelled.height == plain.height + 18   # labels on the left, on top
    assert len(set(labelled.crop((0, 18, labelled.width - plain.width, labelled.height)).getdata())) > 1  # text drawn


def test_check_grid_names_what_is_wrong_and_the_fix():
    image = Image.new("RGB", (8, 8))
    check_grid([[image, image]], ["a"], ["x", "y"])
    with pytest.raises(ValueError, match="needs at least one row"):
        check_grid([])
    with pytest.raises(ValueError, match=r"every row must have 2 images; got lengths \[2, 1\]"):
        image_grid([[image, image], [image]])
    with pytest.raises(ValueError, match="1 column labels for 2 columns in image_grid; give one per column"):
        image_grid([[image, image]], col_labels=["only one"])
    with pytest.raises(ValueError, match="2 row labels for 1 rows in show_grid"):
        check_grid([[image]], row_labels=["a", "b"], caller="show_grid")
