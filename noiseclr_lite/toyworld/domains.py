"""Procedural image domains with known attributes: faces, cats, cars, paintings, scenes.

Every image is drawn at 4x resolution with PIL and downsampled to 64x64 RGB, so edges
are clean.  Each domain has binary attributes whose two values are bold enough to be
read at 64 px, plus nuisance variation (background, position, size) that is *not* an
attribute.  Background hues are kept clear of every attribute's colours, because a
prototype showed that a background of similar hue confounds colour attributes.

Labels are dicts ``{attribute: value_index}``, with value_index 0 or 1 naming one of the
attribute's two caption phrases (``FACE.attributes["hair"] == ("black hair", "blond hair")``).
A scene holds a face (left) and a cat (right); its attributes are ``face_*`` and ``cat_*``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
_SUPER = 4  # draw at 4x and downsample for anti-aliased edges
_S = IMAGE_SIZE * _SUPER


@dataclass(frozen=True)
class Domain:
    """A procedural domain: its caption noun and its attributes.

    attributes maps an attribute name to its value phrases; the index of a phrase is
    the label value.  ``noun`` is the caption's subject ("a face").
    """

    name: str
    noun: str
    attributes: dict[str, tuple[str, ...]]

    @property
    def attribute_names(self) -> list[str]:
        """The domain's attributes in the oracle's head order (e.g. ["expression", "glasses", ...])."""
        return list(self.attributes)


FACE = Domain("face", "a face", {
    "expression": ("frowning", "smiling"),
    "hair": ("black hair", "blond hair"),
    "glasses": ("no glasses", "glasses"),
    "skin": ("light skin", "dark skin"),
})
CAT = Domain("cat", "a cat", {
    "fur": ("gray fur", "orange fur"),
    "stripes": ("plain", "striped"),
    "ears": ("round ears", "pointy ears"),
    "eyes": ("blue eyes", "green eyes"),
})
CAR = Domain("car", "a car", {
    "color": ("blue", "red"),
    "wheels": ("small wheels", "big wheels"),
    "roof": ("convertible", "hardtop"),
    "time": ("day", "night"),
})
PAINTING = Domain("painting", "a painting", {
    "palette": ("cool", "warm"),
    "strokes": ("dotted", "hatched"),
    "composition": ("horizon", "centered"),
    "frame": ("unframed", "framed"),
})
SCENE = Domain("scene", "a face and a cat", {
    **{f"face_{k}": v for k, v in FACE.attributes.items()},
    **{f"cat_{k}": v for k, v in CAT.attributes.items()},
})

DOMAINS: dict[str, Domain] = {d.name: d for d in (FACE, CAT, CAR, PAINTING, SCENE)}
DOMAIN_NAMES: list[str] = list(DOMAINS)


def get_domain(name: str) -> Domain:
    """Return the domain called ``name``; the error lists the known ones."""
    if name not in DOMAINS:
        raise ValueError(f"unknown toyworld domain {name!r}; choose one of {DOMAIN_NAMES}")
    return DOMAINS[name]


# ---------------------------------------------------------------------------------------
# colours: attribute colours are far apart, backgrounds are pale and of other hues
SKIN = [(250, 214, 180), (112, 66, 38)]
HAIR = [(28, 24, 24), (245, 208, 60)]
FACE_BACKGROUNDS = [(186, 214, 240), (190, 230, 200), (214, 200, 240), (200, 205, 215)]
FUR = [(150, 150, 158), (240, 138, 36)]
FUR_STRIPE = [(80, 80, 88), (160, 70, 10)]
CAT_EYES = [(40, 110, 250), (40, 200, 40)]
CAT_BACKGROUNDS = [(250, 212, 228), (226, 214, 248), (244, 236, 250), (255, 226, 236)]
CAR_BODY = [(40, 80, 230), (225, 35, 35)]
SKY_DAY = [(200, 232, 250), (225, 240, 250), (245, 245, 235)]
SKY_NIGHT = [(14, 18, 48), (26, 20, 56), (10, 30, 50)]
GROUND = [(110, 110, 110), (120, 150, 90), (180, 160, 120)]
WARM = [(230, 60, 40), (250, 150, 30), (250, 210, 60), (200, 40, 90), (240, 110, 80)]
COOL = [(40, 80, 220), (40, 170, 200), (60, 170, 110), (110, 70, 200), (30, 120, 160)]
SCENE_BACKGROUNDS = [(225, 225, 225), (214, 220, 232), (232, 226, 214)]


def _jitter(rng: random.Random, amount: float) -> float:
    return rng.uniform(-amount, amount)


def _shade(colour, rng: random.Random, amount: int = 12):
    return tuple(int(min(255, max(0, c + rng.randint(-amount, amount)))) for c in colour)


def _ellipse(draw, cx, cy, rx, ry, fill, outline=None, width=0):
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill, outline=outline, width=width)


def _draw_face(draw, labels, rng, cx, cy, r):
    """Draw a cartoon face of radius r (in supersampled pixels) centred on (cx, cy)."""
    skin = _shade(SKIN[labels["skin"]], rng, 8)
    hair = _shade(HAIR[labels["hair"]], rng, 10)
    # hair: a cap behind the head plus side locks
    _ellipse(draw, cx, cy - 0.18 * r, 1.12 * r, 1.02 * r, hair)
    draw.rectangle([cx - 1.12 * r, cy - 0.2 * r, cx - 0.72 * r, cy + 0.55 * r], fill=hair)
    draw.rectangle([cx + 0.72 * r, cy - 0.2 * r, cx + 1.12 * r, cy + 0.55 * r], fill=hair)
    _ellipse(draw, cx, cy + 0.08 * r, 0.86 * r, 0.95 * r, skin)
    # fringe
    draw.chord([cx - 0.9 * r, cy - 1.1 * r, cx + 0.9 * r, cy - 0.1 * r], 180, 360, fill=hair)
    # eyes
    eye_y = cy + 0.05 * r
    for side in (-1, 1):
        _ellipse(draw, cx + side * 0.36 * r, eye_y, 0.1 * r, 0.12 * r, (20, 20, 20))
    if labels["glasses"]:
        lw = max(3, int(0.09 * r))
        for side in (-1, 1):
            _ellipse(draw, cx + side * 0.36 * r, eye_y, 0.27 * r, 0.23 * r, None, (15, 15, 15), lw)
        draw.line([cx - 0.1 * r, eye_y, cx + 0.1 * r, eye_y], fill=(15, 15, 15), width=lw)
    _draw_mouth(draw, labels["expression"], cx, cy + 0.48 * r, r)


def _draw_mouth(draw, smiling: int, cx, mouth_y, r):
    """A smiling or frowning mouth whose top edge is at ``mouth_y`` on a face of radius r.

    The two expressions differ in brightness as well as in shape: a wide grin full of
    white teeth against a dark, closed, downturned mouth.  A thick arc curving up or
    down (the first design) was lost by the 4x-downsampling VAE in one face out of five,
    because the curvature of a 3-px line fits inside one latent cell; a white blob
    against a dark one does not.
    """
    if smiling:  # a red half-ellipse, round side down, mostly filled by white teeth
        w, h = 0.48 * r, 0.34 * r
        draw.chord([cx - w, mouth_y - h, cx + w, mouth_y + h], 0, 180, fill=(150, 20, 30))
        draw.chord([cx - 0.8 * w, mouth_y - 0.6 * h, cx + 0.8 * w, mouth_y + 0.6 * h], 0, 180,
                   fill=(250, 250, 250))
    else:  # a dark half-ellipse, round side up
        w, h = 0.42 * r, 0.3 * r
        draw.chord([cx - w, mouth_y, cx + w, mouth_y + 2 * h], 180, 360, fill=(90, 10, 20))


def _draw_cat(draw, labels, rng, cx, cy, r):
    """Draw a cat head of radius r centred on (cx, cy)."""
    fur = _shade(FUR[labels["fur"]], rng, 8)
    stripe = FUR_STRIPE[labels["fur"]]
    # ears first so the head overlaps their base
    for side in (-1, 1):
        ex = cx + side * 0.6 * r
        if labels["ears"]:
            draw.polygon([(ex - 0.38 * r, cy - 0.45 * r), (ex + 0.38 * r, cy - 0.45 * r),
                          (ex + side * 0.12 * r, cy - 1.35 * r)], fill=fur)
        else:
            _ellipse(draw, ex, cy - 0.72 * r, 0.36 * r, 0.36 * r, fur)
    _ellipse(draw, cx, cy, 1.0 * r, 0.85 * r, fur)
    if labels["stripes"]:
        sw = max(3 * _SUPER, int(0.12 * r))
        for dx in (-0.32, 0.0, 0.32):
            draw.line([cx + dx * r, cy - 0.84 * r, cx + dx * r, cy - 0.38 * r], fill=stripe, width=sw)
        for side in (-1, 1):
            for dy in (-0.05, 0.28):
                draw.line([cx + side * 0.98 * r, cy + dy * r, cx + side * 0.62 * r, cy + dy * r],
                          fill=stripe, width=sw)
    eye = CAT_EYES[labels["eyes"]]
    for side in (-1, 1):
        _ellipse(draw, cx + side * 0.38 * r, cy - 0.1 * r, 0.2 * r, 0.17 * r, eye)
        _ellipse(draw, cx + side * 0.38 * r, cy - 0.1 * r, 0.05 * r, 0.14 * r, (10, 10, 10))
    draw.polygon([(cx - 0.1 * r, cy + 0.2 * r), (cx + 0.1 * r, cy + 0.2 * r), (cx, cy + 0.32 * r)],
                 fill=(230, 120, 150))


def _render_face(labels, rng):
    img = Image.new("RGB", (_S, _S), rng.choice(FACE_BACKGROUNDS))
    draw = ImageDraw.Draw(img)
    r = _S * rng.uniform(0.3, 0.36)
    _draw_face(draw, labels, rng, _S / 2 + _jitter(rng, 0.07 * _S), _S / 2 + _jitter(rng, 0.05 * _S), r)
    return img


def _render_cat(labels, rng):
    img = Image.new("RGB", (_S, _S), rng.choice(CAT_BACKGROUNDS))
    draw = ImageDraw.Draw(img)
    r = _S * rng.uniform(0.3, 0.35)
    _draw_cat(draw, labels, rng, _S / 2 + _jitter(rng, 0.07 * _S), _S * 0.56 + _jitter(rng, 0.05 * _S), r)
    return img


def _render_car(labels, rng):
    night = labels["time"]
    img = Image.new("RGB", (_S, _S), rng.choice(SKY_NIGHT if night else SKY_DAY))
    draw = ImageDraw.Draw(img)
    if night:
        _ellipse(draw, _S * rng.uniform(0.15, 0.85), _S * 0.14, 0.06 * _S, 0.06 * _S, (245, 245, 210))
        for _ in range(6):
            x, y = rng.uniform(0, _S), rng.uniform(0, 0.4 * _S)
            _ellipse(draw, x, y, 0.012 * _S, 0.012 * _S, (240, 240, 240))
    ground_y = _S * rng.uniform(0.74, 0.8)
    draw.rectangle([0, ground_y, _S, _S], fill=rng.choice(GROUND))
    body = _shade(CAR_BODY[labels["color"]], rng, 10)
    length = _S * rng.uniform(0.66, 0.76)
    x0 = _S / 2 - length / 2 + _jitter(rng, 0.06 * _S)
    wheel_r = _S * (0.12 if labels["wheels"] else 0.07)
    axle_y = ground_y - wheel_r
    body_bottom = axle_y + 0.02 * _S
    body_top = body_bottom - 0.16 * _S
    draw.rounded_rectangle([x0, body_top, x0 + length, body_bottom], radius=0.05 * _S, fill=body)
    window = (150, 200, 230) if not night else (230, 220, 120)
    if labels["roof"]:
        cab = [(x0 + 0.22 * length, body_top), (x0 + 0.32 * length, body_top - 0.14 * _S),
               (x0 + 0.72 * length, body_top - 0.14 * _S), (x0 + 0.82 * length, body_top)]
        draw.polygon(cab, fill=body)
        draw.polygon([(x0 + 0.3 * length, body_top - 0.015 * _S), (x0 + 0.35 * length, body_top - 0.115 * _S),
                      (x0 + 0.69 * length, body_top - 0.115 * _S), (x0 + 0.74 * length, body_top - 0.015 * _S)],
                     fill=window)
    else:
        # an open top: only a slanted windscreen
        draw.line([(x0 + 0.62 * length, body_top), (x0 + 0.56 * length, body_top - 0.09 * _S)],
                  fill=(60, 60, 60), width=3 * _SUPER)
    for wx in (x0 + 0.2 * length, x0 + 0.8 * length):
        _ellipse(draw, wx, axle_y, wheel_r, wheel_r, (25, 25, 25))
        _ellipse(draw, wx, axle_y, wheel_r * 0.45, wheel_r * 0.45, (190, 190, 190))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def _render_painting(labels, rng):
    colours = WARM if labels["palette"] else COOL
    cols = rng.sample(colours, 3)
    img = Image.new("RGB", (_S, _S), cols[0])
    draw = ImageDraw.Draw(img)
    if labels["composition"]:
        # one large central shape
        cx, cy = _S / 2 + _jitter(rng, 0.05 * _S), _S / 2 + _jitter(rng, 0.05 * _S)
        rr = _S * rng.uniform(0.2, 0.26)
        if rng.random() < 0.5:
            _ellipse(draw, cx, cy, rr, rr, cols[1])
        else:
            draw.rectangle([cx - rr, cy - rr, cx + rr, cy + rr], fill=cols[1])
    else:
        # a horizon: the lower part of the canvas in another colour
        hy = _S * rng.uniform(0.5, 0.65)
        draw.rectangle([0, hy, _S, _S], fill=cols[1])
    mark = cols[2]
    if labels["strokes"]:
        w = 3 * _SUPER
        offset = rng.uniform(0, 0.12 * _S)
        for k in range(-10, 12):
            x = k * 0.12 * _S + offset
            draw.line([(x, _S), (x + _S * 0.5, 0)], fill=mark, width=w)
    else:
        step = 0.125 * _S
        ox, oy = rng.uniform(0, step), rng.uniform(0, step)
        for i in range(9):
            for j in range(9):
                _ellipse(draw, ox + i * step, oy + j * step, 0.025 * _S, 0.025 * _S, mark)
    if labels["frame"]:
        fw = 0.1 * _S
        frame = (150, 100, 40)
        for box in ([0, 0, _S, fw], [0, _S - fw, _S, _S], [0, 0, fw, _S], [_S - fw, 0, _S, _S]):
            draw.rectangle(box, fill=frame)
        draw.rectangle([fw, fw, _S - fw, _S - fw], outline=(220, 180, 90), width=2 * _SUPER)
    return img


def _render_scene(labels, rng):
    img = Image.new("RGB", (_S, _S), rng.choice(SCENE_BACKGROUNDS))
    draw = ImageDraw.Draw(img)
    face_labels = {k[5:]: v for k, v in labels.items() if k.startswith("face_")}
    cat_labels = {k[4:]: v for k, v in labels.items() if k.startswith("cat_")}
    r = _S * rng.uniform(0.2, 0.21)
    _draw_face(draw, face_labels, rng, _S * 0.25 + _jitter(rng, 0.01 * _S), _S * 0.5 + _jitter(rng, 0.06 * _S), r)
    _draw_cat(draw, cat_labels, rng, _S * 0.76 + _jitter(rng, 0.01 * _S), _S * 0.56 + _jitter(rng, 0.06 * _S), r)
    return img


_RENDERERS = {"face": _render_face, "cat": _render_cat, "car": _render_car,
              "painting": _render_painting, "scene": _render_scene}


def sample_labels(domain: str, rng: random.Random) -> dict[str, int]:
    """Draw every attribute of ``domain`` uniformly (balanced over its values)."""
    return {name: rng.randrange(len(values)) for name, values in get_domain(domain).attributes.items()}


def render(domain: str, labels: dict[str, int], seed: int | None = None) -> Image.Image:
    """Render one 64x64 RGB image of ``domain`` with the given attribute ``labels``.

    The seed drives the nuisance variation only (background, position, size), so the
    same labels with another seed give another image with the same attributes.
    """
    dom = get_domain(domain)
    missing = set(dom.attributes) - set(labels)
    if missing:
        raise ValueError(f"labels for {domain!r} lack {sorted(missing)}; give a value index for each")
    rng = random.Random(seed)
    big = _RENDERERS[domain](labels, rng)
    return big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)


def render_batch(n: int, seed: int, domains: list[str] | None = None) -> tuple[np.ndarray, list[tuple[str, dict[str, int]]]]:
    """Render ``n`` random images, cycling through ``domains`` (default: all five).

    Returns (images, labels): images is uint8 [n, 64, 64, 3]; labels[i] is
    (domain, {attribute: value_index}).  The same seed gives the same batch.
    """
    domains = domains or DOMAIN_NAMES
    rng = random.Random(seed)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = []
    for i in range(n):
        domain = domains[(i + seed) % len(domains)] if len(domains) > 1 else domains[0]
        lab = sample_labels(domain, rng)
        images[i] = np.asarray(render(domain, lab, seed=rng.getrandbits(32)))
        labels.append((domain, lab))
    return images, labels


def attribute_pixel_change(domain: str, attribute: str, images: int = 64, seed: int = 0) -> list[float]:
    """How many pixels one attribute takes: for ``images`` random label sets of ``domain``,
    the mean absolute pixel difference, in [0, 1] pixel units (1.0 = black to white in every
    channel of every pixel), between a render and the same render with ``attribute`` flipped.

    Both renders share the seed, so the nuisance (background, position, size) is the same,
    except where drawing the attribute itself draws random numbers: a night sky's moon and
    stars (car ``time``) shift the draws of the ground and the car after them, and a
    painting's ``composition`` those of its strokes, so these two also count some nuisance
    change (an upper bound: about 7% for ``time``). An edit that flips the attribute on the
    half of a balanced image set that lacks it changes the pixels by half this.
    """
    dom = get_domain(domain)
    if attribute not in dom.attributes:
        raise ValueError(f"{domain!r} has no attribute {attribute!r}; choose one of {dom.attribute_names}")
    rng = random.Random(seed)
    changes = []
    for _ in range(images):
        labels = sample_labels(domain, rng)
        flipped = dict(labels, **{attribute: 1 - labels[attribute]})
        image_seed = rng.getrandbits(32)
        before = np.asarray(render(domain, labels, seed=image_seed), dtype=np.float32)
        after = np.asarray(render(domain, flipped, seed=image_seed), dtype=np.float32)
        changes.append(float(np.abs(before - after).mean() / 255))
    return changes


def caption(domain: str, labels: dict[str, int], rng: random.Random | None = None,
            attribute_dropout: float = 0.3, caption_dropout: float = 0.1) -> str:
    """Caption an image from its labels: "a cat, orange fur, striped, pointy ears".

    Each attribute phrase is dropped with probability ``attribute_dropout`` and the order
    is shuffled; the whole caption is dropped (empty string) with probability
    ``caption_dropout`` so that the model learns the unconditional prediction.
    With ``rng=None`` nothing is dropped and the order is fixed.
    """
    dom = get_domain(domain)
    phrases = [dom.attributes[name][value] for name, value in labels.items()]
    if rng is not None:
        if rng.random() < caption_dropout:
            return ""
        phrases = [p for p in phrases if rng.random() >= attribute_dropout]
        rng.shuffle(phrases)
    return ", ".join([dom.noun] + phrases)


def vocabulary() -> list[str]:
    """Every word that a caption or an evaluation prompt can contain, sorted."""
    words = set()
    for dom in DOMAINS.values():
        words.update(dom.noun.split())
        for values in dom.attributes.values():
            for phrase in values:
                words.update(phrase.split())
    return sorted(words)
