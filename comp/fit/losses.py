"""Training losses: cross-entropy, focal, the soft-target loss that mixup and cutmix need, and
distillation's (soft targets from a teacher, Hinton et al.).

Reads the config's loss keys and the fold's training labels (for class weights);
writes nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import softmax
from sklearn.utils.class_weight import compute_class_weight
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from comp.config import Config


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true) ** gamma.

    timm and torchvision only ship the sigmoid (multi-label) form.
    """

    def __init__(self, *, gamma: float, weight: torch.Tensor | None, label_smoothing: float):
        super().__init__()
        self.gamma = gamma
        self.ce = nn.CrossEntropyLoss(
            weight=weight, label_smoothing=label_smoothing, reduction="none"
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p_true = logits.float().softmax(1).gather(1, target[:, None]).squeeze(1)
        return ((1 - p_true) ** self.gamma * self.ce(logits.float(), target)).mean()


def make_loss(cfg: Config, train_targets: np.ndarray, *, n_classes: int) -> nn.Module:
    """Cross-entropy or focal loss, optionally class-weighted and label-smoothed."""
    weight = None
    if cfg.class_weights == "balanced":
        present = np.unique(train_targets)
        balanced = compute_class_weight("balanced", classes=present, y=train_targets)
        full = np.ones(n_classes)
        full[present] = balanced
        weight = torch.as_tensor(full, dtype=torch.float32)
    if cfg.loss == "focal":
        return FocalLoss(gamma=cfg.focal_gamma, weight=weight, label_smoothing=cfg.label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


class Mixing:
    """Mixup and/or cutmix of a training batch, with the soft-target loss they need (timm's both).

    Label smoothing moves into the soft targets. timm's Mixup mixes a batch with its
    own reverse and needs an even batch, so an odd image out keeps its own target.
    """

    def __init__(self, cfg: Config, *, n_classes: int):
        self.mixup = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            label_smoothing=cfg.label_smoothing,
            num_classes=n_classes,
        )
        self._rows = Mixup(
            mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=0.0, num_classes=2
        )
        self.loss = SoftTargetCrossEntropy()
        self.n_classes, self.smoothing = n_classes, cfg.label_smoothing

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed images and their soft targets. ``y`` is hard labels (N,), or soft targets
        (N, ...) that are mixed as the images are."""
        even = len(x) - len(x) % 2
        if y.ndim == 2:
            return self._mix_soft(x, y, even)
        if even == 0:
            return x, self._soft(y)
        # In place: the views of x are mixed where they lie.
        x_mixed, y_mixed = self.mixup(x[:even], y[:even])
        if even == len(x):
            return x_mixed, y_mixed
        return torch.cat([x_mixed, x[even:]]), torch.cat([y_mixed, self._soft(y[even:])])

    def _mix_soft(
        self, x: torch.Tensor, soft: torch.Tensor, even: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if even == 0:
            return x, soft
        # Each image is its own "class": timm's target for that labelling is the matrix that
        # says how much of which image went into each mixed one, whatever the mode.
        self._rows.num_classes = even
        rows = torch.arange(even, device=x.device)
        x_mixed, share = self._rows(x[:even], rows)
        mixed = share.to(soft.dtype) @ soft[:even]
        return torch.cat([x_mixed, x[even:]]), torch.cat([mixed, soft[even:]])

    def _soft(self, y: torch.Tensor) -> torch.Tensor:
        # Unmixed (lam 1): the label-smoothed one-hot targets that self.mixup gives mixed ones.
        return mixup_target(y, self.n_classes, lam=1.0, smoothing=self.smoothing)


def mixing_enabled(cfg: Config) -> bool:
    return cfg.mixup > 0 or cfg.cutmix > 0


class TeacherLoss(nn.Module):
    """Cross-entropy against two soft targets packed side by side (N, 2C): the first half at
    temperature 1 (true labels, pseudo-labels), the second the teacher's share, compared at
    ``temperature`` and scaled by its square (Hinton et al. 2015), as timm's
    SoftTargetCrossEntropy computes each. Both halves carry their weights already."""

    def __init__(self, *, temperature: float):
        super().__init__()
        self.temperature = temperature
        self.ce = SoftTargetCrossEntropy()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels, teacher = target.float().chunk(2, dim=1)
        logits = logits.float()
        t = self.temperature
        if t == 1.0:
            return self.ce(logits, labels + teacher)
        return self.ce(logits, labels) + t * t * self.ce(logits / t, teacher)


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """A teacher's probabilities at another temperature: softmax(log p / T)."""
    if temperature == 1.0:
        return probs
    return np.asarray(softmax(np.log(np.clip(probs, 1e-12, 1.0)) / temperature, axis=1))
