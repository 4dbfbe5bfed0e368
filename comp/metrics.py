"""Scores: macro-F1, and the per-class priors that raise it on imbalanced data.

Reads probabilities and labels; writes ``adjust.json`` (the fitted priors) beside a run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from comp import files
from comp.errors import DataError
from comp.runs import ADJUST_FILE


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_score(y_true, y_pred, average="macro"))


def _fast_macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    tp = np.bincount(y[y == pred], minlength=n_classes)
    support = np.bincount(y, minlength=n_classes)
    predicted = np.bincount(pred, minlength=n_classes)
    denom = support + predicted
    present = denom > 0
    return float((2 * tp[present] / denom[present]).mean()) if present.any() else 0.0


def fit_priors(probs: np.ndarray, y: np.ndarray, *, n_classes: int, passes: int = 3) -> np.ndarray:
    """Per-class probability multipliers that maximise macro-F1 (coordinate ascent in log space).

    Imbalanced data make the argmax favour big classes; macro-F1 rewards the small ones.
    """
    grid = np.exp(np.linspace(-2.0, 2.0, 21))
    w = np.ones(n_classes)
    best = _fast_macro_f1(y, probs.argmax(1), n_classes)
    for _ in range(passes):
        improved = False
        for c in range(n_classes):
            keep = w[c]
            for g in grid:
                w[c] = g
                score = _fast_macro_f1(y, (probs * w).argmax(1), n_classes)
                if score > best + 1e-9:
                    best, keep, improved = score, g, True
            w[c] = keep
        if not improved:
            break
    return w


def write_priors(run_dir: Path, probs: np.ndarray, y: np.ndarray, *, classes: list[str]) -> None:
    """Fit class priors on all of a run's OOF and keep them as adjust.json, for predict --adjust."""
    fitted = fit_priors(probs, y, n_classes=len(classes)).round(6).tolist()
    files.write_json(run_dir / ADJUST_FILE, dict(zip(classes, fitted, strict=True)))


def load_priors(run_dir: Path, classes: list[str]) -> np.ndarray:
    path = run_dir / ADJUST_FILE
    if not path.exists():
        raise DataError(f"{run_dir}: no adjust.json (it needs two or more trained folds)")
    fitted = json.loads(path.read_text())
    return np.array([fitted[c] for c in classes])
