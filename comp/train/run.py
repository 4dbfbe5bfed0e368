"""Training: a timm model on every fold, in the stages its recipe sets, with early stopping on macro-F1.

Reads the workspace config, the folds file (``comp folds``) and the training
images; with ``--pseudo``/``--distill`` a parent run (through comp.teach); with
``--resume`` the run's own ``config.yaml``, ``fold{k}/oof.csv`` and ``fold{k}/last.pt``.
Writes one run folder, ``runs/<name>/``:

- ``config.yaml``      the resolved config (recipe included), enough to reproduce the run
- ``classes.json``     the label space, in model-output order
- ``transforms.json``  the training augmentation, serialised by albumentations
- ``lineage.json``, ``pseudo.csv``  what a ``--pseudo``/``--distill`` run learnt from
- ``fold{k}/best.pt``  the best checkpoint of fold k (by validation macro-F1; the EMA weights with ``ema``)
- ``fold{k}/last.pt``  while fold k trains: everything ``--resume`` needs after a kill
- ``fold{k}/metrics.csv``  one row per epoch: loss, accuracy, macro-F1, lr, seconds
- ``fold{k}/oof.csv``  fold k's validation probabilities at its best epoch
- ``oof.csv``, ``cv.json``  all folds' out-of-fold probabilities and the CV score
- ``curves.png``       loss, accuracy and macro-F1 per epoch and fold
- ``full/best.pt``, ``full/done.json``  with ``full``: one model on every image

Read top to bottom: ``train`` plans the run (``plan_run``: the recipe, the images,
what it learns from, the epochs a time limit allows, all in a ``RunPlan``), writes
the plan, trains each fold through comp.fit.loop (``train_folds``; ``fit_heads``
for a scikit-learn head), then writes the run's summary (``summarise``) and, if
asked, the model on every image (``train_full``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass
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

from comp import console, files
from comp.config import PRETRAINED_MODEL, SIZED_KEYS, Config, is_auto, suggest, to_dict
from comp.data.cache import cache_dir, cached_images
from comp.data.competition import Competition, encode_labels, load_competition, read_csv, resolve
from comp.data.images import image_stats
from comp.data.transforms import create_transform
from comp.errors import ConfigError, DataError
from comp.fit.heads import train_heads
from comp.fit.loop import EpochHook, Fold, FoldResult, setup_fold, train_fold
from comp.folds.split import folds_path, read_folds
from comp.hardware.distributed import Dist, barrier, gather, init_distributed
from comp.metrics import fit_priors, macro_f1, write_priors
from comp.models.factory import create_model
from comp.plots import plot_curves
from comp.runs import (
    CLASSES_FILE,
    CONFIG_FILE,
    CURVES_FILE,
    DONE_FILE,
    FULL_DIR,
    LAST_FILE,
    LINEAGE_FILE,
    OOF_FILE,
    SUMMARY_FILE,
    TRANSFORMS_FILE,
    fold_dir,
    runs_dir,
    write_probs,
)
from comp.teach.lineage import describe, write_lineage
from comp.teach.nested import fixed_config
from comp.teach.teaching import Teaching, prepare
from comp.track.trackers import Trackers, experiment_name, open_run, require
from comp.train.budget import choose_precision, fit_time_limit
from comp.train.recipe import Recipe
from comp.train.recipe import resolve as resolve_recipe

log = logging.getLogger(__name__)


def run_name(cfg: Config) -> str:
    return f"{cfg.model.replace('/', '_')}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


# --- the run: a plan, then one fold after another ----------------------------------------


def train(
    root: Path,
    cfg: Config,
    *,
    name: str | None = None,
    folds: list[int] | None = None,
    on_epoch: EpochHook | None = None,
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
    plan = plan_run(root, cfg, name=name, folds=folds, resume=resume)
    write_plan(plan)
    trackers = start_tracking(plan)
    if plan.cfg.head == "linear":
        train_folds(plan, trackers=trackers, on_epoch=on_epoch)
    else:
        fit_heads(plan)
    summary = (
        summarise(plan.run_dir, classes=plan.classes, n_folds=plan.n_folds)
        if plan.dist.main
        else {}
    )
    # No process returns, nor trains the full model, before the run is summarised.
    barrier(plan.dist)
    finish_tracking(trackers, summary, plan.run_dir)
    if full and plan.cfg.head == "linear":
        train_full(plan)
    return summary


@dataclass(frozen=True)
class RunPlan:
    """A run resolved before its first fold trains: what every fold, and every process, shares.

    Its rows are the train images, then any pseudo-labelled test images (fold -1: never
    validated); ``images``, ``targets`` and ``fold_of`` cover every row, ``table`` the
    train images alone.
    """

    root: Path
    cfg: Config  # recipe and time limit resolved: what config.yaml holds
    run_dir: Path
    table: pd.DataFrame  # the folds file: Id, label, fold
    classes: list[str]
    n_folds: int  # in the folds file
    folds: list[int]  # the folds asked for
    todo: list[int]  # the folds asked for that have not finished (with resume)
    teaching: Teaching  # every row: its image, fold, labels and soft targets
    transform: A.Compose
    device: torch.device
    dist: Dist
    resume: bool

    @property
    def images(self) -> np.ndarray:
        return self.teaching.images

    @property
    def targets(self) -> np.ndarray:
        """Every row's hard label, as a model on every row sees it."""
        return self.teaching.targets(None)

    @property
    def fold_of(self) -> np.ndarray:
        return self.teaching.fold_of


