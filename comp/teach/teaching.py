"""A run's teaching: the rows and soft targets it learns from besides its labels.

Reads the parent run (``runs/<RUN>/``, a run or a blend): ``test_probs.csv``
(from ``comp predict RUN``) for pseudo-labels; ``config.yaml``, ``fold*/metrics.csv``
and ``blend.json`` for its nested teachers. Reads the folds file and its report
(``folds_k{n}_seed{s}.json``: the similarity features and the distance its
grouping joined at), and the train and test images.

Writes the nested teachers into the parent, once: ``runs/<RUN>/nested/pair{j}{k}/``
(``metrics.csv``, ``probs.csv``), each a model of RUN's config trained without
folds j and k. In the new run: ``lineage.json`` (what it was built from, also
copied into its cv.json) and ``pseudo.csv`` (the test images labelled, how, and
the folds each is barred from).

Why nested teachers: RUN's own out-of-fold prediction of an image in fold j
comes from a model that trained on every other fold, fold k included. A student
validated on fold k would then learn from a teacher that saw fold k's labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.config import Config
from comp.data.competition import Competition, read_csv
from comp.errors import ConfigError
from comp.hardware.distributed import Dist
from comp.runs import OOF_FILE, find_parent
from comp.runs import read_summary as summary_of
from comp.teach.nested import distill_targets
from comp.teach.pseudo import pseudo_rows, same_split


@dataclass
class Teaching:
    """Training rows and targets beyond a fold's labelled images.

    Rows: the train images, then every test image (fold -1: never validated). Fold k
    trains on the test images its pseudo-labels keep (``keep[k]``), labelled by the
    parent's fold-k model; ``k`` None means a model trained on everything, labelled by
    the parent's ensemble. ``soft(k)`` packs the targets for comp.fit.losses.TeacherLoss.
    """

    n_train: int
    n_classes: int
    images: np.ndarray
    base_targets: np.ndarray  # the train images' labels
    fold_of: np.ndarray
    pseudo_probs: np.ndarray | None  # (n_folds + 1, n_test, C); the last: the ensemble's
    keep: np.ndarray | None  # (n_folds + 1, n_test): confident enough and not barred
    barred: np.ndarray | None  # (n_test, n_folds): near-twin of one of fold k's images
    soft_pseudo: bool
    packed: bool  # train on soft targets (a teacher, or soft pseudo-labels)
    smoothing: float
    teacher: np.ndarray | None  # (n_folds, n_train, C) the nested teachers' probabilities
    full_teacher: np.ndarray | None  # (n_train, C) the parent's OOF, for a model on everything
    weight: float
    lineage: dict[str, Any]
    pseudo: pd.DataFrame | None  # per test image, for pseudo.csv

    @classmethod
    def plain(
        cls, images: np.ndarray, targets: np.ndarray, fold_of: np.ndarray, *, n_classes: int
    ) -> Teaching:
        """A run that learns from its labels alone: fold k trains on the other folds."""
        return cls(
            n_train=len(targets),
            n_classes=n_classes,
            images=images,
            base_targets=targets,
            fold_of=fold_of,
            pseudo_probs=None,
            keep=None,
            barred=None,
            soft_pseudo=False,
            packed=False,
            smoothing=0.0,
            teacher=None,
            full_teacher=None,
            weight=0.0,
            lineage={},
            pseudo=None,
        )

    def _slot(self, k: int | None) -> int:
        assert self.keep is not None
        return len(self.keep) - 1 if k is None else k

    def train_idx(self, k: int | None) -> np.ndarray:
        """Fold k's training rows; with ``k`` None, every train image and kept test image."""
        labelled = np.arange(self.n_train)
        if k is not None:
            labelled = np.flatnonzero(self.fold_of[: self.n_train] != k)
        if self.keep is None:
            return labelled
        return np.concatenate([labelled, self.n_train + np.flatnonzero(self.keep[self._slot(k)])])

    def targets(self, k: int | None) -> np.ndarray:
        """Every row's hard label as fold k sees it (test rows: its labelling model's top class)."""
        if self.pseudo_probs is None:
            return self.base_targets
        pseudo = self.pseudo_probs[self._slot(k)].argmax(axis=1)
        return np.concatenate([self.base_targets, pseudo]).astype(np.int64)

    def soft(self, k: int | None) -> np.ndarray | None:
        if not self.packed:
            return None
        targets = self.targets(k)
        first = np.full((len(targets), self.n_classes), self.smoothing / self.n_classes, np.float32)
        first[np.arange(len(targets)), targets] += 1 - self.smoothing
        if self.soft_pseudo and self.pseudo_probs is not None:
            first[self.n_train :] = self.pseudo_probs[self._slot(k)]
        second = np.zeros_like(first)
        teacher = (
            self.full_teacher if k is None else None if self.teacher is None else self.teacher[k]
        )
        if teacher is not None:
            first[: self.n_train] *= 1 - self.weight
            second[: self.n_train] = self.weight * teacher
        return np.concatenate([first, second], axis=1)


