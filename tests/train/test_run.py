import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import f1_score
from timm.utils import random_seed

from comp.config import load_config
from comp.errors import ConfigError
from comp.folds.split import folds_path
from comp.models.factory import create_model
from comp.train.run import train
from tests.conftest import with_folds


def test_train_writes_every_artifact(workspace: Callable[..., Path]) -> None:
    root, cfg = with_folds(workspace())
    summary = train(root, cfg, name="r")
    run = root / "runs" / "r"
    assert summary["complete"] and summary["n_oof"] == 30
    assert json.loads((run / "cv.json").read_text()) == summary
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == "resnet10t"
    assert json.loads((run / "classes.json").read_text()) == ["circle", "square", "triangle"]
    assert "transform" in json.loads((run / "transforms.json").read_text())
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for k in (0, 1):
        metrics = pd.read_csv(run / f"fold{k}" / "metrics.csv")
        assert list(metrics.columns) == [
            "epoch",
            "stage",
            "lr",
            "train_loss",
            "train_acc",
            "valid_loss",
            "valid_acc",
            "valid_macro_f1",
            "train_seconds",
            "seconds",
        ]
        assert metrics["stage"].tolist() == [1, 2]
        assert (run / f"fold{k}" / "best.pt").exists()
    oof = pd.read_csv(run / "oof.csv")
    assert sorted(oof["Id"]) == sorted(pd.read_csv(folds_path(root, cfg))["Id"])
    assert np.allclose(oof[["circle", "square", "triangle"]].sum(axis=1), 1, atol=1e-4)
    # The CV score is the out-of-fold predictions' own, not any number in [0, 1].
    pred = oof[["circle", "square", "triangle"]].idxmax(axis=1)
    assert summary["cv_macro_f1"] == round(f1_score(oof["label"], pred, average="macro"), 6)


def test_stage_one_leaves_the_backbone_untouched(workspace: Callable[..., Path]) -> None:
    root, cfg = with_folds(workspace(epochs=1, freeze_epochs=1, aug="none"))
    train(root, cfg, name="frozen", folds=[0])
    state = torch.load(root / "runs" / "frozen" / "fold0" / "best.pt", weights_only=True)[
        "state_dict"
    ]
    random_seed(cfg.seed + 0)
    init, _ = create_model("resnet10t", num_classes=3, pretrained="false")
    for name, value in init.state_dict().items():
        if name.startswith("fc."):
            assert not torch.equal(value, state[name]), "the head must have trained"
        else:
            assert torch.equal(value, state[name]), f"{name} changed while frozen"


def test_one_fold_at_a_time_builds_one_run(workspace: Callable[..., Path]) -> None:
    root, cfg = with_folds(workspace(epochs=1, freeze_epochs=0))
    first = train(root, cfg, name="split", folds=[1])
    assert not first["complete"] and first["folds_trained"] == 1
    second = train(root, cfg, name="split", folds=[0])
    assert second["complete"] and second["n_oof"] == 30
    other = load_config(root, {"epochs": 2, "freeze_epochs": 0})
    with pytest.raises(ConfigError, match="another config"):
        train(root, other, name="split", folds=[0])
    with pytest.raises(ConfigError, match="--fold 7"):
        train(root, cfg, name="split", folds=[7])


def test_training_is_reproducible(workspace: Callable[..., Path]) -> None:
    root, cfg = with_folds(workspace(epochs=2, freeze_epochs=0))
    a = train(root, cfg, name="a", folds=[0])
    b = train(root, cfg, name="b", folds=[0])
    oa, ob = (pd.read_csv(root / "runs" / n / "oof.csv") for n in "ab")
    assert a["cv_macro_f1"] == b["cv_macro_f1"]
    assert np.allclose(oa.iloc[:, 3:].to_numpy(), ob.iloc[:, 3:].to_numpy(), atol=1e-5)


def test_pretrained_file_is_relative_to_the_workspace(
    workspace: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import timm

    root = workspace(epochs=1, freeze_epochs=1)
    (root / "weights").mkdir()
    torch.manual_seed(1)
    donor = timm.create_model("resnet10t")
    torch.save(donor.state_dict(), root / "weights" / "r10.pth")
    root, cfg = with_folds(root, pretrained_file="weights/r10.pth")
    monkeypatch.chdir(tmp_path)
    train(root, cfg, name="w", folds=[0])
    ckpt = torch.load(root / "runs" / "w" / "fold0" / "best.pt", weights_only=True)
    assert ckpt["meta"]["pretrained"].startswith("file:")
    # Stage 1 only: the backbone is still exactly the donor's.
    assert torch.equal(ckpt["state_dict"]["conv1.0.weight"], donor.state_dict()["conv1.0.weight"])


def test_labels_that_look_like_missing_values_survive(tmp_path: Path) -> None:
    from comp.train.run import summarise

    classes = ["NA", "None"]
    fold = tmp_path / "fold0"
    fold.mkdir()
    pd.DataFrame(
        {
            "Id": ["NA", "b"],
            "label": ["NA", "None"],
            "fold": [0, 0],
            "NA": [0.9, 0.2],
            "None": [0.1, 0.8],
        }
    ).to_csv(fold / "oof.csv", index=False)
    summary = summarise(tmp_path, classes=classes, n_folds=1)
    assert summary["cv_macro_f1"] == 1.0 and summary["complete"]


def test_cached_features_train_the_head_as_the_frozen_backbone_does(
    workspace: Callable[..., Path],
) -> None:
    """Stage 1 from features computed once gives the run that a backbone pass per epoch gives."""
    root, _ = with_folds(
        workspace(epochs=3, freeze_epochs=3, aug="none", sampler="balanced", stage1="sgd")
    )
    for cached in (True, False):
        run_cfg = load_config(root, {"cache_features": cached})
        train(root, run_cfg, name=f"cached-{cached}", folds=[0])
    a, b = (
        pd.read_csv(root / "runs" / f"cached-{c}" / "fold0" / "metrics.csv") for c in (True, False)
    )
    cols = ["train_loss", "train_acc", "valid_loss", "valid_acc", "valid_macro_f1"]
    assert np.allclose(a[cols].to_numpy(), b[cols].to_numpy(), atol=1e-4)
    wa, wb = (
        torch.load(root / "runs" / f"cached-{c}" / "fold0" / "best.pt", weights_only=True)[
            "state_dict"
        ]
        for c in (True, False)
    )
    for name in wa:
        assert torch.allclose(wa[name].float(), wb[name].float(), atol=1e-5), name


def test_cached_features_with_augmented_views_then_stage_two(
    workspace: Callable[..., Path],
) -> None:
    root, cfg = with_folds(workspace(epochs=3, freeze_epochs=2, aug="light", feature_views=2))
    summary = train(root, cfg, name="views", folds=[0])
    metrics = pd.read_csv(root / "runs" / "views" / "fold0" / "metrics.csv")
    assert metrics["stage"].tolist() == [1, 1, 2]
    assert summary["folds_trained"] == 1
