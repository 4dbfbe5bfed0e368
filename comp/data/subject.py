"""Object centring: crop an image to its subject, with a margin, centred on a square canvas.

Reads one decoded image (an HxWx3 array, uint8 RGB as comp.data decodes it) and,
where the file had transparency, its alpha channel (``alpha_channel`` of the PIL image). Writes nothing; returns the
square crop at its own size (resizing to ``img_size`` happens afterwards).

The subject is what differs from the background. The background colour is the
median of the image's border pixels, and a pixel belongs to the subject when
its colour distance from that median is well above what most border pixels
themselves show (so a noisy background does not count as subject). With an
alpha channel, the opaque pixels are the subject. Specks (connected groups of a
few pixels) are ignored. An image with no subject is returned unchanged.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


def alpha_channel(img: Image.Image) -> np.ndarray | None:
    """The alpha channel of a PIL image (HxW uint8, EXIF rotation applied, as comp.data.to_rgb
    applies it), or None when the image has no transparency."""
    if img.mode not in ALPHA_MODES and not (img.mode == "P" and "transparency" in img.info):
        return None
    alpha = np.asarray(ImageOps.exif_transpose(img).convert("RGBA").getchannel("A"))
    return alpha if alpha.min() < 255 else None


def _edge(height: int, width: int, border: int) -> np.ndarray:
    """The outer ``border`` pixels of a height x width image, as a boolean mask."""
    b = max(1, min(border, height // 2, width // 2))
    edge = np.zeros((height, width), dtype=bool)
    edge[:b], edge[-b:], edge[:, :b], edge[:, -b:] = True, True, True, True
    return edge


def background_colour(img: np.ndarray, *, border: int = 2) -> np.ndarray:
    """The median colour of the outer ``border`` pixels: float (3,) for an HxWx3 image,
    (..., 3) for a stack of them (..., H, W, 3)."""
    ring = img[..., _edge(img.shape[-3], img.shape[-2], border), :].astype(np.float64)
    return np.asarray(np.median(ring, axis=-2))


def subject_mask(
    img: np.ndarray,
    *,
    border: int = 2,
    percentile: float = 50.0,
    factor: float = 3.0,
    floor: float = 24.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels that differ from the border's median colour, and that colour.

    The threshold on the colour distance is ``factor`` times the ``percentile`` of the
    border pixels' own distances, and at least ``floor`` (in 0..255 units). The median of
    those distances measures the background's noise even where the subject touches the
    border; three times it lies beyond nearly all of a Gaussian noise's distances.
    ``img`` may be a stack of images (..., H, W, 3); each gets its own colour and threshold.
    """
    bg = background_colour(img, border=border)
    diff = img.astype(np.float32) - bg.astype(np.float32)[..., None, None, :]
    dist = np.sqrt((diff**2).sum(axis=-1))
    edge = _edge(img.shape[-3], img.shape[-2], border)
    threshold = np.maximum(floor, factor * np.percentile(dist[..., edge], percentile, axis=-1))
    return dist > threshold[..., None, None], bg


def drop_specks(mask: np.ndarray, *, min_pixels: int = 3, min_fraction: float = 0.05) -> np.ndarray:
    """The mask without connected groups smaller than ``min_pixels`` or than ``min_fraction``
    of the largest group (isolated noise); parts of a subject that are apart are kept.
    ``mask`` may be a stack of masks (..., H, W), each cleaned on its own."""
    stack = mask.reshape(-1, *mask.shape[-2:])
    # Neighbours within one image only: a 3x3 block in the middle of the stack axis.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    labels, n = ndimage.label(stack, structure=structure)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    owner = np.zeros(n + 1, dtype=np.int64)
    owner[labels.ravel()] = np.repeat(np.arange(len(stack)), stack[0].size)
    largest = np.zeros(len(stack))
    np.maximum.at(largest, owner[1:], sizes)
    keep = sizes >= np.maximum(min_pixels, min_fraction * largest[owner[1:]])
    return np.asarray(keep[labels - 1] & (labels > 0)).reshape(mask.shape)


def opaque_subject(alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of more than 10 % opacity of an alpha channel (..., H, W), and whether it
    marks a subject at all: one opaque everywhere gives no transparency to go by."""
    opaque = np.asarray(alpha, dtype=np.float32) > 0.1 * 255
    return opaque, np.asarray(~opaque.all(axis=(-2, -1)))


def centre_object(
    img: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    margin: float = 0.1,
    border: int = 2,
    percentile: float = 50.0,
    factor: float = 3.0,
    floor: float = 24.0,
    min_pixels: int = 3,
) -> np.ndarray:
    """The subject of ``img`` (HxWx3), centred on a square canvas of the background colour.

    ``alpha`` (HxW, 0..255), where given, marks the subject by its opaque pixels (more
    than 10 % opacity); otherwise the subject is what stands out from the border's median
    colour (see subject_mask). The square's side is the subject's longer side plus
    ``margin`` of it on each side; the parts of the square outside the image are filled
    with the background colour. Same dtype as ``img``. An image without a subject (blank,
    or fully transparent) is returned unchanged.
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
    if margin < 0:
        raise ValueError(f"margin must be at least 0, got {margin}")
    mask = None
    bg = None
    if alpha is not None:
        if alpha.shape != img.shape[:2]:
            raise ValueError(f"alpha of shape {alpha.shape} does not fit image {img.shape}")
        opaque, marks = opaque_subject(alpha)
        if marks:
            mask = opaque
            bg = np.median(img[~opaque].reshape(-1, 3).astype(np.float64), axis=0)
    if mask is None:
        mask, bg = subject_mask(
            img, border=border, percentile=percentile, factor=factor, floor=floor
        )
    assert bg is not None
    mask = drop_specks(mask, min_pixels=min_pixels)
    if not mask.any():
        return img
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    side = max(1, math.ceil(max(y1 - y0, x1 - x0) * (1 + 2 * margin)))
    # The square's top-left corner, so the subject's box sits in its middle.
    top = round((y0 + y1 - side) / 2)
    left = round((x0 + x1 - side) / 2)
    fill = bg
    if img.dtype.kind in "ui":
        info = np.iinfo(img.dtype)
        fill = np.clip(np.round(bg), info.min, info.max)
    out = np.empty((side, side, 3), dtype=img.dtype)
    out[...] = fill.astype(img.dtype)
    sy0, sy1 = max(top, 0), min(top + side, img.shape[0])
    sx0, sx1 = max(left, 0), min(left + side, img.shape[1])
    out[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = img[sy0:sy1, sx0:sx1]
    return out
