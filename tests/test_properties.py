"""Property tests: the submission validator and the labels reader on whatever Hypothesis makes.

The validator accepts every well-formed submission (also after a round trip through
its CSV file) and rejects every single corruption of one with SubmissionError. The
labels reader, given any text, returns a table of unique, non-empty Ids and labels
or raises DataError: never another exception, never a bad table.
"""

from __future__ import annotations

import contextlib
import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from comp.data.competition import read_labels
from comp.errors import DataError, SubmissionError
from comp.submit.submission import (
    build_submission,
    read_submission,
    validate_submission,
    write_submission,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Cells as competitions have them: letters, digits, punctuation that needs quoting in a
# CSV, spaces, accents; no control characters (no CSV carries them unquoted).
CELL_CHARS = st.characters(
    blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\ufeff"
)
# A value that survives a CSV round trip as itself: not empty, not padded with spaces.
word = st.text(CELL_CHARS, min_size=1, max_size=8).filter(lambda s: s == s.strip() and s != "")


@st.composite
def competitions(draw: st.DrawFn) -> tuple[list[str], list[str], pd.DataFrame]:
    """Classes, test Ids and a sample submission (Id, label) in the sample's order."""
    classes = draw(st.lists(word, min_size=1, max_size=5, unique=True))
    ids = draw(st.lists(word, min_size=1, max_size=12, unique=True))
    id_col, label_col = draw(st.lists(word, min_size=2, max_size=2, unique=True))
    sample = pd.DataFrame({id_col: ids, label_col: classes[0]})
    return classes, ids, sample


@st.composite
def valid_submissions(
    draw: st.DrawFn,
) -> tuple[list[str], list[str], pd.DataFrame, pd.DataFrame]:
    classes, ids, sample = draw(competitions())
    order = draw(st.permutations(ids))
    labels = draw(st.lists(st.sampled_from(classes), min_size=len(ids), max_size=len(ids)))
    df = pd.DataFrame({sample.columns[0]: order, sample.columns[1]: labels})
    return classes, ids, sample, df


def validate(df: pd.DataFrame, sample: pd.DataFrame, classes: list[str]) -> None:
    validate_submission(df, sample=sample, classes=classes, ids=list(sample.iloc[:, 0]))


@FAST
@given(valid_submissions())
def test_every_valid_submission_is_accepted_also_after_its_file_round_trip(
    case: tuple[list[str], list[str], pd.DataFrame, pd.DataFrame],
) -> None:
    classes, _, sample, df = case
    validate(df, sample, classes)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sub.csv"
        write_submission(path, df, {"run": "r"})
        back = read_submission(path)
    assert list(back.columns) == list(df.columns)
    assert back.astype(str).to_numpy().tolist() == df.astype(str).to_numpy().tolist()
    validate(back, sample, classes)


@FAST
@given(competitions(), st.data())
def test_a_built_submission_is_valid(
    comp: tuple[list[str], list[str], pd.DataFrame], data: st.DataObject
) -> None:
    classes, ids, sample = comp
    probs = np.asarray(
        data.draw(
            st.lists(
                st.lists(
                    st.floats(0, 1, allow_nan=False), min_size=len(classes), max_size=len(classes)
                ),
                min_size=len(ids),
                max_size=len(ids),
            )
        ),
        dtype=np.float64,
    ).reshape(len(ids), len(classes))
    df = build_submission(ids, probs, classes=classes, sample=sample)
    validate(df, sample, classes)
    # Each Id keeps its own row, and its label is a class the model rated highest for it.
    assert list(df.iloc[:, 0]) == ids
    for i, label in enumerate(df.iloc[:, 1]):
        assert probs[i, classes.index(label)] == probs[i].max()


CORRUPTIONS = [
    "drop a row",
    "add a row",
    "swap the header",
    "rename a column",
    "unknown label",
    "empty label",
    "duplicate Id",
    "unknown Id",
]


@FAST
@given(valid_submissions(), st.sampled_from(CORRUPTIONS), st.data())
def test_every_single_corruption_is_rejected_with_a_submission_error(
    case: tuple[list[str], list[str], pd.DataFrame, pd.DataFrame],
    corruption: str,
    data: st.DataObject,
) -> None:
    classes, ids, sample, df = case
    df = df.copy()
    cols = list(df.columns)
    row = data.draw(st.integers(0, len(df) - 1), label="row")
    if corruption == "drop a row":
        df = df.drop(index=row).reset_index(drop=True)
    elif corruption == "add a row":
        df = pd.concat([df, df.iloc[[row]]], ignore_index=True)
    elif corruption == "swap the header":
        df = df[cols[::-1]]
    elif corruption == "rename a column":
        col = data.draw(st.sampled_from(cols), label="column")
        new = data.draw(word.filter(lambda s: s not in cols), label="name")
        df = df.rename(columns={col: new})
    elif corruption == "unknown label":
        df.iloc[row, 1] = data.draw(word.filter(lambda s: s not in classes), label="label")
    elif corruption == "empty label":
        df.iloc[row, 1] = None
    elif corruption == "duplicate Id":
        assume(len(df) >= 2)
        other = data.draw(st.integers(0, len(df) - 1).filter(lambda k: k != row), label="other")
        dup = df.iloc[other, 0]
        assert isinstance(dup, str)
        df.iloc[row, 0] = dup
    elif corruption == "unknown Id":
        df.iloc[row, 0] = data.draw(word.filter(lambda s: s not in ids), label="Id")
    with pytest.raises(SubmissionError):
        validate(df, sample, classes)


@FAST
@given(
    competitions(),
    st.sampled_from([np.nan, np.inf, -np.inf, -0.5, 1.5, "high"]),
    st.data(),
)
def test_a_probability_submission_with_one_bad_value_is_rejected(
    comp: tuple[list[str], list[str], pd.DataFrame], bad: float | str, data: st.DataObject
) -> None:
    classes, ids, _ = comp
    assume(len(classes) >= 2)
    columns = ["Id", *data.draw(st.permutations(classes), label="columns")]
    assume(columns[0] not in classes)
    sample = pd.DataFrame({c: ["0"] * len(ids) for c in columns}).assign(Id=ids)[columns]
    probs = np.full((len(ids), len(classes)), 1 / len(classes))
    df = build_submission(ids, probs, classes=classes, sample=sample)
    validate(df, sample, classes)
    df = df.astype({c: object for c in classes})
    df.iloc[data.draw(st.integers(0, len(ids) - 1)), data.draw(st.integers(1, len(classes)))] = bad
    with pytest.raises(SubmissionError):
        validate(df, sample, classes)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.just(["Id", "label"]),
        st.just(["Id", "x", "y"]),
        st.lists(st.text(CELL_CHARS, max_size=4), min_size=1, max_size=3, unique=True),
    ),
    st.sampled_from(["labels", "probabilities", "none"]),
    st.data(),
)
def test_the_validator_raises_nothing_but_its_own_error(
    columns: list[str], kind: str, data: st.DataObject
) -> None:
    """Any table of text and numbers, however odd: accepted, or refused with SubmissionError."""
    n = data.draw(st.integers(0, 4), label="rows")
    cell = st.one_of(
        st.none(),
        st.sampled_from(["a", "b", "x", "y", "0.5", "nan", ""]),
        st.text(CELL_CHARS, max_size=4),
        st.floats(),
        st.integers(),
    )
    df = pd.DataFrame(
        {c: data.draw(st.lists(cell, min_size=n, max_size=n), label=c) for c in columns}
    )
    if kind == "labels":
        sample: pd.DataFrame | None = pd.DataFrame({"Id": ["a", "b"], "label": ["x", "x"]})
        classes = data.draw(st.lists(st.sampled_from(["x", "y", "z", "1"]), min_size=1))
    elif kind == "probabilities":
        sample = pd.DataFrame({"Id": ["a", "b"], "x": ["0", "0"], "y": ["0", "0"]})
        classes = ["y", "x"]
    else:
        sample, classes = None, ["x", "y"]
    with contextlib.suppress(SubmissionError):
        validate_submission(df, sample=sample, classes=classes)


