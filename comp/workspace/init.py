"""Workspaces: ``comp init`` around an existing competition folder (or a downloaded archive).

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

import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from comp import files
from comp.config import CONFIG_FILE, Config, make_config, write_workspace_config
from comp.data.competition import index_images, natural_key, read_csv, read_labels
from comp.data.demo import WORKSPACE_DIRS
from comp.data.images import IMAGE_EXTS, image_stats
from comp.errors import DataError
from comp.folds.similarity import near_duplicate_groups
from comp.folds.split import NEAR_DUPLICATE
from comp.train.recipe import resolve, suggest_img_size

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


def _visible(p: Path) -> bool:
    # Archives made on macOS carry __MACOSX/ folders and ._ resource files.
    return not p.name.startswith(".") and p.name != "__MACOSX"


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and _visible(p)


def _has_images(folder: Path) -> bool:
    return any(_is_image(p) for p in folder.iterdir())


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and _visible(p)),
        key=lambda p: natural_key(p.name),
    )


def _class_dirs(folder: Path) -> list[Path]:
    """Subfolders that hold images directly: the classes of an ImageFolder tree."""
    return [p for p in _subdirs(folder) if _has_images(p)]


def _unwrap(folder: Path) -> Path:
    """Step through single wrapper folders (train/train/, raw-img/) that archives often add."""
    while not _has_images(folder) and len(_subdirs(folder)) == 1:
        folder = _subdirs(folder)[0]
    return folder


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        (
            p
            for p in folder.rglob("*")
            if _is_image(p) and all(_visible(q) for q in p.relative_to(folder).parents)
        ),
        key=lambda p: natural_key(p.as_posix()),
    )


def _where(path: Path, root: Path) -> str:
    """How comp.yaml refers to a path: relative inside the workspace, absolute outside."""
    path, root = path.resolve(), root.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _pick(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.lower().strip(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def _id_matches(table: pd.DataFrame, index: dict[str, Path]) -> dict[str, float]:
    return {c: float(table[c].astype(str).str.strip().isin(index).mean()) for c in table.columns}


def detect_kaggle(data: Path, root: Path, *, columns: dict[str, str]) -> Detected | None:
    """The Kaggle layout of ``data``, or None without a labels CSV or a train image folder.

    ``columns`` holds the id_column and label_column given to ``comp init``, which
    win over what is guessed.
    """
    sample, solution, label_csvs = _kaggle_tables(data)
    train_dir, test_dir = _image_folders(data)
    if not label_csvs or train_dir is None:
        return None
    index = index_images(train_dir)
    train_csv, id_col = _labels_table(data, label_csvs, index, train_dir, columns)
    table = read_csv(train_csv)
    label_col, guessed = _label_column(table, train_csv, id_col, columns)
    labels = read_labels(train_csv, id_column=id_col, label_column=label_col)
    if labels["label"].nunique() < 2:
        raise DataError(
            f"{train_csv}: label column '{label_col}' has a single value; pass --set label_column=NAME"
        )
    missing = labels.loc[~labels["Id"].isin(index), "Id"]
    if len(missing):
        raise DataError(
            f"{train_csv}: {len(missing)} of {len(labels)} Ids have no image in {train_dir}, e.g. '{missing.iloc[0]}'"
        )
    values: dict[str, Any] = {
        "train_csv": _where(train_csv, root),
        "id_column": id_col,
        "label_column": label_col,
        "train_dir": _where(train_dir, root),
        "test_dir": _where(test_dir, root) if test_dir else None,
        "sample_submission": _where(sample, root) if sample else None,
        "solution": _where(solution, root) if solution else None,
    }
    det = Detected(
        "kaggle", values, train_files=[index[i] for i in labels["Id"]], labels=list(labels["label"])
    )
    if len(guessed) > 1:
        det.notes.append(
            f"label column '{label_col}' is a guess among {', '.join(guessed)}; change it with --set label_column=NAME"
        )
    det.test_count = _test_count(sample, test_dir)
    return det


def _kaggle_tables(data: Path) -> tuple[Path | None, Path | None, list[Path]]:
    """The CSVs of a competition folder by role: sample submission, solution, and the
    tables that may hold the labels."""
    csvs = sorted(data.glob("*.csv"))
    sample = next((p for p in csvs if "sample" in p.name.lower()), None)
    solution = next((p for p in csvs if p.name.lower().startswith("solution")), None)
    label_csvs = [p for p in csvs if p not in (sample, solution) and "test" not in p.name.lower()]
    return sample, solution, label_csvs


def _image_folders(data: Path) -> tuple[Path | None, Path | None]:
    """The train and test image folders, through any wrapper folders (train/train/)."""
    image_dirs = [(p, _unwrap(p)) for p in _subdirs(data)]
    image_dirs = [(p, u) for p, u in image_dirs if _has_images(u)]
    train_dir = next((u for p, u in image_dirs if "train" in p.name.lower()), None)
    test_dir = next((u for p, u in image_dirs if "test" in p.name.lower()), None)
    if train_dir is None:
        # A single image folder is the training set, whatever its name (images/images/).
        candidates = [u for p, u in image_dirs if "test" not in p.name.lower()]
        train_dir = candidates[0] if len(candidates) == 1 else None
    return train_dir, test_dir


def _labels_table(
    data: Path,
    label_csvs: list[Path],
    index: dict[str, Path],
    train_dir: Path,
    columns: dict[str, str],
) -> tuple[Path, str]:
    """The labels table and its Id column: the CSV, and its column, whose values name the
    training images (the most of them; then the longest table)."""
    best: tuple[float, int, Path, str] | None = None
    for path in label_csvs:
        table = read_csv(path)
        if table.shape[1] < 2:
            continue
        matches = _id_matches(table, index)
        id_col = columns.get("id_column") or max(
            matches, key=lambda c: (matches[c], c == _pick(list(table.columns), ID_NAMES))
        )
        if id_col in matches and (best is None or (matches[id_col], len(table)) > best[:2]):
            best = (matches[id_col], len(table), path, id_col)
    if best is None or best[0] < 0.5:
        where = (
            f"best: '{best[3]}' of {best[2].name} matches {best[0]:.0%}"
            if best
            else "no CSV with two columns"
        )
        raise DataError(
            f"{data}: no labels CSV names the images in {train_dir} ({where}); pass --set id_column=NAME"
        )
    return best[2], best[3]


def _label_column(
    table: pd.DataFrame, train_csv: Path, id_col: str, columns: dict[str, str]
) -> tuple[str, list[str]]:
    """The label column, and the columns it was guessed among (none when it was given or
    has a usual name)."""
    if columns.get("label_column") is not None:
        return columns["label_column"], []
    others = [c for c in table.columns if c != id_col]
    named = _pick(others, LABEL_NAMES)
    if named is not None:
        return named, []
    # A label has a few repeated words: not an Id-like code, a number or a constant.
    guessed = [
        c
        for c in others
        if 2 <= table[c].nunique() <= len(table) / 2
        and not table[c].astype(str).str.contains(r"\d").mean() > 0.5
    ]
    guessed = guessed or [c for c in others if table[c].nunique() >= 2]
    if not guessed:
        raise DataError(
            f"{train_csv}: no column besides '{id_col}' has two or more values to learn"
        )
    return guessed[0], guessed


def _test_count(sample: Path | None, test_dir: Path | None) -> int:
    """How many test images there are: the sample submission's rows, each checked to have
    its image when there is a test folder; else the test folder's images."""
    if sample is not None:
        test_ids = read_csv(sample).iloc[:, 0].astype(str)
        if test_dir is not None:
            test_index = index_images(test_dir)
            absent = test_ids[~test_ids.isin(test_index)]
            if len(absent):
                raise DataError(
                    f"{sample}: {len(absent)} of {len(test_ids)} Ids have no image in {test_dir}, e.g. '{absent.iloc[0]}'"
                )
        return len(test_ids)
    if test_dir is not None:
        return len(_images_under(test_dir))
    return 0


