"""Cross-validation folds.

Reads the labels table (``train_csv``). Writes ``folds/folds_k{n}_seed{s}.csv``
with columns Id,label,fold (and group, when near-duplicate groups kept
together); ``comp train`` reads the file that matches its config, so changing
n_splits or seed never mixes two splits.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from comp import io
from comp.config import Config
from comp.data import DataError, read_csv


def folds_path(root: Path, cfg: Config) -> Path:
    return root / "folds" / f"folds_k{cfg.n_splits}_seed{cfg.seed}.csv"


def check_class_counts(labels: pd.DataFrame, *, n_splits: int) -> None:
    """Refuse a split in which some class cannot be in every validation fold."""
    counts = labels["label"].value_counts()
    small = counts[counts < n_splits]
    if len(small):
        listed = ", ".join(f"'{c}' ({n})" for c, n in small.sort_values().items())
        raise DataError(
            f"{len(small)} class(es) have fewer images than the {n_splits} folds: {listed}. "
            "Lower --n-splits, or add or merge images of those classes."
        )


def make_folds(
    labels: pd.DataFrame, *, n_splits: int, seed: int, groups: np.ndarray | None = None
) -> pd.DataFrame:
    """Stratified K folds: every class spread evenly over the folds, reproducibly.

    With ``groups``, no group is split across folds (sklearn's StratifiedGroupKFold),
    so near-duplicates never sit on both sides of a validation split.
    """
    check_class_counts(labels, n_splits=n_splits)
    fold = np.full(len(labels), -1, dtype=np.int64)
    if groups is None:
        skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = skf.split(labels["Id"], labels["label"])
    else:
        n_groups = len(set(groups.tolist()))
        if n_groups < n_splits:
            raise DataError(
                f"only {n_groups} groups of images for {n_splits} folds; lower --n-splits"
            )
        sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = sgkf.split(labels["Id"], labels["label"], groups)
    for k, (_, valid) in enumerate(splits):
        fold[valid] = k
    table = labels[["Id", "label"]].assign(fold=fold)
    return table if groups is None else table.assign(group=groups)


def fold_counts(folds: pd.DataFrame) -> pd.DataFrame:
    """Images per class (rows) and fold (columns), with totals."""
    return pd.crosstab(folds["label"], folds["fold"], margins=True, margins_name="total")


def _params(path: Path) -> tuple[str, str]:
    m = re.fullmatch(r"folds_k(\d+)_seed(-?\d+)\.csv", path.name)
    return (m.group(1), m.group(2)) if m else ("N", "S")


def write_folds(path: Path, folds: pd.DataFrame) -> None:
    io.write_csv(path, folds)


def read_folds(path: Path, *, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read a folds file, checking that it still matches the labels table."""
    n_splits, seed = _params(path)
    if not path.exists():
        raise DataError(
            f"{path}: no folds file for this config; run `comp folds --n-splits {n_splits} --seed {seed}` first"
        )
    df = read_csv(path)
    if list(df.columns[:3]) != ["Id", "label", "fold"]:
        raise DataError(f"{path}: expected columns Id,label,fold")
    folds = pd.to_numeric(df["fold"], errors="coerce")
    if folds.isna().any() or (folds % 1 != 0).any():
        row = int(np.flatnonzero(folds.isna() | (folds % 1 != 0))[0]) + 2
        raise DataError(f"{path}: row {row} has a fold that is not a whole number")
    df["fold"] = folds.astype(int)
    if labels is not None:
        merged = labels.merge(df, on="Id", how="outer", suffixes=("", "_folds"), indicator=True)
        if (merged["_merge"] != "both").any() or (merged["label"] != merged["label_folds"]).any():
            raise DataError(
                f"{path}: folds no longer match the labels table; run `comp folds` again"
            )
    return df
