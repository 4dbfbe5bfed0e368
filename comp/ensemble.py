"""Blends of runs, judged on out-of-fold predictions before they touch the leaderboard.

Reads each member's ``runs/<run>/oof.csv`` (the same Ids, labels and folds in
every member) and, at predict time, its ``test_probs.csv``. Writes
``runs/<blend>/``: ``blend.json`` (members and weights), ``oof.csv``,
``cv.json`` (with the blend's CV), ``classes.json`` and ``config.yaml`` (the
first member's, so the blend is a run like any other); ``comp predict <blend>``
applies the same weights to the members' test probabilities.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from sklearn.metrics import accuracy_score, log_loss

from comp import io
from comp.data import DataError, read_csv
from comp.metrics import macro_f1, write_priors

BLEND_FILE = "blend.json"


def load_member(run_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    if not (run_dir / "oof.csv").exists():
        raise DataError(f"{run_dir}: no oof.csv to blend; train the run first")
    classes = json.loads((run_dir / "classes.json").read_text())
    oof = read_csv(run_dir / "oof.csv")
    oof[classes] = check_probabilities(oof, classes, path=run_dir / "oof.csv")
    return oof.sort_values("Id").reset_index(drop=True), classes


def check_probabilities(table: pd.DataFrame, classes: list[str], *, path: Path) -> np.ndarray:
    """The class columns of a probabilities table as floats, refusing NaN, inf and text.

    One NaN would otherwise decide an argmax silently (NumPy picks the NaN), or
    make a blend's log-loss undefined.
    """
    missing = [c for c in ["Id", *classes] if c not in table.columns]
    if missing:
        raise DataError(f"{path}: no column(s) {', '.join(repr(c) for c in missing[:5])}")
    values = table[classes].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        raise DataError(
            f"{path}: row {row + 2} (Id {table['Id'].iloc[row]}) has probability "
            f"'{table[classes[col]].iloc[row]}' for class '{classes[col]}', not a finite number "
            f"({int(bad.any(axis=1).sum())} such rows)"
        )
    return values


def fit_weights(probs: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to one that minimise the blend's OOF log-loss."""

    def loss(z: np.ndarray) -> float:
        w = np.exp(z - z.max())
        w /= w.sum()
        blended = np.clip(sum(wi * p for wi, p in zip(w, probs, strict=True)), 1e-7, 1)
        blended = blended / blended.sum(axis=1, keepdims=True)
        return float(log_loss(y, blended, labels=range(probs[0].shape[1])))

    result = minimize(
        loss, np.zeros(len(probs)), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-6}
    )
    w = np.exp(result.x - result.x.max())
    return np.asarray(w / w.sum())


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
    y = first["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
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
    table = pd.concat(
        [first[["Id", "label", "fold"]], pd.DataFrame(blended, columns=classes)], axis=1
    )
    # Written whole in a staging folder, then swapped in: a kill or a full disk never
    # leaves a blend with weights but no OOF, or an old run's files beside new ones.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=out.parent))
    try:
        io.write_csv(staging / "oof.csv", table)
        io.write_json(
            staging / BLEND_FILE,
            {"runs": [r.name for r in runs], "weights": [float(x) for x in w]},
        )
        io.write_json(staging / "classes.json", classes)
        shutil.copy2(runs[0] / "config.yaml", staging / "config.yaml")
        write_priors(staging, blended, y, classes=classes)
        io.write_json(staging / "cv.json", summary)
        io.swap_dir(staging, out)
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
    path = run / "cv.json"
    return json.loads(path.read_text()).get("cv_macro_f1") if path.exists() else None


def blend_members(run_dir: Path) -> tuple[list[str], np.ndarray] | None:
    path = run_dir / BLEND_FILE
    if not path.exists():
        return None
    facts = json.loads(path.read_text())
    return list(facts["runs"]), np.asarray(facts["weights"], dtype=np.float64)
