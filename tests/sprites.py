"""Sprite competitions of the kind the seed team lost on, drawn on the fly.

Each subject (a "creature") is a few coloured ellipses with an eye. It appears as
several animation frames, a mirrored back view and palette-swapped ("shiny")
variants, each on a plain background whose colour varies from image to image.
Its label (a "type") sets the hue of its palette only loosely, so a classifier
that has not seen the subject scores far below one that memorised it.

``split="subject"``: the test set holds subjects never seen in train (the hard
case). ``split="random"``: train and test images are drawn at random from one
pool, so most test images have a sibling frame in train (the easy case).

``write_species``: the class *is* the subject (a species, a person, a landmark).
Every species is drawn in several views (front, back, shiny, shiny back), several
frames each; train holds all but one of its views, and the test set holds the view
train never has (a back or a colour variant).

``write_styles``: objects drawn in several styles, as by several artists (filled,
inked outlines, neon strokes, pixelated blocks, small sketches): twins that share a
meaning, the object's layout, but hardly a pixel. The test set holds unseen objects.

Both write a Kaggle-layout competition under ``root``: train/ and test/ (PNG),
train_labels.csv, sample_submission.csv and solution.csv (Id,label,Usage).
"""

from __future__ import annotations

import colorsys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

BACKGROUNDS = [
    (255, 255, 255),
    (240, 240, 240),
    (30, 30, 30),
    (200, 225, 255),
    (210, 255, 210),
    (255, 245, 200),
]


def _palette(hue: float, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    return [
        ((hue + rng.normal(0, 0.05)) % 1, rng.uniform(0.4, 1.0), rng.uniform(0.35, 0.95))
        for _ in range(3)
    ]


def _rgb(hsv: tuple[float, float, float], shade: float = 1.0) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hsv[0], hsv[1], min(1.0, hsv[2] * shade))
    return int(r * 255), int(g * 255), int(b * 255)


def _subject(label: int, n_labels: int, rng: np.random.Generator) -> dict:
    # The label's hue is a loose hint: subjects of one type spread well into the next.
    hue = (label / n_labels + rng.normal(0, 0.6 / n_labels)) % 1
    parts = [
        (
            rng.uniform(0.3, 0.7),
            rng.uniform(0.4, 0.7),
            rng.uniform(0.18, 0.3),
            rng.uniform(0.15, 0.28),
        )
    ]
    for _ in range(int(rng.integers(2, 5))):
        parts.append(
            (
                rng.uniform(0.2, 0.8),
                rng.uniform(0.2, 0.8),
                rng.uniform(0.06, 0.16),
                rng.uniform(0.06, 0.16),
            )
        )
    return {
        "parts": parts,
        "colours": [int(rng.integers(0, 3)) for _ in parts],
        "palette": _palette(hue, rng),
        "shiny": (hue + rng.uniform(0.25, 0.75)) % 1,
        "home": int(rng.integers(len(BACKGROUNDS))),
    }


def _draw(
    s: dict,
    *,
    size: int,
    rng: np.random.Generator,
    back: bool = False,
    shiny: bool = False,
    jitter: float = 0.02,
    back_shade: float = 0.7,
) -> Image.Image:
    home = rng.random() < 0.7
    bg = BACKGROUNDS[s["home"] if home else int(rng.integers(len(BACKGROUNDS)))]
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    dx, dy = rng.normal(0, jitter, 2)
    palette = s["palette"]
    if shiny:
        palette = [((h + s["shiny"]) % 1, sat, v) for h, sat, v in palette]
    for (cx, cy, rx, ry), c in zip(s["parts"], s["colours"], strict=True):
        cx, cy = cx + dx + rng.normal(0, jitter), cy + dy + rng.normal(0, jitter)
        if back:
            cx = 1 - cx
        box = [(cx - rx) * size, (cy - ry) * size, (cx + rx) * size, (cy + ry) * size]
        d.ellipse(box, fill=_rgb(palette[c], back_shade if back else 1.0))
    if not back:
        hx, hy, _, _ = s["parts"][1]
        e = max(1.0, size / 24)
        d.ellipse([hx * size - e, hy * size - e, hx * size + e, hy * size + e], fill=(0, 0, 0))
    return img


VIEWS = ("frame", "frame", "frame", "back", "shiny", "shiny back")


def views(
    s: dict, *, size: int, rng: np.random.Generator, frames: int = 3, jitter: float = 0.02
) -> list[Image.Image]:
    """Every image of one subject: frames, a back view, and shiny variants of both."""
    out = [_draw(s, size=size, rng=rng, jitter=jitter) for _ in range(frames)]
    out.append(_draw(s, size=size, rng=rng, back=True, jitter=jitter))
    out.append(_draw(s, size=size, rng=rng, shiny=True, jitter=jitter))
    out.append(_draw(s, size=size, rng=rng, shiny=True, back=True, jitter=jitter))
    return out


