"""Nets trained from scratch, built by name beside timm's models: the baselines ``mlp`` and
``simple_cnn``, the ``airnet`` family made for small images, and ``classical``, fixed
image features (colour, shape, texture) for a scikit-learn head.

Reads and writes nothing: comp.models builds these by name, and their weights are
saved and loaded as any other comp checkpoint. Both follow timm's model interface
(``forward_features``, ``forward_head(x, pre_logits=...)``, ``get_classifier``,
``reset_classifier``, ``num_classes``, ``num_features``, ``pretrained_cfg``), so
training, freezing, prediction, tuning and reports use them as they use timm's.

All work at any image size: the MLP average-pools the image to 32x32 before
flattening it, the CNN pools its last feature map to 4x4 before the FC layer, and
the airnets max-pool theirs to 1x1.

The airnets follow the records for small images from scratch (KellerJordan's
airbench, Myrtle's ResNet-9): a first 2x2 conv fixed to the whitening of the
training images' 2x2 patches, then three wide conv-pool-BN groups with identity
(dirac) initialisation. Their stem keeps the resolution of a 32 px image, where a
timm ResNet's stem quarters it; above 48 px it steps 2 pixels (a 64 px sprite
becomes a 32x32 map of whitened patches, no pixel thrown away).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

# Widths of the airnets' three groups: small to large. airnet_l is airbench94's.
AIRNETS: dict[str, tuple[int, int, int]] = {
    "airnet_xs": (16, 32, 64),
    "airnet_s": (32, 64, 128),
    "airnet_m": (64, 128, 256),
    "airnet_l": (64, 256, 256),
}
NAMES = ("mlp", "simple_cnn", *AIRNETS, "classical")
# Nets that differ only in width, smallest first: a search (comp tune) may move along one.
FAMILIES: dict[str, tuple[str, ...]] = dict.fromkeys(AIRNETS, tuple(AIRNETS))


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


class ConvGroup(nn.Sequential):
    """Conv3x3, max-pool 2, BN, GELU, conv3x3, BN, GELU: one halving of the map (airbench)."""

    def __init__(self, width_in: int, width_out: int) -> None:
        super().__init__(
            nn.Conv2d(width_in, width_out, 3, padding=1, bias=False),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.BatchNorm2d(width_out),
            nn.GELU(),
            nn.Conv2d(width_out, width_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(width_out),
            nn.GELU(),
        )
        for m in self:
            if isinstance(m, nn.Conv2d):
                # Identity on the first channels: a deep net starts as a shallow one.
                w = m.weight.data
                nn.init.dirac_(w[: min(w.shape[0], w.shape[1])])


class AirNet(BaselineNet):
    """A whitening 2x2 conv, then three ConvGroups, a global max-pool and a linear head.

    The whitening filters are a buffer, not a parameter: fixed once by
    ``init_whitening`` from training images, they never train (their bias does).
    ``forward_features`` gives the last group's map (N, C, H/8, W/8), which Grad-CAM
    reads; ``forward_head(x, pre_logits=True)`` the pooled C features.
    """

    PATCH = 2
    STRIDE_FROM = 48
    whiten_weight: torch.Tensor  # images above this side are whitened in steps of 2 pixels

    def __init__(self, num_classes: int, *, name: str, widths: tuple[int, int, int]) -> None:
        self.name = name
        super().__init__(num_classes, widths[-1])
        patch = 3 * self.PATCH * self.PATCH
        self.register_buffer("whiten_weight", torch.zeros(2 * patch, 3, self.PATCH, self.PATCH))
        self.whiten_bias = nn.Parameter(torch.zeros(2 * patch))
        layers: list[nn.Module] = []
        width = 2 * patch
        for w in widths:
            layers.append(ConvGroup(width, w))
            width = w
        self.groups = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        # Until init_whitening sees data: patches pass through unwhitened, +/- each pixel.
        eye = torch.eye(patch).view(patch, 3, self.PATCH, self.PATCH)
        self.whiten_weight.copy_(torch.cat([eye, -eye]))

    @torch.no_grad()
    def init_whitening(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the first conv to the whitening (ZCA eigenbasis) of ``x``'s 2x2 patches.

        ``x`` is a normalised NCHW batch of training images; each eigenvector is kept
        with its negative, so a GELU after it loses no sign."""
        k = self.PATCH
        stride = self._stride(x)
        patches = x.float().unfold(2, k, stride).unfold(3, k, stride)  # N C h w k k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / max(len(patches) - 1, 1)
        values, vectors = torch.linalg.eigh(cov.double())
        filters = (vectors.T / torch.sqrt(values.clamp_min(0) + eps)[:, None]).float()
        filters = filters.flip(0).view(-1, 3, k, k)  # largest variance first
        self.whiten_weight.copy_(torch.cat([filters, -filters]).to(self.whiten_weight))

    def _stride(self, x: torch.Tensor) -> int:
        return 2 if min(x.shape[-2:]) > self.STRIDE_FROM else 1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        w = self.whiten_weight.to(x.dtype)
        x = nn.functional.conv2d(x, w, self.whiten_bias.to(x.dtype), stride=self._stride(x))
        return self.groups(nn.functional.gelu(x))

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x).flatten(1)


