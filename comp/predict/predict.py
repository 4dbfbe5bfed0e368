"""Prediction: every fold of a run, averaged over folds and test-time views, into a submission.

Reads a run folder (``runs/<name>/``: config.yaml, classes.json, cv.json, the
finished folds' ``fold*/best.pt`` or ``fold*/head.pkl``, or ``full/best.pt`` once
``full/done.json`` says it trained to the end; ``adjust.json`` with ``adjust``;
a blend's ``blend.json`` and its members), the test images and the sample
submission. Writes ``runs/<name>/test_probs.csv`` (Id + one probability column
per class; each fold's own in ``fold{k}/test_probs.csv``) and
``submissions/<name>.csv`` with its sidecar ``<name>.json``, in exactly the
sample submission's shape, validated before anything is written.

Read top to bottom: ``predict`` picks the models (``finished_models``), decodes
the test images, runs every model over every view (``tta_probs``), then writes
(``publish``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from comp.config import Config
from comp.data.cache import cache_dir, cached_images
from comp.data.competition import Competition, load_competition
from comp.data.transforms import ImageDataset, tta_names, tta_views
from comp.errors import DataError
from comp.files import Echo
from comp.hardware.distributed import pick_device
from comp.hardware.precision import auto_workers, make_autocast
from comp.metrics import load_priors
from comp.models.factory import load_checkpoint, normalisation
from comp.models.inference import predict_probs
from comp.predict.submission import build_submission, validate_submission, write_submission
from comp.runs import (
    OOF_FILE,
    TEST_PROBS_FILE,
    find_run,
    read_blend,
    read_classes,
    read_config,
    read_probs,
    read_summary,
    runs_dir,
    write_probs,
)
from comp.train.heads import predict_heads


def predict(
    root: Path,
    cfg: Config,
    *,
    run: str | None = None,
    tta: str | None = None,
    batch_size: int = 256,
    out: Path | None = None,
    echo: Echo = tqdm.write,
) -> dict[str, Any]:
    """Write the test probabilities and the submission of a run; return the sidecar facts."""
    run_dir = find_run(root, run)
    if read_blend(run_dir) is not None:
        return predict_blend(root, cfg, run_dir, tta=tta, batch_size=batch_size, out=out, echo=echo)
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
    facts = publish(
        root,
        run_dir,
        ids=ids,
        probs=probs,
        classes=classes,
        sample=comp.sample,
        folds=[p.parent.name for p in checkpoints],
        tta=tta_names(spec),
        out=out,
        echo=echo,
        priors=load_priors(run_dir, classes) if cfg.adjust else None,
    )
    # Only once the whole is known to be finite: a failed predict writes nothing.
    for path, fold_probs in per_fold.items():
        write_probs(path, ids, fold_probs, classes)
    return facts


def finished_models(run_dir: Path, *, head: str) -> list[Path]:
    """The checkpoints that predict: ``full/best.pt`` once the model on every image has
    trained to the end, else every finished fold's ``best.pt`` (``head.pkl`` for a head)."""
    if (run_dir / "full" / "done.json").exists():
        # A model trained on every image (comp distill): the one model that predicts.
        return [run_dir / "full" / "best.pt"]
    # A fold counts once it has finished (its oof.csv is written last), not while it trains.
    checkpoints = sorted(
        p
        for p in run_dir.glob(f"fold*/{'best.pt' if head == 'linear' else 'head.pkl'}")
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
    root: Path,
    cfg: Config,
    run_dir: Path,
    *,
    tta: str | None,
    batch_size: int,
    out: Path | None,
    echo: Echo,
) -> dict[str, Any]:
    """Predict every member of a blend, then weigh their test probabilities as on OOF."""
    members = read_blend(run_dir)
    assert members is not None
    names, weights = members
    classes = read_classes(run_dir)
    comp = load_competition(root, cfg)
    ids = comp.test_ids()
    total = np.zeros((len(ids), len(classes)))
    for name, weight in zip(names, weights, strict=True):
        predict(root, cfg, run=name, tta=tta, batch_size=batch_size, echo=echo)
        total += weight * read_probs(
            runs_dir(root) / name / TEST_PROBS_FILE, classes=classes, ids=ids
        )
    return publish(
        root,
        run_dir,
        ids=ids,
        probs=total,
        classes=classes,
        sample=comp.sample,
        folds=[f"{n} x{w:.3f}" for n, w in zip(names, weights, strict=True)],
        tta=tta_names(tta if tta is not None else cfg.tta),
        out=out,
        echo=echo,
        priors=load_priors(run_dir, classes) if cfg.adjust else None,
    )


def publish(
    root: Path,
    run_dir: Path,
    *,
    ids: list[str],
    probs: np.ndarray,
    classes: list[str],
    sample: pd.DataFrame | None,
    folds: list[str],
    tta: list[str],
    out: Path | None = None,
    echo: Echo = tqdm.write,
    priors: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write a run's test probabilities and its validated submission; return the sidecar facts.

    ``priors`` (from the run's adjust.json) rescale the probabilities before the
    labels are chosen, as they were when the adjusted CV was measured.
    """
    bad = ~np.isfinite(probs).all(1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{run_dir}: test probabilities hold NaN or inf in {int(bad.sum())} row(s), "
            f"first Id {ids[first]}; nothing written"
        )
    write_probs(run_dir / TEST_PROBS_FILE, ids, probs, classes)

    chosen = probs if priors is None else probs * priors / (probs * priors).sum(1, keepdims=True)
    submission = build_submission(ids, chosen, classes=classes, sample=sample)
    validate_submission(submission, sample=sample, classes=classes, ids=ids, name=run_dir.name)
    cv = read_summary(run_dir)
    out = out or root / "submissions" / f"{run_dir.name}.csv"
    facts = {
        "run": run_dir.name,
        "cv_macro_f1": cv.get("adjusted_macro_f1") if priors is not None else cv.get("cv_macro_f1"),
        "adjusted": priors is not None,
        "folds": folds,
        "tta": tta,
        "rows": len(submission),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "file": str(out),
    }
    write_submission(out, submission, facts)
    models = "one model on every image" if folds == ["full"] else f"{len(folds)} folds"
    echo(f"{len(ids)} test images, {models} x {len(tta)} views -> {out}")
    return facts
