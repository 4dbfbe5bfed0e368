import uuid
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from comp.data.demo import write_demo


def test_demo_is_a_kaggle_competition(tmp_path: Path) -> None:
    facts = write_demo(tmp_path / "d", size=16, test_fraction=0.5)
    ws = tmp_path / "d"
    train = pd.read_csv(ws / "data" / "train_labels.csv", dtype=str)
    solution = pd.read_csv(ws / "solution.csv", dtype=str)
    sample = pd.read_csv(ws / "data" / "sample_submission.csv", dtype=str)
    assert facts["train"] + facts["test"] == 1797 and sorted(train["label"].unique()) == [
        str(d) for d in range(10)
    ]
    assert list(solution.columns) == ["Id", "label", "Usage"] and list(sample["Id"]) == list(
        solution["Id"]
    )
    assert uuid.UUID(train["Id"][0]).version == 4
    assert not set(train["Id"]) & set(solution["Id"])
    with Image.open(ws / "data" / "train" / f"{train['Id'][0]}.png") as img:
        assert img.mode == "RGB" and img.size == (16, 16)
    assert len(list((ws / "data" / "test").iterdir())) == facts["test"]
    assert (ws / "comp.yaml").exists() and (ws / "folds").is_dir()


def test_demo_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        write_demo(tmp_path / "d")
    assert (tmp_path / "d" / "keep.txt").read_text() == "mine"
