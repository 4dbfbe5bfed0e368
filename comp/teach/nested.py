"""Nested teachers: for every pair of folds (j, k), a model of the parent's config trained
without both, so a student validated on fold k learns from no model that saw fold k.

Reads the parent run (``config.yaml``, ``fold*/metrics.csv``, ``oof.csv``,
``blend.json``) and the train images. Writes the teachers into the parent, once:
``runs/<RUN>/nested/pair{j}-{k}/`` (``metrics.csv``, ``probs.csv``). Trains through
comp.fit.loop, the fold loop a run uses.

Why: the parent's own out-of-fold prediction of an image in fold j comes from a
model that trained on every other fold, fold k included. A student validated on
fold k would then learn from a teacher that saw fold k's labels.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp import console
from comp.config import Config, validate
from comp.data.cache import cache_dir, cached_images
from comp.data.competition import Competition, encode_labels, read_csv
from comp.data.transforms import create_transform
from comp.errors import ConfigError
from comp.fit.loop import setup_fold, train_fold
from comp.fit.losses import soften
from comp.hardware.distributed import Dist, barrier
from comp.runs import (
    BEST_FILE,
    LAST_FILE,
    METRICS_FILE,
    OOF_FILE,
    find_parent,
    read_blend,
    read_config,
    write_probs,
)
from comp.runs import read_summary as summary_of

log = logging.getLogger(__name__)


def teacher_epochs(parent: Path, cfg: Config) -> int:
    """The median epoch at which the parent's folds did best: its teachers train that long."""
    best = []
    for metrics in sorted(parent.glob(f"fold*/{METRICS_FILE}")):
        rows = pd.read_csv(metrics)
        if len(rows):
            f1 = rows["valid_macro_f1"].to_numpy()
            best.append(int(rows["epoch"].to_numpy()[int(np.argmax(f1))]))
    epochs = int(np.median(best)) if best else cfg.epochs
    return max(epochs, cfg.freeze_epochs + 1)


def fixed_config(parent: Path, cfg: Config) -> Config:
    """``cfg`` for a model that picks nothing by validation: as many epochs as the parent's
    folds did best at, and its last weights. A nested teacher, so no choice it makes depends
    on the labels it predicts; a model trained on every image, which has none to score."""
    epochs = teacher_epochs(parent, cfg)
    return validate(
        dataclasses.replace(
            cfg,
            epochs=epochs,
            patience=epochs + 1,
            time_limit=None,
            warmup_epochs=min(cfg.warmup_epochs, max(0, epochs - cfg.freeze_epochs - 1)),
            mixup_off_epoch=max(1, round(cfg.mixup_off_epoch * epochs / max(cfg.epochs, 1))),
            # Teachers learn from the labels: a teacher of a teacher would need nesting again.
            pseudo=None,
            distill=None,
        )
    )


def nested_teachers(root: Path, parent: Path, **kw: Any) -> tuple[np.ndarray, str]:
    """(n_folds, n_train, n_classes): ``out[k, i]`` is a prediction for train image i (not in
    fold k) by a model that trained on neither fold k nor image i's fold; and what they are.
    ``kw``: those of _pair_teachers.

    A blend's teachers are its members' teachers, weighed as the blend weighs them."""
    members = read_blend(parent)
    if members is None:
        return _pair_teachers(root, parent, **kw)
    total = sum(
        weight * nested_teachers(root, root / "runs" / name, **kw)[0]
        for name, weight in zip(*members, strict=True)
    )
    return np.asarray(total), f"the nested teachers of blend members {', '.join(members[0])}"