def plan_run(
    root: Path,
    cfg: Config,
    *,
    name: str | None,
    folds: list[int] | None,
    resume: bool,
) -> RunPlan:
    """Resolve a run, writing nothing: its folds, recipe, images, teaching and epochs.

    Raises ConfigError for a run that cannot go ahead: a fold not in the folds file, an
    unknown optimizer, nothing to resume, a run folder trained with another config.
    """
    t_start = time.perf_counter()
    require(cfg.tracker)
    comp = load_competition(root, cfg)
    table = read_folds(folds_path(root, cfg), labels=comp.train)
    all_folds = sorted(int(k) for k in table["fold"].unique())
    asked = checked_folds(folds, all_folds)
    dist_, device = init_distributed(cfg.device)
    if not dist_.main:
        # One process writes the run and speaks; the others only compute.
        console.mute()
    check_optimizer(cfg.optimizer)
    if resume and not (name and (runs_dir(root) / name / CONFIG_FILE).exists()):
        raise ConfigError(
            f"--resume: {runs_dir(root) / (name or '?')} is not a run to resume (no config.yaml)"
        )
    # The recipe is resolved once, here, so every fold (and every process) trains alike.
    recipe_cfg, recipe = resolve_run_config(root, cfg, comp=comp, device=device)
    # Every process must write to (and the first one name) the same run.
    run_dir = runs_dir(root) / gather(name or run_name(recipe_cfg), dist_)[0]
    saved = run_dir / CONFIG_FILE
    processes = f", {dist_.world} processes" if dist_.world > 1 else ""
    # Measured on the first process and shared, so every process trains at one precision.
    recipe_cfg, chosen = choose_precision(recipe_cfg, n_classes=len(comp.classes), device=device)
    recipe_cfg = dataclasses.replace(recipe_cfg, amp=gather(recipe_cfg.amp, dist_)[0])
    log.info(
        f"run {run_dir.name}: {recipe_cfg.model}, {len(comp.classes)} classes, {len(table)} images, "
        f"folds {asked}, device {device}{processes}, {chosen}"
    )
    images = decode_train(root, recipe_cfg, comp=comp, table=table, dist_=dist_)
    todo = [k for k in asked if not (resume and (fold_dir(run_dir, k) / OOF_FILE).exists())]
    teaching, teaching_s = learn_from(
        root,
        recipe_cfg,
        comp=comp,
        table=table,
        images=images,
        device=device,
        dist_=dist_,
    )
    before = yaml.safe_load(saved.read_text()) if saved.exists() else None
    run_cfg = sized_run(
        recipe_cfg,
        recipe,
        before=before,
        teaching=teaching,
        folds=todo,
        # The time limit is the run's own: nested teachers train once, for every student.
        spent=time.perf_counter() - t_start - teaching_s,
        device=device,
        dist_=dist_,
    )
    if before is not None and before != to_dict(run_cfg):
        raise ConfigError(f"{run_dir}: this run was trained with another config; pick a new --name")
    return RunPlan(
        root=root,
        cfg=run_cfg,
        run_dir=run_dir,
        table=table,
        classes=comp.classes,
        n_folds=len(all_folds),
        folds=asked,
        todo=todo,
        teaching=teaching,
        transform=create_transform(run_cfg.aug, img_size=run_cfg.img_size),
        device=device,
        dist=dist_,
        resume=resume,
    )


