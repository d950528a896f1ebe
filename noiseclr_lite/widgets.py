"""The slider panel: pick an image, invert it once, compose NoiseCLR edits live with sliders.

    from noiseclr_lite import load_pipeline, Directions
    from noiseclr_lite.widgets import EditPanel
    pipe = load_pipeline()
    panel = EditPanel(pipe, {"faces": Directions.load("data/directions/face.safetensors")},
                      images=["data/samples/face/0000.png"])
    panel            # in JupyterLab 4, Notebook 7 or Colab (ipywidgets 8)

What happens behind the sliders:

1. The picked image (a shipped sample or an upload) is resized to the model's size and
   inverted once with edit-friendly DDPM inversion (:func:`~noiseclr_lite.inversion.ddpm_invert`);
   the inversion is cached per image, so going back to an image is instant.
2. Every slider is a :class:`~noiseclr_lite.editing.DirectionEdit`; its scale is the slider
   value times the global *strength*, and it acts inside the *edit window*.  All sliders
   left at 0 give back the exact reconstruction (cached too).  A set that carries the oracle's
   reading (the shipped sets, or any set made by ``python -m noiseclr_lite.toyworld directions``)
   also says, per direction, the scale and the edit window it reads cleanest at
   (:func:`~noiseclr_lite.toyworld.shipped.slider_scales`, ``slider_windows``): its slider then
   spans twice that scale either way, and it acts only in its own window (within the global one).
   Shipped directions need scales from 1 to 64, so one range for every slider would leave most
   of them too faint or too coarse to use.
3. :meth:`EditPanel.render` denoises with :func:`~noiseclr_lite.editing.edit`.  Sliders use
   ``continuous_update=False`` (a render when the handle is released), only one render runs
   at a time, and changes that arrive meanwhile are coalesced into one more render.  In a
   notebook the render runs on a background thread so the kernel stays responsive; pass
   ``sync=True`` to render in the caller's thread (tests, scripts).

Bad input (a file that is not an image, an image that is too large, directions made for
another model) shows a message in the panel instead of raising, and the panel keeps working.

This module imports ipywidgets; ``import noiseclr_lite`` never imports it.
"""

from __future__ import annotations

import hashlib
import html
import io
import os
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

import ipywidgets as widgets
from PIL import Image

from .data import load_image, to_pil
from .directions import Directions
from .editing import COMPOSITIONS, DirectionEdit, edit
from .inversion import ddpm_invert, reconstruct
from .models import SAMPLES_DIR, decode_latents, encode_images, image_size
from .toyworld.shipped import WHOLE_WINDOW, slider_scales, slider_windows

__all__ = ["EditPanel", "MAX_UPLOAD_BYTES", "MAX_SIDE", "MAX_PIXELS", "DEFAULT_SCALE_RANGE", "MEASURED_SPAN",
           "default_samples", "measured_sliders", "intersect_windows"]

#: Uploads larger than this are refused (a 64 px or 512 px model gains nothing from more).
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Images with a longer side are accepted but reported as downscaled.
MAX_SIDE = 4096
#: Images with more pixels than this are refused before decoding (memory; decompression bombs).
MAX_PIXELS = 40_000_000
#: the range of a slider whose direction has no measured scale (a set trained elsewhere)
DEFAULT_SCALE_RANGE = (-4.0, 4.0)
#: a direction measured clean at scale s gets a slider over [-MEASURED_SPAN * s, MEASURED_SPAN * s]:
#: its clean edit sits half-way, and there is room to overdo it
MEASURED_SPAN = 2.0
#: steps per measured scale on such a slider (s = 32 moves in steps of 1.6)
MEASURED_STEPS = 20


