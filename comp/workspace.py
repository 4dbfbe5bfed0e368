"""Workspaces: ``comp init`` around an existing competition folder.

Reads a competition folder in either layout Kaggle uses:

- Kaggle: a labels CSV (Id,label under any column names), ``train/`` and
  ``test/`` image folders, ``sample_submission.csv``;
- ImageFolder: one subfolder per class (Animals-10, the 151 Pokémon species),
  optionally under ``train/`` beside a ``test/`` folder.

Writes the workspace: ``comp.yaml`` (with what was detected), ``folds/``,
``submissions/``, ``kernels/``, ``runs/``; for ImageFolder data also the
``train_labels.csv`` it derives, and, where there is no unlabelled test set, a
stratified hold-out as ``sample_submission.csv`` + ``solution.csv`` so the whole
loop, local scoring included, runs on it.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split

from comp import io
from comp.config import CONFIG_FILE, make_config, write_workspace_config
from comp.data import IMAGE_EXTS, DataError, index_images, natural_key, read_csv
from comp.demo import WORKSPACE_DIRS

ID_NAMES = (
    "id",
    "image_id",
    "imageid",
    "image",
    "img",
    "filename",
    "file_name",
    "file",
    "name",
    "path",
    "image_name",
)
LABEL_NAMES = (
    "label",
    "labels",
    "class",
    "category",
    "target",
    "type",
    "type1",
    "primary_type",
    "species",
    "y",
    "breed",
    "class_name",
)


@dataclass
class Detected:
    layout: str
    values: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(
        default_factory=dict
    )  # files to write into the workspace
    notes: list[str] = field(default_factory=list)
    train_files: list[Path] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    test_count: int = 0


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTS for p in folder.iterdir() if p.is_file())


def _class_dirs(folder: Path) -> list[Path]:
    """Subfolders that hold images directly: the classes of an ImageFolder tree."""
    subs = sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )
    return [p for p in subs if _has_images(p)]


def _where(path: Path, root: Path) -> str:
    """How comp.yaml refers to a path: relative inside the workspace, absolute outside."""
    path, root = path.resolve(), root.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _pick(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.lower().strip(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def detect_kaggle(data: Path, root: Path) -> Detected | None:
    csvs = sorted(data.glob("*.csv"))
    sample = next((p for p in csvs if "sample" in p.name.lower()), None)
    solution = next((p for p in csvs if p.name.lower().startswith("solution")), None)
    label_csvs = [p for p in csvs if p not in (sample, solution) and "test" not in p.name.lower()]
    image_dirs = [
        p for p in sorted(data.iterdir()) if p.is_dir() and (_has_images(p) or _class_dirs(p))
    ]
    train_dir = next((p for p in image_dirs if "train" in p.name.lower()), None)
    test_dir = next((p for p in image_dirs if "test" in p.name.lower()), None)
    if (
        not label_csvs
        or train_dir is None
        or (_class_dirs(train_dir) and not _has_images(train_dir))
    ):
        return None
    label_csvs.sort(
        key=lambda p: ("train" not in p.name.lower() and "label" not in p.name.lower(), p.name)
    )
    train_csv = label_csvs[0]
    table = read_csv(train_csv)
    if table.shape[1] < 2:
        raise DataError(f"{train_csv}: needs an Id column and a label column")
    index = index_images(train_dir)
    # The Id column is the one whose values name the training images.
    matches = {c: table[c].astype(str).str.strip().isin(index).mean() for c in table.columns}
    id_col = max(matches, key=lambda c: (matches[c], c == _pick(list(table.columns), ID_NAMES)))
    if matches[id_col] < 0.5:
        raise DataError(
            f"{train_csv}: no column names the images in {train_dir} "
            f"(best: '{id_col}' matches {matches[id_col]:.0%}); set id_column and train_dir in comp.yaml"
        )
    others = [c for c in table.columns if c != id_col]
    label_col = _pick(others, LABEL_NAMES) or min(others, key=lambda c: table[c].nunique())
    values: dict[str, Any] = {
        "train_csv": _where(train_csv, root),
        "id_column": id_col,
        "label_column": label_col,
        "train_dir": _where(train_dir, root),
        "test_dir": _where(test_dir, root) if test_dir else None,
        "sample_submission": _where(sample, root) if sample else None,
        "solution": _where(solution, root) if solution else None,
    }
    ids = table[id_col].astype(str).str.strip()
    files = [index[i] for i in ids if i in index]
    det = Detected("kaggle", values, train_files=files, labels=list(table[label_col].astype(str)))
    if matches[id_col] < 1:
        det.notes.append(
            f"{(1 - matches[id_col]):.1%} of Ids in {train_csv.name} have no image in {train_dir.name}/"
        )
    if sample is not None:
        det.test_count = len(read_csv(sample))
    elif test_dir is not None:
        det.test_count = sum(
            1 for k in index_images(test_dir) if os.path.splitext(k)[1].lower() in IMAGE_EXTS
        )
    return det


def detect_imagefolder(data: Path, root: Path, *, holdout: float, seed: int) -> Detected | None:
    base = data
    # Archives often unpack into one wrapper folder (Animals-10's raw-img/).
    while not _class_dirs(base) and not (base / "train").is_dir():
        subs = [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(subs) != 1:
            return None
        base = subs[0]
    train_root = (
        base / "train" if (base / "train").is_dir() and _class_dirs(base / "train") else base
    )
    classes = _class_dirs(train_root)
    if len(classes) < 2:
        return None
    rows = []
    for cls in classes:
        for p in sorted(cls.rglob("*"), key=lambda p: natural_key(p.name)):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."):
                rows.append((p.relative_to(train_root).with_suffix("").as_posix(), cls.name, p))
    labels = pd.DataFrame([(i, c) for i, c, _ in rows], columns=["Id", "label"])
    values: dict[str, Any] = {
        "train_csv": "train_labels.csv",
        "train_dir": _where(train_root, root),
        "sample_submission": "sample_submission.csv",
    }
    det = Detected("imagefolder", values)

    test_root = base / "test" if train_root != base and (base / "test").is_dir() else None
    if test_root is not None and _class_dirs(test_root):
        # A labelled test split: score it locally, as a private leaderboard would.
        test = pd.DataFrame(
            [
                (p.relative_to(test_root).with_suffix("").as_posix(), c.name)
                for c in _class_dirs(test_root)
                for p in sorted(c.iterdir())
                if p.suffix.lower() in IMAGE_EXTS
            ],
            columns=["Id", "label"],
        )
        values.update(test_dir=_where(test_root, root), solution="solution.csv")
        det.tables["solution.csv"] = _with_usage(test, seed)
        det.notes.append(
            f"test/ has class folders: {len(test)} labelled test images used for local scoring"
        )
    elif test_root is not None and _has_images(test_root):
        test = pd.DataFrame(
            {
                "Id": sorted(
                    (
                        k
                        for k in index_images(test_root)
                        if os.path.splitext(k)[1].lower() not in IMAGE_EXTS
                    ),
                    key=natural_key,
                )
            }
        )
        test["label"] = labels["label"].iloc[0]
        values.update(test_dir=_where(test_root, root), solution=None)
        det.tables["sample_submission.csv"] = test
    else:
        # No test set: hold a stratified part of the labelled images back as one.
        counts = labels["label"].value_counts()
        can_split = labels["label"].map(counts) >= 2
        keep, held = train_test_split(
            labels[can_split],
            test_size=holdout,
            stratify=labels.loc[can_split, "label"],
            random_state=seed,
        )
        test = held.sort_values("Id", key=lambda s: s.map(natural_key)).reset_index(drop=True)
        labels = pd.concat([keep, labels[~can_split]]).sort_index()
        values.update(test_dir=_where(train_root, root), solution="solution.csv")
        det.tables["solution.csv"] = _with_usage(test, seed)
        det.notes.append(
            f"no test set: {len(test)} images ({holdout:.0%}, stratified) held back as a local test set with solution.csv"
        )
    if "solution.csv" in det.tables:
        sample = det.tables["solution.csv"][["Id"]].copy()
        sample["label"] = labels["label"].iloc[0]
        det.tables["sample_submission.csv"] = sample
    det.tables["train_labels.csv"] = labels.reset_index(drop=True)
    path_of = {i: p for i, _, p in rows}
    det.train_files = [path_of[i] for i in labels["Id"]]
    det.labels = list(labels["label"])
    det.test_count = len(det.tables["sample_submission.csv"])
    return det


def _with_usage(test: pd.DataFrame, seed: int, public: float = 0.3) -> pd.DataFrame:
    out = test[["Id", "label"]].reset_index(drop=True).copy()
    out["Usage"] = np.where(
        np.random.default_rng(seed).random(len(out)) < public, "Public", "Private"
    )
    return out


def image_stats(files: list[Path], *, sample: int = 500, seed: int = 0) -> dict[str, Any]:
    """Sizes and modes from the headers of up to ``sample`` images (no pixel decoding)."""
    chosen = files if len(files) <= sample else random.Random(seed).sample(files, sample)
    sizes: list[tuple[int, int]] = []
    modes: Counter[str] = Counter()
    unreadable: list[Path] = []
    for p in chosen:
        try:
            with Image.open(p) as img:
                sizes.append(img.size)
                modes[img.mode] += 1
        except OSError:
            unreadable.append(p)
    arr = np.array(sizes) if sizes else np.zeros((0, 2))
    return {"sampled": len(chosen), "sizes": arr, "modes": modes, "unreadable": unreadable}


def suggest_img_size(sizes: np.ndarray) -> int:
    """The median short side, rounded to a multiple of 32 in [32, 224]."""
    if not len(sizes):
        return 64
    short = float(np.median(sizes.min(axis=1)))
    return int(min(224, max(32, round(short / 32) * 32)))


def init_workspace(
    root: Path,
    data: Path,
    *,
    holdout: float = 0.2,
    seed: int = 42,
    force: bool = False,
    overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """Create the workspace; return its config values and a report of what was found."""
    root, data = Path(root), Path(data)
    if not data.is_dir():
        raise DataError(f"{data}: competition folder not found")
    if (root / CONFIG_FILE).exists() and not force:
        raise FileExistsError(f"{root / CONFIG_FILE} exists (use --force to replace it)")
    if not 0 < holdout < 1:
        raise DataError(f"--holdout must be between 0 and 1, got {holdout}")
    root.mkdir(parents=True, exist_ok=True)
    det = detect_kaggle(data, root) or detect_imagefolder(data, root, holdout=holdout, seed=seed)
    if det is None:
        raise DataError(
            f"{data}: neither a Kaggle layout (labels CSV + train/ folder) nor an ImageFolder tree "
            "(one subfolder of images per class)"
        )
    stats = image_stats(det.train_files)
    values = {
        **det.values,
        "seed": seed,
        "img_size": suggest_img_size(stats["sizes"]),
        **(overrides or {}),
    }
    cfg = make_config(values)
    for name, table in det.tables.items():
        io.write_csv(root / name, table)
    for d in WORKSPACE_DIRS:
        (root / d).mkdir(exist_ok=True)
    write_workspace_config(
        root / CONFIG_FILE,
        cfg,
        header=f"comp workspace around {data.resolve()} ({det.layout} layout).\nEvery key can be overridden on the command line: --epochs 3 or --set epochs=3.",
    )
    return dict(values), report(det, stats, cfg.img_size)


def report(det: Detected, stats: dict[str, Any], img_size: int) -> str:
    counts = Counter(det.labels)
    classes = sorted(counts, key=natural_key)
    lines = [
        f"layout: {det.layout}",
        f"train images: {len(det.train_files)} in {len(classes)} classes",
    ]
    shown = ", ".join(f"{c} {counts[c]}" for c in classes[:30])
    lines.append(f"  per class: {shown}{' ...' if len(classes) > 30 else ''}")
    if counts:
        lo, hi = min(counts.values()), max(counts.values())
        lines.append(
            f"  smallest class {lo}, largest {hi}"
            + (f" (imbalance {hi / lo:.1f}x)" if lo and hi / lo >= 3 else "")
        )
    sizes = stats["sizes"]
    if len(sizes):
        w, h = sizes[:, 0], sizes[:, 1]
        uniq = {tuple(s) for s in sizes.tolist()}
        size_text = (
            f"all {w[0]}x{h[0]}"
            if len(uniq) == 1
            else f"{w.min()}x{h.min()} to {w.max()}x{h.max()}, median {int(np.median(w))}x{int(np.median(h))}"
        )
        lines.append(
            f"image sizes ({stats['sampled']} sampled): {size_text}; modes: "
            + ", ".join(f"{m} {n}" for m, n in stats["modes"].most_common())
        )
    if stats["unreadable"]:
        lines.append(
            f"unreadable images: {len(stats['unreadable'])}, e.g. {stats['unreadable'][0]}"
        )
    lines.append(f"test images: {det.test_count}")
    lines.append(
        f"columns: Id = '{det.values.get('id_column', 'Id')}', label = '{det.values.get('label_column', 'label')}'"
    )
    lines.append(f"img_size: {img_size}")
    lines.extend(f"note: {n}" for n in det.notes)
    return "\n".join(lines)
