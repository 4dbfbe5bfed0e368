"""Training: a timm model on every fold, in the stages its recipe sets, with early stopping on macro-F1.

Reads the workspace config, the folds file (``comp folds``) and the training
images. Writes one run folder, ``runs/<name>/``:

- ``config.yaml``      the resolved config (recipe included), enough to reproduce the run
- ``classes.json``     the label space, in model-output order
- ``transforms.json``  the training augmentation, serialised by albumentations
- ``fold{k}/best.pt``  the best checkpoint of fold k (by validation macro-F1; the EMA weights with ``ema``)
- ``fold{k}/last.pt``  while fold k trains: everything ``--resume`` needs after a kill
- ``fold{k}/metrics.csv``  one row per epoch: loss, accuracy, macro-F1, lr, seconds
- ``fold{k}/oof.csv``  fold k's validation probabilities at its best epoch
- ``oof.csv``, ``cv.json``  all folds' out-of-fold probabilities and the CV score
- ``curves.png``       loss, accuracy and macro-F1 per epoch and fold

Read top to bottom: ``train`` plans the run (``plan_run``: the recipe, the images,
what it learns from), then trains each fold through comp.train.loop and writes the
run's summary.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import albumentations as A
import numpy as np
import pandas as pd
import torch
import yaml
from sklearn.metrics import accuracy_score
from timm.optim import list_optimizers

# Not tqdm.auto: its asyncio variant calls iter() on a loader when the bar is made, which
# starts a second pass over the data (and draws from the loader's seeded generator).
from tqdm import tqdm

from comp import files
from comp.config import Config, is_auto, suggest, to_dict
from comp.data.cache import cache_dir, cached_images
from comp.data.competition import Competition, load_competition, read_csv, resolve
from comp.data.transforms import create_transform
from comp.data.workspace import image_stats
from comp.errors import ConfigError, DataError
from comp.files import Echo
from comp.folds.split import folds_path, read_folds
from comp.hardware.distributed import (
    Dist,
    barrier,
    gather,
    init_distributed,
)
from comp.hardware.precision import amp_dtype, precision_name
from comp.metrics import fit_priors, macro_f1, write_priors
from comp.models.factory import (
    create_model,
)
from comp.report.plots import plot_curves
from comp.runs import CLASSES_FILE, LINEAGE_FILE, OOF_FILE, SUMMARY_FILE, write_probs
from comp.teach.lineage import describe, write_lineage
from comp.teach.nested import fixed_config
from comp.teach.teaching import Teaching, prepare
from comp.track.trackers import Trackers, experiment_name, open_run, require
from comp.train.budget import fit_time_limit
from comp.train.heads import train_heads
from comp.train.loop import EpochHook, Fold, FoldResult, setup_fold, train_fold
from comp.train.recipe import Recipe
from comp.train.recipe import resolve as resolve_recipe


def run_name(cfg: Config) -> str:
    return f"{cfg.model.replace('/', '_')}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


# --- the run: recipe, images, then one fold after another --------------------------------


def train(
    root: Path,
    cfg: Config,
    *,
    name: str | None = None,
    folds: list[int] | None = None,
    echo: Echo = tqdm.write,
    on_epoch: EpochHook | None = None,
    progress: bool = True,
    resume: bool = False,
    full: bool = False,
) -> dict[str, Any]:
    """Train ``folds`` (default: all) of a run and return its CV summary (also written to cv.json).

    With ``full``, one more model then trains on every image (``full/best.pt``), as long as
    the folds did best; `comp predict` uses it alone. The folds give its CV.

    With ``resume``, folds that finished are kept and an interrupted fold continues from
    its last completed epoch (``fold{k}/last.pt``), ending as an uninterrupted run would.

    ``on_epoch(fold, epoch, valid_macro_f1)`` is called after every epoch; tuning
    reports to Optuna through it, and may stop the run by raising.
    """
    t_start = time.perf_counter()
    require(cfg.tracker)
    comp = load_competition(root, cfg)
    table = read_folds(folds_path(root, cfg), labels=comp.train)
    classes = comp.classes
    all_folds = sorted(int(k) for k in table["fold"].unique())
    folds = all_folds if folds is None else folds
    for k in folds:
        if k not in all_folds:
            raise ConfigError(f"--fold {k}: folds are {all_folds[0]}..{all_folds[-1]}")
    dist_, device = init_distributed(cfg.device)
    if not dist_.main:
        # One process writes the run and speaks; the others only compute.
        echo, progress = (lambda _: None), False
    optimizers = [str(o) for o in list_optimizers()]
    if cfg.optimizer.lower() not in optimizers:
        raise ConfigError(
            f"optimizer '{cfg.optimizer}' is not a timm optimizer{suggest(cfg.optimizer, optimizers)}"
        )
    # Every process must write to (and the first one name) the same run.
    run_dir = root / "runs" / gather(name or run_name(cfg), dist_)[0]
    saved = run_dir / "config.yaml"
    if resume and not saved.exists():
        raise ConfigError(f"--resume: {run_dir} is not a run to resume (no config.yaml)")

    # The recipe is resolved once, here, so every fold (and every process) trains alike.
    cfg, recipe = resolve_run_config(root, cfg, comp=comp, device=device, echo=echo)
    processes = f", {dist_.world} processes" if dist_.world > 1 else ""
    echo(
        f"run {run_dir.name}: {cfg.model}, {len(classes)} classes, {len(table)} images, folds {folds}, "
        f"device {device}{processes}, {precision_name(amp_dtype(device, cfg.amp, img_size=cfg.img_size))}"
    )

    # Decode every image once (and, with the cache, once across runs); each fold and
    # epoch reads the same memory-mapped array. The first process builds the cache.
    if not dist_.main:
        barrier(dist_)
    images = cached_images(
        comp.train_paths(list(table["Id"])),
        cfg.img_size,
        cache_dir=cache_dir(root, enabled=cfg.cache_images),
        centre=cfg.centre,
        desc="decode train",
        progress=progress,
    )
    if dist_.main:
        barrier(dist_)
    targets = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    fold_of = table["fold"].to_numpy()
    todo = [k for k in folds if not (resume and (run_dir / f"fold{k}" / "oof.csv").exists())]
    teaching = Teaching.plain(images, targets, fold_of, n_classes=len(classes))
    if cfg.pseudo or cfg.distill:
        # The time limit is the run's own: nested teachers train once, for every student.
        t_teach = time.perf_counter()
        # Pseudo-labelled test images join as rows of their own (fold -1: never validated).
        teaching = prepare(
            root,
            cfg,
            comp=comp,
            table=table,
            classes=classes,
            images=images,
            targets=targets,
            fold_of=fold_of,
            report_path=folds_path(root, cfg).with_suffix(".json"),
            device=device,
            dist_=dist_,
            echo=echo,
            progress=progress,
        )
        t_start += time.perf_counter() - t_teach
    images, targets, fold_of = teaching.images, teaching.targets(None), teaching.fold_of

    before = yaml.safe_load(saved.read_text()) if saved.exists() else None
    if cfg.time_limit is not None and cfg.head == "linear":
        cfg = sized_run(
            cfg,
            recipe,
            before=before,
            images=images,
            targets=targets,
            fold_of=fold_of,
            folds=todo,
            spent=time.perf_counter() - t_start,
            device=device,
            dist_=dist_,
            echo=echo,
        )
    resolved = to_dict(cfg)
    if before is not None and before != resolved:
        raise ConfigError(f"{run_dir}: this run was trained with another config; pick a new --name")
    transform = create_transform(cfg.aug, img_size=cfg.img_size)
    if dist_.main:
        # Only now that every image has been read: bad data leaves no run folder behind.
        files.write_yaml(run_dir / "config.yaml", resolved)
        files.write_json(run_dir / CLASSES_FILE, classes)
        files.write_json(run_dir / "transforms.json", A.to_dict(transform))
        if teaching.lineage:
            write_lineage(run_dir, teaching.lineage, teaching.pseudo)
    trackers = start_tracking(root, cfg, run_dir=run_dir, teaching=teaching, dist_=dist_, echo=echo)

    if cfg.head != "linear":
        if dist_.world > 1:
            raise ConfigError(f"head '{cfg.head}' is fitted in one process; drop --devices")
        train_heads(
            root,
            cfg,
            run_dir=run_dir,
            images=images,
            targets=targets,
            fold_of=fold_of,
            folds=todo,
            table=table,
            classes=classes,
            device=device,
            echo=echo,
            progress=progress,
        )
        summary = summarise(run_dir, classes=classes, n_folds=len(all_folds))
        finish_tracking(trackers, summary, run_dir)
        return summary

    for k in folds:
        if k not in todo:
            echo(f"fold {k}: already trained")
            continue
        if not resume and (run_dir / f"fold{k}" / "last.pt").exists():
            echo(f"fold {k}: was interrupted; training it again (--resume would go on from it)")
        fold_ = setup_fold(
            cfg,
            fold=k,
            images=images,
            targets=teaching.targets(k),
            train_idx=teaching.train_idx(k),
            valid_idx=np.flatnonzero(fold_of == k),
            n_classes=len(classes),
            device=device,
            transform=transform,
            dist_=dist_,
            progress=progress,
            soft=teaching.soft(k),
        )
        result = train_fold(
            fold_,
            classes=classes,
            out_dir=run_dir / f"fold{k}",
            echo=echo,
            on_epoch=on_epoch,
            resume=resume,
            on_row=functools.partial(log_row, trackers, k),
        )
        finish_fold(fold_, result, run_dir=run_dir, table=table, classes=classes, echo=echo)
    summary = summarise(run_dir, classes=classes, n_folds=len(all_folds)) if dist_.main else {}
    barrier(dist_)
    finish_tracking(trackers, summary, run_dir)
    if full:
        train_full(
            cfg,
            run_dir=run_dir,
            images=images,
            targets=targets,
            teaching=teaching,
            classes=classes,
            device=device,
            transform=transform,
            dist_=dist_,
            echo=echo,
            progress=progress,
        )
    return summary


def finish_fold(
    f: Fold,
    result: FoldResult,
    *,
    run_dir: Path,
    table: pd.DataFrame,
    classes: list[str],
    echo: Echo,
) -> None:
    """A trained fold's out-of-fold probabilities, written last: they mark it finished."""
    out_dir = run_dir / f"fold{f.number}"
    if f.dist.main:
        front = table.iloc[f.valid_idx][["Id", "label", "fold"]]
        write_probs(out_dir / OOF_FILE, front, result.valid_probs, classes)
        # A finished fold is never resumed; its optimizer state would only take space.
        (out_dir / "last.pt").unlink(missing_ok=True)
    echo(
        f"fold {f.number}: best macro-F1 {result.best_f1:.4f} at epoch {result.best_epoch} "
        f"({result.epochs_run} epochs run)"
    )


