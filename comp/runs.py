"""A run's folder, ``runs/<name>/``: one owner for finding it and for its files' formats.

Reads and writes, in a run folder:

- ``config.yaml``     the resolved config the run trained with
- ``classes.json``    the label space, in model-output order
- ``cv.json``         the CV summary (per-fold macro-F1, lineage under ``built_from``)
- ``oof.csv``         out-of-fold probabilities: Id, label, fold, one column per class
- ``test_probs.csv``  test probabilities: Id, one column per class (``fold{k}/`` too)
- ``blend.json``      a blend's members and weights
- ``lineage.json``    what the run learnt from besides its labels (``pseudo.csv``: the
                      test images each fold used)
- ``transforms.json`` the training augmentation, serialised by albumentations
- ``adjust.json``     the class priors fitted on the OOF (``--adjust``)
- ``curves.png``      loss, accuracy and macro-F1 per epoch and fold
- ``probe.json``      with weights found, the two recipes' first fold and the choice
- ``trackers.json``   each tracker's id for the run
- ``fold{k}/``        one fold (``fold_dir``): ``best.pt``, ``last.pt`` (while it
                      trains), ``metrics.csv``, ``oof.csv``, ``test_probs.csv``, or
                      ``head.pkl`` for a scikit-learn head; ``full/`` the same for the
                      model on every image, with ``done.json`` once it has finished

Every table of Ids and class probabilities is built here (``probs_table``), so
train, heads, teachers, blends and predict write one format. Imports no torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from comp import files
from comp.config import Config, make_config
from comp.data.competition import read_csv
from comp.errors import ConfigError, DataError

CONFIG_FILE = "config.yaml"
CLASSES_FILE = "classes.json"
SUMMARY_FILE = "cv.json"
OOF_FILE = "oof.csv"
TEST_PROBS_FILE = "test_probs.csv"
BLEND_FILE = "blend.json"
LINEAGE_FILE = "lineage.json"
PSEUDO_FILE = "pseudo.csv"
TRANSFORMS_FILE = "transforms.json"
ADJUST_FILE = "adjust.json"
CURVES_FILE = "curves.png"
PROBE_FILE = "probe.json"
TRACKERS_FILE = "trackers.json"
# In each fold's folder (and ``full/``).
BEST_FILE = "best.pt"
LAST_FILE = "last.pt"
METRICS_FILE = "metrics.csv"
HEAD_FILE = "head.pkl"
DONE_FILE = "done.json"
FULL_DIR = "full"


def fold_dir(run_dir: Path, k: int) -> Path:
    return run_dir / f"fold{k}"


def runs_dir(root: Path) -> Path:
    return root / "runs"


def find_run(root: Path, run: str | None = None) -> Path:
    """A run by name or path; by default the most recently finished one."""
    if run is not None:
        for candidate in (Path(run), runs_dir(root) / run):
            if (candidate / CONFIG_FILE).exists():
                return candidate
        known = sorted(p.name for p in runs_dir(root).glob("*") if (p / CONFIG_FILE).exists())
        raise DataError(
            f"no run '{run}' in {runs_dir(root)}; runs are: {', '.join(known) or 'none yet'}"
        )
    done = sorted(runs_dir(root).glob(f"*/{SUMMARY_FILE}"), key=lambda p: p.stat().st_mtime)
    if not done:
        raise DataError(f"no finished run in {runs_dir(root)}; run `comp train` first")
    return done[-1].parent


def find_parent(root: Path, name: str, *, classes: list[str], what: str) -> Path:
    """A run another learns from (``what``: the flag that named it), on the same classes."""
    try:
        parent = find_run(root, name)
    except DataError as e:
        raise ConfigError(f"{what} {name}: {e}") from None
    if read_classes(parent) != classes:
        raise ConfigError(f"{what} {name}: the run was trained on other classes than these labels")
    return parent


def read_config(run_dir: Path) -> Config:
    return make_config(yaml.safe_load((run_dir / CONFIG_FILE).read_text()))


def resume_config(root: Path, name: str | None, *, overrides: dict[str, Any]) -> Config:
    """The config of run ``name``, to go on with after a kill (`comp train --resume`). A
    resumed run keeps its own config: any override is refused rather than half-applied."""
    if name is None:
        raise ConfigError("--resume needs --name: the run to continue")
    if overrides:
        raise ConfigError(
            f"--resume continues run {name} with its own config; drop {', '.join(sorted(overrides))}"
        )
    run_dir = root / "runs" / name
    if not (run_dir / CONFIG_FILE).exists():
        raise DataError(f"--resume: no run {name} in {root / 'runs'}")
    return read_config(run_dir)


def read_classes(run_dir: Path) -> list[str]:
    return [str(c) for c in json.loads((run_dir / CLASSES_FILE).read_text())]


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The run's cv.json, or an empty dict before its first fold has finished."""
    path = run_dir / SUMMARY_FILE
    return dict(json.loads(path.read_text())) if path.exists() else {}


def read_oof(run_dir: Path, classes: list[str] | None = None) -> pd.DataFrame:
    """The run's out-of-fold table, its class columns checked and as floats."""
    path = run_dir / OOF_FILE
    if not path.exists():
        raise DataError(f"{run_dir}: no {OOF_FILE}; train the run first")
    classes = read_classes(run_dir) if classes is None else classes
    oof = read_csv(path)
    oof[classes] = check_probabilities(oof, classes, path=path)
    return oof


def read_blend(run_dir: Path) -> tuple[list[str], np.ndarray] | None:
    """A blend's member runs and weights; None for a run that is not a blend."""
    path = run_dir / BLEND_FILE
    if not path.exists():
        return None
    facts = json.loads(path.read_text())
    return list(facts["runs"]), np.asarray(facts["weights"], dtype=np.float64)


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


def read_probs(path: Path, *, classes: list[str], ids: Sequence[str]) -> np.ndarray:
    """A probabilities table (test_probs.csv, probs.csv) as (len(ids), C) floats in ``ids`` order."""
    table = read_csv(path)
    probs = check_probabilities(table, classes, path=path)
    order = pd.Series(np.arange(len(table)), index=table["Id"]).loc[list(ids)].to_numpy()
    return np.asarray(probs[order])


def read_test_probs(path: Path, *, classes: list[str], test_ids: Sequence[str]) -> np.ndarray:
    """A test_probs.csv as (n_test, C) probabilities in ``test_ids`` order, rows summing to 1."""
    if sorted(read_csv(path)["Id"]) != sorted(test_ids):
        raise DataError(f"{path}: its Ids are not this competition's test images; predict again")
    probs = read_probs(path, classes=classes, ids=test_ids)
    return np.asarray(probs / probs.sum(axis=1, keepdims=True))


def probs_table(
    front: pd.DataFrame | Sequence[str], probs: np.ndarray, classes: list[str]
) -> pd.DataFrame:
    """Ids (or a table led by Id: Id, label, fold) followed by one probability column per class."""
    lead = front if isinstance(front, pd.DataFrame) else pd.DataFrame({"Id": list(front)})
    body = pd.DataFrame(np.asarray(probs), columns=classes)
    return pd.concat([lead.reset_index(drop=True), body], axis=1)


def write_probs(
    path: Path, front: pd.DataFrame | Sequence[str], probs: np.ndarray, classes: list[str]
) -> pd.DataFrame:
    """Write ``probs_table(front, probs, classes)`` atomically to ``path``; return it."""
    table = probs_table(front, probs, classes)
    files.write_csv(path, table)
    return table