def checked_folds(folds: list[int] | None, all_folds: list[int]) -> list[int]:
    """The folds asked for (None: all), each one of the folds file's."""
    for k in folds or []:
        if k not in all_folds:
            raise ConfigError(f"--fold {k}: folds are {all_folds[0]}..{all_folds[-1]}")
    return all_folds if folds is None else folds


def check_optimizer(name: str) -> None:
    optimizers = [str(o) for o in list_optimizers()]
    if name.lower() not in optimizers:
        raise ConfigError(f"optimizer '{name}' is not a timm optimizer{suggest(name, optimizers)}")


def resolve_run_config(
    root: Path, cfg: Config, *, comp: Competition, device: torch.device
) -> tuple[Config, Recipe]:
    """The config with its recipe resolved: where the weights come from, then every auto key."""
    cfg, weights = find_weights(root, cfg, n_classes=len(comp.classes))
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
    log.info(recipe.describe())
    return cfg, recipe


def find_weights(root: Path, cfg: Config, *, n_classes: int) -> tuple[Config, str]:
    """``cfg`` with its pretrained file's path resolved, and where the weights come from
    ("random" for none)."""
    if cfg.pretrained_file is not None:
        # Like every path in comp.yaml, relative to the workspace, not to where comp runs.
        cfg = dataclasses.replace(cfg, pretrained_file=str(resolve(root, cfg.pretrained_file)))
        return cfg, f"file:{cfg.pretrained_file}"
    if cfg.pretrained == "false":
        return cfg, "random"
    # Find out once, not once per fold, whether pretrained weights can be had.
    probe = PRETRAINED_MODEL if cfg.model == "auto" else cfg.model
    _, weights = create_model(probe, num_classes=n_classes, pretrained=cfg.pretrained)
    log.info(f"weights: {weights}")
    return cfg, weights


def decode_train(
    root: Path,
    cfg: Config,
    *,
    comp: Competition,
    table: pd.DataFrame,
    dist_: Dist,
) -> np.ndarray:
    """Every train image, decoded once (and, with the cache, once across runs): each fold
    and epoch reads the same memory-mapped array."""
    # The first process builds the cache; the others wait for it rather than decode too.
    if not dist_.main:
        barrier(dist_)
    images = cached_images(
        comp.train_paths(list(table["Id"])),
        cfg.img_size,
        cache_dir=cache_dir(root, enabled=cfg.cache_images),
        centre=cfg.centre,
        desc="decode train",
    )
    if dist_.main:
        barrier(dist_)
    return images