def detect_imagefolder(data: Path, root: Path, *, holdout: float, seed: int) -> Detected | None:
    base = _unwrap(data)
    train_root = _unwrap(base / "train") if (base / "train").is_dir() else base
    classes = _class_dirs(train_root)
    if len(classes) < 2:
        return None
    rows: list[tuple[str, str, Path]] = []
    seen: dict[str, Path] = {}
    for cls in classes:
        for p in _images_under(cls):
            ident = p.relative_to(train_root).with_suffix("").as_posix()
            if ident in seen:
                raise DataError(
                    f"{p} and {seen[ident]} would share the Id '{ident}'; rename one of them"
                )
            seen[ident] = p
            rows.append((ident, cls.name, p))
    labels = pd.DataFrame([(i, c) for i, c, _ in rows], columns=["Id", "label"])
    values: dict[str, Any] = {
        "train_csv": "train_labels.csv",
        "train_dir": _where(train_root, root),
        "sample_submission": "sample_submission.csv",
    }
    det = Detected("imagefolder", values)

    test_root = _unwrap(base / "test") if train_root != base and (base / "test").is_dir() else None
    test_classes = _class_dirs(test_root) if test_root is not None else []
    if test_root is not None and {c.name for c in test_classes} & {c.name for c in classes}:
        # A labelled test split: score it locally, as a private leaderboard would.
        test = pd.DataFrame(
            [
                (p.relative_to(test_root).with_suffix("").as_posix(), c.name)
                for c in test_classes
                for p in _images_under(c)
            ],
            columns=["Id", "label"],
        )
        values.update(test_dir=_where(test_root, root), solution="solution.csv")
        det.tables["solution.csv"] = _with_usage(test, seed)
        det.notes.append(
            f"test/ has class folders: {len(test)} labelled test images used for local scoring"
        )
    elif test_root is not None and _images_under(test_root):
        # Unlabelled test images (flat, or in a dummy folder such as test/unknown/).
        ids = [
            p.relative_to(test_root).with_suffix("").as_posix() for p in _images_under(test_root)
        ]
        test = pd.DataFrame({"Id": ids, "label": labels["label"].iloc[0]})
        values.update(test_dir=_where(test_root, root), solution=None)
        det.tables["sample_submission.csv"] = test
    else:
        # No test set: hold a stratified part of the labelled images back as one.
        counts = labels["label"].value_counts()
        can_split = labels["label"].map(counts) >= 2
        n_classes = int((counts >= 2).sum())
        n_held = int(np.ceil(holdout * int(can_split.sum())))
        if n_classes == 0 or n_held < n_classes or int(can_split.sum()) - n_held < n_classes:
            raise DataError(
                f"{data}: no test set, and a {holdout:.0%} hold-out of {int(can_split.sum())} images cannot "
                f"hold back every one of {n_classes} classes; add a test/ folder or change --holdout"
            )
        keep, held = holdout_split(
            labels[can_split], [seen[i] for i in labels.loc[can_split, "Id"]], holdout, seed
        )
        test = held.sort_values("Id", key=lambda s: s.map(natural_key)).reset_index(drop=True)
        labels = pd.concat([keep, labels[~can_split]]).sort_index()
        values.update(test_dir=_where(train_root, root), solution="solution.csv")
        det.tables["solution.csv"] = _with_usage(test, seed)
        det.notes.append(
            f"no test set: {len(test)} images ({len(test) / int(can_split.sum()):.0%}, stratified, "
            "near-duplicates kept on one side) held back as a local test set with solution.csv"
        )
    if "solution.csv" in det.tables:
        sample = det.tables["solution.csv"][["Id"]].copy()
        sample["label"] = labels["label"].iloc[0]
        det.tables["sample_submission.csv"] = sample
    det.tables["train_labels.csv"] = labels.reset_index(drop=True)
    det.train_files = [seen[i] for i in labels["Id"]]
    det.labels = list(labels["label"])
    det.test_count = len(det.tables["sample_submission.csv"])
    return det


