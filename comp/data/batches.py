"""Whole batches from images held in memory, augmented in torch on the device.

Reads the decoded uint8 array (N, H, W, 3) that the image cache memory-maps; writes
nothing. For small images a per-image pipeline (albumentations in a DataLoader)
costs more than the net: the records for small images (airbench, ResNet-9) keep
the set as one tensor and augment a batch at a time. Here a batch is gathered by
fancy indexing, moved as uint8, and flipped, shifted, rotated and scaled by one
``grid_sample`` per batch, with colour jitter and cutout where the preset asks.

The presets mean what they mean in comp.data.transforms; ``heavy`` needs
albumentations (random resized crops, grey, noise) and keeps the per-image path.
Random draws come from torch's global generator on the batch's device, which a
fold's resume state saves, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

# The presets a batch can do; each is the albumentations preset of the same name.
BATCH_PRESETS = ("none", "shift", "light", "crop", "medium")


@dataclass(frozen=True)
class BatchAugment:
    """One preset's augmentation of a float NCHW batch in [0, 1], on its own device."""

    flip: bool = False
    affine: float = 0.0  # strength: translate 6.25%, scale 10%, rotate 15 degrees per unit
    affine_p: float = 0.7
    crop: int = 0  # translate by up to this many pixels, the border reflected
    colour: float = 0.0  # brightness, contrast and saturation jitter
    colour_p: float = 0.5
    holes: int = 0  # cutout: up to this many holes
    hole: int = 0  # the side of the smallest hole; the largest is twice that
    hole_p: float = 0.3

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.flip or self.affine or self.crop:
            x = self._geometry(x)
        if self.colour:
            x = self._colour(x)
        if self.holes:
            x = self._cutout(x, n, h, w)
        return x

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        dev = x.device

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(n, device=dev) * (high - low) + low

        sx = torch.ones(n, device=dev)
        if self.flip:
            sx = torch.where(torch.rand(n, device=dev) < 0.5, -sx, sx)
        angle = torch.zeros(n, device=dev)
        scale = torch.ones(n, device=dev)
        tx = torch.zeros(n, device=dev)
        ty = torch.zeros(n, device=dev)
        if self.affine:
            s = self.affine
            on = torch.rand(n, device=dev) < self.affine_p
            angle = torch.where(on, uniform(-15 * s, 15 * s) * math.pi / 180, angle)
            scale = torch.where(on, uniform(1 - 0.1 * s, 1 + 0.1 * s), scale)
            # In grid units, where the image spans [-1, 1]: a fraction f of it is 2f.
            tx = torch.where(on, uniform(-0.125 * s, 0.125 * s), tx)
            ty = torch.where(on, uniform(-0.125 * s, 0.125 * s), ty)
        if self.crop:
            # Whole pixels, so the shifted image is an exact copy of the original's pixels.
            tx = torch.randint(-self.crop, self.crop + 1, (n,), device=dev) * 2.0 / w
            ty = torch.randint(-self.crop, self.crop + 1, (n,), device=dev) * 2.0 / h
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos * sx, -sin, tx], 1), torch.stack([sin * sx, cos, ty], 1)], 1
        )
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        mode = "nearest" if not self.affine else "bilinear"
        padding = "reflection" if self.crop else "zeros"
        return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=False)

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        dev = x.device
        on = (torch.rand(n, 1, 1, 1, device=dev) < self.colour_p).to(x.dtype)

        def factor() -> torch.Tensor:
            f = 1 + (torch.rand(n, 1, 1, 1, device=dev) * 2 - 1) * self.colour
            return 1 + (f - 1) * on

        x = x * factor()
        grey = (x * torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)).sum(
            1, keepdim=True
        )
        x = grey.mean((2, 3), keepdim=True) + (x - grey.mean((2, 3), keepdim=True)) * factor()
        grey = (x * torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)).sum(
            1, keepdim=True
        )
        x = grey + (x - grey) * factor()
        return x.clamp_(0, 1)

    def _cutout(self, x: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
        dev = x.device
        on = torch.rand(n, device=dev) < self.hole_p
        count = torch.randint(1, self.holes + 1, (n,), device=dev)
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        keep = torch.ones(n, h, w, dtype=torch.bool, device=dev)
        for j in range(self.holes):
            size_y = torch.randint(self.hole, 2 * self.hole + 1, (n, 1, 1), device=dev)
            size_x = torch.randint(self.hole, 2 * self.hole + 1, (n, 1, 1), device=dev)
            y0 = (torch.rand(n, 1, 1, device=dev) * (h - size_y + 1)).long()
            x0 = (torch.rand(n, 1, 1, device=dev) * (w - size_x + 1)).long()
            inside = (ys >= y0) & (ys < y0 + size_y) & (xs >= x0) & (xs < x0 + size_x)
            keep &= ~(inside & (on & (count > j)).view(n, 1, 1))
        return x * keep.unsqueeze(1).to(x.dtype)


def create_batch_augment(preset: str, *, img_size: int) -> BatchAugment | None:
    """The batch form of an augmentation preset, or None for one only albumentations does."""
    hole = max(1, img_size // 8)
    table = {
        "none": BatchAugment(),
        "shift": BatchAugment(affine=1.0),
        "light": BatchAugment(flip=True, affine=1.0),
        "crop": BatchAugment(flip=True, crop=max(1, img_size // 8)),
        "medium": BatchAugment(flip=True, affine=1.5, colour=0.2, holes=3, hole=hole),
    }
    return table.get(preset)


def batch_augment(*, preset: str, pipeline: str, img_size: int) -> BatchAugment | None:
    """The batch pipeline's augmentation, or None where augmentation runs per image
    (``pipeline: image``, or a preset only albumentations does)."""
    if pipeline == "image":
        return None
    return create_batch_augment(preset, img_size=img_size)


class MemoryBatches(Iterable[tuple[torch.Tensor, torch.Tensor]]):
    """The rows ``index[b]`` of ``images`` for each batch ``b`` of ``batches``, as the uint8
    NHWC tensor and targets a DataLoader of comp.data.transforms.ImageDataset would give,
    without a per-image step."""

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        *,
        index: np.ndarray,
        batches: Iterable[list[int]],
        generator: torch.Generator | None = None,
    ) -> None:
        self.images, self.targets, self.index, self.batches = images, targets, index, batches
        self.generator = generator

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.generator is not None:
            # A DataLoader draws its base seed from its generator on every pass; drawing it
            # too keeps the batch order that of the per-image path (and of cached features).
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        for batch in self.batches:
            rows = self.index[np.asarray(batch, dtype=np.int64)]
            # Sorted reads of a memory-mapped array are sequential; the order is put back.
            order = np.argsort(rows, kind="stable")
            picked = np.empty((len(rows), *self.images.shape[1:]), dtype=self.images.dtype)
            picked[order] = self.images[rows[order]]
            yield torch.from_numpy(picked), torch.as_tensor(self.targets[rows])
