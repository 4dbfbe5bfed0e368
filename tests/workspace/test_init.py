from pathlib import Path

import pandas as pd
import pytest

from comp.config import load_config
from comp.data.competition import load_competition
from comp.errors import DataError
from comp.workspace.init import init_workspace
from tests.conftest import draw, make_imagefolder, make_kaggle


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


def _png(path: Path, colour: int = 0) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (colour, 0, 0)).save(path)


def test_the_labels_csv_is_the_one_that_names_the_images(tmp_path: Path) -> None:
    data = tmp_path / "c"
    # Nested train/train/ as some archives unpack, and a decoy CSV whose column also matches.
    for i in range(12):
        _png(data / "train" / "train" / f"{i}.png")
    pd.DataFrame({"id": range(12), "breed": ["a", "b", "c"] * 4}).to_csv(
        data / "train.csv", index=False
    )
    pd.DataFrame({"label": [0, 1, 2], "name": ["a", "b", "c"]}).to_csv(
        data / "label_names.csv", index=False
    )
    values, text = init_workspace(tmp_path / "ws", data)
    assert values["train_csv"].endswith("train.csv") and values["id_column"] == "id"
    assert values["label_column"] == "breed" and values["train_dir"].endswith("train/train")
    assert "train images: 12 in 3 classes" in text


def test_label_column_guess_skips_codes_and_says_it_guessed(tmp_path: Path) -> None:
    data = tmp_path / "ham"
    for i in range(12):
        _png(data / "train" / f"ISIC_{i}.png")
    pd.DataFrame(
        {
            "lesion_id": [f"HAM_{i // 2}" for i in range(12)],
            "image_id": [f"ISIC_{i}" for i in range(12)],
            "dx": ["nv", "mel", "bkl"] * 4,
            "age": range(12),
            "site": ["back"] * 12,
        }
    ).to_csv(data / "metadata.csv", index=False)
    values, text = init_workspace(tmp_path / "ws", data)
    assert values["label_column"] == "dx" and "guess" not in text  # the only candidate
    with pytest.raises(DataError, match="label column 'site' has a single value"):
        init_workspace(tmp_path / "ws2", data, overrides={"label_column": "site"})


def test_missing_images_and_colliding_ids_are_refused_at_init(tmp_path: Path) -> None:
    data = tmp_path / "k"
    for i in range(4):
        _png(data / "train" / f"{i}.png")
    pd.DataFrame({"Id": range(6), "label": ["a", "b"] * 3}).to_csv(
        data / "train_labels.csv", index=False
    )
    with pytest.raises(DataError, match=r"2 of 6 Ids have no image .* e\.g\. '4'"):
        init_workspace(tmp_path / "ws", data)
    tree = tmp_path / "tree"
    for cls in ("cat", "dog"):
        _png(tree / cls / "0.png")
        _png(tree / cls / "1.png")
    _png(tree / "cat" / "0.bmp")
    with pytest.raises(DataError, match="would share the Id 'cat/0'"):
        init_workspace(tmp_path / "ws3", tree)


def test_a_tiny_imagefolder_cannot_hold_out_every_class(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for cls in "abcdefghij":
        for k in range(2):
            _png(tree / cls / f"{k}.png")
    with pytest.raises(DataError, match="cannot hold back every one of 10 classes"):
        init_workspace(tmp_path / "ws", tree)


def test_dummy_test_subfolder_is_unlabelled(tmp_path: Path) -> None:
    data = tmp_path / "keras"
    for cls in ("cat", "dog"):
        for k in range(3):
            _png(data / "train" / cls / f"{k}.png")
    for k in range(4):
        _png(data / "test" / "unknown" / f"t{k}.png")
    _png(data / "test" / "unknown" / "._t0.png")  # macOS resource file, not an image
    values, text = init_workspace(tmp_path / "ws", data)
    assert values["solution"] is None and "test images: 4" in text
    comp = load_competition(tmp_path / "ws", load_config(tmp_path / "ws"))
    assert len(comp.test_paths(comp.test_ids())) == 4


def test_a_holdout_keeps_near_duplicates_on_one_side(tmp_path: Path) -> None:
    """An ImageFolder without a test set: no held-back image may have a twin left in train."""
    import numpy as np
    import pandas as pd

    from comp.workspace.init import init_workspace

    data = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for shape in ["circle", "square", "triangle"]:
        (data / shape).mkdir(parents=True)
        for i in range(12):
            img = draw(shape, size=32, rng=rng)
            img.save(data / shape / f"{i}.png")
            # Every image also in a second size: the icon-theme kind of twin.
            img.resize((48, 48)).save(data / shape / f"{i}-big.png")
    init_workspace(tmp_path / "ws", data, overrides={})
    held = pd.read_csv(tmp_path / "ws" / "solution.csv", dtype=str)["Id"]
    stems = {i.removesuffix("-big") for i in held}
    train = pd.read_csv(tmp_path / "ws" / "train_labels.csv", dtype=str)["Id"]
    assert not stems & {i.removesuffix("-big") for i in train}
    assert 0.1 <= len(held) / 72 <= 0.35