def train_full(
    cfg: Config,
    *,
    run_dir: Path,
    images: np.ndarray,
    targets: np.ndarray,
    teaching: Teaching,
    classes: list[str],
    device: torch.device,
    transform: A.Compose,
    dist_: Dist,
    echo: Echo,
    progress: bool,
) -> None:
    """One model on every row, as long as the run's folds did best: ``full/best.pt``."""
    fcfg = fixed_config(run_dir, cfg)
    out_dir = run_dir / "full"
    echo(
        f"full model: every image{' and pseudo-label' if teaching.keep is not None else ''}, "
        f"{fcfg.epochs} epochs (the folds' median best), last weights -> {out_dir}"
    )
    f = setup_fold(
        fcfg,
        fold=cfg.n_splits,
        images=images,
        targets=targets,
        train_idx=teaching.train_idx(None),
        valid_idx=np.zeros(0, dtype=np.int64),
        n_classes=len(classes),
        device=device,
        transform=transform,
        dist_=dist_,
        progress=progress,
        soft=teaching.soft(None),
    )
    train_fold(f, classes=classes, out_dir=out_dir, echo=echo, select=False)
    if dist_.main:
        (out_dir / "last.pt").unlink(missing_ok=True)
        # Last: `comp predict` takes the model only once it has trained to the end.
        files.write_json(out_dir / "done.json", {"epochs": fcfg.epochs, "rows": len(f.train_idx)})
    barrier(dist_)