def learn_from(
    root: Path,
    cfg: Config,
    *,
    comp: Competition,
    table: pd.DataFrame,
    images: np.ndarray,
    device: torch.device,
    dist_: Dist,
) -> tuple[Teaching, float]:
    """What the run learns from: its labels, and with ``pseudo`` or ``distill`` the rows and
    soft targets comp.teach adds; and the seconds that preparing those took."""
    classes = comp.classes
    targets = encode_labels(table["label"], classes)
    fold_of = table["fold"].to_numpy()
    if not (cfg.pseudo or cfg.distill):
        return Teaching.plain(images, targets, fold_of, n_classes=len(classes)), 0.0
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
    )
    return teaching, time.perf_counter() - t_teach


def sized_run(
    cfg: Config,
    recipe: Recipe,
    *,
    before: dict[str, Any] | None,
    teaching: Teaching,
    folds: list[int],
    dist_: Dist,
    **measure: Any,
) -> Config:
    """``cfg`` with its epochs fitted to ``time_limit``: measured now, or as the run was sized."""
    if cfg.time_limit is None or cfg.head != "linear":
        return cfg
    if before is not None and before.get("time_limit") == cfg.time_limit:
        # The run was sized when it began (resumed, or its other folds trained apart):
        # its epochs stand.
        return dataclasses.replace(cfg, **{k: before[k] for k in SIZED_KEYS})
    if not folds:
        return cfg
    sized = fit_time_limit(
        cfg,
        recipe,
        images=teaching.images,
        targets=teaching.targets(None),
        fold_of=teaching.fold_of,
        folds=folds,
        dist_=dist_,
        **measure,
    )
    # Every process must train the same schedule: the first one's measurement.
    return cast(Config, gather(sized, dist_)[0])


def write_plan(plan: RunPlan) -> None:
    """The run's config.yaml, classes.json, transforms.json and lineage (the first process)."""
    # Only now that every image has been read: bad data leaves no run folder behind.
    if not plan.dist.main:
        return
    files.write_yaml(plan.run_dir / CONFIG_FILE, to_dict(plan.cfg))
    files.write_json(plan.run_dir / CLASSES_FILE, plan.classes)
    files.write_json(plan.run_dir / TRANSFORMS_FILE, A.to_dict(plan.transform))
    if plan.teaching.lineage:
        write_lineage(plan.run_dir, plan.teaching.lineage, plan.teaching.pseudo)


# --- the folds -----------------------------------------------------------------------------


def train_folds(plan: RunPlan, *, trackers: Any, on_epoch: EpochHook | None) -> None:
    """Every fold asked for, one after another, into ``fold{k}/``."""
    for k in plan.folds:
        if k not in plan.todo:
            log.info(f"fold {k}: already trained")
            continue
        if not plan.resume and (fold_dir(plan.run_dir, k) / LAST_FILE).exists():
            log.info(f"fold {k}: was interrupted; training it again (--resume would go on from it)")
        f = setup_run_fold(plan, k)
        result = train_fold(
            f,
            classes=plan.classes,
            out_dir=fold_dir(plan.run_dir, k),
            on_epoch=on_epoch,
            resume=plan.resume,
            on_row=functools.partial(log_row, trackers, k),
        )
        finish_fold(plan, f, result)


def setup_run_fold(plan: RunPlan, k: int | None, cfg: Config | None = None) -> Fold:
    """Fold ``k`` of the run, validated on the fold file's fold k; ``k`` None: a model on
    every row, validated on nothing (``cfg``: its own)."""
    teaching = plan.teaching
    return setup_fold(
        cfg or plan.cfg,
        fold=plan.cfg.n_splits if k is None else k,
        images=plan.images,
        targets=teaching.targets(k),
        train_idx=teaching.train_idx(k),
        valid_idx=np.zeros(0, dtype=np.int64) if k is None else np.flatnonzero(plan.fold_of == k),
        n_classes=len(plan.classes),
        device=plan.device,
        transform=plan.transform,
        dist_=plan.dist,
        soft=teaching.soft(k),
    )


