"""The slider panel (noiseclr_lite.widgets) on the tiny random pipeline, without a browser.

The browser test (tests/browser/) drives the same panel in JupyterLab through Chromium.
"""

import io
import statistics
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("ipywidgets")

from noiseclr_lite import widgets  # noqa: E402
from noiseclr_lite.directions import Directions  # noqa: E402
from noiseclr_lite.editing import DirectionEdit, edit  # noqa: E402
from noiseclr_lite.widgets import MAX_UPLOAD_BYTES, EditPanel, default_samples  # noqa: E402

STEPS = 5
SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample_image(seed: int = 0, size: int = 40) -> Image.Image:
    """A random RGB image (the tests must not depend on the shipped samples' content)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def sets(pipe):
    faces = Directions.create(pipe, 3, prefix="face", seed=1)
    faces.names = ["smile", "hair", "glasses"]
    cats = Directions.create(pipe, 2, prefix="cat", seed=2)
    return {"faces": faces, "cats": cats}


@pytest.fixture
def panel(tiny_pipe):
    return EditPanel(tiny_pipe, sets(tiny_pipe), images=[sample_image(0), sample_image(1)],
                     num_inference_steps=STEPS, sync=True)


def upload(panel, name, content):
    """What the browser's FileUpload sends (a comm state update): one file."""
    panel.upload.set_state({"value": [{"name": name, "type": "", "size": len(content),
                                       "content": memoryview(content), "last_modified": 1_700_000_000_000}]})


def test_importing_the_library_does_not_import_ipywidgets_or_matplotlib():
    modules = ["noiseclr_lite", "noiseclr_lite.train", "noiseclr_lite.editing", "noiseclr_lite.metrics",
               "noiseclr_lite.cli", "noiseclr_lite.toyworld.train_model", "noiseclr_lite.toyworld.evaluate"]
    code = ("import sys, importlib; [importlib.import_module(m) for m in %r]; "
            "bad = [m for m in ('ipywidgets', 'matplotlib') if m in sys.modules]; assert not bad, bad") % modules
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_labelled_slider_per_direction_grouped_by_set(panel):
    assert list(panel.sliders) == [("faces", "smile"), ("faces", "hair"), ("faces", "glasses"),
                                   ("cats", "<cat_0>"), ("cats", "<cat_1>")]
    for (heading, name), slider in panel.sliders.items():
        assert slider.description == name and slider.value == 0.0
        assert slider.continuous_update is False
    headings = [group.children[0].value for group in panel._groups.children]
    assert "faces" in headings[0] and "cats" in headings[1]
    assert [len(group.children) - 1 for group in panel._groups.children] == [3, 2]
    assert (panel.window.min, panel.window.max, panel.window.value) == (0.0, 1.0, (0.0, 1.0))
    assert panel.strength.value == 1.0 and panel.window.continuous_update is False
    assert panel.current_image.size == (32, 32)  # rendered on construction
    assert len(panel.picker.options) == 2


def test_edits_follow_sliders_strength_and_window(panel):
    assert panel.edits() == []
    panel._quiet = True  # just the mapping here; no renders
    panel.sliders[("faces", "hair")].value = 2.0
    panel.sliders[("cats", "<cat_1>")].value = -1.0
    panel.strength.value = 0.5
    panel.window.value = (0.25, 0.75)
    edits = panel.edits()
    assert [(e.directions.names[e.direction], e.scale, e.window) for e in edits] == [
        ("hair", 1.0, (0.75, 0.25)), ("<cat_1>", -0.5, (0.75, 0.25))]
    panel.strength.value = 0.0
    assert panel.edits() == []


def measured_faces(pipe):
    """A face set the oracle has read (what ``toyworld directions`` writes): ``smile`` clean at
    scale 32 in every step, ``hair`` at 8 in the late window only, ``glasses`` not read."""
    faces = sets(pipe)["faces"]
    faces.metadata["oracle_reading"] = [
        {"name": "smile", "scale": 32.0, "window": [1.0, 0.0], "purity": 0.9},
        {"name": "hair", "scale": 8.0, "window": [0.55, 0.0], "purity": 0.8}]
    return faces