def start_tracking(
    root: Path, cfg: Config, *, run_dir: Path, teaching: Teaching, dist_: Dist, echo: Echo
) -> Any:
    """The run's trackers (the first process only), given its config and lineage."""
    if not dist_.main:
        return Trackers({}, echo=echo)
    trackers = open_run(
        root,
        cfg.tracker,
        run=run_dir.name,
        experiment=experiment_name(root, cfg.competition),
        run_dir=run_dir,
        echo=echo,
    )
    if trackers:
        trackers.params(to_dict(cfg))
        trackers.tags(lineage_tags(root, cfg, teaching))
        echo(f"tracking: {cfg.tracker}")
    return trackers


def lineage_tags(root: Path, cfg: Config, teaching: Teaching) -> dict[str, Any]:
    """Where a run comes from: its folds file and their grouping, and the runs it learnt from."""
    path = folds_path(root, cfg)
    report = path.with_suffix(".json")
    grouping = None
    if report.exists():
        facts = json.loads(report.read_text())
        grouping = facts.get("used") or facts.get("chosen", {}).get("name")
    tags: dict[str, Any] = {"folds_file": str(path.relative_to(root)), "folds_grouping": grouping}
    if teaching.lineage:
        tags["built_from"] = describe(teaching.lineage)
        tags["parent"] = teaching.lineage.get("parent")
    return tags


