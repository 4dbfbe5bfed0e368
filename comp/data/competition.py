"""Competition data: the labels table, the image files, and decoded image arrays.

Reads the competition folder named by the config: ``train_csv`` (Id,label),
``train_dir``/``test_dir`` images (png/jpg/jpeg/webp/bmp, any size, RGB, RGBA,
L, LA, P, CMYK or 16-bit modes) and ``sample_submission``. Writes nothing; the
decoded images it returns are uint8 RGB arrays at the training size.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from comp.config import Config, suggest
from comp.data.images import IMAGE_EXTS
from comp.errors import DataError


def natural_key(text: str) -> list[int | str]:
    """Sort "2" before "10", so digit-named classes read in the obvious order."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def sorted_classes(labels: Sequence[str]) -> list[str]:
    return sorted(set(labels), key=natural_key)


def encode_labels(labels: Iterable[str], classes: Sequence[str]) -> np.ndarray:
    """Each label's index in ``classes``, as int64; a label outside them is a DataError,
    since a NaN or a wrapped-around integer would only fail later, in a metric or an index."""
    values = pd.Index(list(labels), dtype=object)
    codes = pd.Index(list(classes), dtype=object).get_indexer(values)
    if (codes < 0).any():
        unknown = values[codes < 0]
        raise DataError(
            f"label {unknown[0]!r} ({len(unknown)} rows) is not one of the {len(classes)} classes "
            f"({', '.join(map(str, classes[:10]))}{', ...' if len(classes) > 10 else ''})"
        )
    return codes.astype(np.int64)


def resolve(root: Path, path: str | None) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


# --- tables ---------------------------------------------------------------------


def read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV with every column as text, so labels like "03" survive the round trip."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        # One line: the parser's messages end in a newline and may hold several.
        reason = " ".join(str(e).split())
        raise DataError(f"{path}: not a readable CSV ({reason})") from None


def read_labels(path: Path, *, id_column: str = "Id", label_column: str = "label") -> pd.DataFrame:
    """The training labels as a table with columns Id and label, both text."""
    df = read_csv(path)
    for col, key in ((id_column, "id_column"), (label_column, "label_column")):
        if col not in df.columns:
            raise DataError(
                f"{path}: no column '{col}' (config key {key}); columns are "
                f"{', '.join(df.columns)}{suggest(col, list(df.columns))}"
            )
    if df.empty:
        raise DataError(f"{path}: no rows")
    out = pd.DataFrame({"Id": df[id_column].str.strip(), "label": df[label_column].str.strip()})
    # A cell of spaces is as empty as an empty one.
    out = out.mask(out == "")
    missing_id = out["Id"].isna()
    if missing_id.any():
        row = int(np.flatnonzero(missing_id)[0]) + 2
        raise DataError(f"{path}: row {row} has an empty {id_column}")
    missing = out["label"].isna()
    if missing.any():
        row = int(np.flatnonzero(missing)[0]) + 2
        raise DataError(f"{path}: row {row} (Id {out['Id'][row - 2]}) has an empty {label_column}")
    # "nan" is what str() makes of a missing value: a table written from a NaN, not a class.
    nan_text = out["label"].str.lower() == "nan"
    if nan_text.any():
        row = int(np.flatnonzero(nan_text)[0]) + 2
        raise DataError(
            f"{path}: row {row} (Id {out['Id'][row - 2]}) has {label_column} "
            f"'{out['label'][row - 2]}', a missing value written as text"
        )
    dup = out["Id"].duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup)[0]) + 2
        raise DataError(f"{path}: duplicate Id '{out['Id'][row - 2]}' at row {row}")
    return out


# --- image files ----------------------------------------------------------------


def index_images(folder: Path) -> dict[str, Path]:
    """Map every image under ``folder`` by its relative path, with and without extension."""
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    index: dict[str, Path] = {}
    ambiguous: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(folder)
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTS or name.startswith("."):
                continue
            path = Path(dirpath) / name
            rel = (rel_dir / name).as_posix()
            rel_stem = (rel_dir / stem).as_posix()
            index[rel] = path
            if rel_stem in index:
                ambiguous.add(rel_stem)
            index[rel_stem] = path
    for key in ambiguous:
        del index[key]
    return index


def image_paths(
    ids: Sequence[str], folder: Path, index: dict[str, Path] | None = None
) -> list[Path]:
    """The file of each Id, refusing Ids that have no image."""
    index = index if index is not None else index_images(folder)
    if ids and not index:
        raise DataError(f"{folder}: no images in this folder, but {len(ids)} Ids need one")
    paths, missing = [], []
    for i in ids:
        p = index.get(i)
        if p is None:
            missing.append(i)
        else:
            paths.append(p)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(
            f"{folder}: no image for Id {', '.join(repr(m) for m in missing[:3])}{more} "
            f"({len(missing)} of {len(ids)})"
        )
    return paths


# --- the competition as one object --------------------------------------------


@dataclass
class Competition:
    """What every stage needs to know about the competition's files."""

    train: pd.DataFrame  # Id, label
    classes: list[str]
    train_dir: Path
    test_dir: Path | None
    sample: pd.DataFrame | None  # the sample submission, as text
    sample_path: Path | None = None  # where it came from, for messages

    def train_paths(self, ids: Sequence[str] | None = None) -> list[Path]:
        return image_paths(list(self.train["Id"] if ids is None else ids), self.train_dir)

    def test_ids(self) -> list[str]:
        """Test Ids in the order the submission must have: the sample's, else sorted files."""
        if self.sample is not None:
            return list(self.sample.iloc[:, 0])
        if self.test_dir is None:
            raise DataError("no test set: set test_dir or sample_submission in comp.yaml")
        index = index_images(self.test_dir)
        ids = sorted({k for k in index if os.path.splitext(k)[1].lower() not in IMAGE_EXTS})
        if not ids:
            raise DataError(f"{self.test_dir}: no test images")
        return ids

    def test_paths(self, ids: Sequence[str]) -> list[Path]:
        if self.test_dir is None:
            raise DataError("no test_dir in comp.yaml")
        index = index_images(self.test_dir)
        try:
            return image_paths(ids, self.test_dir, index)
        except DataError as e:
            if self.sample is None or self.sample_path is None:
                raise
            # The Ids came from the sample submission: name it, since it may be the odd one out.
            raise DataError(f"{self.sample_path}: Ids do not match the test images; {e}") from None


def load_competition(root: Path, cfg: Config) -> Competition:
    train_csv = resolve(root, cfg.train_csv)
    assert train_csv is not None
    train = read_labels(train_csv, id_column=cfg.id_column, label_column=cfg.label_column)
    sample_path = resolve(root, cfg.sample_submission)
    sample = None
    if sample_path is not None and sample_path.exists():
        sample = read_csv(sample_path)
        if sample.shape[1] < 2 or sample.empty:
            raise DataError(f"{sample_path}: expected an Id column, a prediction column and rows")
        sample_ids = sample.iloc[:, 0]
        bad = sample_ids.isna() | sample_ids.duplicated()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            what = (
                "an empty Id"
                if pd.isna(sample_ids.iloc[row])
                else f"duplicate Id '{sample_ids.iloc[row]}'"
            )
            raise DataError(f"{sample_path}: {what} at row {row + 2}")
    train_dir = resolve(root, cfg.train_dir)
    assert train_dir is not None
    return Competition(
        train=train,
        classes=sorted_classes(list(train["label"])),
        train_dir=train_dir,
        test_dir=resolve(root, cfg.test_dir),
        sample=sample,
        sample_path=sample_path if sample is not None else None,
    )
