"""A run's lineage: what it was built from besides its labels, in words and fold by fold.

Reads ``runs/<run>/cv.json`` (its ``built_from``) and ``blend.json``. Writes
``lineage.json`` and ``pseudo.csv`` in a new run. Imports no torch, so the CLI,
the report and the ledger read lineage without loading a model library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp import files
from comp.runs import LINEAGE_FILE, PSEUDO_FILE, read_blend, read_summary


def write_lineage(run_dir: Path, lineage: dict[str, Any], pseudo: pd.DataFrame | None) -> None:
    """``lineage.json``, and with pseudo-labels ``pseudo.csv``: the test images each fold used."""
    files.write_json(run_dir / LINEAGE_FILE, lineage)
    if pseudo is not None:
        files.write_csv(run_dir / PSEUDO_FILE, pseudo)


def describe(built_from: dict[str, Any] | None) -> str:
    """One line of a run's lineage, for the ledger: 'pseudo r1 (top class >= 0.9, 812/1500) <- ...'."""
    if not built_from:
        return ""
    parts = []
    if "distill" in built_from:
        d = built_from["distill"]
        parts.append(f"distill {d['run']} (weight {d['weight']:g}, T {d['temperature']:g})")
    if "pseudo" in built_from:
        p = built_from["pseudo"]
        kind = "soft" if p["soft"] else "hard"
        parts.append(
            f"pseudo {p['run']} ({kind} >= {p['threshold']:g}, "
            f"{p['images']:g}/{p['test_images']} a fold)"
        )
    text = " + ".join(parts)
    grand = next(
        (built_from[k].get("built_from") for k in ("distill", "pseudo") if k in built_from), None
    )
    return f"{text} <- {describe(grand)}" if grand else text


def gain_over_parent(summary: dict[str, Any]) -> dict[str, Any] | None:
    """A run against the run it was built from, fold by fold: the mean gain, its spread
    (standard error of the paired differences), and whether the gain stands out of it."""
    lineage = summary.get("built_from") or {}
    theirs = lineage.get("parent_fold_macro_f1") or {}
    ours = summary.get("fold_macro_f1") or {}
    folds = [k for k in ours if k in theirs]
    if not folds:
        return None
    diff = np.array([ours[k] - theirs[k] for k in folds])
    spread = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    gain = float(diff.mean())
    if np.isnan(spread):
        verdict = "one fold: no spread to judge the gain by"
    elif abs(gain) <= 2 * spread:
        verdict = "within the folds' spread: noise"
    else:
        verdict = (
            "a gain beyond the folds' spread" if gain > 0 else "a loss beyond the folds' spread"
        )
    return {
        "parent": lineage.get("parent"),
        "folds": {
            k: {"parent": theirs[k], "run": ours[k], "gain": round(ours[k] - theirs[k], 6)}
            for k in folds
        },
        "mean_gain": round(gain, 6),
        "spread": None if np.isnan(spread) else round(spread, 6),
        "verdict": verdict,
    }


def lineage_text(run_dir: Path) -> str:
    """What a run was built from, in one line: its teachers and pseudo-labels, or its blend."""
    members = read_blend(run_dir)
    if members is not None:
        return "blend of " + ", ".join(
            f"{n} x{w:.2f}" for n, w in zip(members[0], members[1], strict=True)
        )
    return describe(read_summary(run_dir).get("built_from"))