def log_row(trackers: Any, fold: int, row: dict[str, Any]) -> None:
    """One epoch's metrics, as fold{k}/<metric> at step <epoch>."""
    skip = ("epoch", "stage")
    trackers.metrics(
        {f"fold{fold}/{k}": v for k, v in row.items() if k not in skip}, step=row["epoch"]
    )


def finish_tracking(trackers: Any, summary: dict[str, Any], run_dir: Path) -> None:
    if not trackers:
        return
    trackers.metrics(
        {k: summary.get(k) for k in ("cv_macro_f1", "adjusted_macro_f1", "cv_accuracy")}
        | {f"fold{k}/best_macro_f1": v for k, v in summary.get("fold_macro_f1", {}).items()}
    )
    trackers.artifacts(
        run_dir / name for name in ("cv.json", "config.yaml", "curves.png", LINEAGE_FILE)
    )
    trackers.close()


def resolve_run_config(
    root: Path, cfg: Config, *, comp: Competition, device: torch.device, echo: Echo
) -> tuple[Config, Recipe]:
    """The config with its recipe resolved: where the weights come from, then every auto key."""
    if cfg.pretrained_file is not None:
        # Like every path in comp.yaml, relative to the workspace, not to where comp runs.
        cfg = dataclasses.replace(cfg, pretrained_file=str(resolve(root, cfg.pretrained_file)))
        weights = f"file:{cfg.pretrained_file}"
    elif cfg.pretrained == "false":
        weights = "random"
    else:
        # Find out once, not once per fold, whether pretrained weights can be had.
        _, weights = create_model(
            cfg.model, num_classes=len(comp.classes), pretrained=cfg.pretrained
        )
        echo(f"weights: {weights}")
    sizes = None
    if is_auto(cfg.img_size):
        sizes = image_stats(comp.train_paths(list(comp.train["Id"])), sample=200)["sizes"]
    n_train = len(comp.train) * (cfg.n_splits - 1) // cfg.n_splits
    cfg, recipe = resolve_recipe(
        cfg, weights=weights, device=device.type, sizes=sizes, n_train=n_train
    )
    if weights == "random":
        # Every fold then starts from random init without asking the hub again.
        cfg = dataclasses.replace(cfg, pretrained="false")
    echo(recipe.describe())
    return cfg, recipe


