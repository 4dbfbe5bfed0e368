"""Submission files: a prediction published in the sample submission's exact shape,
validated, and scored locally.

Reads a ``comp.predict.Prediction``, the competition's ``sample_submission.csv`` (Id
order and columns), the run's ``cv.json`` and, for local scoring, the held-back
``solution.csv`` (Id,label,Usage). Writes ``runs/<name>/test_probs.csv`` (Id + one
probability column per class; each fold's own in ``fold{k}/test_probs.csv``; a blend's
members first) and ``submissions/<name>.csv`` with its sidecar ``<name>.json`` (run, CV,
TTA), the submission only after it has passed validation.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from comp import files
from comp.data.competition import read_csv
from comp.errors import DataError, SubmissionError
from comp.runs import FULL_DIR, TEST_PROBS_FILE, read_summary, write_probs

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    # Only its type: predicting imports torch, which checking a submission never needs.
    from comp.predict.predict import Prediction


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


def publish(root: Path, prediction: Prediction, *, out: Path | None = None) -> dict[str, Any]:
    """Write a prediction's test probabilities and its validated submission; return the
    sidecar facts.

    The labels are chosen on the probabilities rescaled by the prediction's ``priors``
    (the run's adjust.json), as they were when the adjusted CV was measured.
    """
    for member in prediction.members:
        publish(root, member)
    run_dir, ids, probs, priors = (
        prediction.run_dir,
        prediction.ids,
        prediction.probs,
        prediction.priors,
    )
    bad = ~np.isfinite(probs).all(1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{run_dir}: test probabilities hold NaN or inf in {int(bad.sum())} row(s), "
            f"first Id {ids[first]}; nothing written"
        )
    classes, sample = prediction.classes, prediction.sample
    chosen = probs if priors is None else probs * priors / (probs * priors).sum(1, keepdims=True)
    submission = build_submission(ids, chosen, classes=classes, sample=sample)
    validate_submission(submission, sample=sample, classes=classes, ids=ids, name=run_dir.name)
    write_probs(run_dir / TEST_PROBS_FILE, ids, probs, classes)
    cv = read_summary(run_dir)
    out = out or root / "submissions" / f"{run_dir.name}.csv"
    facts = {
        "run": run_dir.name,
        "cv_macro_f1": cv.get("adjusted_macro_f1") if priors is not None else cv.get("cv_macro_f1"),
        "adjusted": priors is not None,
        "folds": prediction.folds,
        "tta": prediction.tta,
        "rows": len(submission),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "file": str(out),
    }
    write_submission(out, submission, facts)
    # Only once the whole is known to be finite and valid: a failed publish writes nothing.
    for path, fold_probs in prediction.per_fold.items():
        write_probs(path, ids, fold_probs, classes)
    folds = prediction.folds
    models = "one model on every image" if folds == [FULL_DIR] else f"{len(folds)} folds"
    log.info(f"{len(ids)} test images, {models} x {len(prediction.tta)} views -> {out}")
    return facts
