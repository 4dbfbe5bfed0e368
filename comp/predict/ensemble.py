"""Blends of runs, judged on out-of-fold predictions before they touch the leaderboard.

Reads each member's ``runs/<run>/oof.csv`` (the same Ids, labels and folds in
every member) and, at predict time, its ``test_probs.csv``. Writes
``runs/<blend>/``: ``blend.json`` (members and weights), ``oof.csv``,
``cv.json`` (with the blend's CV), ``classes.json`` and ``config.yaml`` (the
first member's, so the blend is a run like any other); ``comp predict <blend>``
applies the same weights to the members' test probabilities.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import softmax
from sklearn.metrics import accuracy_score, log_loss

from comp import files
from comp.data.competition import encode_labels
from comp.errors import DataError
from comp.metrics import macro_f1, write_priors
from comp.runs import (
    BLEND_FILE,
    CLASSES_FILE,
    CONFIG_FILE,
    OOF_FILE,
    SUMMARY_FILE,
    probs_table,
    read_classes,
    read_oof,
    read_summary,
)


def load_member(run_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    if not (run_dir / OOF_FILE).exists():
        raise DataError(f"{run_dir}: no {OOF_FILE} to blend; train the run first")
    classes = read_classes(run_dir)
    oof = read_oof(run_dir, classes)
    return oof.sort_values("Id").reset_index(drop=True), classes


def fit_weights(probs: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to one that minimise the blend's OOF log-loss."""

    def loss(z: np.ndarray) -> float:
        w = softmax(z)
        blended = np.clip(sum(wi * p for wi, p in zip(w, probs, strict=True)), 1e-7, 1)
        blended = blended / blended.sum(axis=1, keepdims=True)
        return float(log_loss(y, blended, labels=range(probs[0].shape[1])))

    result = minimize(
        loss, np.zeros(len(probs)), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-6}
    )
    return np.asarray(softmax(result.x))


def blend(root: Path, runs: list[Path], *, name: str, weights: str = "fit") -> dict[str, Any]:
    """Blend ``runs`` on their OOF predictions; write ``runs/<name>/``; return its summary."""
    if len(runs) < 2:
        raise DataError("a blend needs two or more runs")
    members = [load_member(r) for r in runs]
    first, classes = members[0]
    for (oof, cls), run in zip(members[1:], runs[1:], strict=True):
        if cls != classes:
            raise DataError(f"{run.name}: other classes than {runs[0].name}")
        if list(oof["Id"]) != list(first["Id"]) or list(oof["fold"]) != list(first["fold"]):
            raise DataError(
                f"{run.name}: other out-of-fold Ids or folds than {runs[0].name}; blend runs of one split"
            )
    y = encode_labels(first["label"], classes)
    probs = [oof[classes].to_numpy() for oof, _ in members]
    if weights == "fit":
        w = fit_weights(probs, y)
    elif weights == "equal":
        w = np.full(len(runs), 1 / len(runs))
    else:
        raise DataError(f"--weights {weights}: fit or equal")
    blended = sum(wi * p for wi, p in zip(w, probs, strict=True))
    assert isinstance(blended, np.ndarray)
    pred = blended.argmax(1)
    folds = first["fold"].astype(int).to_numpy()
    per_fold = {
        str(k): round(macro_f1(y[folds == k], pred[folds == k]), 6)
        for k in sorted(set(folds.tolist()))
    }
    out = root / "runs" / name
    if out.resolve() in [r.resolve() for r in runs]:
        raise DataError(f"--name {name} is one of the blended runs")
    summary = {
        "run": name,
        "cv_macro_f1": round(macro_f1(y, pred), 6),
        "cv_accuracy": round(float(accuracy_score(y, pred)), 6),
        "fold_macro_f1": per_fold,
        "members": {
            r.name: {"weight": round(float(wi), 6), "cv_macro_f1": _cv(r)}
            for r, wi in zip(runs, w, strict=True)
        },
        "folds_trained": len(per_fold),
        "complete": True,
        "n_oof": len(first),
    }
    table = probs_table(first[["Id", "label", "fold"]], blended, classes)
    # Written whole in a staging folder, then swapped in: a kill or a full disk never
    # leaves a blend with weights but no OOF, or an old run's files beside new ones.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=out.parent))
    try:
        files.write_csv(staging / OOF_FILE, table)
        files.write_json(
            staging / BLEND_FILE,
            {"runs": [r.name for r in runs], "weights": [float(x) for x in w]},
        )
        files.write_json(staging / CLASSES_FILE, classes)
        shutil.copy2(runs[0] / CONFIG_FILE, staging / CONFIG_FILE)
        write_priors(staging, blended, y, classes=classes)
        files.write_json(staging / SUMMARY_FILE, summary)
        files.swap_dir(staging, out)
    except OSError as e:
        # A full disk: name the file the blend was writing, not its staging twin.
        if e.errno is None or not e.filename or not Path(e.filename).is_relative_to(staging):
            raise
        meant = out / Path(e.filename).relative_to(staging)
        raise OSError(e.errno, e.strerror, str(meant)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _cv(run: Path) -> float | None:
    return read_summary(run).get("cv_macro_f1")