def _pair_teachers(
    root: Path,
    parent: Path,
    *,
    comp: Competition,
    table: pd.DataFrame,
    classes: list[str],
    device: Any,
    dist_: Dist,
) -> tuple[np.ndarray, str]:
    pcfg = read_config(parent)
    if pcfg.head != "linear":
        raise ConfigError(
            f"distill {parent.name}: head '{pcfg.head}' runs have no model to train as a teacher"
        )
    tcfg = fixed_config(parent, pcfg)
    fold_of = table["fold"].to_numpy()
    n_folds = int(fold_of.max()) + 1
    if n_folds < 3:
        raise ConfigError(
            f"distill: a nested teacher trains without two folds, and {n_folds} folds leave it "
            "nothing; use --n-splits 3 or more"
        )
    targets = encode_labels(table["label"], classes)
    out = np.zeros((n_folds, len(table), len(classes)), dtype=np.float32)
    pairs = [(j, k) for j in range(n_folds) for k in range(j + 1, n_folds)]
    todo = [p for p in pairs if _load_pair(parent, p, table, classes) is None]
    how = (
        f"{len(pairs)} models of {parent.name}'s config, each trained without two folds, "
        f"{tcfg.epochs} epochs, last weights"
    )
    if todo:
        log.info(
            f"distill {parent.name}: training {len(todo)} of {len(pairs)} nested teachers "
            f"({tcfg.model}, {tcfg.epochs} epochs each, without two folds), once -> "
            f"runs/{parent.name}/nested/"
        )
        images = cached_images(
            comp.train_paths(list(table["Id"])),
            tcfg.img_size,
            cache_dir=cache_dir(root, enabled=tcfg.cache_images),
            centre=tcfg.centre,
            desc="decode train",
        )
        transform = create_transform(tcfg.aug, img_size=tcfg.img_size)
    for j, k in pairs:
        probs = _load_pair(parent, (j, k), table, classes)
        if probs is None:
            held = np.isin(fold_of, (j, k))
            f = setup_fold(
                tcfg,
                fold=1000 + j * n_folds + k,
                images=images,
                targets=targets,
                train_idx=np.flatnonzero(~held),
                valid_idx=np.flatnonzero(held),
                n_classes=len(classes),
                device=device,
                transform=transform,
                dist_=dist_,
            )
            pair_dir = parent / "nested" / f"pair{j}-{k}"
            # One line per teacher (below), not one per epoch of each.
            with console.silenced():
                result = train_fold(f, classes=classes, out_dir=pair_dir, select=False)
            probs = np.zeros((len(table), len(classes)), dtype=np.float32)
            probs[held] = result.valid_probs
            if dist_.main:
                write_probs(
                    pair_dir / "probs.csv",
                    table.loc[held, ["Id", "fold"]],
                    result.valid_probs,
                    classes,
                )
                for leftover in (LAST_FILE, BEST_FILE):
                    (pair_dir / leftover).unlink(missing_ok=True)
            barrier(dist_)
            log.info(f"  teacher without folds {j} and {k}: done")
        out[k, fold_of == j] = probs[fold_of == j]
        out[j, fold_of == k] = probs[fold_of == k]
    return out, how


def _load_pair(
    parent: Path, pair: tuple[int, int], table: pd.DataFrame, classes: list[str]
) -> np.ndarray | None:
    """A finished teacher's probabilities over the train table, if they match its folds."""
    path = parent / "nested" / f"pair{pair[0]}-{pair[1]}" / "probs.csv"
    if not path.exists():
        return None
    part = read_csv(path)
    held = table["fold"].isin(pair).to_numpy()
    if list(part["Id"]) != list(table.loc[held, "Id"]):
        return None  # trained on another split: train it again
    probs = np.zeros((len(table), len(classes)), dtype=np.float32)
    probs[held] = part[classes].astype(np.float32).to_numpy()
    return probs


def distill_targets(
    root: Path,
    cfg: Config,
    *,
    comp: Competition,
    table: pd.DataFrame,
    classes: list[str],
    device: Any,
    dist_: Dist,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """For ``--distill``: the nested teachers' probabilities per student fold, the parent's
    OOF for a model trained on everything (both softened), and their lineage."""
    assert cfg.distill is not None
    parent = find_parent(root, cfg.distill, classes=classes, what="--distill")
    probs, how = nested_teachers(
        root,
        parent,
        comp=comp,
        table=table,
        classes=classes,
        device=device,
        dist_=dist_,
    )
    teacher = np.stack([soften(p, cfg.distill_temperature) for p in probs])
    # With no validation images to keep clean, the parent's own OOF teaches.
    oof = read_csv(parent / OOF_FILE).set_index("Id")
    full_teacher = soften(
        oof.loc[list(table["Id"]), classes].astype(np.float64).to_numpy(),
        cfg.distill_temperature,
    )
    lineage = {
        "run": parent.name,
        "cv_macro_f1": summary_of(parent).get("cv_macro_f1"),
        "weight": cfg.distill_weight,
        "temperature": cfg.distill_temperature,
        "teachers": how,
        "built_from": summary_of(parent).get("built_from"),
    }
    log.info(
        f"distillation from {parent.name}: {cfg.distill_weight:g} teacher, "
        f"{1 - cfg.distill_weight:g} labels, temperature {cfg.distill_temperature:g}"
    )

    return teacher, full_teacher, lineage
