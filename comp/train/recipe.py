"""The training recipe: what every key left at ``auto`` becomes, from where the model starts.

Reads the config, where the weights come from (pretrained or random init), the
device and the training images' sizes; writes nothing (the resolved config is
saved beside the run by comp.train).

- **scratch** (random init: ``pretrained: false``, or ``auto`` that found no
  weights): no frozen stage (a head on a random backbone learns nothing), one
  warmup epoch then cosine decay from a learning rate that suits random init,
  label smoothing, and an image size a CPU can train in minutes. ``model: auto``
  becomes a net made for small images (comp.models.nets' airnets), as wide as the
  device affords; a timm ResNet's stem would quarter a 64 px image at once.
- **finetune** (pretrained weights): a frozen stage (from cached features), then
  every layer at a lower rate, lower layers lower still (timm's ``layer_decay``).

Keys the user set (in comp.yaml, by a flag or ``--set``) always win. The recipe is
resolved once, before any fold, so every fold and kernel trains alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from comp.config import AUTO_KEYS, PRETRAINED_MODEL, Config, RecipeName, is_auto, validate

# Each recipe's values for the keys left at auto (img_size and mixup_off_epoch are
# worked out from the data and the epochs). Measured in benchmarks/README.md, "Recipes".
SCRATCH: dict[str, Any] = {
    "epochs": 12,
    "freeze_epochs": 0,
    "lr2": 2e-3,
    "warmup_epochs": 1,
    "label_smoothing": 0.1,
    "layer_decay": 0.0,
}
FINETUNE: dict[str, Any] = {
    "epochs": 5,
    # One frozen epoch: a logistic regression on the cached features (comp.fit.heads).
    "freeze_epochs": 1,
    # Above this, and with label smoothing, stage 2's first epoch fell below stage 1's.
    "lr2": 5e-5,
    "warmup_epochs": 0,
    "label_smoothing": 0.0,
    "layer_decay": 0.75,
}
# BatchNorm in stage 2: random init has no statistics worth keeping; pretrained ones are
# what stage 1's head was fitted under.
BN = {"scratch": "train", "finetune": "frozen"}
# The largest image side a recipe picks by itself: from scratch on a CPU every pixel
# costs, and a model with no prior must see many epochs.
MAX_SIZE = {("scratch", "cpu"): 64, ("finetune", "cpu"): 128}
# ImageNet features want objects near ImageNet's scale: small images are upscaled to
# this side to fine-tune (64 px sprites, frozen features: 0.85 at 64, 0.92 at 96, 0.92
# at 128 px on a CPU, at 2.2x and 4x the cost of 64).
MIN_FINETUNE_SIZE = {"cpu": 96, "cuda": 128}
MIX_FRACTION = 0.8
# From scratch a network needs a number of updates, not of epochs: a small set takes
# more epochs to get them, a large one fewer (each epoch costs more, too).
SCRATCH_STEPS = 500
SCRATCH_EPOCHS = (8, 40)
# The scratch recipe's net by device (benchmarks/README.md, "Small images from scratch").
SCRATCH_NETS = {"cpu": "airnet_s", "cuda": "airnet_l"}
# Above this side from scratch on a GPU, a timm ResNet's quartering stem costs nothing.
SCRATCH_NET_MAX_SIZE = 96


@dataclass(frozen=True)
class Recipe:
    name: str  # scratch or finetune
    why: str
    filled: dict[str, Any]  # keys that were auto, as the recipe set them
    kept: dict[str, Any]  # keys the user set, which the recipe left alone

    def describe(self) -> str:
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in self.filled.items())
        line = f"recipe: {self.name} ({self.why}): {shown}"
        if self.kept:
            line += "; yours: " + ", ".join(f"{k} {_fmt(v)}" for k, v in self.kept.items())
        return line


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def recipe_name(cfg: Config, *, weights: str) -> tuple[RecipeName, str]:
    """``scratch`` or ``finetune``, and why, from ``weights`` ("random" or where they came from)."""
    if cfg.recipe != "auto":
        return cfg.recipe, "recipe set in the config"
    if weights == "random":
        model = PRETRAINED_MODEL if cfg.model == "auto" else cfg.model
        why = (
            "pretrained: false"
            if cfg.pretrained == "false"
            else f"no pretrained weights for {model}"
        )
        return "scratch", why
    return "finetune", f"pretrained weights: {weights.split(':')[0]}"


def scratch_net(img_size: int, *, device: str) -> str:
    """The net the scratch recipe trains: an airnet for small images (the widest the device
    trains in minutes), a timm ResNet for large images on a GPU."""
    if device != "cpu" and img_size > SCRATCH_NET_MAX_SIZE:
        return PRETRAINED_MODEL
    return SCRATCH_NETS.get(device, SCRATCH_NETS["cpu"])


def suggest_img_size(sizes: np.ndarray) -> int:
    """The median short side, rounded to a multiple of 32 in [32, 224]."""
    if not len(sizes):
        return 64
    short = float(np.median(sizes.min(axis=1)))
    return int(min(224, max(32, round(short / 32) * 32)))


def resolve(
    cfg: Config,
    *,
    weights: str,
    device: str,
    sizes: np.ndarray | None = None,
    n_train: int | None = None,
) -> tuple[Config, Recipe]:
    """``cfg`` with every auto key filled by the recipe, and the recipe as it was resolved.

    ``device`` is the device type ("cpu", "cuda"); ``sizes`` the (width, height) of a
    sample of training images, for ``img_size``; ``n_train`` the images a fold trains
    on, for the epochs of the scratch recipe.
    """
    name, why = recipe_name(cfg, weights=weights)
    table = SCRATCH if name == "scratch" else FINETUNE
    values: dict[str, Any] = {}
    for key, value in table.items():
        if is_auto(getattr(cfg, key)):
            values[key] = value
    if is_auto(cfg.img_size):
        size = suggest_img_size(sizes if sizes is not None else np.zeros((0, 2)))
        if name == "finetune":
            size = max(size, MIN_FINETUNE_SIZE.get(device, MIN_FINETUNE_SIZE["cuda"]))
        values["img_size"] = min(size, MAX_SIZE.get((name, device), size))
    if cfg.model == "auto":
        size = values.get("img_size", cfg.img_size)
        values["model"] = (
            scratch_net(size, device=device) if name == "scratch" else PRETRAINED_MODEL
        )
        if name == "scratch":
            why += f"; {values['model']}, a net for {size} px images on {device}"
    if cfg.bn == "auto":
        values["bn"] = BN[name]
    if name == "scratch" and "epochs" in values and n_train:
        steps = -(-n_train // cfg.batch_size)
        low, high = SCRATCH_EPOCHS
        values["epochs"] = int(np.clip(round(SCRATCH_STEPS / steps), low, high))
    epochs = values.get("epochs", cfg.epochs)
    if is_auto(cfg.freeze_epochs):
        values["freeze_epochs"] = frozen_epochs(values["freeze_epochs"], epochs=epochs)
    if is_auto(cfg.warmup_epochs):
        values["warmup_epochs"] = min(values["warmup_epochs"], max(0, epochs // 5))
    if is_auto(cfg.mixup_off_epoch):
        mixing = cfg.mixup > 0 or cfg.cutmix > 0
        values["mixup_off_epoch"] = max(1, round(MIX_FRACTION * epochs)) if mixing else epochs
    kept = {
        k: getattr(cfg, k)
        for k in (*table, "img_size", "bn")
        if k not in values and (k in AUTO_KEYS or k == "bn")
    }
    # Your keys and the recipe's must still agree (a frozen stage longer than the epochs...).
    resolved = validate(dataclasses.replace(cfg, recipe=name, **values))
    return resolved, Recipe(name, why, values, kept)


def frozen_epochs(asked: int, *, epochs: int) -> int:
    """The frozen stage's epochs: at most a third of the run, so a short run keeps most of
    its epochs for the whole network; yet one wherever the run has two, since stage 2
    starts from the head stage 1 fitted (a regression on the features, seconds long)."""
    return min(asked, max(epochs // 3, min(1, epochs - 1)))


def with_epochs(cfg: Config, epochs: int, *, auto: set[str]) -> Config:
    """``cfg`` rescheduled to ``epochs``: warmup, frozen stage and mixup end scale with it.

    ``auto`` names the keys the recipe filled (the user's own values stay).
    """
    scale = epochs / cfg.epochs
    values: dict[str, Any] = {"epochs": epochs}
    if "freeze_epochs" in auto:
        values["freeze_epochs"] = frozen_epochs(
            max(round(cfg.freeze_epochs * scale), min(cfg.freeze_epochs, 1)), epochs=epochs
        )
    if "warmup_epochs" in auto:
        values["warmup_epochs"] = (
            min(round(cfg.warmup_epochs * scale), max(0, epochs // 5)) if cfg.warmup_epochs else 0
        )
    if "mixup_off_epoch" in auto:
        values["mixup_off_epoch"] = max(1, round(cfg.mixup_off_epoch * scale))
    return dataclasses.replace(cfg, **values)
