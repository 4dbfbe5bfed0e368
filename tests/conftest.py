"""Tiny competitions drawn on the fly: a few classes of coloured shapes, in both Kaggle layouts."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from tests.kaggle_standin import GOOD_TOKEN, KaggleStandIn, script_runner

if TYPE_CHECKING:
    import torch
    from torch import nn

    from comp.config import Config

# Keep the 2 CI cores for the one process under test.
os.environ.setdefault("OMP_NUM_THREADS", "2")

SHAPES = ("circle", "square", "triangle")
MODES = ("RGB", "RGBA", "L", "P", "LA")


def draw(shape: str, *, size: int = 24, rng: np.random.Generator, mode: str = "RGB") -> Image.Image:
    """One shape of random colour, position and scale on a noisy background."""
    bg = tuple(int(v) for v in rng.integers(0, 80, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = size * rng.uniform(0.25, 0.4)
    cx, cy = size / 2 + rng.uniform(-2, 2), size / 2 + rng.uniform(-2, 2)
    colour = tuple(int(v) for v in rng.integers(150, 256, 3))
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    if mode == "P":
        return img.convert("P", palette=Image.Palette.ADAPTIVE)
    return img.convert(mode)


def make_kaggle(
    root: Path,
    *,
    n_per_class: int = 10,
    n_test: int = 9,
    size: int = 24,
    id_column: str = "Id",
    label_column: str = "label",
    odd: bool = False,
    seed: int = 0,
) -> Path:
    """A Kaggle-layout competition: train_labels.csv, train/, test/, sample_submission.csv, solution.csv.

    With ``odd``, images come in every mode and several sizes and extensions.
    """
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows: list[tuple[str, str]] = []
    test_rows: list[tuple[str, str]] = []
    for i in range(n_per_class * len(SHAPES) + n_test):
        shape = SHAPES[i % len(SHAPES)]
        ident = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        mode = MODES[i % len(MODES)] if odd else "RGB"
        side = int(rng.choice([size, size + 7, 2 * size])) if odd else size
        ext = (".png", ".jpg", ".webp", ".bmp")[i % 4] if odd and mode in ("RGB", "L") else ".png"
        img = draw(shape, size=side, rng=rng, mode=mode)
        is_test = i >= n_per_class * len(SHAPES)
        img.save(root / ("test" if is_test else "train") / f"{ident}{ext}")
        (test_rows if is_test else rows).append((ident, shape))
    pd.DataFrame(rows, columns=[id_column, label_column]).to_csv(
        root / "train_labels.csv", index=False
    )
    pd.DataFrame({"Id": [r[0] for r in test_rows], "label": SHAPES[0]}).to_csv(
        root / "sample_submission.csv", index=False
    )
    usage = ["Public" if k % 3 == 0 else "Private" for k in range(len(test_rows))]
    pd.DataFrame(
        {"Id": [r[0] for r in test_rows], "label": [r[1] for r in test_rows], "Usage": usage}
    ).to_csv(root / "solution.csv", index=False)
    return root


def make_imagefolder(
    root: Path, *, n_per_class: int = 8, seed: int = 0, jpeg: bool = True, mixed_sizes: bool = True
) -> Path:
    """One folder per class of mixed-size JPEGs, as Animals-10 ships (no test set)."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        folder = root / shape
        folder.mkdir(parents=True)
        for k in range(n_per_class):
            side = int(rng.integers(20, 60)) if mixed_sizes else 24
            img = draw(shape, size=side, rng=rng)
            img.save(folder / f"{shape}_{k}.{'jpeg' if jpeg else 'png'}")
    return root


@pytest.fixture
def kaggle_comp(tmp_path: Path) -> Path:
    return make_kaggle(tmp_path / "comp")


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    return make_imagefolder(tmp_path / "animals")


TINY = {
    "model": "resnet10t",
    "pretrained": "false",
    "img_size": 16,
    "epochs": 2,
    "freeze_epochs": 1,
    "batch_size": 8,
    "n_splits": 2,
    "lr1": 1e-3,
    "lr2": 1e-3,
}


@pytest.fixture
def workspace(tmp_path: Path) -> Callable[..., Path]:
    """A workspace made by ``comp init`` around a competition of odd image modes, sizes and
    extensions, with tiny-model overrides."""
    odd_comp = make_kaggle(tmp_path / "odd", odd=True)
    from comp.workspace.init import init_workspace

    def make(**overrides: object) -> Path:
        root = tmp_path / "ws"
        init_workspace(root, odd_comp, overrides={**TINY, **overrides}, force=True)
        return root

    return make


def with_folds(root: Path, **overrides: object) -> tuple[Path, Config]:
    """The workspace's config (with ``overrides``) and its folds written, as `comp folds` would."""
    from comp.config import load_config
    from comp.data.competition import load_competition
    from comp.folds.split import folds_path, make_folds, write_folds

    cfg = load_config(root, overrides)
    comp = load_competition(root, cfg)
    write_folds(folds_path(root, cfg), make_folds(comp.train, n_splits=cfg.n_splits, seed=cfg.seed))
    return root, cfg


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real credentials or config of this machine can leak in."""
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    for key in list(os.environ):
        if key.startswith("KAGGLE_") and key != "KAGGLE_CONFIG_DIR":
            monkeypatch.delenv(key)
    return home


# --- The Kaggle stand-in on loopback: ``standin`` answers the API, ``kaggle_machines`` also
# runs the kernels pushed to it. Each test module using them gives the ``ws`` workspace they
# serve, on the competition ``SLUG``.

SLUG = "shapes"


def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, run: bool) -> KaggleStandIn:
    server = KaggleStandIn()
    if run:
        server.runner = script_runner(server, tmp_path / "kaggle-machines")
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("KAGGLE_API_TOKEN", GOOD_TOKEN)
    assert (tmp_path / "kaggle-side" / "train").is_dir()
    server.add_competition(SLUG, tmp_path / "kaggle-side")
    return server


@pytest.fixture
def standin(
    isolated: Path, ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KaggleStandIn]:
    with serve(tmp_path, monkeypatch, run=False) as server:
        yield server


@pytest.fixture
def kaggle_machines(
    isolated: Path, ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KaggleStandIn]:
    with serve(tmp_path, monkeypatch, run=True) as server:
        yield server


# --- What comp said -----------------------------------------------------------------------


class Said:
    """The lines comp said through its logging channel during a test, every level included
    (a line per epoch too): iterate, test membership, clear."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    def __iter__(self) -> Iterator[str]:
        return iter(self.caplog.messages)

    def __contains__(self, line: object) -> bool:
        return line in self.caplog.messages

    def __repr__(self) -> str:
        return repr(self.caplog.messages)

    def clear(self) -> None:
        self.caplog.clear()


@pytest.fixture
def said(caplog: pytest.LogCaptureFixture) -> Said:
    from comp.console import PROGRESS

    caplog.set_level(PROGRESS, logger="comp")
    return Said(caplog)


# --- timm's classifier interface, as a type -----------------------------------------------


@runtime_checkable
class TimmNet(Protocol):
    """What torch's ``nn.Module`` typing leaves out: timm's models and comp's own nets share
    these members, but ``create_model`` and ``load_checkpoint`` return a plain ``nn.Module``,
    whose other attributes type as ``Tensor | Module``. ``assert isinstance(model, TimmNet)``
    narrows a model, checking at run time that the members are there."""

    num_features: int

    def get_classifier(self) -> nn.Module: ...

    def reset_classifier(self, num_classes: int) -> None: ...

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...