# --- the labels reader ---------------------------------------------------------------------


def read_text(text: str | bytes, **columns: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.csv"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return read_labels(path, **columns)


def assert_good_table(df: pd.DataFrame) -> None:
    assert list(df.columns) == ["Id", "label"] and len(df) >= 1
    for col in ("Id", "label"):
        values = df[col].tolist()
        assert all(isinstance(v, str) and v == v.strip() and v for v in values), values
    assert df["Id"].is_unique
    assert not df["label"].str.lower().eq("nan").any()


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=80).map(lambda b: b"Id,label\n" + b)))
def test_the_labels_reader_on_any_text_returns_a_good_table_or_a_data_error(
    text: str | bytes,
) -> None:
    try:
        df = read_text(text if isinstance(text, bytes) else "Id,label\n" + text)
    except DataError:
        return
    assert_good_table(df)


# Cells that probe the reader: padding, empties, text that means "missing", quoting.
tricky = st.one_of(
    st.sampled_from(["", " ", "  a", "a ", "nan", "NaN", "NA", "None", "null", '"', ",", "a,b"]),
    st.text(CELL_CHARS, max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(tricky, tricky), min_size=0, max_size=8), st.booleans())
def test_the_labels_reader_keeps_exactly_the_good_rows_of_a_csv(
    rows: list[tuple[str, str]], extra_column: bool
) -> None:
    """A CSV written properly: accepted exactly when every row has a usable Id and label."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "kind", "notes"] if extra_column else ["image", "kind"])
    for ident, label in rows:
        writer.writerow([ident, label, "x"] if extra_column else [ident, label])
    ids = [i.strip() for i, _ in rows]
    labels = [lab.strip() for _, lab in rows]
    usable = (
        len(rows) >= 1
        and all(ids)
        and all(labels)
        and not any(lab.lower() == "nan" for lab in labels)
        and len(set(ids)) == len(ids)
    )
    try:
        df = read_text(buf.getvalue(), id_column="image", label_column="kind")
    except DataError:
        assert not usable, rows
        return
    assert usable, rows
    assert_good_table(df)
    assert df["Id"].tolist() == ids and df["label"].tolist() == labels
