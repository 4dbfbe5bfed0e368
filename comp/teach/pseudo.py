"""Pseudo-labels: the test images as training rows, labelled per fold by the parent run.

Reads the parent run's ``test_probs.csv`` and ``fold{k}/test_probs.csv`` (from
``comp predict RUN``), its ``oof.csv`` (to check it was trained on this split),
the folds report (``folds_k{n}_seed{s}.json``: the similarity features and the
distance its grouping joined at), and the train and test images. Writes nothing;
comp.teach.lineage writes ``pseudo.csv``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.config import Config
from comp.data.cache import cache_dir, cached_images
from comp.data.competition import Competition, read_csv
from comp.errors import ConfigError
from comp.folds.similarity import nearest
from comp.folds.split import TWIN_DISTANCE, similarity_features
from comp.runs import OOF_FILE, TEST_PROBS_FILE, find_parent, fold_dir, read_blend, read_test_probs
from comp.runs import read_summary as summary_of

log = logging.getLogger(__name__)


def fold_test_probs(
    root: Path, parent: Path, *, classes: list[str], test_ids: list[str], n_folds: int
) -> np.ndarray:
    """(n_folds + 1, n_test, C): each fold model's test predictions, then the ensemble's.

    Fold k's pseudo-labels come from the parent's fold-k model, which never saw fold k's
    images: labels from the whole ensemble would carry fold k's answers into its training
    through the test images (a transfer set), and CV would rise above the leaderboard."""
    members = read_blend(parent)
    if members is not None:
        parts = [
            w
            * fold_test_probs(
                root, root / "runs" / n, classes=classes, test_ids=test_ids, n_folds=n_folds
            )
            for n, w in zip(*members, strict=True)
        ]
        return np.asarray(sum(parts))
    paths = [fold_dir(parent, k) / TEST_PROBS_FILE for k in range(n_folds)]
    paths.append(parent / TEST_PROBS_FILE)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise ConfigError(
            f"pseudo {parent.name}: no test predictions ({missing[0].relative_to(parent)}); "
            f"run `comp predict {parent.name}` first"
        )
    return np.stack([read_test_probs(p, classes=classes, test_ids=test_ids) for p in paths])


def same_split(parent: Path, table: pd.DataFrame) -> bool:
    """Whether the parent validated every image on the fold this split puts it in."""
    if not (parent / OOF_FILE).exists():
        return False
    theirs = read_csv(parent / OOF_FILE)
    ours = dict(zip(table["Id"], table["fold"].astype(int), strict=True))
    return len(theirs) == len(ours) and all(
        ours.get(i) == int(k) for i, k in zip(theirs["Id"], theirs["fold"], strict=True)
    )


def twin_threshold(report_path: Path) -> tuple[list[str], list[float] | None, float, str]:
    """The similarity features, their scales and the distance at which the folds grouped
    images (twins only, for plain folds), as the folds report records them."""
    if not report_path.exists():
        # Folds from your own group column (or older ones): twins on the subject alone.
        return ["subject"], None, TWIN_DISTANCE, "twins on the subject; no folds report"
    report = json.loads(report_path.read_text())
    used = report.get("used") or report["chosen"]["name"]
    chosen = next((c for c in report["candidates"] if c["name"] == used), report["chosen"])
    threshold = chosen.get("threshold")
    if threshold is None:
        return report["features"], report["scales"], TWIN_DISTANCE, "twins; the folds are plain"
    return report["features"], report["scales"], float(threshold), used


def barred_folds(
    cfg: Config,
    comp: Competition,
    *,
    fold_of: np.ndarray,
    test_ids: list[str],
    report_path: Path,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(n_test, n_folds) booleans: a test image within the folds' grouping distance of one of
    fold k's images is barred from fold k's training part, as it would have been grouped
    with that image had it been in train."""
    methods, scales, threshold, how = twin_threshold(report_path)
    n = len(fold_of)
    feats = similarity_features(
        cfg, [*comp.train_paths(), *comp.test_paths(test_ids)], methods=methods
    )
    if scales is not None:
        feats = feats.scaled(scales)
    dist, idx = nearest(feats.take(slice(n, None)), feats.take(slice(0, n)), k=min(10, n))
    n_folds = int(fold_of.max()) + 1
    barred = np.zeros((len(test_ids), n_folds), dtype=bool)
    for col in range(dist.shape[1]):
        near = np.flatnonzero(dist[:, col] <= threshold)
        barred[near, fold_of[idx[near, col]]] = True
    return barred, {"twin_distance": threshold, "grouping": how, "features": methods}