def measured_sliders(directions: Directions) -> dict[str, tuple[float, tuple[float, float]]]:
    """``{name: (scale, window)}`` for the directions of a set that the oracle has read.

    ``scale`` is the slider scale a direction reads cleanest at and ``window`` the edit window
    ``(start, end)`` (1 = pure noise, 0 = clean) it was read in (``toyworld.shipped.slider_scales``
    and ``slider_windows``).  Directions without a reading (a set trained on your own images, or
    any set whose metadata has no ``oracle_reading``) are left out: nobody measured them.
    """
    read = {row.get("name") for row in directions.metadata.get("oracle_reading") or []}
    scales, windows = slider_scales(directions), slider_windows(directions)
    return {name: (scales[name], windows[name]) for name in directions.names if name in read}


def intersect_windows(first: tuple[float, float], second: tuple[float, float]) -> tuple[float, float] | None:
    """The part of the diffusion time two edit windows ``(start, end)`` share, or None if none.

    Windows count noise level (1 = pure noise, 0 = clean), as in ``editing.DirectionEdit``:
    ``intersect_windows((1.0, 0.3), (0.55, 0.0)) == (0.55, 0.3)``; windows that only touch share
    no step and give None.
    """
    start, end = min(first[0], second[0]), max(first[1], second[1])
    return (start, end) if start > end else None


