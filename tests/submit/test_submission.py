from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from comp.errors import SubmissionError
from comp.submit.submission import build_submission, score_local, validate_submission

SAMPLE = pd.DataFrame({"Id": ["x", "y", "z"], "label": ["a", "a", "a"]})
CLASSES = ["a", "b"]


def sub(
    ids: list[str], labels: list[str], columns: tuple[str, str] = ("Id", "label")
) -> pd.DataFrame:
    return pd.DataFrame({columns[0]: ids, columns[1]: labels})


def test_built_submission_follows_the_sample() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    df = build_submission(["x", "y", "z"], probs, classes=CLASSES, sample=SAMPLE)
    assert df.equals(sub(["x", "y", "z"], ["a", "b", "a"]))
    validate_submission(df, sample=SAMPLE, classes=CLASSES)


def test_probability_format_sample() -> None:
    sample = pd.DataFrame({"image": ["x", "y"], "b": ["0", "0"], "a": ["0", "0"]})
    df = build_submission(
        ["x", "y"], np.array([[0.9, 0.1], [0.2, 0.8]]), classes=CLASSES, sample=sample
    )
    assert list(df.columns) == ["image", "b", "a"] and df["b"].tolist() == [0.1, 0.8]
    validate_submission(df, sample=sample, classes=CLASSES)
    df.loc[0, "a"] = 1.5
    with pytest.raises(SubmissionError, match="finite numbers in"):
        validate_submission(df, sample=sample, classes=CLASSES)


@pytest.mark.parametrize(
    ("df", "match"),
    [
        (
            sub(["x", "y", "z"], ["a", "b", "a"], ("id", "label")),
            "header is id,label, expected Id,label",
        ),
        (sub(["x", "y"], ["a", "b"]), "2 rows, expected 3"),
        (sub(["x", "y", "w"], ["a", "b", "a"]), "not in the sample submission, e.g. 'w'"),
        (sub(["x", "y", "y"], ["a", "b", "a"]), "duplicate Id 'y' at row 4"),
        (sub(["x", "y", "z"], ["a", "cat", "a"]), "label 'cat' at row 3 is not a training class"),
        (sub(["x", "y", "z"], ["a", None, "a"]), "empty label at row 3"),  # type: ignore[list-item]
    ],
)
def test_validator_rejects(df: pd.DataFrame, match: str) -> None:
    with pytest.raises(SubmissionError, match=match):
        validate_submission(df, sample=SAMPLE, classes=CLASSES)


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=3, max_size=3))
def test_validator_accepts_exactly_the_class_set(labels: list[str]) -> None:
    df = sub(["z", "x", "y"], labels)
    if "c" in labels:
        with pytest.raises(SubmissionError):
            validate_submission(df, sample=SAMPLE, classes=CLASSES)
    else:
        validate_submission(df, sample=SAMPLE, classes=CLASSES)


def test_local_score_splits_public_and_private(tmp_path: Path) -> None:
    pd.DataFrame(
        {
            "Id": ["x", "y", "z", "w"],
            "label": ["a", "b", "a", "b"],
            "Usage": ["Public", "Public", "Private", "Private"],
        }
    ).to_csv(tmp_path / "s.csv", index=False)
    scores = score_local(sub(["x", "y", "z", "w"], ["a", "b", "b", "b"]), tmp_path / "s.csv")
    assert scores["public"] == 1.0
    assert scores["private"] == pytest.approx(1 / 3)
    with pytest.raises(SubmissionError, match="no prediction for 1"):
        score_local(sub(["x", "y", "z"], ["a", "b", "b"]), tmp_path / "s.csv")