def _write(
    root: Path,
    images: list[tuple[Image.Image, str, int, str]],
    is_test: list[bool],
    *,
    rng: np.random.Generator,
) -> Path:
    """Save ``images`` (image, label, subject, view) as a competition: the flagged ones as the
    test set, answered in solution.csv (a third public, the rest private)."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows: list[tuple[str, str, int, str]] = []
    test_rows: list[tuple[str, str, int, str]] = []
    for (img, label, k, view), test in zip(images, is_test, strict=True):
        ident = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        img.save(root / ("test" if test else "train") / f"{ident}.png")
        (test_rows if test else rows).append((ident, label, k, view))
    order = rng.permutation(len(rows))
    pd.DataFrame([rows[i] for i in order], columns=["Id", "label", "subject", "view"]).to_csv(
        root / "train_labels.csv", index=False
    )
    pd.DataFrame({"Id": [r[0] for r in test_rows], "label": min(r[1] for r in rows)}).to_csv(
        root / "sample_submission.csv", index=False
    )
    usage = ["Public" if i % 3 == 0 else "Private" for i in range(len(test_rows))]
    pd.DataFrame(
        {"Id": [r[0] for r in test_rows], "label": [r[1] for r in test_rows], "Usage": usage}
    ).to_csv(root / "solution.csv", index=False)
    return root


def write_sprites(
    root: Path,
    *,
    train_subjects: int = 150,
    test_subjects: int = 60,
    n_labels: int = 4,
    size: int = 32,
    split: str = "subject",
    jitter: float = 0.02,
    seed: int = 0,
) -> Path:
    """A Kaggle-layout competition: train_labels.csv (Id,label,subject,view), train/, test/,
    sample_submission.csv and solution.csv (Id,label,Usage)."""
    rng = np.random.default_rng(seed)
    images: list[tuple[Image.Image, str, int, str]] = []
    subjects = train_subjects + test_subjects
    for k in range(subjects):
        label = k % n_labels
        drawn = views(_subject(label, n_labels, rng), size=size, rng=rng, jitter=jitter)
        for img, view in zip(drawn, VIEWS, strict=True):
            images.append((img, f"type{label}", k, view))
    if split == "subject":
        is_test = [k >= train_subjects for _, _, k, _ in images]
    else:
        share = test_subjects / subjects
        is_test = list(rng.random(len(images)) < share)
    return _write(root, images, is_test, rng=rng)


# A species' views: train always has its front; one of the others is the test set's.
SPECIES_VIEWS = ("front", "back", "shiny", "shiny back")


def _shiny_species(s: dict) -> dict:
    # A species' colour variant recolours one of its three colours, as most shinies do.
    palette = list(s["palette"])
    h, sat, v = palette[0]
    palette[0] = ((h + s["shiny"]) % 1, sat, v)
    return {**s, "palette": palette}


def write_species(
    root: Path,
    *,
    species: int = 40,
    frames: int = 8,
    test_frames: int | None = None,
    size: int = 32,
    jitter: float = 0.03,
    seed: int = 0,
) -> Path:
    """A competition whose classes are subjects: each species (label ``s000``..) drawn in
    every view of SPECIES_VIEWS, ``frames`` frames each. Train holds the front and two
    other views; the test set holds ``test_frames`` (default all) frames of the view
    train never has, the held-out view chosen at random per species."""
    rng = np.random.default_rng(seed)
    images: list[tuple[Image.Image, str, int, str]] = []
    is_test: list[bool] = []
    for k in range(species):
        s, label = _subject(k, species, rng), f"s{k:03d}"
        unseen = SPECIES_VIEWS[1 + int(rng.integers(len(SPECIES_VIEWS) - 1))]
        for view in SPECIES_VIEWS:
            test = view == unseen
            drawn = _shiny_species(s) if "shiny" in view else s
            for _ in range(frames if not test or test_frames is None else test_frames):
                img = _draw(
                    drawn, size=size, rng=rng, back="back" in view, jitter=jitter, back_shade=0.85
                )
                images.append((img, label, k, view))
                is_test.append(test)
    return _write(root, images, is_test, rng=rng)


# The artists who draw every object of write_styles, each in a manner of their own.
STYLES = ("flat", "ink", "neon", "blocky", "sketch")
NEON = [(0.85, 1.0, 1.0), (0.5, 1.0, 1.0), (0.15, 1.0, 1.0)]


def _draw_style(
    s: dict, style: str, *, size: int, rng: np.random.Generator, jitter: float
) -> Image.Image:
    """One drawing of object ``s`` by one artist: the layout of its parts is the object's;
    the colours, strokes, shapes and framing are the artist's."""
    work = size // 4 if style == "blocky" else size  # drawn coarse, shown pixelated
    bg = {"ink": (255, 255, 255), "neon": (10, 10, 30), "sketch": (235, 225, 205)}.get(
        style, BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    )
    img = Image.new("RGB", (work, work), bg)
    d = ImageDraw.Draw(img)
    # An artist frames the object in their own way: the sketcher draws it smaller, off-centre.
    zoom, shift = (0.7, rng.uniform(-0.12, 0.12, 2)) if style == "sketch" else (1.0, (0, 0))
    dx, dy = rng.normal(0, jitter, 2)
    for (cx, cy, rx, ry), c in zip(s["parts"], s["colours"], strict=True):
        cx = 0.5 + (cx + dx + rng.normal(0, jitter) - 0.5) * zoom + shift[0]
        cy = 0.5 + (cy + dy + rng.normal(0, jitter) - 0.5) * zoom + shift[1]
        rx, ry = rx * zoom, ry * zoom
        box = [(cx - rx) * work, (cy - ry) * work, (cx + rx) * work, (cy + ry) * work]
        if style == "flat":
            d.ellipse(box, fill=_rgb(s["palette"][c]))
        elif style == "ink":
            d.ellipse(box, outline=(0, 0, 0), width=max(1, size // 32))
        elif style == "neon":
            d.ellipse(box, outline=_rgb(NEON[c]), width=max(1, size // 20))
        elif style == "blocky":
            d.rectangle(box, fill=_rgb(s["palette"][c], 0.8))
        else:
            grey = int(60 + 50 * c)
            d.ellipse(box, fill=(grey, grey, grey), outline=(40, 30, 20))
    if style == "blocky":
        img = img.resize((size, size), Image.Resampling.NEAREST)
    return img


def _object(label: int, n_labels: int, rng: np.random.Generator) -> dict:
    # The type shows in the body's shape (how wide against how tall), loosely, and in the
    # hue of the object's own colours, which only some artists use.
    s = _subject(label, n_labels, rng)
    wide = 0.6 + 0.9 * (label + rng.normal(0, 0.6)) / max(1, n_labels - 1)
    cx, cy, r, _ = s["parts"][0]
    s["parts"][0] = (cx, cy, r * float(np.clip(wide, 0.5, 1.6)) ** 0.5, r / max(0.5, wide) ** 0.5)
    return s


def write_styles(
    root: Path,
    *,
    train_objects: int = 120,
    test_objects: int = 40,
    n_labels: int = 4,
    styles: int = 4,
    frames: int = 2,
    size: int = 32,
    jitter: float = 0.02,
    seed: int = 0,
) -> Path:
    """Objects drawn in several styles: each object (label ``type<k>``) drawn by ``styles``
    of the STYLES artists, ``frames`` times each. Two drawings of one object share its layout
    but hardly a pixel or a colour: twins in meaning. The test set holds unseen objects."""
    rng = np.random.default_rng(seed)
    images: list[tuple[Image.Image, str, int, str]] = []
    for k in range(train_objects + test_objects):
        label = k % n_labels
        s = _object(label, n_labels, rng)
        for style in rng.choice(STYLES, size=min(styles, len(STYLES)), replace=False):
            for _ in range(frames):
                img = _draw_style(s, str(style), size=size, rng=rng, jitter=jitter)
                images.append((img, f"type{label}", k, str(style)))
    is_test = [k >= train_objects for _, _, k, _ in images]
    return _write(root, images, is_test, rng=rng)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Write a sprite competition (for trying comp by hand).")
    p.add_argument("root", type=Path)
    p.add_argument("--train-subjects", type=int, default=150)
    p.add_argument("--test-subjects", type=int, default=60)
    p.add_argument("--labels", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument(
        "--split",
        choices=["subject", "random", "view", "style"],
        default="subject",
        help="view: write_species, one class per subject (--train-subjects species); "
        "style: write_styles, each subject drawn by several artists",
    )
    p.add_argument("--styles", type=int, default=4, help="artists per object (--split style)")
    p.add_argument("--frames", type=int, default=8, help="frames per view (--split view)")
    p.add_argument("--jitter", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.split == "view":
        write_species(
            a.root,
            species=a.train_subjects,
            frames=a.frames,
            size=a.size,
            jitter=a.jitter,
            seed=a.seed,
        )
        raise SystemExit
    if a.split == "style":
        write_styles(
            a.root,
            train_objects=a.train_subjects,
            test_objects=a.test_subjects,
            n_labels=a.labels,
            styles=a.styles,
            frames=a.frames,
            size=a.size,
            jitter=a.jitter,
            seed=a.seed,
        )
        raise SystemExit
    write_sprites(
        a.root,
        train_subjects=a.train_subjects,
        test_subjects=a.test_subjects,
        n_labels=a.labels,
        size=a.size,
        split=a.split,
        jitter=a.jitter,
        seed=a.seed,
    )
