"""Submission files: built in the sample submission's exact shape, validated, scored locally.

Reads the competition's ``sample_submission.csv`` (Id order and columns) and,
for local scoring, the held-back ``solution.csv`` (Id,label,Usage). Writes
``submissions/<name>.csv`` and its sidecar ``<name>.json`` (run, CV, TTA), both
only after the submission has passed validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from comp import files
from comp.data.competition import read_csv
from comp.errors import DataError, SubmissionError


def submission_columns(sample: pd.DataFrame | None) -> list[str]:
    return list(sample.columns) if sample is not None else ["Id", "label"]


def is_probability_format(columns: list[str], classes: list[str]) -> bool:
    """Some competitions want one probability column per class instead of a label."""
    return len(columns) > 2 and sorted(columns[1:]) == sorted(classes)


def build_submission(
    ids: list[str], probs: np.ndarray, *, classes: list[str], sample: pd.DataFrame | None
) -> pd.DataFrame:
    columns = submission_columns(sample)
    if is_probability_format(columns, classes):
        df = pd.DataFrame(probs, columns=classes)[columns[1:]]
        df.insert(0, columns[0], ids)
        return df
    return pd.DataFrame({columns[0]: ids, columns[1]: [classes[i] for i in probs.argmax(1)]})


def validate_submission(
    df: pd.DataFrame,
    *,
    sample: pd.DataFrame | None,
    classes: list[str],
    ids: list[str] | None = None,
    name: str = "submission",
) -> None:
    """Refuse anything Kaggle would reject: columns, row count, Ids, and labels outside the class set."""
    expected = submission_columns(sample)
    if list(df.columns) != expected:
        raise SubmissionError(
            f"{name}: header is {','.join(map(str, df.columns))}, expected {','.join(expected)}"
        )
    want = ids if ids is not None else (list(sample.iloc[:, 0]) if sample is not None else None)
    if want is not None and len(df) != len(want):
        raise SubmissionError(f"{name}: {len(df)} rows, expected {len(want)}")
    empty = df.iloc[:, 0].isna()
    if empty.any():
        raise SubmissionError(f"{name}: empty Id at row {int(np.flatnonzero(empty)[0]) + 2}")
    got_ids = df.iloc[:, 0].astype(str)
    dup = got_ids.duplicated()
    if dup.any():
        raise SubmissionError(
            f"{name}: duplicate Id '{got_ids[dup].iloc[0]}' at row {int(np.flatnonzero(dup)[0]) + 2}"
        )
    if want is not None:
        unknown = sorted(set(got_ids) - set(map(str, want)))
        if unknown:
            raise SubmissionError(
                f"{name}: {len(unknown)} Id(s) not in the sample submission, e.g. '{unknown[0]}'"
            )
        absent = sorted(set(map(str, want)) - set(got_ids))
        if absent:
            raise SubmissionError(
                f"{name}: {len(absent)} Id(s) of the sample submission missing, e.g. '{absent[0]}'"
            )
    if is_probability_format(expected, classes):
        values = df.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
            raise SubmissionError(f"{name}: probabilities must be finite numbers in [0, 1]")
        return
    labels = df.iloc[:, 1]
    if labels.isna().any():
        raise SubmissionError(
            f"{name}: empty label at row {int(np.flatnonzero(labels.isna())[0]) + 2}"
        )
    bad = labels.astype(str)[~labels.astype(str).isin(set(classes))]
    if len(bad):
        raise SubmissionError(
            f"{name}: label '{bad.iloc[0]}' at row {int(bad.index[0]) + 2} is not a training class "
            f"({len(bad)} such rows)"
        )


def write_submission(path: Path, df: pd.DataFrame, sidecar: dict[str, Any]) -> None:
    files.write_csv(path, df)
    files.write_json(path.with_suffix(".json"), sidecar)


def read_submission(path: Path) -> pd.DataFrame:
    return read_csv(path)


def score_local(submission: pd.DataFrame, solution_path: Path) -> dict[str, float]:
    """Macro-F1 on the Public and Private rows of solution.csv, as Kaggle would score them."""
    solution = read_csv(solution_path)
    for col in ("Usage",):
        if col not in solution.columns:
            raise DataError(f"{solution_path}: no '{col}' column (expected Id,label,Usage)")
    if submission.shape[1] > 2:  # probability format: the label is the most probable column
        pred = submission.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").idxmax(axis=1)
    else:
        pred = submission.iloc[:, 1]
    answers = pd.DataFrame({"Id": submission.iloc[:, 0].astype(str), "pred": pred})
    sol = solution.rename(columns={solution.columns[0]: "Id", solution.columns[1]: "truth"})
    merged = sol.merge(answers, on="Id", how="left")
    if merged["pred"].isna().any():
        raise SubmissionError(
            f"submission has no prediction for {int(merged['pred'].isna().sum())} solution Id(s)"
        )
    scores = {}
    for usage in ("Public", "Private"):
        part = merged[merged["Usage"] == usage]
        if len(part):
            scores[usage.lower()] = round(
                float(f1_score(part["truth"], part["pred"].astype(str), average="macro")), 6
            )
    return scores