def default_samples(folder: str | os.PathLike = SAMPLES_DIR, per_domain: int = 2) -> list[Path]:
    """The first ``per_domain`` images of every domain folder in ``folder`` (the shipped samples).

    Returns an empty list when the folder is missing (e.g. an installed package without the
    repository's ``data/``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for domain in sorted(p for p in folder.iterdir() if p.is_dir()):
        found += sorted(p for p in domain.iterdir() if p.suffix.lower() == ".png")[:per_domain]
    return found


def _set_name(directions: Directions, position: int) -> str:
    """A heading for a direction set: its domain, its file's stem, or its tokens' prefix."""
    if directions.metadata.get("domain"):
        return str(directions.metadata["domain"])
    if directions.source:
        return Path(directions.source).stem
    match = re.fullmatch(r"<(.+)_\d+>", directions.tokens[0])
    return match.group(1) if match else f"set {position + 1}"


def _png(image: Image.Image, display_size: int = 0) -> bytes:
    """PNG bytes of ``image``, enlarged by an integer factor (nearest neighbour) towards ``display_size``."""
    factor = max(1, display_size // max(image.size)) if display_size else 1
    if factor > 1:
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class EditPanel:
    """An ipywidgets panel that composes NoiseCLR edits on one image with sliders.

    Args:
        pipe: a Stable Diffusion pipeline (``noiseclr_lite.load_pipeline()``).
        direction_sets: ``Directions`` to show, as a list (headings from each set's
            ``metadata["domain"]``, file name or token prefix) or a dict ``{heading: Directions}``;
            file paths work too.  A set made for another model shows a message and is left out.
        images: the images to pick from: file paths and/or ``PIL.Image`` objects; default the
            first two shipped samples of every domain (``data/samples``).  More can be uploaded.
        num_inference_steps: sampler steps of the inversion and of every render (fewer =
            faster renders, coarser edits).
        seed: seeds the inversion's noise (the same seed gives the same renders).
        skip: leave out the ``skip`` noisiest steps (edits start from a less noisy latent:
            closer to the input, weaker edits); see :func:`~noiseclr_lite.inversion.ddpm_invert`.
        scale_range: ``(min, max)`` of every direction slider.  Default: a direction the oracle
            has read (:func:`measured_sliders`) spans ``MEASURED_SPAN`` times its slider scale
            either way, any other :data:`DEFAULT_SCALE_RANGE`.  A range given here applies to every
            slider.
        measured_windows: each direction the oracle has read acts only in the edit window it was
            read in (:func:`measured_sliders`), intersected with the panel's *edit window*; False:
            every direction acts in the panel's window alone.
        display_size: the images are shown this many pixels wide (small images are enlarged
            with nearest neighbour so that every pixel stays visible).
        save_path: the initial content of the save path field.
        sync: render in the calling thread (deterministic; for tests and scripts).  The default
            renders on a background thread so that the notebook stays responsive.
        composition: how sliders of different sets combine, ``"sum"`` (NoiseCLR's) or
            ``"regions"`` (where two sets push against each other, the one pushing hardest there
            acts: a face and a cat slider on one scene); see :func:`~noiseclr_lite.editing.edit`.
            The panel's toggle changes it.

    Attributes:
        widget: the ``ipywidgets.VBox`` holding the panel (displaying the panel displays it).
        sliders: ``{(heading, direction name): FloatSlider}``, in display order.
        strength: the global multiplier of every slider (``FloatSlider``).
        composition: ``ToggleButtons`` "sum" / "regions" (see ``composition`` above).
        window: the edit window (``FloatRangeSlider`` over [0, 1]): the fraction of the denoising
            trajectory in which edits act, 0 = the first (noisiest) step, 1 = the last.
        picker, upload, reset_button, save_button, path, directions_path, add_button: the
            other controls; ``original``, ``current``: the two ``ipywidgets.Image`` views;
            ``status`` (a Label: "rendering…" / "✓ ready in 0.41 s (1 active direction)") and
            ``message`` (an HTML area for errors and notes).
        current_image: the last rendered image (``PIL.Image`` at the model's resolution).
        render_times: seconds taken by each render, in order.
        last_message: the plain text of the last message shown (``""`` = none).
    """

    def __init__(self, pipe, direction_sets=(), images=None, *, num_inference_steps: int = 10, seed: int = 0,
                 skip: int = 0, scale_range: tuple[float, float] | None = None, display_size: int = 256,
                 save_path: str = "edited.png", sync: bool = False, composition: str = "sum",
                 measured_windows: bool = True):
        self.pipe = pipe
        self.num_inference_steps, self.seed, self.skip = num_inference_steps, seed, skip
        self.scale_range, self.display_size, self.sync = scale_range, display_size, sync
        self.measured_windows = measured_windows
        self.image_size = image_size(pipe)
        self.sets: dict[str, Directions] = {}
        self.sliders: dict[tuple[str, str], widgets.FloatSlider] = {}
        self.current_image: Image.Image | None = None
        self.render_times: list[float] = []
        self.last_message = ""
        # slider key -> (its Directions, the direction's index, its own edit window)
        self._slider_edits: dict[tuple[str, str], tuple[Directions, int, tuple[float, float]]] = {}
        self._tensors: dict = {}  # image key -> [3, S, S] model-size image in [-1, 1]
        self._inversions: dict = {}  # image key -> DDPMInversion (the cache: one inversion per image)
        self._reconstructions: dict = {}  # image key -> PIL image rendered with no edit
        self._shown_original: str | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="noiseclr_panel_")
        self._lock = threading.Lock()
        self._busy = self._dirty = False
        self._quiet = False  # True while the panel itself moves widgets (no render per change)
        self._build_widgets(save_path, composition)

        for name, directions in self._named(direction_sets):
            self.add_directions(directions, name=name)
        for source in (default_samples() if images is None else images):
            self.add_image(source, select=False)
        if self.picker.options:
            self._quiet = True
            self.picker.value = self.picker.options[0][1]
            self._quiet = False
            self.render()
        else:
            self._show_message("No image yet: upload one (PNG, JPEG or WebP).", error=False)

    # ------------------------------------------------------------------ building
    @staticmethod
    def _named(direction_sets):
        if isinstance(direction_sets, (Directions, str, os.PathLike)):
            direction_sets = [direction_sets]
        if isinstance(direction_sets, dict):
            return list(direction_sets.items())
        return [(None, d) for d in direction_sets]

    def _build_widgets(self, save_path: str, composition: str = "sum") -> None:
        size = f"{self.display_size}px"
        self.picker = widgets.Dropdown(options=[], description="image", layout=widgets.Layout(width="320px"))
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="upload image")
        self.original = widgets.Image(format="png", layout=widgets.Layout(width=size, height=size))
        self.current = widgets.Image(format="png", layout=widgets.Layout(width=size, height=size))
        self.original.add_class("noiseclr-original")
        self.current.add_class("noiseclr-current")
        self.status = widgets.Label("")
        self.status.add_class("noiseclr-status")
        self.message = widgets.HTML("")
        self.message.add_class("noiseclr-message")
        self.strength = widgets.FloatSlider(value=1.0, min=0.0, max=3.0, step=0.05, description="strength",
                                            continuous_update=False, style={"description_width": "120px"},
                                            layout=widgets.Layout(width="420px"),
                                            tooltip="multiplies every direction's slider")
        self.window = widgets.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.05,
                                               description="edit window", continuous_update=False,
                                               style={"description_width": "120px"},
                                               layout=widgets.Layout(width="420px"),
                                               tooltip="part of the denoising where edits act: "
                                                       "0 = first (noisiest) step, 1 = last step")
        if composition not in COMPOSITIONS:
            raise ValueError(f"composition must be one of {COMPOSITIONS}, got {composition!r}")
        self.composition = widgets.ToggleButtons(options=list(COMPOSITIONS), value=composition,
                                                 description="compose sets", style={"description_width": "120px"},
                                                 tooltips=["every slider's push everywhere (NoiseCLR)",
                                                           "where two sets push against each other, the stronger one acts"])
        self.reset_button = widgets.Button(description="reset sliders", icon="undo")
        self.path = widgets.Text(value=save_path, description="save to", layout=widgets.Layout(width="320px"))
        self.save_button = widgets.Button(description="save PNG", icon="save")
        self.directions_path = widgets.Text(placeholder="path/to/directions.safetensors", description="directions",
                                            layout=widgets.Layout(width="420px"))
        self.add_button = widgets.Button(description="add directions", icon="plus")
        self._groups = widgets.VBox([])
        self._groups.add_class("noiseclr-sliders")

        self.picker.observe(self._on_pick, names="value")
        self.upload.observe(self._on_upload, names="value")
        for control in (self.strength, self.window, self.composition):
            control.observe(self._on_slider, names="value")
        self.reset_button.on_click(lambda _: self.reset())
        self.save_button.on_click(lambda _: self._save_clicked())
        self.add_button.on_click(lambda _: self._add_clicked())

        def captioned(title, view):
            return widgets.VBox([widgets.HTML(f"<b>{title}</b>"), view])

        self.widget = widgets.VBox([
            widgets.HTML("<h3 style='margin:4px 0'>NoiseCLR edit panel</h3>"),
            widgets.HBox([self.picker, self.upload]),
            widgets.HBox([captioned("original", self.original), captioned("edited", self.current)]),
            widgets.HBox([self.status]),
            self.message,
            self.strength, self.window, self.composition,
            self._groups,
            widgets.HBox([self.reset_button, self.path, self.save_button]),
            widgets.HBox([self.directions_path, self.add_button]),
        ])
        self.widget.add_class("noiseclr-panel")

    def _ipython_display_(self):
        """Display the panel's widget (called by Jupyter when the panel ends a cell)."""
        from IPython.display import display

        display(self.widget)

    # ------------------------------------------------------------------ messages
    def _show_message(self, text: str, error: bool = True) -> None:
        self.last_message = text
        color = "#b00020" if error else "#555"
        prefix = "⚠ " if error else ""
        self.message.value = f"<div style='color:{color};max-width:640px'>{prefix}{html.escape(text)}</div>"

    def clear_message(self) -> None:
        """Remove the message shown in the panel."""
        self.last_message = ""
        self.message.value = ""

    # ------------------------------------------------------------------ directions
    def add_directions(self, directions, name: str | None = None) -> bool:
        """Add a set of direction sliders under heading ``name``; True if added.

        Args:
            directions: a ``Directions`` object or the path of a file written by ``Directions.save``.
            name: the heading; default the set's domain, file name or token prefix.

        A file that cannot be read, or directions made for another model (different hidden
        size or tokenizer: ``Directions.check_compatible``), shows a message naming the file and
        both models and returns False; the panel stays as it was.
        """
        label = str(directions) if isinstance(directions, (str, os.PathLike)) else (name or "directions")
        try:
            if isinstance(directions, (str, os.PathLike)):
                directions = Directions.load(Path(directions).expanduser())
            elif not isinstance(directions, Directions):
                raise TypeError(f"expected Directions or a file path, got {type(directions).__name__}")
            directions.check_compatible(self.pipe)
        except (OSError, ValueError, TypeError) as e:
            self._show_message(f"Could not add {label}: {e}")
            return False
        heading = name or _set_name(directions, len(self.sets))
        base, n = heading, 2
        while heading in self.sets:
            heading, n = f"{base} ({n})", n + 1
        self.sets[heading] = directions
        measured = measured_sliders(directions)
        note = f" · sliders span {MEASURED_SPAN:g}x each direction's measured scale" if measured and self.scale_range is None else ""
        rows = [widgets.HTML(f"<b>{html.escape(heading)}</b> <span style='color:#777'>"
                             f"({directions.num_directions} directions{note})</span>")]
        for k, (direction_name, token) in enumerate(zip(directions.names, directions.tokens)):
            scale, window = measured.get(direction_name, (None, WHOLE_WINDOW))
            if self.scale_range is not None or scale is None:
                (low, high), step = self.scale_range or DEFAULT_SCALE_RANGE, 0.1
            else:
                low, high, step = -MEASURED_SPAN * scale, MEASURED_SPAN * scale, scale / MEASURED_STEPS
            if not self.measured_windows:
                window = WHOLE_WINDOW
            tip = f"{token} ({heading})"
            if scale is not None:
                tip += f"; reads cleanest at {scale:g}, in window {window[0]:g}:{window[1]:g}"
            slider = widgets.FloatSlider(value=0.0, min=low, max=high, step=step, description=direction_name,
                                         tooltip=tip, continuous_update=False,
                                         style={"description_width": "120px"}, layout=widgets.Layout(width="420px"))
            slider.add_class("noiseclr-slider")
            slider.observe(self._on_slider, names="value")
            key = (heading, direction_name if (heading, direction_name) not in self.sliders else token)
            self.sliders[key] = slider
            self._slider_edits[key] = (directions, k, window)
            rows.append(slider)
        self._groups.children = self._groups.children + (widgets.VBox(rows),)
        return True

    def _add_clicked(self) -> None:
        path = self.directions_path.value.strip()
        if not path:
            self._show_message("Type the path of a directions .safetensors file first.")
        elif self.add_directions(path):
            self._show_message(f"Added {path}.", error=False)

    def edits(self) -> list[DirectionEdit]:
        """The current sliders as ``DirectionEdit`` objects: scale = slider x strength, window = the
        panel's edit window intersected with the direction's own (``measured_windows``); sliders at
        0 and directions whose window shares no step with the panel's are left out."""
        lo, hi = self.window.value
        panel_window = (1.0 - lo, 1.0 - hi)  # DirectionEdit counts noise level: 1 = pure noise, 0 = clean
        out = []
        for key, slider in self.sliders.items():
            scale = slider.value * self.strength.value
            directions, k, own_window = self._slider_edits[key]
            window = intersect_windows(panel_window, own_window)
            if scale != 0 and window is not None:
                out.append(DirectionEdit(directions, k, scale, window))
        return out

    # ------------------------------------------------------------------ images
    def add_image(self, source, name: str | None = None, select: bool = True) -> str | None:
        """Add an image to the picker; returns its key (None, with a message, if it is unusable).

        Args:
            source: a file path, a ``PIL.Image`` or the bytes of an image file.
            name: the label in the picker; default the file's folder and name.
            select: show it now (this inverts it, once).

        The image is checked before it is decoded: more than ``MAX_UPLOAD_BYTES`` or
        ``MAX_PIXELS`` is refused, a side over ``MAX_SIDE`` is accepted with a note (every image
        is downscaled to the model's size anyway), and a file that is not an image is reported.
        """
        try:
            key, label, tensor, note = self._load(source, name)
        except (OSError, ValueError) as e:
            self._show_message(str(e))
            return None
        if key not in self._tensors:
            self._tensors[key] = tensor
            self.picker.options = list(self.picker.options) + [(label, key)]
        if note:
            self._show_message(note, error=False)
        elif select:
            self.clear_message()  # the user's latest action worked: drop an older error
        if select:
            if self.picker.value == key:
                self.render()
            else:
                self.picker.value = key  # the observer renders
        return key

    def _load(self, source, name):
        """(key, label, tensor [3, S, S], note) for a path, a PIL image or image-file bytes."""
        tmp = Path(self._tmp.name)
        if isinstance(source, Image.Image):
            digest = hashlib.sha256(source.tobytes() + repr((source.size, source.mode)).encode()).hexdigest()[:16]
            path = tmp / f"{digest}.png"
            source.save(path)
            return self._load_file(path, f"image:{digest}", name or f"image {len(self._tensors) + 1}")
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            label = name or "upload"
            if len(data) > MAX_UPLOAD_BYTES:
                raise ValueError(f"{label} is {len(data) / 2**20:.1f} MB; the panel takes images up to "
                                 f"{MAX_UPLOAD_BYTES // 2**20} MB. Resize it (the model works at "
                                 f"{self.image_size} px) and upload it again.")
            digest = hashlib.sha256(data).hexdigest()[:16]
            suffix = re.sub(r"[^A-Za-z0-9.]", "", Path(label).suffix)[:8]
            path = tmp / f"{digest}{suffix}"
            path.write_bytes(data)
            return self._load_file(path, f"upload:{digest}", f"upload: {label}", shown=label)
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist (working directory {Path.cwd()}); "
                                    f"check the path, give an absolute one, or upload the file")
        if path.stat().st_size > MAX_UPLOAD_BYTES:
            raise ValueError(f"{path} is {path.stat().st_size / 2**20:.1f} MB; the panel takes images up to "
                             f"{MAX_UPLOAD_BYTES // 2**20} MB")
        return self._load_file(path, f"file:{path.resolve()}", name or f"{path.parent.name}/{path.name}")

    def _load_file(self, path: Path, key: str, label: str, shown: str | None = None):
        shown = shown or str(path)
        if key in self._tensors:
            return key, label, self._tensors[key], ""
        try:  # the header only: size before decoding
            with Image.open(path) as header:
                width, height = header.size
        except Image.DecompressionBombError as e:
            raise ValueError(f"{shown} is far too large for the panel ({e}); resize it to at most {MAX_SIDE} px "
                             f"a side (the model works at {self.image_size} px) and try again") from e
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"{shown} is not an image the panel can read ({type(e).__name__}); "
                             f"give a PNG, JPEG or WebP file") from e
        if width * height > MAX_PIXELS:
            raise ValueError(f"{shown} is {width}x{height} px ({width * height / 1e6:.0f} megapixels), more than "
                             f"the panel's limit of {MAX_PIXELS / 1e6:.0f}; resize it (the model works at "
                             f"{self.image_size} px) and try again")
        try:
            tensor = load_image(path, self.image_size)
        except ValueError as e:
            cause = e.__cause__ or e
            raise ValueError(f"{shown} is not an image the panel can read ({type(cause).__name__}: {cause}); "
                             f"give a PNG, JPEG or WebP file") from e
        note = ""
        if max(width, height) > MAX_SIDE:
            note = (f"{shown} is {width}x{height} px, larger than {MAX_SIDE} px: downscaled to the model's "
                    f"{self.image_size}x{self.image_size} (centre crop).")
        return key, label, tensor, note

    def _on_upload(self, change) -> None:
        if self._quiet or not change["new"]:
            return
        files = list(change["new"])
        self._quiet = True
        try:
            self.upload.value = ()  # ready for the next upload, also of the same file
        finally:
            self._quiet = False
        for f in files:
            self.add_image(f["content"], name=f.get("name") or "upload")

    def _on_pick(self, change) -> None:
        if not self._quiet and change["new"] is not None:
            self.render()

    # ------------------------------------------------------------------ inversion and rendering
    def invert(self, key: str | None = None):
        """The DDPM inversion of image ``key`` (default: the picked one), computed once and cached."""
        key = key or self.picker.value
        if key is None:
            raise ValueError("no image picked; add or upload one first")
        if key not in self._inversions:
            latents = encode_images(self.pipe, self._tensors[key][None])
            self._inversions[key] = ddpm_invert(self.pipe, latents, num_inference_steps=self.num_inference_steps,
                                                seed=self.seed, skip=self.skip)
        return self._inversions[key]

    def render(self) -> Image.Image | None:
        """Re-render the edited image from the current widget values.

        Only one render runs at a time: a call made while one is running marks the panel
        dirty and returns at once, and the running render goes round once more with the
        newest values (so a burst of slider moves costs at most two renders).  With
        ``sync=True`` the call returns the rendered ``PIL.Image`` when it started the render;
        otherwise the render runs on a background thread and the call returns None.
        Errors are shown in the panel's message area, never raised.
        """
        with self._lock:
            self._dirty = True
            if self._busy:
                return None
            self._busy = True
        if self.sync:
            self._render_loop()
            return self.current_image
        threading.Thread(target=self._render_loop, name="noiseclr-panel-render", daemon=True).start()
        return None

    def _render_loop(self) -> None:
        while True:
            with self._lock:
                if not self._dirty:
                    self._busy = False
                    return
                self._dirty = False
            try:
                self._render_once()
            except BaseException:
                with self._lock:
                    self._busy = False
                raise

    def _render_once(self) -> None:
        key = self.picker.value
        if key is None:
            return
        start = time.perf_counter()
        try:
            if key != self._shown_original:
                self.original.value = _png(to_pil(self._tensors[key]), self.display_size)
                self._shown_original = key
            if key not in self._inversions:
                self.status.value = "inverting the image (once)…"
                self.invert(key)
            self.status.value = "rendering…"
            edits = self.edits()
            if edits:
                image = edit(self.pipe, edits, inversion=self._inversions[key],
                             composition=self.composition.value)[0]
            else:
                if key not in self._reconstructions:
                    latents = reconstruct(self.pipe, self._inversions[key])
                    self._reconstructions[key] = decode_latents(self.pipe, latents)[0]
                image = self._reconstructions[key]
            self.current_image = image
            self.current.value = _png(image, self.display_size)
        except Exception as e:  # shown, not raised: the panel must keep working
            self.status.value = "error"
            self._show_message(f"Rendering failed: {type(e).__name__}: {e}")
            return
        elapsed = time.perf_counter() - start
        self.render_times.append(elapsed)
        active = len(edits)
        self.status.value = f"✓ ready in {elapsed:.2f} s ({active} active direction{'s' * (active != 1)})"

    def median_render_time(self) -> float | None:
        """The median of ``render_times`` in seconds (None before the first render)."""
        return statistics.median(self.render_times) if self.render_times else None

    def _on_slider(self, change) -> None:
        if not self._quiet:
            self.render()

    # ------------------------------------------------------------------ buttons
    def reset(self) -> None:
        """Set every direction slider to 0 (strength and window stay) and re-render: the reconstruction."""
        self._quiet = True
        try:
            for slider in self.sliders.values():
                slider.value = 0.0
        finally:
            self._quiet = False
        self.render()

    def save(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write the edited image as a PNG at the model's resolution; returns the path (None on error).

        ``path`` defaults to the panel's "save to" field; missing folders are created and a
        missing ``.png`` suffix is added.  The outcome is shown in the panel's message area.
        """
        if self.current_image is None:
            self._show_message("Nothing to save yet: pick an image first.")
            return None
        path = Path(os.fspath(path if path is not None else self.path.value.strip() or "edited.png")).expanduser()
        if path.suffix.lower() != ".png":
            path = path.with_name(path.name + ".png")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.current_image.save(path, format="PNG")
        except OSError as e:
            self._show_message(f"Could not save to {path}: {e}")
            return None
        self._show_message(f"Saved {self.current_image.width}x{self.current_image.height} PNG to {path}.", error=False)
        return path

    def _save_clicked(self) -> None:
        self.save()

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until no render is running (background mode); True if the panel became idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._busy:
                    return True
            time.sleep(0.01)
        return False
