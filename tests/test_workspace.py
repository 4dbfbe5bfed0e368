from pathlib import Path

import pandas as pd
import pytest

from comp.config import load_config
from comp.data import DataError, load_competition
from comp.workspace import init_workspace
from tests.conftest import make_imagefolder, make_kaggle


def test_kaggle_layout_with_other_column_names(tmp_path: Path) -> None:
    data = make_kaggle(
        tmp_path / "pokemon", id_column="image_id", label_column="primary_type", odd=True
    )
    values, text = init_workspace(tmp_path / "ws", data)
    assert values["id_column"] == "image_id" and values["label_column"] == "primary_type"
    assert (
        "layout: kaggle" in text
        and "train images: 30 in 3 classes" in text
        and "test images: 9" in text
    )
    assert "modes:" in text and "RGBA" in text and "P " in text
    cfg = load_config(tmp_path / "ws")
    comp = load_competition(tmp_path / "ws", cfg)
    assert comp.classes == ["circle", "square", "triangle"]
    assert len(comp.train_paths()) == 30 and len(comp.test_paths(comp.test_ids())) == 9
    assert cfg.solution is not None and cfg.solution.endswith("solution.csv")
    for d in ("folds", "submissions", "kernels", "runs"):
        assert (tmp_path / "ws" / d).is_dir()


def test_imagefolder_without_test_set_gets_a_holdout(tmp_path: Path, imagefolder: Path) -> None:
    _, text = init_workspace(tmp_path / "ws", imagefolder, holdout=0.25)
    assert "layout: imagefolder" in text and "held back" in text
    ws = tmp_path / "ws"
    train = pd.read_csv(ws / "train_labels.csv")
    solution = pd.read_csv(ws / "solution.csv")
    assert len(train) + len(solution) == 24 and not set(train["Id"]) & set(solution["Id"])
    assert set(solution["Usage"]) <= {"Public", "Private"}
    assert solution.groupby("label").size().tolist() == [2, 2, 2]  # stratified
    assert pd.read_csv(ws / "sample_submission.csv")["Id"].tolist() == solution["Id"].tolist()
    comp = load_competition(ws, load_config(ws))
    assert comp.train_paths()[0].suffix == ".jpeg"
    assert len(comp.test_paths(comp.test_ids())) == len(solution)


def test_imagefolder_inside_a_wrapper_with_train_and_test(tmp_path: Path) -> None:
    data = tmp_path / "archive" / "raw-img"
    make_imagefolder(data / "train", n_per_class=4)
    make_imagefolder(data / "test", n_per_class=2, seed=1)
    _, text = init_workspace(tmp_path / "ws", tmp_path / "archive")
    assert "labelled test images used for local scoring" in text
    assert len(pd.read_csv(tmp_path / "ws" / "solution.csv")) == 6


def test_init_refuses_what_it_cannot_read(tmp_path: Path, kaggle_comp: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither a Kaggle layout"):
        init_workspace(tmp_path / "ws", tmp_path / "empty")
    init_workspace(tmp_path / "ws2", kaggle_comp)
    with pytest.raises(FileExistsError, match="--force"):
        init_workspace(tmp_path / "ws2", kaggle_comp)