@dataclass
class PseudoRows:
    """Every test image as a training row: each fold's labels for it, and whether it keeps it."""

    probs: np.ndarray  # (n_folds + 1, n_test, C): each fold model's, then the ensemble's
    keep: np.ndarray  # (n_folds + 1, n_test)
    barred: np.ndarray  # (n_test, n_folds)
    table: pd.DataFrame  # for pseudo.csv
    images: np.ndarray
    lineage: dict[str, Any]


def pseudo_rows(
    root: Path,
    cfg: Config,
    *,
    comp: Competition,
    table: pd.DataFrame,
    classes: list[str],
    report_path: Path,
) -> PseudoRows:
    """The test images as rows for ``--pseudo``: labelled per fold by the parent's fold-k model,
    kept where confident enough and not a near-twin of one of fold k's images."""
    assert cfg.pseudo is not None
    fold_of = table["fold"].to_numpy()
    n_folds = int(fold_of.max()) + 1
    parent = find_parent(root, cfg.pseudo, classes=classes, what="--pseudo")
    if not same_split(parent, table):
        raise ConfigError(
            f"--pseudo {parent.name}: it was trained on other folds than "
            f"{report_path.with_suffix('.csv').name}; its fold-k model saw some of this "
            "run's fold-k images, so its pseudo-labels would leak them. Pseudo-label from a "
            "run of this split"
        )
    test_ids = comp.test_ids()
    pseudo_probs = fold_test_probs(
        root, parent, classes=classes, test_ids=test_ids, n_folds=n_folds
    )
    barred, twins = barred_folds(
        cfg,
        comp,
        fold_of=fold_of,
        test_ids=test_ids,
        report_path=report_path,
    )
    confident = pseudo_probs.max(axis=2) >= cfg.pseudo_threshold
    keep = confident & np.c_[~barred, np.ones(len(test_ids), dtype=bool)].T
    test_images = cached_images(
        comp.test_paths(test_ids),
        cfg.img_size,
        cache_dir=cache_dir(root, enabled=cfg.cache_images),
        centre=cfg.centre,
        desc="decode test",
    )
    ensemble = pseudo_probs[-1]
    pseudo = pd.DataFrame(
        {
            "Id": test_ids,
            "label": np.asarray(classes)[ensemble.argmax(axis=1)],
            "confidence": ensemble.max(axis=1).round(6),
            "used_in_folds": [";".join(str(k) for k in np.flatnonzero(r)) for r in keep[:-1].T],
            "barred_from_folds": [";".join(str(k) for k in np.flatnonzero(r)) for r in barred],
        }
    )
    per_fold = keep[:-1].sum(axis=1)
    counts = pd.Series(
        np.asarray(classes)[pseudo_probs[:-1].argmax(axis=2)[keep[:-1]]]
    ).value_counts()
    lineage = {
        "run": parent.name,
        "cv_macro_f1": summary_of(parent).get("cv_macro_f1"),
        "threshold": cfg.pseudo_threshold,
        "soft": cfg.pseudo_soft,
        "labelled_by": "the parent's fold-k model for fold k; its ensemble for a model on every image",
        "test_images": len(test_ids),
        "images": round(float(per_fold.mean()), 1),
        "images_per_fold": {str(k): int(n) for k, n in enumerate(per_fold)},
        "per_class": {c: int(counts.get(c, 0)) for c in classes},
        "barred_per_fold": {str(k): int(barred[:, k].sum()) for k in range(n_folds)},
        **twins,
        "built_from": summary_of(parent).get("built_from"),
    }
    log.info(
        f"pseudo-labels from {parent.name} (fold k's from its fold-k model): "
        f"{', '.join(str(int(n)) for n in per_fold)} of {len(test_ids)} test images per fold "
        f"({'probabilities' if cfg.pseudo_soft else 'top class'}, confidence >= "
        f"{cfg.pseudo_threshold:g}); near-twins of a fold's images left out of that fold: "
        f"{', '.join(str(int(b)) for b in barred.sum(axis=0))} "
        f"(within {twins['twin_distance']:g}: {twins['grouping']})"
    )

    return PseudoRows(pseudo_probs, keep, barred, pseudo, test_images, lineage)