def sized_run(
    cfg: Config,
    recipe: Recipe,
    *,
    before: dict[str, Any] | None,
    folds: list[int],
    dist_: Dist,
    **measure: Any,
) -> Config:
    """``cfg`` with its epochs fitted to ``time_limit``: measured now, or as the run was sized."""
    if before is not None and before.get("time_limit") == cfg.time_limit:
        # The run was sized when it began (resumed, or its other folds trained apart):
        # its epochs stand.
        keys = ("epochs", "freeze_epochs", "warmup_epochs", "mixup_off_epoch")
        return dataclasses.replace(cfg, **{k: before[k] for k in keys})
    if not folds:
        return cfg
    sized = fit_time_limit(cfg, recipe, folds=folds, dist_=dist_, **measure)
    # Every process must train the same schedule: the first one's measurement.
    return cast(Config, gather(sized, dist_)[0])


# --- the run's summary ---------------------------------------------------------------------


def summarise(run_dir: Path, *, classes: list[str], n_folds: int) -> dict[str, Any]:
    """Gather every fold's OOF of a run into oof.csv and cv.json (folds may be trained apart)."""
    parts = []
    for k in range(n_folds):
        path = run_dir / f"fold{k}" / "oof.csv"
        if path.exists():
            # As text, so labels and Ids such as "NA" or "None" stay what they are.
            part = read_csv(path)
            parts.append(part.astype(dict.fromkeys(classes, np.float64)).astype({"fold": int}))
    if not parts:
        raise DataError(f"{run_dir}: no trained folds")
    oof = pd.concat(parts, ignore_index=True)
    probs = oof[classes].to_numpy(np.float64)
    y = oof["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    pred = probs.argmax(1)
    per_fold = {}
    folds = oof["fold"].to_numpy()
    for k in sorted(set(folds.tolist())):
        idx = np.flatnonzero(folds == k)
        per_fold[str(k)] = round(macro_f1(y[idx], pred[idx]), 6)
    adjusted = None
    if len(per_fold) >= 2:
        # Class priors that maximise macro-F1, fitted on the other folds and scored on each
        # held-out fold, so the adjusted CV is as honest as the plain one.
        adjusted_pred = np.empty_like(pred)
        for fold_name in per_fold:
            held = folds == int(fold_name)
            w = fit_priors(probs[~held], y[~held], n_classes=len(classes))
            adjusted_pred[held] = (probs[held] * w).argmax(1)
        adjusted = round(macro_f1(y, adjusted_pred), 6)
        write_priors(run_dir, probs, y, classes=classes)
    summary = {
        "run": run_dir.name,
        "cv_macro_f1": round(macro_f1(y, pred), 6),
        "adjusted_macro_f1": adjusted,
        "cv_accuracy": round(float(accuracy_score(y, pred)), 6),
        "fold_macro_f1": per_fold,
        "folds_trained": len(parts),
        "n_folds": n_folds,
        "complete": len(parts) == n_folds,
        "n_oof": len(oof),
    }
    lineage = run_dir / LINEAGE_FILE
    if lineage.exists():
        # What the run learnt from besides its labels: pseudo-labels, a teacher.
        summary["built_from"] = json.loads(lineage.read_text())
    files.write_csv(run_dir / OOF_FILE, oof)
    files.write_json(run_dir / SUMMARY_FILE, summary)
    plot_curves(run_dir)
    return summary