class ClassicalFeatures(BaselineNet):
    """Hand-made image features, nothing learned but the linear head: a colour histogram of
    the subject, its colour statistics, its silhouette and a histogram of gradient
    orientations (HOG-like) over a grid.

    The subject is every pixel unlike the border's median colour (a sprite or product shot
    on a plain ground); an image with no plain ground (a photo) counts every pixel. Under
    a scikit-learn head (``comp train --model classical --head extratrees``) this is the
    colour-histogram baseline as a run with OOF and test predictions, which ``comp blend``
    weighs against a net. ``forward_features`` gives the feature vector (N, num_features);
    with no map, reports skip Grad-CAM.
    """

    name = "classical"
    sobel: torch.Tensor
    BINS = 8  # per RGB channel: 512 colours
    BACKGROUND = 0.1  # a pixel this far (max over channels, in [0, 1]) from the border's colour
    MIN_AREA = 0.01  # less subject than this: no plain ground was found, count every pixel
    SILHOUETTE = 8  # the subject mask at 8x8
    ORIENTATIONS = 9
    CELLS = 4  # gradient histograms over 4x4 cells

    def __init__(self, num_classes: int) -> None:
        features = self.BINS**3 + 10 + self.SILHOUETTE**2 + self.ORIENTATIONS * self.CELLS**2
        super().__init__(num_classes, features)
        # The features read plain RGB in [0, 1]: no normalisation before them.
        self.pretrained_cfg.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.register_buffer("sobel", torch.stack([sobel, sobel.T])[:, None])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # Bins and thresholds need full precision: a bf16 colour lands in the wrong bin.
        with torch.autocast(x.device.type, enabled=False):
            return self._features(x.float().clamp(0, 1))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        frame = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=2)
        ground = frame.median(dim=2).values  # N, 3
        mask = ((x - ground[..., None, None]).abs().amax(1) > self.BACKGROUND).float()
        area = mask.mean((1, 2))
        weight = torch.where((area >= self.MIN_AREA)[:, None, None], mask, torch.ones_like(mask))
        total = weight.sum((1, 2)).clamp_min(1.0)

        q = (x * self.BINS).long().clamp_(max=self.BINS - 1)
        colour = (q[:, 0] * self.BINS + q[:, 1]) * self.BINS + q[:, 2]
        hist = torch.zeros(n, self.BINS**3, device=x.device)
        hist.scatter_add_(1, colour.flatten(1), weight.flatten(1))
        hist = hist / total[:, None]

        mean = (x * weight[:, None]).sum((2, 3)) / total[:, None]
        var = ((x - mean[..., None, None]) ** 2 * weight[:, None]).sum((2, 3)) / total[:, None]
        stats = torch.cat([mean, var.sqrt(), ground, area[:, None]], dim=1)

        silhouette = nn.functional.adaptive_avg_pool2d(mask[:, None], self.SILHOUETTE).flatten(1)

        grey = (x * x.new_tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1, keepdim=True)
        g = nn.functional.conv2d(
            nn.functional.pad(grey, (1, 1, 1, 1), mode="replicate"), self.sobel
        )
        magnitude = g.norm(dim=1)
        angle = torch.atan2(g[:, 1], g[:, 0]).remainder(torch.pi)  # unsigned orientation
        bins = (angle / torch.pi * self.ORIENTATIONS).long().clamp_(max=self.ORIENTATIONS - 1)
        hog = torch.zeros(n, self.ORIENTATIONS, *grey.shape[-2:], device=x.device)
        hog.scatter_(1, bins[:, None], magnitude[:, None])
        hog = nn.functional.adaptive_avg_pool2d(hog, self.CELLS).flatten(1)
        hog = hog / hog.norm(dim=1, keepdim=True).clamp_min(1e-6)
        return torch.cat([hist, stats, silhouette, hog], dim=1)


def build(name: str, num_classes: int) -> BaselineNet:
    """A net of this module by name, randomly initialised."""
    if name == "mlp":
        return MLP(num_classes)
    if name == "simple_cnn":
        return SimpleCNN(num_classes)
    if name in AIRNETS:
        return AirNet(num_classes, name=name, widths=AIRNETS[name])
    if name == "classical":
        return ClassicalFeatures(num_classes)
    raise ValueError(f"unknown net '{name}'; choose from {', '.join(NAMES)}")
