"""Prediction: every fold of a run, averaged over folds and test-time views.

Reads a run folder (``runs/<name>/``: config.yaml, classes.json, cv.json, the
finished folds' ``fold*/best.pt`` or ``fold*/head.pkl``, or ``full/best.pt`` once
``full/done.json`` says it trained to the end; ``adjust.json`` with ``adjust``;
a blend's ``blend.json`` and its members) and the test images. Writes nothing:
``predict`` returns a ``Prediction``, which ``comp.submit.submission.publish``
writes (``runs/<name>/test_probs.csv`` and the submission), so a failed
prediction leaves no file.

Read top to bottom: ``predict`` picks the models (``finished_models``), decodes
the test images and runs every model over every view (``tta_probs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from comp.config import Config
from comp.data.cache import cache_dir, cached_images
from comp.data.competition import Competition, load_competition
from comp.data.transforms import ImageDataset, tta_names, tta_views
from comp.errors import DataError
from comp.fit.heads import predict_heads
from comp.hardware.distributed import pick_device
from comp.hardware.precision import auto_workers, make_autocast
from comp.metrics import load_priors
from comp.models.factory import load_checkpoint, normalisation
from comp.models.inference import predict_probs
from comp.runs import (
    BEST_FILE,
    DONE_FILE,
    FULL_DIR,
    HEAD_FILE,
    OOF_FILE,
    TEST_PROBS_FILE,
    find_run,
    read_blend,
    read_classes,
    read_config,
)


@dataclass
class Prediction:
    """A run's test probabilities, not yet written: ``comp.submit.submission.publish`` writes
    them (``test_probs.csv``, each fold's own, a blend's members') with the submission."""

    run_dir: Path
    ids: list[str]
    probs: np.ndarray
    classes: list[str]
    sample: pd.DataFrame | None
    folds: list[str]
    tta: list[str]
    # From the run's adjust.json: the labels are chosen on probs rescaled by them.
    priors: np.ndarray | None = None
    per_fold: dict[Path, np.ndarray] = field(default_factory=dict)
    members: list[Prediction] = field(default_factory=list)


def predict(
    root: Path,
    cfg: Config,
    *,
    run: str | None = None,
    tta: str | None = None,
    batch_size: int = 256,
) -> Prediction:
    """The test probabilities of a run over its folds and TTA views; nothing is written."""
    run_dir = find_run(root, run)
    if read_blend(run_dir) is not None:
        return predict_blend(root, cfg, run_dir, tta=tta, batch_size=batch_size)
    trained = read_config(run_dir)
    classes = read_classes(run_dir)
    checkpoints = finished_models(run_dir, head=trained.head)
    comp = load_competition(root, cfg)
    unseen = sorted(set(comp.classes) - set(classes))
    if unseen:
        raise DataError(
            f"{run_dir}: run was trained without class(es) {', '.join(unseen[:5])} of the labels table"
        )
    spec = tta if tta is not None else cfg.tta
    views = tta_views(spec)
    device = pick_device(cfg.device)
    ids = comp.test_ids()
    probs, per_fold = tta_probs(
        root,
        cfg,
        run_dir,
        checkpoints,
        images=decode_test(root, cfg, comp, ids, trained=trained),
        trained=trained,
        classes=classes,
        views=views,
        device=device,
        batch_size=batch_size,
    )
    return Prediction(
        run_dir=run_dir,
        ids=ids,
        probs=probs,
        classes=classes,
        sample=comp.sample,
        folds=[p.parent.name for p in checkpoints],
        tta=tta_names(spec),
        priors=load_priors(run_dir, classes) if cfg.adjust else None,
        per_fold=per_fold,
    )


def finished_models(run_dir: Path, *, head: str) -> list[Path]:
    """The checkpoints that predict: ``full/best.pt`` once the model on every image has
    trained to the end, else every finished fold's ``best.pt`` (``head.pkl`` for a head)."""
    if (run_dir / FULL_DIR / DONE_FILE).exists():
        # A model trained on every image (comp distill): the one model that predicts.
        return [run_dir / FULL_DIR / BEST_FILE]
    # A fold counts once it has finished (its oof.csv is written last), not while it trains.
    checkpoints = sorted(
        p
        for p in run_dir.glob(f"fold*/{BEST_FILE if head == 'linear' else HEAD_FILE}")
        if (p.parent / OOF_FILE).exists()
    )
    if not checkpoints:
        raise DataError(f"{run_dir}: no finished fold (fold*/best.pt, or head.pkl)")
    return checkpoints


def decode_test(
    root: Path, cfg: Config, comp: Competition, ids: list[str], *, trained: Config
) -> np.ndarray:
    """The test images, decoded as the run's train images were (its size and centring)."""
    return cached_images(
        comp.test_paths(ids),
        trained.img_size,
        cache_dir=cache_dir(root, enabled=cfg.cache_images),
        centre=trained.centre,
        desc="decode test",
    )


def tta_probs(
    root: Path,
    cfg: Config,
    run_dir: Path,
    checkpoints: list[Path],
    *,
    images: np.ndarray,
    trained: Config,
    classes: list[str],
    views: list[Any],
    device: torch.device,
    batch_size: int,
) -> tuple[np.ndarray, dict[Path, np.ndarray]]:
    """The test probabilities averaged over the checkpoints and TTA views, and each fold's
    own, by the path of its ``fold{k}/test_probs.csv`` (none for a head run)."""
    if trained.head != "linear":
        probs, _ = predict_heads(
            root,
            trained,
            run_dir,
            images=images,
            views=views,
            classes=classes,
            device=device,
            batch_size=batch_size,
        )
        return probs, {}
    autocast = make_autocast(device, cfg.amp)
    total = np.zeros((len(images), len(classes)), dtype=np.float64)
    per_fold: dict[Path, np.ndarray] = {}
    for ckpt in checkpoints:
        model, _ = load_checkpoint(ckpt, classes=classes, model_name=trained.model)
        model = model.to(device).to(memory_format=torch.channels_last)
        mean, std = (t.to(device) for t in normalisation(model))
        fold_total = np.zeros_like(total)
        for v, view in enumerate(views):
            fold_total += largest_batch_probs(
                model,
                ImageDataset(images, transform=view),
                batch_size=batch_size,
                workers=auto_workers(cfg.num_workers, device),
                mean=mean,
                std=std,
                device=device,
                autocast=autocast,
                desc=f"{ckpt.parent.name} view {v + 1}/{len(views)}",
            )
        total += fold_total
        if ckpt.parent.name.startswith("fold"):
            # Each fold's own predictions: pseudo-labels for a later run's fold k must
            # come from a model that never saw fold k (comp.teach).
            per_fold[ckpt.parent / TEST_PROBS_FILE] = fold_total / len(views)
    return total / (len(checkpoints) * len(views)), per_fold


def largest_batch_probs(
    model: torch.nn.Module,
    dataset: ImageDataset,
    *,
    batch_size: int,
    desc: str,
    workers: int = 0,
    **kwargs: Any,
) -> np.ndarray:
    """Probabilities at the largest batch (from ``batch_size`` down) that fits in GPU memory."""
    while True:
        try:
            loader = DataLoader(
                dataset,
                batch_size=batch_size,
                num_workers=workers,
                pin_memory=kwargs["device"].type == "cuda",
            )
            return predict_probs(model, loader, channels_last=True, desc=desc, **kwargs)[0]
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            torch.cuda.empty_cache()
            batch_size //= 2


def predict_blend(
    root: Path, cfg: Config, run_dir: Path, *, tta: str | None, batch_size: int
) -> Prediction:
    """Predict every member of a blend, then weigh their test probabilities as on OOF."""
    members = read_blend(run_dir)
    assert members is not None
    names, weights = members
    classes = read_classes(run_dir)
    comp = load_competition(root, cfg)
    ids = comp.test_ids()
    total = np.zeros((len(ids), len(classes)))
    predicted = []
    for name, weight in zip(names, weights, strict=True):
        member = predict(root, cfg, run=name, tta=tta, batch_size=batch_size)
        if member.ids != ids or sorted(member.classes) != sorted(classes):
            raise DataError(f"{member.run_dir}: its test Ids or classes are not the blend's")
        total += weight * member.probs[:, [member.classes.index(c) for c in classes]]
        predicted.append(member)
    return Prediction(
        run_dir=run_dir,
        ids=ids,
        probs=total,
        classes=classes,
        sample=comp.sample,
        folds=[f"{n} x{w:.3f}" for n, w in zip(names, weights, strict=True)],
        tta=tta_names(tta if tta is not None else cfg.tta),
        priors=load_priors(run_dir, classes) if cfg.adjust else None,
        members=predicted,
    )