def test_intersect_windows_and_measured_sliders(tiny_pipe):
    assert widgets.intersect_windows((1.0, 0.3), (0.55, 0.0)) == (0.55, 0.3)
    assert widgets.intersect_windows((1.0, 0.0), (0.55, 0.0)) == (0.55, 0.0)
    assert widgets.intersect_windows((1.0, 0.55), (0.55, 0.0)) is None  # they touch: no step is shared
    assert widgets.intersect_windows((1.0, 0.7), (0.55, 0.0)) is None
    assert widgets.measured_sliders(measured_faces(tiny_pipe)) == {"smile": (32.0, (1.0, 0.0)),
                                                                    "hair": (8.0, (0.55, 0.0))}
    assert widgets.measured_sliders(sets(tiny_pipe)["cats"]) == {}  # nobody measured these


def test_measured_directions_get_their_own_slider_range_and_edit_window(tiny_pipe):
    panel = EditPanel(tiny_pipe, {"faces": measured_faces(tiny_pipe), "cats": sets(tiny_pipe)["cats"]},
                      images=[sample_image(0)], num_inference_steps=STEPS, sync=True)
    ranges = {key: (s.min, s.max, s.step) for key, s in panel.sliders.items()}
    assert ranges[("faces", "smile")] == (-64.0, 64.0, 1.6)
    assert ranges[("faces", "hair")] == (-16.0, 16.0, 0.4)
    assert ranges[("faces", "glasses")] == ranges[("cats", "<cat_0>")] == (-4.0, 4.0, 0.1)
    assert "2x each direction's measured scale" in panel._groups.children[0].children[0].value
    assert "0.55:0" in panel.sliders[("faces", "hair")].tooltip

    panel._quiet = True  # the mapping first
    for key in [("faces", "smile"), ("faces", "hair"), ("faces", "glasses")]:
        panel.sliders[key].value = 4.0
    assert [(e.directions.names[e.direction], e.scale, e.window) for e in panel.edits()] == [
        ("smile", 4.0, (1.0, 0.0)), ("hair", 4.0, (0.55, 0.0)), ("glasses", 4.0, (1.0, 0.0))]
    panel.window.value = (0.0, 0.3)  # the first 30% of the steps only: hair's window shares none of them
    assert [(e.directions.names[e.direction], e.window) for e in panel.edits()] == [
        ("smile", (1.0, 0.7)), ("glasses", (1.0, 0.7))]
    panel.window.value = (0.0, 0.6)
    assert [e.window for e in panel.edits()] == [(1.0, 0.4), (0.55, 0.4), (1.0, 0.4)]

    # the render uses the direction's own window: the same as an edit made by hand in it
    panel.window.value = (0.0, 1.0)
    for key in [("faces", "smile"), ("faces", "glasses")]:
        panel.sliders[key].value = 0.0
    panel._quiet = False
    panel.render()
    by_hand = edit(tiny_pipe, [DirectionEdit(panel.sets["faces"], "hair", 4.0, (0.55, 0.0))],
                   inversion=panel.invert())[0]
    every_step = edit(tiny_pipe, [DirectionEdit(panel.sets["faces"], "hair", 4.0)], inversion=panel.invert())[0]
    assert panel.current_image.tobytes() == by_hand.tobytes() != every_step.tobytes()

    # a range given applies to every slider; measured_windows=False acts in the panel's window alone
    plain = EditPanel(tiny_pipe, {"faces": measured_faces(tiny_pipe)}, images=[], scale_range=(-3.0, 3.0),
                      measured_windows=False, sync=True)
    assert {(s.min, s.max) for s in plain.sliders.values()} == {(-3.0, 3.0)}
    assert "measured scale" not in plain._groups.children[0].children[0].value
    plain.sliders[("faces", "hair")].value = 2.0
    assert [e.window for e in plain.edits()] == [(1.0, 0.0)]


