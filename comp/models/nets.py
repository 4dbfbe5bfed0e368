"""Baseline nets trained from scratch, built by name beside timm's models: ``mlp`` and ``simple_cnn``.

Reads and writes nothing: comp.models builds these by name, and their weights are
saved and loaded as any other comp checkpoint. Both follow timm's model interface
(``forward_features``, ``forward_head(x, pre_logits=...)``, ``get_classifier``,
``reset_classifier``, ``num_classes``, ``num_features``, ``pretrained_cfg``), so
training, freezing, prediction, tuning and reports use them as they use timm's.

Both work at any image size: the MLP average-pools the image to 32x32 before
flattening it, and the CNN pools its last feature map to 4x4 before the FC layer.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

NAMES = ("mlp", "simple_cnn")


def _pretrained_cfg(name: str, num_classes: int, input_size: int) -> dict[str, Any]:
    return {
        "architecture": name,
        "num_classes": num_classes,
        "input_size": (3, input_size, input_size),
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "classifier": "head",
    }


class BaselineNet(nn.Module):
    """What the baseline nets share: timm's classifier interface around a Linear ``head``."""

    name = ""
    input_size = 32

    def __init__(self, num_classes: int, num_features: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = num_features
        self.head: nn.Module = nn.Identity()
        self.head_drop: nn.Module = nn.Identity()  # dropout before the classifier
        self.reset_classifier(num_classes)
        self.pretrained_cfg = _pretrained_cfg(self.name, num_classes, self.input_size)
        self.default_cfg = self.pretrained_cfg

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0: none; forward gives the features)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(x)
        return x if pre_logits else self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class MLP(BaselineNet):
    """The image, average-pooled to 32x32 and flattened, through hidden layers to the classes.

    ``forward_features`` gives the last hidden layer's activations (N, num_features).
    """

    name = "mlp"

    def __init__(
        self,
        num_classes: int,
        *,
        hidden: tuple[int, ...] = (512, 256),
        pool_size: int = 32,
        dropout: float = 0.3,
    ) -> None:
        super().__init__(num_classes, hidden[-1])
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        layers: list[nn.Module] = [nn.Flatten()]
        width = 3 * pool_size * pool_size
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.pool(x))


class SimpleCNN(BaselineNet):
    """Three Conv3x3-BN-ReLU-MaxPool blocks of 16, 32 and 64 channels, then FC-512, dropout 0.5.

    ``forward_features`` gives the last block's feature map (N, 64, H/8, W/8), which
    Grad-CAM reads; ``forward_head(x, pre_logits=True)`` the 512-d FC activations.
    """

    name = "simple_cnn"

    def __init__(
        self,
        num_classes: int,
        *,
        channels: tuple[int, ...] = (16, 32, 64),
        fc: int = 512,
        pool_size: int = 4,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(num_classes, fc)
        blocks: list[nn.Module] = []
        width = 3
        for c in channels:
            blocks += [
                nn.Conv2d(width, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            width = c
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(width * pool_size * pool_size, fc), nn.ReLU(inplace=True)
        )
        self.head_drop = nn.Dropout(dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x))


def build(name: str, num_classes: int) -> BaselineNet:
    """A baseline net by name, randomly initialised."""
    if name == "mlp":
        return MLP(num_classes)
    if name == "simple_cnn":
        return SimpleCNN(num_classes)
    raise ValueError(f"unknown baseline net '{name}'; choose from {', '.join(NAMES)}")
