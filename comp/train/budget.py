"""Measured choices before the first fold: the precision, and epochs that fit a time budget.

Reads the config (``amp``, ``time_limit``), the decoded training images and a
fold's split; writes nothing but the precision cache (comp.hardware.precision). A
Kaggle session (9 or 12 hours, or a code competition's limit) or a laptop's lunch
break is the budget; no fold is cut mid-schedule.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from torch import nn
from torch.utils.data import DataLoader

from comp.config import AUTO_KEYS, Config, parse_duration
from comp.data.transforms import ImageDataset, create_transform
from comp.errors import ConfigError
from comp.fit.loop import Stage, begin_stage, image_steps, setup_fold, train_mode
from comp.hardware import precision
from comp.hardware.distributed import Dist
from comp.models.factory import create_model
from comp.models.inference import predict_probs
from comp.train.recipe import Recipe, with_epochs

log = logging.getLogger(__name__)

PRECISION_STEPS = 4
AUTO_EPOCHS_FACTOR = 2
# What an epoch costs besides its steps: metrics.csv written and synced, the best
# weights copied, the epoch's line; no step timing sees it.
EPOCH_OVERHEAD_S = 0.2


def choose_precision(cfg: Config, *, n_classes: int, device: torch.device) -> tuple[Config, str]:
    """``cfg`` with ``amp`` resolved to "true" or "false" (comp.hardware.precision.choose), and
    why: training steps of the run's own net, size and batch, timed in both precisions."""

    def measure(dtype: torch.dtype | None) -> float:
        return step_seconds(cfg, n_classes=n_classes, device=device, dtype=dtype)

    if cfg.model == "classical" and cfg.amp == "auto":
        # Its features run in fp32 whatever autocast says: there is nothing to time.
        return dataclasses.replace(cfg, amp="false"), "fp32 (hand-made features, not timed)"
    work = f"train {cfg.model} {cfg.img_size}px batch {cfg.batch_size}"
    dtype, why = precision.choose(device, cfg.amp, work=work, measure=measure)
    chosen = dataclasses.replace(cfg, amp="false" if dtype is None else "true")
    return chosen, f"{precision.precision_name(dtype)} ({why})"


def step_seconds(
    cfg: Config,
    *,
    n_classes: int,
    device: torch.device,
    dtype: torch.dtype | None,
    steps: int = PRECISION_STEPS,
) -> float:
    """Seconds of one training step of ``cfg.model`` on a random batch, at ``dtype``."""
    # The measurement must not move the run's random streams: each fold seeds its own.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model, _ = create_model(
            cfg.model, num_classes=n_classes, pretrained="false", small_input=cfg.small_input
        )
        model = model.to(device).to(memory_format=torch.channels_last).train()
        optimizer = create_optimizer_v2(model, opt=cfg.optimizer, lr=1e-4)
        size = cfg.img_size
        x = torch.randn(cfg.batch_size, 3, size, size, device=device)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, n_classes, (cfg.batch_size,), device=device)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        seconds = float("inf")
        for i in range(steps + 2):
            t0 = time.perf_counter()
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:  # the first steps pay for allocation and kernel choice
                seconds = min(seconds, time.perf_counter() - t0)
    return seconds


