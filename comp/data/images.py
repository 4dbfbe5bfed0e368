"""One image file to one array: any mode to 8-bit RGB, optionally cropped to its subject.

Reads image files (png/jpg/jpeg/webp/bmp, any size, RGB, RGBA, L, LA, P, CMYK or
16-bit modes; EXIF rotation applied, transparency composited on white). Writes
nothing; many images at once go through ``comp.data.cache.cached_images``.
``image_stats`` reads only the headers of a sample of files (sizes and modes).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from comp.data.subject import alpha_channel, centre_object
from comp.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Where an image has transparency, it is composited on white: the usual background of
# sprite and product images, and what a human sees when the file is opened.
BACKGROUND = (255, 255, 255)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: EXIF rotation applied, transparency on BACKGROUND, 16-bit scaled."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def read_image(path: Path, size: int | None = None, *, centre: bool = False) -> np.ndarray:
    """Decode one image to an RGB uint8 array, resized to size x size when given.

    With ``centre``, the subject is first cropped and centred on a square
    (comp.data.subject.centre_object; by the alpha channel where the image has transparency).
    """
    try:
        with Image.open(path) as img:
            if size is not None:
                # JPEG can decode straight at a reduced scale, much faster than full size;
                # a centred crop keeps a part of the image, so it needs more pixels.
                img.draft("RGB", (4 * size, 4 * size) if centre else (size, size))
            rgb = to_rgb(img)
            if centre:
                rgb = Image.fromarray(
                    centre_object(np.asarray(rgb, dtype=np.uint8), alpha=alpha_channel(img))
                )
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None


def image_stats(paths: list[Path], *, sample: int = 500, seed: int = 0) -> dict[str, Any]:
    """Sizes and modes from the headers of up to ``sample`` images (no pixel decoding)."""
    chosen = paths if len(paths) <= sample else random.Random(seed).sample(paths, sample)
    sizes: list[tuple[int, int]] = []
    modes: Counter[str] = Counter()
    unreadable: list[Path] = []
    for p in chosen:
        try:
            with Image.open(p) as img:
                sizes.append(img.size)
                modes[img.mode] += 1
        except OSError:
            unreadable.append(p)
    arr = np.array(sizes) if sizes else np.zeros((0, 2))
    return {"sampled": len(chosen), "sizes": arr, "modes": modes, "unreadable": unreadable}