def test_moving_a_slider_changes_the_image_and_reset_gives_back_the_reconstruction(panel, tiny_pipe):
    reconstruction = panel.current.value
    inversion = panel.invert()
    # the scale-0 render is the exact reconstruction, rendered through edit() with no direction
    assert panel.current_image.tobytes() == edit(tiny_pipe, [], inversion=inversion)[0].tobytes()

    panel.sliders[("faces", "smile")].value = 3.0
    first = panel.current.value
    assert first != reconstruction
    expected = edit(tiny_pipe, [DirectionEdit(panel.sets["faces"], 0, 3.0)], inversion=inversion)[0]
    assert panel.current_image.tobytes() == expected.tobytes()

    panel.sliders[("cats", "<cat_0>")].value = -2.0  # a second slider, from another set, composes
    assert panel.current.value not in (reconstruction, first)

    panel.reset()
    assert all(s.value == 0.0 for s in panel.sliders.values())
    assert panel.current.value == reconstruction
    # shown enlarged with nearest neighbour: 32 px -> 256 px
    assert Image.open(io.BytesIO(panel.current.value)).size == (256, 256)
    assert Image.open(io.BytesIO(panel.original.value)).size == (256, 256)


def test_the_composition_toggle_renders_face_and_cat_sliders_by_regions(panel, tiny_pipe):
    assert panel.composition.value == "sum" and panel.composition in panel.widget.children
    panel.sliders[("faces", "smile")].value = 3.0
    panel.sliders[("cats", "<cat_0>")].value = -2.0
    summed = panel.current_image.tobytes()
    panel.composition.value = "regions"  # re-renders, like a slider
    edits = [DirectionEdit(panel.sets["faces"], 0, 3.0), DirectionEdit(panel.sets["cats"], 0, -2.0)]
    expected = edit(tiny_pipe, edits, inversion=panel.invert(), composition="regions")[0]
    assert panel.current_image.tobytes() == expected.tobytes() != summed
    with pytest.raises(ValueError, match="composition must be one of"):
        EditPanel(tiny_pipe, [], images=[], composition="product")


def test_render_returns_the_image_and_records_times(panel):
    # render(): sync mode returns the image; the median re-render time is what the README quotes
    times_before = len(panel.render_times)
    slider = panel.sliders[("faces", "hair")]
    for value in (0.5, 1.0, 1.5, 2.0, -0.5, -1.0, -1.5):
        panel._quiet = True
        slider.value = value
        panel._quiet = False
        image = panel.render()
        assert image is panel.current_image and image.size == (32, 32)
    times = panel.render_times[times_before:]
    assert len(times) == 7
    assert panel.median_render_time() == statistics.median(panel.render_times)
    print(f"\nmedian re-render on the tiny model ({STEPS} steps, 1 direction, "
          f"{torch.get_num_threads()} torch thread(s)): {statistics.median(times) * 1000:.0f} ms")


def test_inversion_runs_once_per_image(tiny_pipe, monkeypatch):
    calls = []
    real = widgets.ddpm_invert

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(widgets, "ddpm_invert", counting)
    panel = EditPanel(tiny_pipe, sets(tiny_pipe), images=[sample_image(0), sample_image(1)],
                      num_inference_steps=STEPS, sync=True)
    assert len(calls) == 1
    first, second = [key for _, key in panel.picker.options]
    panel.sliders[("faces", "smile")].value = 1.0
    panel.sliders[("faces", "hair")].value = 1.0
    assert len(calls) == 1
    panel.picker.value = second
    edited_second = panel.current.value
    panel.picker.value = first
    panel.picker.value = second
    assert len(calls) == 2  # each image inverted once, whatever the moves
    assert panel.current.value == edited_second
    assert panel.invert(first) is panel.invert(first)
    # the same picture added again is the same entry (no second inversion)
    assert panel.add_image(sample_image(0)) == first and len(panel.picker.options) == 2
    assert len(calls) == 2


