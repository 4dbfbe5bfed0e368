"""Augmentation presets, test-time views, and the Dataset over decoded images.

Reads decoded uint8 RGB arrays (from comp.data). Writes nothing itself; the
train transform is serialised by the caller with ``albumentations.to_dict`` so a
run records exactly which augmentation it used. Normalisation happens on the
batch, on the device, because uint8 batches are 4x cheaper to move than floats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from comp.config import AUG_PRESETS, suggest
from comp.errors import ConfigError

PRESETS = AUG_PRESETS


def _affine(strength: float) -> A.BasicTransform:
    return A.Affine(
        translate_percent=(-0.0625 * strength, 0.0625 * strength),
        scale=(1 - 0.1 * strength, 1 + 0.1 * strength),
        rotate=(-15 * strength, 15 * strength),
        border_mode=0,
        p=0.7,
    )


def create_transform(preset: str, *, img_size: int) -> A.Compose:
    """The training augmentation for a preset name.

    ``shift`` has no flips, for data whose orientation carries meaning (digits, text).
    """
    if preset not in PRESETS:
        raise ConfigError(
            f"unknown augmentation preset '{preset}'{suggest(preset, list(PRESETS))}; choose from {', '.join(PRESETS)}"
        )
    hole = max(1, img_size // 8)
    pad = max(1, img_size // 8)
    ops: dict[str, list[A.BasicTransform]] = {
        "none": [],
        "shift": [_affine(1.0)],
        "light": [A.HorizontalFlip(p=0.5), _affine(1.0)],
        # The small-image records' augmentation: flip, and a shift of up to 1/8 of the side.
        "crop": [
            A.HorizontalFlip(p=0.5),
            A.PadIfNeeded(
                min_height=img_size + 2 * pad, min_width=img_size + 2 * pad, border_mode=4
            ),
            A.RandomCrop(height=img_size, width=img_size),
        ],
        "medium": [
            A.HorizontalFlip(p=0.5),
            _affine(1.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.5),
            A.CoarseDropout(
                num_holes_range=(1, 3),
                hole_height_range=(hole, 2 * hole),
                hole_width_range=(hole, 2 * hole),
                p=0.3,
            ),
        ],
        "heavy": [
            A.HorizontalFlip(p=0.5),
            A.RandomResizedCrop(size=(img_size, img_size), scale=(0.6, 1.0), p=0.5),
            _affine(2.0),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1, p=0.7),
            A.ToGray(p=0.1),
            A.GaussNoise(p=0.2),
            A.CoarseDropout(
                num_holes_range=(1, 6),
                hole_height_range=(hole, 2 * hole),
                hole_width_range=(hole, 2 * hole),
                p=0.5,
            ),
        ],
    }
    return A.Compose(ops[preset])


# Short names for the deterministic views people use for TTA; any albumentations
# transform name (e.g. "Transpose") is accepted too, applied with p=1.
TTA_VIEWS: dict[str, Any] = {
    "hflip": lambda: A.HorizontalFlip(p=1.0),
    "vflip": lambda: A.VerticalFlip(p=1.0),
    "transpose": lambda: A.Transpose(p=1.0),
}
# ``shift``: the small-image records' translation views, the image moved by 1/32 of its
# side (1 px at 32 px, 2 at 64) left, right, up and down, the border reflected.
SHIFT = 1 / 32
SHIFTS = ((SHIFT, 0.0), (-SHIFT, 0.0), (0.0, SHIFT), (0.0, -SHIFT))


def _shift(dx: float, dy: float) -> A.BasicTransform:
    view = A.Affine(translate_percent={"x": dx, "y": dy}, border_mode=4, p=1.0)
    view._comp_shift = True  # named apart in tta_names
    return view


def tta_views(spec: str) -> list[A.Compose | None]:
    """The views to average at predict time; ``None`` is the image as it is, always first."""
    names = [s.strip() for s in spec.split(",") if s.strip() and s.strip() != "none"]
    views: list[A.Compose | None] = [None]
    for name in names:
        if name == "shift":
            views.extend(A.Compose([_shift(dx, dy)]) for dx, dy in SHIFTS)
        elif name in TTA_VIEWS:
            views.append(A.Compose([TTA_VIEWS[name]()]))
        elif isinstance(getattr(A, name, None), type):
            try:
                views.append(A.Compose([getattr(A, name)(p=1.0)]))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"TTA view '{name}' cannot run without arguments ({e})") from None
        else:
            raise ConfigError(
                f"unknown TTA view '{name}'{suggest(name, [*TTA_VIEWS, 'shift'])}; use none, "
                f"{', '.join(TTA_VIEWS)}, shift or an albumentations transform name"
            )
    return views


def tta_names(spec: str) -> list[str]:
    """The name of each of ``tta_views(spec)``, in order: none first."""
    shifts = iter(f"shift{dx * 32:+.0f},{dy * 32:+.0f}" for dx, dy in SHIFTS * len(spec))
    return [
        "none"
        if v is None
        else next(shifts)
        if getattr(v.transforms[0], "_comp_shift", False)
        else type(v.transforms[0]).__name__
        for v in tta_views(spec)
    ]


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Decoded images (N, H, W, 3) uint8 with optional targets and augmentation.

    ``index`` selects the rows to serve, so a fold reads the shared (memory-mapped)
    array in place instead of copying its part of it.
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray | None = None,
        transform: A.Compose | None = None,
        *,
        index: np.ndarray | None = None,
    ):
        self.images = images
        self.targets = targets
        self.transform = transform
        self.index = np.arange(len(images)) if index is None else np.asarray(index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = int(self.index[i])
        img = np.asarray(self.images[row])
        if self.transform is not None:
            img = self.transform(image=img)["image"]
        target = int(self.targets[row]) if self.targets is not None else -1
        # A copy: rows of the memory-mapped cache are read-only.
        return torch.from_numpy(np.array(img, copy=True)), target


def to_input(
    batch: torch.Tensor,
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    channels_last: bool = False,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """uint8 NHWC batch -> normalised float NCHW on ``device``; ``augment`` (comp.data.
    batches) sees the batch in [0, 1] first."""
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    if augment is not None:
        x = augment(x)
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
