"""Whole batches from memory, augmented in torch: the same rows a DataLoader gives, and
each preset's geometry where it can be checked exactly."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from comp.data.batches import BATCH_PRESETS, MemoryBatches, create_batch_augment
from comp.data.transforms import ImageDataset


def test_memory_batches_serve_the_rows_a_dataloader_would() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    targets = np.arange(20) % 3
    index = np.array([5, 1, 9, 3, 7, 0, 2])
    batches = [[3, 0, 6], [1, 5], [4, 2]]
    ours = list(MemoryBatches(images, targets, index=index, batches=batches))
    theirs = list(DataLoader(ImageDataset(images, targets, index=index), batch_sampler=batches))
    assert len(ours) == len(theirs) == 3
    for (x, y), (x2, y2) in zip(ours, theirs, strict=True):
        assert x.dtype == torch.uint8 and torch.equal(x, x2) and torch.equal(y, y2)


def test_crop_shifts_whole_pixels_and_flips() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 16)
    out = create_batch_augment("crop", img_size=16)(x)  # type: ignore[misc]
    assert out.shape == x.shape
    # Every output pixel is some input pixel of the same image (no interpolation).
    for i in range(8):
        values = set(x[i, 0].flatten().tolist())
        assert set(out[i, 0].flatten().tolist()) <= values
    assert not torch.equal(out, x)


def test_none_is_the_identity_and_heavy_needs_albumentations() -> None:
    x = torch.rand(4, 3, 8, 8)
    none = create_batch_augment("none", img_size=8)
    assert none is not None and torch.equal(none(x), x)
    assert create_batch_augment("heavy", img_size=8) is None
    assert set(BATCH_PRESETS) == {"none", "shift", "light", "crop", "medium"}


def test_medium_stays_in_range_and_draws_from_the_seed() -> None:
    x = torch.rand(32, 3, 16, 16)
    aug = create_batch_augment("medium", img_size=16)
    assert aug is not None
    torch.manual_seed(1)
    a = aug(x)
    torch.manual_seed(1)
    b = aug(x)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
