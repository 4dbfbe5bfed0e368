"""``comp folds``: the workspace's folds, grouped as asked, with what the choice saw.

Reads the labels table and the train and test images (for the similarity features).
Writes ``folds/folds_k{n}_seed{s}.csv`` (Id,label,fold[,group]) and, for the
distance-matched folds, the report beside it (``.json``) and its picture (``.png``),
always after the folds, so a report never stands beside folds that were not written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp import files
from comp.config import Config
from comp.data.competition import Competition, load_competition, read_csv, resolve
from comp.errors import ConfigError, DataError
from comp.folds.report import fold_report_text
from comp.folds.similarity import DEFAULT_METHODS, METHODS
from comp.folds.split import (
    check_class_counts,
    choose_folds,
    fold_counts,
    fold_report,
    folds_path,
    make_folds,
    similarity_features,
    write_folds,
)
from comp.plots import plot_fold_distances

log = logging.getLogger(__name__)

# --groups values that are not a column of the labels table.
AUTO, NONE = "auto", "none"


class UnknownMethod(ConfigError):
    """A similarity method that does not exist (the CLI names its --method option)."""


def workspace_folds(
    root: Path,
    cfg: Config,
    *,
    groups: str = AUTO,
    methods: Sequence[str] = DEFAULT_METHODS,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Write the workspace's folds: distance-matched (``auto``), plain (``none``, reported
    alike), or grouped by a column of the labels table. Says the similarity report,
    warns of what makes CV less honest. Returns the folds' ``path``, the ``folds`` table,
    ``how`` they were made and the ``counts`` of images per class and fold."""
    comp = load_competition(root, cfg)
    # Before the similarity search, which reads every image.
    check_class_counts(comp.train, n_splits=cfg.n_splits)
    path = folds_path(root, cfg)
    if groups not in (AUTO, NONE):
        table = column_folds(root, cfg, comp.train, column=groups)
        how = f"stratified, grouped by column {groups}"
        write_folds(path, table)
    else:
        table, how, write_report = matched_folds(
            cfg,
            comp,
            plain=groups == NONE,
            methods=methods,
            threshold=threshold,
            path=path,
        )
        write_folds(path, table)
        write_report()
    return {"path": path, "folds": table, "how": how, "counts": fold_counts(table)}


def column_folds(root: Path, cfg: Config, labels: pd.DataFrame, *, column: str) -> pd.DataFrame:
    """Stratified folds that keep together the images sharing a value of the labels
    table's ``column`` (a patient, a subject); images without one share one group."""
    table = read_csv(resolve(root, cfg.train_csv))  # type: ignore[arg-type]
    if column not in table.columns:
        raise DataError(
            f"{cfg.train_csv}: no column '{column}' for --groups (columns: {', '.join(table.columns)})"
        )
    by_id = dict(zip(table[cfg.id_column], table[column], strict=False))
    codes = group_codes([by_id.get(i) for i in labels["Id"]])
    return make_folds(labels, n_splits=cfg.n_splits, seed=cfg.seed, groups=codes)


def group_codes(values: list[Any]) -> np.ndarray:
    """One integer a distinct value; missing values form one group of their own."""
    return pd.factorize(pd.Series(values, dtype=object).fillna("__none__"))[0]


def matched_folds(
    cfg: Config,
    comp: Competition,
    *,
    plain: bool = False,
    methods: Sequence[str] = DEFAULT_METHODS,
    threshold: float | None = None,
    path: Path,
) -> tuple[pd.DataFrame, str, Callable[[], None]]:
    """Distance-matched folds (or, with ``plain``, plain ones, reported alike), how they
    were made, and a function that writes the report and picture beside ``path``."""
    methods = list(methods)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise UnknownMethod(
            f"similarity methods are {', '.join(METHODS)}, not {', '.join(unknown) or 'none'}"
        )
    test_ids = comp.test_ids() if comp.test_dir is not None else []
    ids = list(comp.train["Id"])
    feats = similarity_features(
        cfg,
        [*comp.train_paths(ids), *(comp.test_paths(test_ids) if test_ids else [])],
        methods=methods,
    )
    x_train = feats.take(slice(0, len(ids)))
    x_test = feats.take(slice(len(ids), None)) if test_ids else None
    choice = choose_folds(
        comp.train,
        x_train,
        x_test,
        n_splits=cfg.n_splits,
        seed=cfg.seed,
        threshold=threshold,
        methods=methods,
    )
    report = fold_report(choice, methods=methods, n_splits=cfg.n_splits, seed=cfg.seed)
    used = choice.plain if plain else choice.chosen
    report["used"] = used.name
    if plain and choice.chosen is not choice.plain:
        report["warnings"].append(
            f"--groups none: plain folds, although {choice.chosen.name} match the test set "
            "better; expect CV above the leaderboard"
        )
    distances = {
        "test -> train": choice.d_test,
        "plain folds: validation -> train": choice.plain.d_val,
    }
    if used is not choice.plain:
        distances["chosen: validation -> train"] = used.d_val
    log.info(fold_report_text(report, distances, path))
    for warning in report["warnings"]:
        log.warning(warning)

    def write_report() -> None:
        files.write_json(path.with_suffix(".json"), report)
        plot_fold_distances(
            report, {k: v for k, v in distances.items() if v is not None}, path.with_suffix(".png")
        )

    assert used.folds is not None
    if used.groups is None:
        return used.folds, "stratified", write_report
    return used.folds, f"stratified, {used.name} kept together", write_report
