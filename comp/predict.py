"""Prediction: every fold of a run, averaged over folds and test-time views, into a submission.

Reads a run folder (``runs/<name>/``: config.yaml, classes.json, fold*/best.pt,
cv.json), the test images and the sample submission. Writes
``runs/<name>/test_probs.csv`` (Id + one probability column per class; each
fold's own in ``fold{k}/test_probs.csv``) and
``submissions/<name>.csv`` with its sidecar ``<name>.json``, in exactly the
sample submission's shape, validated before anything is written.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from comp import io
from comp.cache import cache_dir, cached_images
from comp.config import Config, make_config
from comp.data import DataError, load_competition, read_csv
from comp.distributed import pick_device
from comp.ensemble import blend_members
from comp.hardware import auto_workers, make_autocast
from comp.inference import predict_probs
from comp.io import Echo
from comp.metrics import load_priors
from comp.models import load_checkpoint, normalisation
from comp.submission import build_submission, validate_submission, write_submission
from comp.transforms import ImageDataset, tta_views


def find_run(root: Path, run: str | None = None) -> Path:
    """A run by name or path; by default the most recently finished one."""
    if run is not None:
        for candidate in (Path(run), root / "runs" / run):
            if (candidate / "config.yaml").exists():
                return candidate
        known = sorted(p.name for p in (root / "runs").glob("*") if (p / "config.yaml").exists())
        raise DataError(
            f"no run '{run}' in {root / 'runs'}; runs are: {', '.join(known) or 'none yet'}"
        )
    done = sorted((root / "runs").glob("*/cv.json"), key=lambda p: p.stat().st_mtime)
    if not done:
        raise DataError(f"no finished run in {root / 'runs'}; run `comp train` first")
    return done[-1].parent


def run_config(run_dir: Path) -> Config:
    return make_config(yaml.safe_load((run_dir / "config.yaml").read_text()))


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
    if blend_members(run_dir) is not None:
        return predict_blend(root, cfg, run_dir, tta=tta, batch_size=batch_size, out=out, echo=echo)
    trained = run_config(run_dir)
    classes = json.loads((run_dir / "classes.json").read_text())
    # A fold counts once it has finished (its oof.csv is written last), not while it trains.
    checkpoints = sorted(
        p
        for p in run_dir.glob(f"fold*/{'best.pt' if trained.head == 'linear' else 'head.pkl'}")
        if (p.parent / "oof.csv").exists()
    )
    if (run_dir / "full" / "done.json").exists():
        # A model trained on every image (comp distill): the one model that predicts.
        checkpoints = [run_dir / "full" / "best.pt"]
    if not checkpoints:
        raise DataError(f"{run_dir}: no finished fold (fold*/best.pt, or head.pkl)")
    comp = load_competition(root, cfg)
    unseen = sorted(set(comp.classes) - set(classes))
    if unseen:
        raise DataError(
            f"{run_dir}: run was trained without class(es) {', '.join(unseen[:5])} of the labels table"
        )
    views = tta_views(tta if tta is not None else cfg.tta)
    device = pick_device(cfg.device)
    autocast = make_autocast(device, cfg.amp)

    ids = comp.test_ids()
    per_fold: dict[Path, np.ndarray] = {}
    images = cached_images(
        comp.test_paths(ids),
        trained.img_size,
        cache_dir=cache_dir(root, enabled=cfg.cache_images),
        centre=trained.centre,
        desc="decode test",
    )
    if trained.head != "linear":
        from comp.heads import predict_heads

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
    else:
        total = np.zeros((len(ids), len(classes)), dtype=np.float64)
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
                per_fold[ckpt.parent / "test_probs.csv"] = fold_total / len(views)
        probs = total / (len(checkpoints) * len(views))
    facts = publish(
        root,
        run_dir,
        ids=ids,
        probs=probs,
        classes=classes,
        sample=comp.sample,
        folds=[p.parent.name for p in checkpoints],
        tta=tta_names(tta if tta is not None else cfg.tta),
        out=out,
        echo=echo,
        priors=load_priors(run_dir, classes) if cfg.adjust else None,
    )
    # Only once the whole is known to be finite: a failed predict writes nothing.
    for path, fold_probs in per_fold.items():
        table = pd.DataFrame(fold_probs, columns=classes)
        io.write_csv(path, pd.concat([pd.DataFrame({"Id": ids}), table], axis=1))
    return facts


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
    members = blend_members(run_dir)
    assert members is not None
    names, weights = members
    classes = json.loads((run_dir / "classes.json").read_text())
    comp = load_competition(root, cfg)
    ids = comp.test_ids()
    total = np.zeros((len(ids), len(classes)))
    for name, weight in zip(names, weights, strict=True):
        predict(root, cfg, run=name, tta=tta, batch_size=batch_size, echo=echo)
        table = read_csv(root / "runs" / name / "test_probs.csv").set_index("Id")
        total += weight * table.loc[ids, classes].astype(np.float64).to_numpy()
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


def tta_names(spec: str) -> list[str]:
    return [type(v.transforms[0]).__name__ if v else "none" for v in tta_views(spec)]


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
    test_probs = pd.concat(
        [pd.DataFrame({"Id": ids}), pd.DataFrame(probs, columns=classes)], axis=1
    )
    io.write_csv(run_dir / "test_probs.csv", test_probs)

    chosen = probs if priors is None else probs * priors / (probs * priors).sum(1, keepdims=True)
    submission = build_submission(ids, chosen, classes=classes, sample=sample)
    validate_submission(submission, sample=sample, classes=classes, ids=ids, name=run_dir.name)
    cv = json.loads((run_dir / "cv.json").read_text()) if (run_dir / "cv.json").exists() else {}
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