def prepare(
    root: Path,
    cfg: Config,
    *,
    comp: Competition,
    table: pd.DataFrame,
    classes: list[str],
    images: np.ndarray,
    targets: np.ndarray,
    fold_of: np.ndarray,
    report_path: Path,
    device: Any,
    dist_: Dist,
) -> Teaching:
    """The pseudo-labelled rows and soft targets ``cfg`` asks for, and their lineage."""
    n_train = len(table)
    lineage: dict[str, Any] = {}
    if cfg.distill:
        # Checked before the (long) pseudo-label features and nested teachers.
        oof = read_csv(find_parent(root, cfg.distill, classes=classes, what="--distill") / OOF_FILE)
        if set(oof["Id"]) != set(table["Id"]):
            raise ConfigError(
                f"--distill {cfg.distill}: its out-of-fold predictions cover {len(oof)} of "
                f"{len(table)} training images; train all its folds first"
            )
    pseudo_probs = keep = barred = pseudo = None
    all_fold_of = fold_of
    if cfg.pseudo:
        rows = pseudo_rows(
            root,
            cfg,
            comp=comp,
            table=table,
            classes=classes,
            report_path=report_path,
        )
        pseudo_probs, keep, barred, pseudo = rows.probs, rows.keep, rows.barred, rows.table
        lineage["pseudo"] = rows.lineage
        images = np.concatenate([np.asarray(images), np.asarray(rows.images)])
        all_fold_of = np.concatenate([fold_of, np.full(len(pseudo), -1)])
    teacher = full_teacher = None
    if cfg.distill:
        teacher, full_teacher, lineage["distill"] = distill_targets(
            root,
            cfg,
            comp=comp,
            table=table,
            classes=classes,
            device=device,
            dist_=dist_,
        )

    parent_name = cfg.distill or cfg.pseudo
    assert parent_name is not None
    parent_dir = find_parent(root, parent_name, classes=classes, what="parent")
    lineage["parent"] = parent_dir.name
    # Fold by fold, a comparison holds only where both runs validated on the same folds.
    lineage["parent_fold_macro_f1"] = (
        summary_of(parent_dir).get("fold_macro_f1") if same_split(parent_dir, table) else None
    )
    return Teaching(
        n_train=n_train,
        n_classes=len(classes),
        images=images,
        base_targets=targets,
        fold_of=all_fold_of,
        pseudo_probs=pseudo_probs,
        keep=keep,
        barred=barred,
        soft_pseudo=bool(cfg.pseudo and cfg.pseudo_soft),
        packed=bool(cfg.distill or (cfg.pseudo and cfg.pseudo_soft)),
        smoothing=max(cfg.label_smoothing, 0.0),
        teacher=teacher,
        full_teacher=full_teacher,
        weight=cfg.distill_weight,
        lineage=lineage,
        pseudo=pseudo,
    )