def fit_time_limit(
    cfg: Config,
    recipe: Recipe,
    *,
    images: np.ndarray,
    targets: np.ndarray,
    fold_of: np.ndarray,
    folds: list[int],
    spent: float,
    device: torch.device,
    dist_: Dist,
) -> Config:
    """``cfg`` with as many epochs as let every fold in ``folds`` end within ``cfg.time_limit``.

    A fold's first epoch is timed on a throwaway copy of its model (a full epoch where
    that is quick, a few dozen steps otherwise), so the schedule is fixed before any
    fold starts and no fold is cut short. A user's own ``epochs`` is an upper bound.
    """
    budget = parse_duration(cfg.time_limit or "0") - spent
    k = folds[0]
    train_idx, valid_idx = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
    epoch_s, frozen_s = measure_epoch(
        cfg,
        images=images,
        targets=targets,
        train_idx=train_idx,
        valid_idx=valid_idx,
        device=device,
        dist_=dist_,
    )
    # Each fold also builds its model and, with a frozen stage, embeds its images once.
    per_fold = budget / len(folds) - frozen_s - 2.0
    fits = int(per_fold // epoch_s)
    # The recipe's own epochs, a few times over, bound what a generous budget buys: past
    # them a tiny set's epochs are all overhead, and the schedule gains nothing.
    cap = cfg.epochs * AUTO_EPOCHS_FACTOR if "epochs" in recipe.filled else cfg.epochs
    epochs = min(fits, cap) if cap is not None else fits
    least = cfg.freeze_epochs + 1 if "freeze_epochs" not in recipe.filled else 1
    if epochs < least:
        raise ConfigError(
            f"time_limit {cfg.time_limit}: an epoch takes about {epoch_s:.0f}s, so {len(folds)} folds "
            f"need at least {len(folds) * (least * epoch_s + frozen_s) + spent:.0f}s; "
            "raise the limit, train fewer folds (--fold) or use a smaller img_size or model"
        )
    sized = with_epochs(cfg, epochs, auto=set(recipe.filled) & set(AUTO_KEYS))
    log.info(
        f"time limit {cfg.time_limit}: an epoch takes about {epoch_s:.1f}s, so {sized.epochs} epochs per fold "
        f"({sized.freeze_epochs} frozen, warmup {sized.warmup_epochs}) fit {len(folds)} folds"
    )
    return sized


def measure_epoch(
    cfg: Config,
    *,
    images: np.ndarray,
    targets: np.ndarray,
    train_idx: np.ndarray,
    valid_idx: np.ndarray,
    device: torch.device,
    dist_: Dist,
    steps: int = 24,
) -> tuple[float, float]:
    """Seconds of one all-layers epoch (train + validate), and of a fold's frozen-stage set-up.

    The steps timed are the fold loop's own (comp.fit.loop.image_steps) on a fold set up as
    the run's will be: the same loaders, augmentation, loss, mixing, EMA and precision."""
    # A step takes as long whatever the weights hold: no file or hub is read for them. Each
    # fold re-seeds the global random state before it trains.
    timing = dataclasses.replace(cfg, pretrained="false", pretrained_file=None)
    f = setup_fold(
        timing,
        fold=0,
        images=images,
        targets=targets,
        train_idx=train_idx,
        valid_idx=valid_idx,
        n_classes=int(targets.max()) + 1,
        device=device,
        transform=create_transform(cfg.aug, img_size=cfg.img_size),
        dist_=dist_,
    )
    stage = Stage(2, 0, 1, cfg.lr2)
    run = begin_stage(f, stage)
    train_mode(f, run)
    n_batches = len(f.batches)
    timed, seconds = 0, 0.0
    t0 = time.perf_counter()
    for i, _ in enumerate(image_steps(f, run, stage.start)):
        if device.type == "cuda":
            torch.cuda.synchronize()
        # Timed from the previous step's end, so loading and augmenting count too; the
        # first steps pay for allocation and kernel choice.
        if i >= 2:
            timed, seconds = timed + 1, seconds + time.perf_counter() - t0
        if i + 1 >= min(steps, n_batches) + 2:
            break
        t0 = time.perf_counter()
    # Each process steps through its slice of every batch at once: a step is a global batch.
    step_s = seconds / max(timed, 1)
    probe = DataLoader(
        ImageDataset(images, targets, index=valid_idx[: cfg.batch_size * 4]),
        batch_size=cfg.batch_size * 2,
    )
    t0 = time.perf_counter()
    predict_probs(
        f.model,
        probe,
        mean=f.mean,
        std=f.std,
        device=device,
        autocast=f.autocast,
        channels_last=True,
    )
    per_image = (time.perf_counter() - t0) / max(1, min(len(valid_idx), cfg.batch_size * 4))
    epoch_s = n_batches * step_s + len(valid_idx) * per_image / dist_.world + EPOCH_OVERHEAD_S
    frozen_s = 0.0
    if cfg.freeze_epochs and cfg.cache_features:
        frozen_s = (cfg.feature_views * len(train_idx) + len(valid_idx)) * per_image
    return epoch_s * 1.05, frozen_s  # a margin for what a short measurement misses
