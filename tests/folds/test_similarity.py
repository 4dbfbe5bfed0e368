"""Leak-aware folds: planted near-duplicates inflate plain CV; grouped folds match the held-out score."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from comp.cli import cli
from comp.folds.similarity import Features, Space, features, nearest, neighbour_graph
from comp.folds.split import NEAR_DUPLICATE, make_folds
from comp.workspace.init import init_workspace
from tests.conftest import TINY

CLASSES = ("a", "b", "c")


def texture(rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour texture: one 'subject'."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(
        Image.fromarray(small).resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float64
    )


def copy_of(subject: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An augmented copy, as a re-upload would be: brighter or darker, noisy, resampled."""
    img = subject * rng.uniform(0.9, 1.1) + rng.normal(0, 3, subject.shape)
    side = int(rng.integers(28, 40))
    small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize(
        (side, side), Image.Resampling.BILINEAR
    )
    return small.resize((32, 32), Image.Resampling.BILINEAR)


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


def test_groups_are_the_planted_copies(comp_dir: Path) -> None:
    labels = pd.read_csv(comp_dir / "train_labels.csv", dtype=str)
    feats = features([comp_dir / "train" / f"{i}.png" for i in labels["Id"]])
    groups = neighbour_graph(feats).groups([NEAR_DUPLICATE], cap=100)[0]
    # Copies of one subject are consecutive rows of the labels table.
    assert len(set(groups)) == 90
    assert all(len(set(groups[s * 4 : s * 4 + 4])) == 1 for s in range(90))


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
    feats = features([comp_dir / "train" / f"{i}.png" for i in labels["Id"]])
    groups = neighbour_graph(feats).groups([NEAR_DUPLICATE], cap=100)[0]
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
    assert "train images with a twin in train (distance <= 0.01): 360 of 360" in result.output
    assert "test images with a twin in train: 5 of 150" in result.output
    table = pd.read_csv(ws / "folds" / "folds_k2_seed42.csv", dtype=str)
    # Test images are strangers to train: the copies are kept together.
    assert "group" in table.columns
    assert table.groupby("group")["fold"].nunique().max() == 1
    assert table.groupby("group").size().min() >= 4
    report = json.loads((ws / "folds" / "folds_k2_seed42.json").read_text())
    assert report["used"] == report["chosen"]["name"] != "plain stratified folds"
    assert report["test_with_twin"] == 5 and report["d_test"]["50%"] > 0.1
    assert 0.3 <= report["adversarial_auc"] <= 0.75
    assert (ws / "folds" / "folds_k2_seed42.png").stat().st_size > 10_000
    result = CliRunner().invoke(cli, ["-w", str(ws), "folds", "--groups", "none"])
    assert result.exit_code == 0
    assert "WARNING: --groups none: plain folds, although groups within" in result.output
    assert "group" not in pd.read_csv(ws / "folds" / "folds_k2_seed42.csv").columns
    result = CliRunner().invoke(cli, ["-w", str(ws), "folds", "--method", "subject,nope"])
    assert result.exit_code == 2 and "similarity methods are" in result.output


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


def test_embedding_method_runs_on_a_timm_backbone(comp_dir: Path, tmp_path: Path) -> None:
    """Exact copies are always neighbours in any feature space: a backbone's weights loaded
    from a local file, as a Kaggle notebook loads them from an attached dataset."""
    import shutil

    import timm
    import torch

    weights = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), weights)
    train = sorted((comp_dir / "train").glob("*.png"))[:12]
    twin = comp_dir.parent / "twin.png"
    shutil.copy(train[0], twin)
    feats = features(
        [*train, twin],
        methods=["embed"],
        embed={
            "model": "resnet10t",
            "pretrained": "true",
            "pretrained_file": str(weights),
            "img_size": 32,
        },
    )
    dist, idx = nearest(feats.take([12]), feats.take(slice(0, 12)))
    assert idx[0, 0] == 0 and dist[0, 0] < 1e-4


