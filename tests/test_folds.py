from pathlib import Path

import pandas as pd
import pytest

from comp.data import DataError
from comp.folds import fold_counts, make_folds, read_folds, write_folds


def labels(counts: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{c}{i}", c) for c, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["Id", "label"])


def test_folds_are_stratified_and_seeded() -> None:
    table = labels({"a": 20, "b": 10, "c": 5})
    f1 = make_folds(table, n_splits=5, seed=1)
    assert list(f1.columns) == ["Id", "label", "fold"]
    counts = fold_counts(f1)
    assert counts.loc["a", 0] == 4 and counts.loc["b", 0] == 2 and counts.loc["c", 0] == 1
    assert f1.equals(make_folds(table, n_splits=5, seed=1))
    assert not f1["fold"].equals(make_folds(table, n_splits=5, seed=2)["fold"])


def test_small_classes_are_refused_by_name() -> None:
    with pytest.raises(
        DataError, match=r"1 class\(es\) have fewer images than the 5 folds: 'rare' \(3\)"
    ):
        make_folds(labels({"common": 10, "rare": 3}), n_splits=5, seed=0)


def test_folds_file_round_trip_and_staleness(tmp_path: Path) -> None:
    table = labels({"a": 6, "b": 6})
    path = tmp_path / "folds" / "f.csv"
    write_folds(path, make_folds(table, n_splits=3, seed=0))
    assert read_folds(path, labels=table)["fold"].dtype.kind == "i"
    changed = table.copy()
    changed.loc[0, "label"] = "b"
    with pytest.raises(DataError, match="no longer match"):
        read_folds(path, labels=changed)
    with pytest.raises(DataError, match=r"run `comp folds --n-splits 3 --seed 7` first"):
        read_folds(tmp_path / "folds_k3_seed7.csv")
    (tmp_path / "bad.csv").write_text("Id,label,fold\na,a,0\nb,b,x\n")
    with pytest.raises(DataError, match="row 3 has a fold that is not a whole number"):
        read_folds(tmp_path / "bad.csv")