def test_save_writes_the_edited_png(panel, tmp_path):
    panel.sliders[("faces", "glasses")].value = 2.0
    path = panel.save(tmp_path / "out" / "edited")  # folder created, .png added
    assert path == tmp_path / "out" / "edited.png"
    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.tobytes() == panel.current_image.tobytes()
    assert "Saved" in panel.last_message

    panel.path.value = str(tmp_path / "from_button.png")
    panel.save_button.click()
    assert (tmp_path / "from_button.png").is_file()

    (tmp_path / "blocker").write_text("a file, not a folder")
    assert panel.save(tmp_path / "blocker" / "x.png") is None
    assert "Could not save" in panel.last_message


def test_upload_of_a_good_image_is_picked_and_edited(panel):
    upload(panel, "my photo.png", png_bytes(sample_image(7, size=50)))
    assert panel.picker.value.startswith("upload:")
    assert panel.picker.options[-1][0] == "upload: my photo.png"
    assert panel.upload.value == ()  # cleared for the next upload
    before = panel.current.value
    panel.sliders[("faces", "smile")].value = 2.0
    assert panel.current.value != before
    assert panel.last_message == ""


def test_an_upload_that_is_not_an_image_shows_a_message_and_the_panel_keeps_working(panel):
    options = list(panel.picker.options)
    upload(panel, "notes.txt", b"these are not pixels")
    assert "notes.txt" in panel.last_message and "not an image" in panel.last_message
    assert "notes.txt" in panel.message.value
    assert list(panel.picker.options) == options
    before = panel.current.value
    panel.sliders[("cats", "<cat_0>")].value = 2.0
    assert panel.current.value != before and panel.status.value.startswith("✓")

    panel.clear_message()
    assert panel.last_message == "" and panel.message.value == ""


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (its pixel data is a 1x1 image's)."""
    data = bytearray(png_bytes(Image.new("RGB", (1, 1))))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_huge_images_are_refused_or_downscaled_with_a_message(panel):
    options = list(panel.picker.options)
    upload(panel, "big.png", b"\0" * (MAX_UPLOAD_BYTES + 1))
    assert "big.png" in panel.last_message and "MB" in panel.last_message

    upload(panel, "huge.png", huge_png_header(8000, 6000))  # refused from the header, never decoded
    assert "huge.png" in panel.last_message and "8000x6000" in panel.last_message
    upload(panel, "bomb.png", huge_png_header(30000, 30000))  # PIL's decompression-bomb guard
    assert "bomb.png" in panel.last_message and "too large" in panel.last_message
    assert list(panel.picker.options) == options

    upload(panel, "wide.png", png_bytes(Image.new("RGB", (4200, 8), "red")))  # long side > 4096: downscaled
    assert "downscaled" in panel.last_message and "4200x8" in panel.last_message
    assert panel.picker.options[-1][0] == "upload: wide.png"
    assert panel.current_image.size == (32, 32)
    before = panel.current.value
    panel.sliders[("faces", "smile")].value = -3.0
    assert panel.current.value != before


def test_directions_for_another_model_show_a_message_naming_both_models(panel, tmp_path):
    other = Directions(torch.randn(2, 16), ["<x_0>", "<x_1>"], metadata={"base_model": "other/model-16"})
    path = other.save(tmp_path / "other.safetensors")
    sliders = dict(panel.sliders)
    assert panel.add_directions(path) is False
    message = panel.last_message
    assert "other/model-16" in message and "an unnamed model" in message and str(path) in message
    assert panel.add_directions(other, name="other") is False
    assert panel.add_directions(tmp_path / "missing.safetensors") is False
    assert "does not exist" in panel.last_message
    assert panel.sliders == sliders

    # the panel keeps working: a compatible file added through the text field and the button
    good = Directions.create(panel.pipe, 2, prefix="car", seed=3).save(tmp_path / "cars.safetensors")
    panel.directions_path.value = str(good)
    panel.add_button.click()
    assert ("cars", "<car_1>") in panel.sliders and "Added" in panel.last_message
    before = panel.current.value
    panel.sliders[("cars", "<car_1>")].value = 2.0
    assert panel.current.value != before


def test_constructor_reports_an_incompatible_set_and_keeps_the_others(tiny_pipe):
    other = Directions(torch.randn(2, 16), ["<x_0>", "<x_1>"], metadata={"base_model": "other/model-16"})
    good = Directions.create(tiny_pipe, 2, prefix="face", seed=1)
    panel = EditPanel(tiny_pipe, [good, other], images=[sample_image(0)], num_inference_steps=STEPS, sync=True)
    assert list(panel.sliders) == [("face", "<face_0>"), ("face", "<face_1>")]
    assert "other/model-16" in panel.message.value
    assert panel.current_image is not None


def test_add_image_from_paths_pil_and_bad_files(tiny_pipe, tmp_path):
    panel = EditPanel(tiny_pipe, [], images=[], num_inference_steps=STEPS, sync=True)
    assert panel.current_image is None and "upload" in panel.last_message
    assert panel.render() is None  # nothing to render yet, no error
    path = tmp_path / "face.png"
    sample_image(3).save(path)
    key = panel.add_image(path)
    assert key == f"file:{path.resolve()}" and panel.picker.options[-1][0] == f"{path.parent.name}/face.png"
    assert panel.current_image is not None
    assert panel.add_image(tmp_path / "missing.png") is None and "does not exist" in panel.last_message
    (tmp_path / "broken.png").write_bytes(b"\x89PNG but broken")
    assert panel.add_image(tmp_path / "broken.png") is None and "broken.png" in panel.last_message
    assert panel.add_image(sample_image(4), name="mine", select=False).startswith("image:")
    assert panel.picker.value == key and panel.picker.options[-1][0] == "mine"


def test_background_renders_coalesce(tiny_pipe, monkeypatch):
    """A burst of slider moves during a render costs one more render, with the newest values."""
    gate, started, scales = threading.Event(), threading.Event(), []
    real = widgets.edit

    def slow_edit(pipe, edits, **kwargs):
        scales.append([e.scale for e in edits])
        started.set()
        gate.wait(30)
        return real(pipe, edits, **kwargs)

    panel = EditPanel(tiny_pipe, sets(tiny_pipe), images=[sample_image(0)], num_inference_steps=STEPS)
    assert panel.wait(60)
    monkeypatch.setattr(widgets, "edit", slow_edit)
    slider = panel.sliders[("faces", "smile")]
    slider.value = 1.0  # returns at once: the render runs on a thread
    assert started.wait(30)
    for value in (1.5, 2.0, 2.5, 3.0):
        slider.value = value
        assert panel.render() is None
    gate.set()
    assert panel.wait(60)
    assert scales == [[1.0], [3.0]]
    assert panel.current_image.tobytes() == real(tiny_pipe, panel.edits(), inversion=panel.invert())[0].tobytes()


def test_a_failing_render_shows_the_error_and_the_next_one_works(panel, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    real = widgets.edit
    monkeypatch.setattr(widgets, "edit", broken)
    panel.sliders[("faces", "smile")].value = 1.0
    assert "out of memory (simulated)" in panel.last_message and panel.status.value == "error"
    monkeypatch.setattr(widgets, "edit", real)
    panel.sliders[("faces", "smile")].value = 2.0
    assert panel.status.value.startswith("✓")


def test_ipython_display_shows_the_widget(panel, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs: shown.extend(objs))
    panel._ipython_display_()
    assert shown == [panel.widget]
    assert "noiseclr-panel" in panel.widget._dom_classes


def test_default_samples(tmp_path):
    assert default_samples(tmp_path / "missing") == []
    for domain in ("cat", "face"):
        (tmp_path / domain).mkdir()
        for i in range(3):
            Image.new("RGB", (4, 4)).save(tmp_path / domain / f"{i:04d}.png")
    (tmp_path / "face" / "labels.csv").write_text("x")
    assert [f"{p.parent.name}/{p.name}" for p in default_samples(tmp_path)] == [
        "cat/0000.png", "cat/0001.png", "face/0000.png", "face/0001.png"]
    if SAMPLES.is_dir():
        assert all(p.suffix == ".png" for p in default_samples())