def test_with_no_weights_the_embedding_is_learned_from_the_images(
    comp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pretrained weights: a small net learns the embedding from the images, the same
    one each time (fixed steps and seed), and an exact copy is still the nearest."""
    import shutil

    from comp.folds import embed

    monkeypatch.setattr(embed, "STEPS", 5)
    train = sorted((comp_dir / "train").glob("*.png"))[:12]
    twin = comp_dir.parent / "twin.png"
    shutil.copy(train[0], twin)
    settings: dict[str, object] = {
        "model": "airnet_xs",
        "pretrained": "auto",
        "pretrained_file": None,
        "img_size": 32,
    }
    feats = features([*train, twin], methods=["embed"], embed=settings)
    dist, idx = nearest(feats.take([12]), feats.take(slice(0, 12)))
    assert idx[0, 0] == 0 and dist[0, 0] < 1e-4
    again = features([*train, twin], methods=["embed"], embed=settings)
    np.testing.assert_allclose(again.x, feats.x, atol=1e-5)


def test_restyling_keeps_a_batch_in_range() -> None:
    import torch

    from comp.folds.embed import nt_xent, restyle

    x = torch.rand(8, 3, 16, 16)
    y = restyle(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    z = torch.randn(8, 4)
    # Two views that are one another's copies are easy to pair: a low loss.
    assert nt_xent(torch.cat([z, z]), temperature=0.1) < nt_xent(
        torch.randn(16, 4), temperature=0.1
    )


def sprite(bg: tuple[int, int, int], *, mirror: bool = False, mode: str = "RGB") -> Image.Image:
    img = Image.new("RGBA", (32, 32), (*bg, 0 if mode == "RGBA" else 255))
    d = ImageDraw.Draw(img)
    d.ellipse([4, 10, 20, 26], fill=(200, 60, 40, 255))
    d.ellipse([14, 4, 24, 14], fill=(240, 200, 40, 255))
    d.rectangle([16, 7, 17, 8], fill=(0, 0, 0, 255))
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else img
    return img if mode == "RGBA" else img.convert("RGB")


def test_subject_features_ignore_the_background_and_mirrors(tmp_path: Path) -> None:
    images = {
        "white": sprite((255, 255, 255)),
        "navy": sprite((20, 20, 90)),
        "mirrored": sprite((120, 220, 120), mirror=True),
        "alpha": sprite((0, 0, 0), mode="RGBA"),
        "other": Image.new("RGB", (32, 32), (255, 255, 255)),
    }
    ImageDraw.Draw(images["other"]).rectangle([6, 6, 26, 20], fill=(200, 60, 40))
    paths = []
    for name, img in images.items():
        paths.append(tmp_path / f"{name}.png")
        img.save(paths[-1])
    feats = features(paths, methods=["subject"])
    dist, _ = nearest(feats.take(slice(1, None)), feats.take([0]))
    near = dict(zip(list(images)[1:], dist[:, 0], strict=True))
    assert near["alpha"] < 0.01 and near["mirrored"] < 0.02, near
    assert near["navy"] < near["other"] / 5, near
    # The thumbnail of the whole image sees the backdrop: twins on other backdrops drift apart.
    thumbs = features(paths, methods=["thumb"])
    assert nearest(thumbs.take([1]), thumbs.take([0]))[0][0, 0] > 3 * near["navy"]
    # The subject's colours: the rectangle of the same red is near in that space alone,
    # and near in the default (subject, colour), where images are as near as in either.
    both = features(paths)
    assert nearest(both.take([4]), both.take([0]))[0][0, 0] < near["other"] / 2


def test_nearest_is_exact_and_skips_its_own_key() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    feats = Features([Space(x)])
    keys = np.arange(300) % 3
    dist, idx = nearest(feats, feats, k=2, query_keys=keys, base_keys=keys)
    full = 1 - x @ x.T
    full[keys[:, None] == keys[None, :]] = np.inf
    assert np.array_equal(idx[:, 0], full.argmin(axis=1))
    assert np.allclose(dist[:, 0], full.min(axis=1), atol=1e-5)
    assert (keys[idx] != keys[:, None]).all()


def test_groups_chain_through_neighbours_but_never_past_the_cap() -> None:
    # Twenty points on an arc, each close to the next: single linkage chains them all.
    angles = np.linspace(0, 1.0, 20)
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    graph = neighbour_graph(Features([Space(x)]), k=3)
    chained = graph.groups([0.01], cap=20)[0]
    capped, none = graph.groups([0.01, 1e-9], cap=5)
    assert len(set(chained)) == 1
    assert np.bincount(capped).max() <= 5 and len(set(capped)) >= 4
    assert len(set(none)) == 20


def test_an_image_is_as_near_as_in_its_nearest_space() -> None:
    rng = np.random.default_rng(1)
    a, b = (rng.normal(size=(50, 6)).astype(np.float32) for _ in range(2))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    both = Features([Space(a), Space(b, scale=2.0)])
    dist, _ = nearest(both.take([0]), both.take(slice(1, None)))
    alone_a = nearest(Features([Space(a)]).take([0]), Features([Space(a)]).take(slice(1, None)))
    alone_b = nearest(Features([Space(b)]).take([0]), Features([Space(b)]).take(slice(1, None)))
    assert np.isclose(dist[0, 0], min(alone_a[0][0, 0], alone_b[0][0, 0] / 2), atol=1e-6)


def test_the_search_over_several_spaces_and_mirrors_is_exact() -> None:
    rng = np.random.default_rng(2)

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    a, am, b = (unit(rng.normal(size=(120, 5))) for _ in range(3))
    feats = Features([Space(a, am), Space(b, scale=0.7)])
    keys = np.arange(120)
    dist, idx = nearest(feats, feats, k=3, query_keys=keys, base_keys=keys)
    full = np.minimum(1 - np.maximum(a @ a.T, am @ a.T), (1 - b @ b.T) / 0.7)
    np.fill_diagonal(full, np.inf)
    order = np.argsort(full, axis=1)[:, :3]
    assert np.allclose(dist, np.take_along_axis(full, order, axis=1), atol=1e-5)
    assert (np.sort(idx, axis=1) == np.sort(order, axis=1)).mean() > 0.99  # ties aside
