import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from comp.config import load_config
from comp.errors import DataError
from comp.predict.predict import predict
from comp.runs import find_run
from comp.submit.submission import publish
from comp.train.run import train
from tests.conftest import with_folds


@pytest.fixture
def trained(workspace: Callable[..., Path]) -> Path:
    root, cfg = with_folds(workspace(epochs=1, freeze_epochs=0))
    train(root, cfg, name="r")
    return root


def test_predict_writes_the_sample_shape(trained: Path) -> None:
    root = trained
    facts = publish(root, predict(root, load_config(root)))
    sample = pd.read_csv(root / load_config(root).sample_submission, dtype=str)  # type: ignore[operator]
    sub = pd.read_csv(root / "submissions" / "r.csv", dtype=str)
    assert list(sub.columns) == list(sample.columns) and list(sub["Id"]) == list(sample["Id"])
    assert set(sub["label"]) <= {"circle", "square", "triangle"}
    probs = pd.read_csv(root / "runs" / "r" / "test_probs.csv")
    assert np.allclose(probs.iloc[:, 1:].sum(axis=1), 1, atol=1e-4)
    side = json.loads((root / "submissions" / "r.json").read_text())
    assert (
        side["run"] == "r"
        and side["folds"] == ["fold0", "fold1"]
        and side == facts | {"file": side["file"]}
    )


def test_tta_averages_views(trained: Path) -> None:
    root = trained
    publish(root, predict(root, load_config(root)))
    plain = pd.read_csv(root / "runs" / "r" / "test_probs.csv").iloc[:, 1:].to_numpy()
    facts = publish(
        root,
        predict(root, load_config(root), tta="hflip,vflip"),
        out=root / "submissions" / "tta.csv",
    )
    tta = pd.read_csv(root / "runs" / "r" / "test_probs.csv").iloc[:, 1:].to_numpy()
    assert facts["tta"] == ["none", "HorizontalFlip", "VerticalFlip"]
    assert not np.allclose(plain, tta)


def test_find_run(trained: Path) -> None:
    assert find_run(trained).name == "r"
    with pytest.raises(DataError, match=r"no run 'nope'.*runs are: r"):
        find_run(trained, "nope")
