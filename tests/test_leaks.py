"""Leak-aware folds: planted near-duplicates inflate plain CV; grouped folds match the held-out score."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from comp.cli import cli
from comp.folds import make_folds
from comp.leaks import find_leaks
from comp.workspace import init_workspace
from tests.conftest import TINY

CLASSES = ("a", "b", "c")


def texture(rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour texture: one 'subject'."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((32, 32), Image.BICUBIC), dtype=np.float64)


def copy_of(subject: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An augmented copy, as a re-upload would be: brighter or darker, noisy, resampled."""
    img = subject * rng.uniform(0.9, 1.1) + rng.normal(0, 3, subject.shape)
    side = int(rng.integers(28, 40))
    small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize(
        (side, side), Image.BILINEAR
    )
    return small.resize((32, 32), Image.BILINEAR)


def planted(
    root: Path, *, subjects: int = 90, copies: int = 4, held_out: int = 150, test_twins: int = 5
) -> Path:
    """Labels are random per subject, so only memorising a subject can predict its label."""
    rng = np.random.default_rng(7)
    for d in ("train", "test"):
        (root / d).mkdir(parents=True)
    rows, test_rows = [], []
    kept = []
    for s in range(subjects):
        subject, label = texture(rng), CLASSES[s % 3]
        kept.append(subject)
        for _ in range(copies):
            ident = str(uuid.UUID(bytes=rng.bytes(16), version=4))
            copy_of(subject, rng).save(root / "train" / f"{ident}.png")
            rows.append((ident, label))
    for s in range(held_out):
        ident = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        twin = s < test_twins
        image = copy_of(kept[s], rng) if twin else copy_of(texture(rng), rng)
        image.save(root / "test" / f"{ident}.png")
        test_rows.append((ident, CLASSES[s % 3] if twin else CLASSES[int(rng.integers(3))]))
    pd.DataFrame(rows, columns=["Id", "label"]).to_csv(root / "train_labels.csv", index=False)
    pd.DataFrame({"Id": [r[0] for r in test_rows], "label": "a"}).to_csv(
        root / "sample_submission.csv", index=False
    )
    pd.DataFrame(test_rows, columns=["Id", "label"]).to_csv(root / "held_out.csv", index=False)
    return root


def pixels(paths: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p), dtype=np.float32).ravel() for p in paths])


def nn_cv(x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> float:
    """Out-of-fold macro-F1 of a 1-nearest-neighbour model, the purest memoriser there is."""
    pred = np.empty_like(y)
    for k in np.unique(fold):
        model = KNeighborsClassifier(1).fit(x[fold != k], y[fold != k])
        pred[fold == k] = model.predict(x[fold == k])
    return float(f1_score(y, pred, average="macro"))


@pytest.fixture(scope="module")
def comp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return planted(tmp_path_factory.mktemp("planted"))


def test_clusters_are_the_planted_copies(comp_dir: Path) -> None:
    labels = pd.read_csv(comp_dir / "train_labels.csv", dtype=str)
    train = [comp_dir / "train" / f"{i}.png" for i in labels["Id"]]
    test = sorted((comp_dir / "test").glob("*.png"))
    leaks = find_leaks(train, test, progress=False)
    assert len(leaks.clusters) == 90 and all(len(c) == 4 for c in leaks.clusters)
    # Copies of one subject are consecutive rows of the labels table.
    assert all(
        sorted(c) == list(range(c[0], c[0] + 4)) for c in (sorted(c) for c in leaks.clusters)
    )
    assert len(leaks.test_matches) == 5


def test_grouped_folds_predict_the_held_out_score_and_plain_folds_do_not(comp_dir: Path) -> None:
    labels = pd.read_csv(comp_dir / "train_labels.csv", dtype=str)
    x = pixels([comp_dir / "train" / f"{i}.png" for i in labels["Id"]])
    y = labels["label"].to_numpy()
    held = pd.read_csv(comp_dir / "held_out.csv", dtype=str).iloc[5:]  # the twins aside
    held_f1 = float(
        f1_score(
            held["label"],
            KNeighborsClassifier(1)
            .fit(x, y)
            .predict(pixels([comp_dir / "test" / f"{i}.png" for i in held["Id"]])),
            average="macro",
        )
    )
    plain = make_folds(labels, n_splits=5, seed=0)
    groups = find_leaks(
        [comp_dir / "train" / f"{i}.png" for i in labels["Id"]], progress=False
    ).groups
    grouped = make_folds(labels, n_splits=5, seed=0, groups=groups)
    assert grouped.groupby("group")["fold"].nunique().max() == 1
    plain_cv = nn_cv(x, y, plain["fold"].to_numpy())
    grouped_cv = nn_cv(x, y, grouped["fold"].to_numpy())
    assert plain_cv > held_f1 + 0.4, (plain_cv, held_f1)
    assert abs(grouped_cv - held_f1) < 0.12, (grouped_cv, held_f1)


def test_comp_folds_reports_and_groups(comp_dir: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    init_workspace(ws, comp_dir, overrides=TINY)
    result = CliRunner().invoke(cli, ["-w", str(ws), "folds"])
    assert result.exit_code == 0, result.output
    assert "near-duplicates: 90 clusters holding 360 of 360 train images" in result.output
    assert "test images with a near-duplicate in train: 5 of 150" in result.output
    table = pd.read_csv(ws / "folds" / "folds_k2_seed42.csv", dtype=str)
    assert table.groupby("group")["fold"].nunique().max() == 1
    result = CliRunner().invoke(cli, ["-w", str(ws), "folds", "--groups", "none"])
    assert result.exit_code == 0 and "WARNING: 360 near-duplicate images are split" in result.output
    assert "group" not in pd.read_csv(ws / "folds" / "folds_k2_seed42.csv").columns


def test_user_groups_from_a_column(kaggle_comp: Path, tmp_path: Path) -> None:
    labels = pd.read_csv(kaggle_comp / "train_labels.csv", dtype=str)
    labels["patient"] = [f"p{i // 3}" for i in range(len(labels))]
    labels.to_csv(kaggle_comp / "train_labels.csv", index=False)
    ws = tmp_path / "ws"
    init_workspace(ws, kaggle_comp, overrides=TINY)
    result = CliRunner().invoke(cli, ["-w", str(ws), "folds", "--groups", "patient"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(ws / "folds" / "folds_k2_seed42.csv", dtype=str).merge(labels, on="Id")
    assert table.groupby("patient")["fold"].nunique().max() == 1
    result = CliRunner().invoke(cli, ["-w", str(ws), "folds", "--groups", "nope"])
    assert result.exit_code == 1 and "no column 'nope'" in result.output


def test_embedding_method_runs_on_a_timm_backbone(comp_dir: Path) -> None:
    """Exact copies are always neighbours in any feature space, random weights included."""
    import shutil

    train = sorted((comp_dir / "train").glob("*.png"))[:12]
    twin = comp_dir.parent / "twin.png"
    shutil.copy(train[0], twin)
    leaks = find_leaks(
        [*train, twin],
        methods=["embed"],
        similarity=0.999,
        embed={
            "model": "resnet10t",
            "pretrained": "false",
            "pretrained_file": None,
            "img_size": 32,
        },
        progress=False,
    )
    assert len(leaks.groups) == 13
    assert any(0 in c and 12 in c for c in leaks.clusters)