def finish_fold(plan: RunPlan, f: Fold, result: FoldResult) -> None:
    """A trained fold's out-of-fold probabilities, written last: they mark it finished."""
    out_dir = fold_dir(plan.run_dir, f.number)
    if f.dist.main:
        front = plan.table.iloc[f.valid_idx][["Id", "label", "fold"]]
        write_probs(out_dir / OOF_FILE, front, result.valid_probs, plan.classes)
        # A finished fold is never resumed; its optimizer state would only take space.
        (out_dir / LAST_FILE).unlink(missing_ok=True)
    log.info(
        f"fold {f.number}: best macro-F1 {result.best_f1:.4f} at epoch {result.best_epoch} "
        f"({result.epochs_run} epochs run)"
    )


def fit_heads(plan: RunPlan) -> None:
    """``head`` other than linear: a scikit-learn head per fold on pooled features
    (comp.fit.heads), in place of the fold loop."""
    if plan.dist.world > 1:
        raise ConfigError(f"head '{plan.cfg.head}' is fitted in one process; drop --devices")
    train_heads(
        plan.root,
        plan.cfg,
        run_dir=plan.run_dir,
        images=plan.images,
        targets=plan.targets,
        fold_of=plan.fold_of,
        folds=plan.todo,
        table=plan.table,
        classes=plan.classes,
        device=plan.device,
    )


def train_full(plan: RunPlan) -> None:
    """One model on every row, as long as the run's folds did best: ``full/best.pt``."""
    fcfg = fixed_config(plan.run_dir, plan.cfg)
    out_dir = plan.run_dir / FULL_DIR
    log.info(
        f"full model: every image{' and pseudo-label' if plan.teaching.keep is not None else ''}, "
        f"{fcfg.epochs} epochs (the folds' median best), last weights -> {out_dir}"
    )
    f = setup_run_fold(plan, None, cfg=fcfg)
    train_fold(f, classes=plan.classes, out_dir=out_dir, select=False)
    if plan.dist.main:
        (out_dir / LAST_FILE).unlink(missing_ok=True)
        # Last: `comp predict` takes the model only once it has trained to the end.
        files.write_json(out_dir / DONE_FILE, {"epochs": fcfg.epochs, "rows": len(f.train_idx)})
    barrier(plan.dist)


# --- tracking ------------------------------------------------------------------------------


def start_tracking(plan: RunPlan) -> Any:
    """The run's trackers (the first process only), given its config and lineage."""
    if not plan.dist.main:
        return Trackers({})
    root, cfg = plan.root, plan.cfg
    trackers = open_run(
        root,
        cfg.tracker,
        run=plan.run_dir.name,
        experiment=experiment_name(root, cfg.competition),
        run_dir=plan.run_dir,
    )
    if trackers:
        trackers.params(to_dict(cfg))
        trackers.tags(lineage_tags(root, cfg, plan.teaching))
        log.info(f"tracking: {cfg.tracker}")
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
        run_dir / name for name in (SUMMARY_FILE, CONFIG_FILE, CURVES_FILE, LINEAGE_FILE)
    )
    trackers.close()


# --- the run's summary ---------------------------------------------------------------------


def summarise(run_dir: Path, *, classes: list[str], n_folds: int) -> dict[str, Any]:
    """Gather every fold's OOF of a run into oof.csv and cv.json (folds may be trained apart)."""
    parts = []
    for k in range(n_folds):
        path = fold_dir(run_dir, k) / OOF_FILE
        if path.exists():
            # As text, so labels and Ids such as "NA" or "None" stay what they are.
            part = read_csv(path)
            parts.append(part.astype(dict.fromkeys(classes, np.float64)).astype({"fold": int}))
    if not parts:
        raise DataError(f"{run_dir}: no trained folds")
    oof = pd.concat(parts, ignore_index=True)
    probs = oof[classes].to_numpy(np.float64)
    y = encode_labels(oof["label"], classes)
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
