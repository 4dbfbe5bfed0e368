"""Object centring: known subjects, off-centre, on plain, noisy and transparent backgrounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comp.data.cache import cached_images
from comp.data.images import read_image
from comp.data.subject import alpha_channel, centre_object

BG = (30, 120, 40)
FG = (230, 200, 60)
WHITE = (255, 255, 255)


def scene(
    *, h: int = 48, w: int = 64, box: tuple[int, int, int, int] = (6, 30, 8, 24), sigma: float = 0
) -> np.ndarray:
    """A ``box`` (y0, y1, x0, x1) subject of colour FG on a BG background, with Gaussian noise."""
    img = np.empty((h, w, 3), dtype=np.float64)
    img[...] = BG
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1] = FG
    if sigma:
        img += np.random.default_rng(0).normal(0, sigma, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def subject_box(img: np.ndarray, bg: tuple[int, ...] = BG) -> tuple[int, int, int, int]:
    """The box of pixels nearer FG than the background colour ``bg``."""
    near = np.abs(img.astype(float) - FG).sum(2) < np.abs(img.astype(float) - bg).sum(2)
    rows, cols = np.flatnonzero(near.sum(1) > 2), np.flatnonzero(near.sum(0) > 2)
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def assert_centred(
    out: np.ndarray, *, side: int, margin: float = 0.1, bg: tuple[int, ...] = BG
) -> None:
    assert out.dtype == np.uint8 and out.shape[0] == out.shape[1] and out.shape[2] == 3
    y0, y1, x0, x1 = subject_box(out, bg)
    centre = out.shape[0] / 2
    assert abs((y0 + y1) / 2 - centre) <= 1.5 and abs((x0 + x1) / 2 - centre) <= 1.5
    # The subject's longer side fills the square but for the margin on each side.
    assert max(y1 - y0, x1 - x0) == pytest.approx(side, abs=2)
    assert out.shape[0] == pytest.approx(side * (1 + 2 * margin), abs=2)


@pytest.mark.parametrize("sigma", [0, 10])
def test_subject_on_a_plain_or_noisy_background_is_centred(sigma: float) -> None:
    out = centre_object(scene(sigma=sigma), margin=0.1)
    assert_centred(out, side=24)
    # The padding takes the background's colour.
    corner = out[:2, :2].reshape(-1, 3).astype(float).mean(0)
    assert np.abs(corner - BG).max() < 3 * sigma + 2


def test_subject_at_the_edge_is_padded_with_the_background() -> None:
    out = centre_object(scene(box=(0, 40, 50, 64)), margin=0.25)
    assert_centred(out, side=40, margin=0.25)
    assert (out[:, 0] == BG).all()  # beyond the image's left edge: background


def test_specks_of_noise_are_not_the_subject() -> None:
    img = scene()
    img[45, 2] = img[1, 60] = FG  # isolated pixels far from the subject
    assert_centred(centre_object(img), side=24)


def test_transparent_background_uses_the_alpha_channel() -> None:
    rgba = np.zeros((40, 56, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[20:36, 4:14] = (*FG, 255)  # a 16x10 subject, lower left
    alpha = rgba[..., 3]
    out = centre_object(np.ascontiguousarray(rgba[..., :3]), alpha=alpha, margin=0.1)
    assert_centred(out, side=16, bg=WHITE)
    assert (out[0, 0] == 255).all()


def test_blank_images_are_returned_unchanged() -> None:
    blank = np.full((20, 30, 3), 77, dtype=np.uint8)
    assert centre_object(blank) is blank
    noise = scene(box=(0, 0, 0, 0), sigma=10)
    assert centre_object(noise) is noise
    assert centre_object(blank, alpha=np.zeros((20, 30), np.uint8)) is blank
    with pytest.raises(ValueError, match="HxWx3"):
        centre_object(blank[..., 0])


def test_read_image_centres_before_resizing(tmp_path: Path) -> None:
    Image.fromarray(scene(sigma=10)).save(tmp_path / "a.png")
    rgba = np.zeros((40, 56, 4), dtype=np.uint8)
    rgba[20:36, 4:20] = (*FG, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b.png")
    assert alpha_channel(Image.open(tmp_path / "b.png")) is not None
    assert alpha_channel(Image.open(tmp_path / "a.png")) is None
    a = read_image(tmp_path / "a.png", 24, centre=True)
    assert a.shape == (24, 24, 3)
    assert_centred(a, side=20, margin=0.1)  # 24 px subject of a 28.8 px crop, at 24 px
    b = read_image(tmp_path / "b.png", 36, centre=True)
    # Transparent pixels were black: the alpha channel, not the colour, found the subject.
    assert_centred(b, side=30, margin=0.1, bg=WHITE)
    assert (b[0, 0] == 255).all()
    both = cached_images([tmp_path / "a.png", tmp_path / "b.png"], 24, cache_dir=None, centre=True)
    assert np.array_equal(both[0], a)
    plain = read_image(tmp_path / "a.png", 24)
    assert not np.array_equal(plain, a)