def holdout_split(
    labels: pd.DataFrame, paths: list[Path], holdout: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stratified hold-out that keeps every group of near-duplicate images on one side
    (on the background-invariant subject features of comp.folds.similarity).

    A twin of a held-back image left in train scores the local leaderboard on memory,
    as a leaky validation split does; one fold of a StratifiedGroupKFold avoids that.
    """
    n_splits = max(2, round(1 / holdout))
    groups = near_duplicate_groups(
        paths, distance=NEAR_DUPLICATE, cap=max(2, len(paths) // (2 * n_splits))
    )
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    # Big groups make the folds uneven: hold back the one closest to the asked-for size.
    keep_idx, held_idx = min(
        folds.split(labels, labels["label"], groups),
        key=lambda split: abs(len(split[1]) - holdout * len(labels)),
    )
    keep, held = labels.iloc[keep_idx], labels.iloc[held_idx]
    # A class whose images are all twins of each other may land wholly on the held side;
    # training needs it more than the local leaderboard does.
    lost = held["label"].isin(set(held["label"]) - set(keep["label"]))
    return pd.concat([keep, held[lost]]).sort_index(), held[~lost]


def _with_usage(test: pd.DataFrame, seed: int, public: float = 0.3) -> pd.DataFrame:
    out = test[["Id", "label"]].reset_index(drop=True).copy()
    out["Usage"] = np.where(
        np.random.default_rng(seed).random(len(out)) < public, "Public", "Private"
    )
    return out


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
    columns = {
        k: str(v) for k, v in (overrides or {}).items() if k in ("id_column", "label_column")
    }
    det = detect_kaggle(data, root, columns=columns) or detect_imagefolder(
        data, root, holdout=holdout, seed=seed
    )
    if det is None:
        raise DataError(
            f"{data}: neither a Kaggle layout (labels CSV + train/ folder) nor an ImageFolder tree "
            "(one subfolder of images per class)"
        )
    stats = image_stats(det.train_files)
    values = {
        **det.values,
        "seed": seed,
        **(overrides or {}),
    }
    if values.get("pretrained_file") is not None:
        values["pretrained_file"] = _weights_path(str(values["pretrained_file"]), root)
    cfg = make_config(values)
    n_train = len(det.labels) * (cfg.n_splits - 1) // cfg.n_splits
    # Before anything is written: a pretrained file that does not fit is refused here.
    plan = planned_recipe(cfg, stats["sizes"], n_train, root=root, num_classes=len(set(det.labels)))
    # Only now, with the data understood and the config valid: a refused init writes nothing.
    root.mkdir(parents=True, exist_ok=True)
    for name, table in det.tables.items():
        files.write_csv(root / name, table)
    for d in WORKSPACE_DIRS:
        (root / d).mkdir(exist_ok=True)
    write_workspace_config(
        root / CONFIG_FILE,
        cfg,
        header=f"comp workspace around {data.resolve()} ({det.layout} layout).\nEvery key can be overridden on the command line: --epochs 3 or --set epochs=3.",
    )
    return dict(values), report(det, stats, cfg.img_size) + "\n" + plan


def _weights_path(typed: str, root: Path) -> str:
    """A pretrained file as comp.yaml holds it (relative inside the workspace, absolute
    outside), from the path typed relative to where comp runs, or else to the workspace."""
    path = Path(typed).expanduser()
    if not path.is_absolute() and not path.exists() and (root / path).exists():
        return path.as_posix()
    return _where(path, root)


def planned_recipe(
    cfg: Config, sizes: np.ndarray, n_train: int, *, root: Path, num_classes: int
) -> str:
    """The recipe `comp train` will resolve here, as one line (it is resolved again there),
    after the line on a pretrained file; ``ModelError`` where the file does not fit the
    model the recipe fine-tunes."""
    # torch and timm only here, where weights are looked for: `comp init` stays quick otherwise.
    import torch

    from comp.models.factory import describe_file, weights_source

    weights = weights_source(
        cfg.model, pretrained=cfg.pretrained, pretrained_file=cfg.pretrained_file
    )
    cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    resolved, recipe = resolve(
        cfg, weights=weights, device="cuda" if cuda else "cpu", sizes=sizes, n_train=n_train
    )
    plan = recipe.describe()
    if cfg.recipe == "auto" and weights != "random":
        plan += (
            "\nrecipe auto with weights: comp train trains the first fold both ways (finetune "
            "and scratch) and keeps the better for the other folds (--recipe finetune skips it)"
        )
    if cfg.pretrained_file is None:
        return plan
    loads = describe_file(
        resolved.model,
        path=root / Path(cfg.pretrained_file).expanduser(),  # absolute: stays itself
        num_classes=num_classes,
        guess=cfg.model == "auto",
    )
    return f"{loads}\n{plan}"


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
    lines.append(
        f"img_size: {img_size}"
        if img_size > 0
        else f"img_size: auto ({suggest_img_size(sizes)} from the images, at most 64 when training from scratch on a CPU)"
    )
    lines.extend(f"note: {n}" for n in det.notes)
    return "\n".join(lines)


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a competition archive into ``dest``, and the zips inside it (Kaggle nests train.zip)."""
    try:
        _extract(archive, dest)
        for inner in sorted(dest.rglob("*.zip")):
            # train.zip usually holds train/ itself; unpack beside it, not into train/train/.
            _extract(inner, inner.parent)
            inner.unlink()
    except zipfile.BadZipFile:
        raise DataError(f"{archive.name}: not a zip archive (an interrupted download?)") from None


def _extract(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        root = dest.resolve()
        for member in z.namelist():
            # Refuse members that would land outside dest ("zip slip").
            if not (root / member).resolve().is_relative_to(root):
                raise DataError(f"{archive.name}: member '{member}' points outside the folder")
        z.extractall(dest)
