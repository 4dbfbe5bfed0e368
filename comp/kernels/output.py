"""A pulled kernel's output made a local run: its folds moved into ``runs/<run>/`` (several
kernels' folds of one run merged, a fold swapped in whole), and fanned-out kernels' test
probabilities averaged into the run's submission.

Reads a kernel's downloaded output folder and its bundle's ``comp-kernel.json``. Writes
``runs/<run>/`` (config, classes, ``fold*/``, ``test_probs.csv``, ``logs/``) and
``submissions/<run>.csv`` with its ``.json``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from comp.config import SIZED_KEYS, Config
from comp.data.competition import load_competition, read_csv
from comp.errors import DataError
from comp.kernels.bundle import PATH_KEYS, read_info
from comp.runs import CLASSES_FILE, CONFIG_FILE, TEST_PROBS_FILE, TRANSFORMS_FILE, read_classes


def import_output(root: Path, bundle: Path, pulled: Path) -> dict[str, Any]:
    """Move one kernel's downloaded output into ``runs/<run>/``, merging folds of other kernels."""
    info = read_info(bundle)
    run = info["run"]
    src = pulled / "runs" / run
    logs = sorted(pulled.glob("*.log"))
    if not (src / CONFIG_FILE).exists():
        hint = f"; its log is {logs[0]}" if logs else ""
        raise DataError(f"kernel {info['ref']} produced no run '{run}'{hint}")
    dest = root / "runs" / run
    dest.mkdir(parents=True, exist_ok=True)
    for meta in (CONFIG_FILE, CLASSES_FILE, TRANSFORMS_FILE):
        mine, theirs = dest / meta, src / meta
        if mine.exists() and theirs.exists() and _settings(mine) != _settings(theirs):
            raise DataError(
                f"{dest} holds a different run ({meta} differs from kernel {info['ref']}'s); pick another name"
            )
    measured = _measured_differences(dest / CONFIG_FILE, src / CONFIG_FILE)
    for meta in (CONFIG_FILE, CLASSES_FILE, TRANSFORMS_FILE):
        if (src / meta).exists() and not (dest / meta).exists():
            shutil.copy2(src / meta, dest / meta)
    folds = []
    for fold_dir in sorted(src.glob("fold*")):
        target = dest / fold_dir.name
        # Swap the whole fold in at once: never half old, half new.
        staging = dest / f".{fold_dir.name}.pulled"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(fold_dir, staging)
        old = dest / f".{fold_dir.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        if measured:
            # The fold keeps what its own machine measured, so it can be reproduced.
            shutil.copy2(src / CONFIG_FILE, staging / CONFIG_FILE)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        folds.append(fold_dir.name)
    if info["folds"] == list(range(info["n_splits"])) and (src / TEST_PROBS_FILE).exists():
        shutil.copy2(src / TEST_PROBS_FILE, dest / TEST_PROBS_FILE)
        for ext in (".csv", ".json"):
            made = pulled / "submissions" / f"{run}{ext}"
            if made.exists():
                (root / "submissions").mkdir(exist_ok=True)
                shutil.copy2(made, root / "submissions" / f"{run}{ext}")
    for log in logs:
        (dest / "logs").mkdir(exist_ok=True)
        shutil.copy2(log, dest / "logs" / log.name)
    return {"ref": info["ref"], "run": run, "folds": folds, "measured": measured}


def combine_fan_out(
    root: Path, cfg: Config, run_dir: Path, *, n_splits: int
) -> dict[str, Any] | None:
    """Average the test probabilities of fanned-out kernels into the run's submission.

    Each kernel predicted with its own folds; weighting each by its number of
    folds gives exactly what `comp predict` over every fold would. None until
    the kernels together cover every fold once.
    """
    # Imported here: comp.predict imports torch, which pulling a kernel never needs.
    from comp.predict.predict import Prediction
    from comp.submit.submission import publish

    parts = sorted(run_dir.glob("fold*/test_probs_folds*.csv"))
    covered = [[int(k) for k in p.stem.removeprefix("test_probs_folds").split("-")] for p in parts]
    if sorted(k for group in covered for k in group) != list(range(n_splits)):
        return None
    classes = read_classes(run_dir)
    total = None
    ids: list[str] = []
    for path, group in zip(parts, covered, strict=True):
        table = read_csv(path)
        if total is None:
            ids = list(table["Id"])
            total = np.zeros((len(ids), len(classes)))
        elif list(table["Id"]) != ids:
            raise DataError(f"{path}: the kernels predicted different test Ids")
        total += table[classes].to_numpy(np.float64) * len(group)
    assert total is not None
    trained = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    prediction = Prediction(
        run_dir=run_dir,
        ids=ids,
        probs=total / n_splits,
        classes=classes,
        sample=load_competition(root, cfg).sample,
        folds=[f"fold{k}" for k in range(n_splits)],
        tta=str(trained.get("tta", "none")).split(","),
    )
    return publish(root, prediction)


def _settings(path: Path) -> Any:
    """What makes two runs the same run: everything but where each machine keeps its data
    and what each machine measured for itself."""
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict):
        for key in (*PATH_KEYS, "solution", "pretrained_file", *_measured_keys(data)):
            data.pop(key, None)
    return data


def _measured_keys(cfg: dict[str, Any]) -> tuple[str, ...]:
    """The keys a training machine resolves by timing itself: two kernels of one run may
    differ on them and still be one run (the precision; the epochs a time limit allows)."""
    keys: tuple[str, ...] = ("amp",)
    if cfg.get("time_limit") is not None:
        keys += SIZED_KEYS
    return keys


def _measured_differences(mine: Path, theirs: Path) -> dict[str, tuple[Any, Any]]:
    """{key: (the run's, this kernel's)} for the measured keys on which they differ."""
    if not (mine.exists() and theirs.exists()):
        return {}
    a, b = yaml.safe_load(mine.read_text()), yaml.safe_load(theirs.read_text())
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return {}
    return {k: (a.get(k), b.get(k)) for k in _measured_keys(b) if a.get(k) != b.get(k)}
