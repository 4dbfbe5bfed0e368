"""comp report: pictures, a per-class table and a linked summary of a trained run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from comp.cli import cli
from comp.config import load_config
from comp.data.competition import load_competition
from comp.models.factory import create_model, save_checkpoint
from comp.report.report import grad_cam, plot_gradcam
from tests.conftest import TimmNet


def test_report_of_a_run(workspace: Callable[..., Path]) -> None:
    ws = workspace()
    runner = CliRunner()
    for args in (["folds"], ["train", "--name", "r1"]):
        result = runner.invoke(cli, ["-w", str(ws), *args])
        assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["-w", str(ws), "report", "r1"])
    assert result.exit_code == 0, result.output
    assert "weakest classes:" in result.output
    out = ws / "runs" / "r1" / "report"
    for name in (
        "confusion.png",
        "per_class.png",
        "curves.png",
        "gradcam.png",
        "README.md",
        "per_class.csv",
    ):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "per_class.csv")
    assert list(table.columns) == ["class", "precision", "recall", "f1", "support"]
    assert table["support"].sum() == 30
    readme = (out / "README.md").read_text()
    assert "![confusion](confusion.png)" in readme and "CV macro-F1" in readme
    assert "![gradcam](gradcam.png)" in readme
    # The grid of confident mistakes is drawn exactly when the run made some.
    oof = pd.read_csv(ws / "runs" / "r1" / "oof.csv")
    classes = ["circle", "square", "triangle"]
    wrong = bool((oof[classes].idxmax(axis=1) != oof["label"]).any())
    assert (out / "mistakes.png").exists() == wrong
    assert ("![mistakes](mistakes.png)" in readme) == wrong


def test_report_of_a_missing_run(workspace: Callable[..., Path]) -> None:
    ws = workspace()
    result = CliRunner().invoke(cli, ["-w", str(ws), "report", "nope"])
    assert result.exit_code == 1 and "no run 'nope'" in result.output


class BrightnessNet(nn.Module):
    """Class 0 scores the image's mean brightness, class 1 its darkness: one feature map."""

    num_features = 1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1, keepdim=True)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x.mean((2, 3))
        return pooled if pre_logits else torch.cat([pooled, -pooled], 1)


def test_grad_cam_finds_the_subject_of_the_class() -> None:
    x = torch.full((2, 3, 16, 16), -1.0)
    x[0, :, 2:7, 9:14] = 1.0  # a bright square, top right
    x[1, :, 10:15, 1:6] = 1.0  # bottom left
    square = torch.zeros(2, 16, 16, dtype=torch.bool)
    square[0, 2:7, 9:14] = square[1, 10:15, 1:6] = True
    bright = grad_cam(BrightnessNet(), x, torch.tensor([0, 0]))
    assert bright is not None and bright.shape == (2, 16, 16) and np.isfinite(bright).all()
    assert bright.min() >= 0 and bright.max() == pytest.approx(1)
    assert (bright[square.numpy()] > 0.9).all() and (bright[~square.numpy()] < 0.1).all()
    dark = grad_cam(BrightnessNet(), x, torch.tensor([1, 1]))
    assert dark is not None and (dark[square.numpy()] < 0.1).all()


def test_grad_cam_needs_a_spatial_feature_map(workspace: Callable[..., Path]) -> None:
    root = workspace()
    cfg = load_config(root)
    comp = load_competition(root, cfg)
    classes = comp.classes
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(classes)), len(comp.train))
    oof = pd.concat([comp.train.assign(fold=0), pd.DataFrame(probs, columns=classes)], axis=1)
    for name in ("simple_cnn", "mlp"):
        run = root / "runs" / name
        (run / "fold0").mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"img_size": 16, "centre": True}))
        model, _ = create_model(name, num_classes=len(classes), pretrained="false")
        meta = {"model": name, "classes": classes, "img_size": 16}
        save_checkpoint(run / "fold0" / "best.pt", model, meta)
        path, skipped = plot_gradcam(oof, classes, comp, run, run / "gradcam.png", n=3)
        if name == "simple_cnn":
            assert path is not None and path.stat().st_size > 0 and skipped is None
        else:
            assert path is None and skipped is not None and "not a spatial map" in skipped
    path, skipped = plot_gradcam(oof, classes, comp, root / "runs", root / "x.png")
    assert path is None and skipped is not None and "no fold checkpoints" in skipped


def test_grad_cam_of_a_small_image_uses_a_map_with_room() -> None:
    """At 32 px, resnet10t's last map is 1x1, which would paint every pixel alike."""
    import timm
    import torch

    from comp.report.report import grad_cam

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=3)
    assert isinstance(model, TimmNet)
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape[-1] == 1
    cam = grad_cam(model, x, torch.tensor([0, 1]))
    assert cam is not None and cam.shape == (2, 32, 32)
    # An untrained net: a map may rectify to zero, but none is one flat colour.
    assert np.isfinite(cam).all() and cam.std(axis=(1, 2)).max() > 0.01
