"""Folds when the class is the subject: every class in every fold, near-duplicates kept together
where they can be, and a report that says so (tests/sprites.py's write_species)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from comp.cli import cli
from comp.folds.similarity import Graph
from comp.folds.split import fold_counts, loosest_cut, make_folds, split_within_classes
from comp.workspace.init import init_workspace
from tests.conftest import TINY
from tests.sprites import SPECIES_VIEWS, write_species


def clusters(sizes: list[int], *, label_of: list[str], seed: int = 0) -> tuple[Graph, np.ndarray]:
    """A neighbour graph of tight clusters (distance ~0.01 inside, ~0.3 between two clusters of
    one label), every image joined to every other of its label: views of a subject."""
    rng = np.random.default_rng(seed)
    cluster = np.repeat(np.arange(len(sizes)), sizes)
    y = np.array([label_of[c] for c in cluster])
    a, b = np.triu_indices(len(y), 1)
    keep = y[a] == y[b]
    a, b = a[keep], b[keep]
    d = np.where(cluster[a] == cluster[b], 0.01, 0.3) + rng.uniform(0, 0.005, len(a))
    order = np.argsort(d)
    return Graph(len(y), a[order], b[order], d[order]), y


def test_the_loosest_cut_parts_clusters_and_never_chips_off_one_image() -> None:
    graph, _ = clusters([6, 6], label_of=["a", "a"])
    side = loosest_cut(graph.n, graph.a, graph.b, graph.distance)
    assert sorted([side[:6].mean(), side[6:].mean()]) == [0.0, 1.0]
    # One odd image far from the rest: the cut still leaves a third on each side.
    a, b = np.array([0, 1, 2, 3, 4]), np.array([1, 2, 3, 4, 5])
    side = loosest_cut(6, a, b, np.array([0.01, 0.01, 0.02, 0.01, 0.9]))
    assert 2 <= side.sum() <= 4
    # Parts that share no edge are cut apart first.
    side = loosest_cut(4, np.array([0, 2]), np.array([1, 3]), np.array([0.0, 0.0]))
    assert side[0] == side[1] != side[2] == side[3]


def test_classes_in_fewer_groups_than_folds_are_split_to_reach_every_fold() -> None:
    # Class a: three views of 8 (each its own group); class b: 40 images in 10 groups.
    graph, y = clusters([8, 8, 8] + [4] * 10, label_of=["a"] * 3 + ["b"] * 10)
    groups = graph.groups([0.05], cap=40)[0]
    assert len(np.unique(groups[y == "a"])) == 3
    result = split_within_classes(graph, groups, y=y, n_splits=5)
    assert result is not None
    split, how = result
    assert (how.classes, how.fewest) == (1, 3)
    assert "1 class(es) formed fewer groups than the 5 folds (as few as 3)" in how.line()
    # Class b keeps its groups; class a is in 5 pieces, one view at least still whole.
    assert len(np.unique(split[y == "b"])) == 10
    pieces = pd.Series(split[y == "a"]).value_counts()
    assert len(pieces) == 5 and pieces.max() == 8 and pieces.min() >= 3
    labels = pd.DataFrame({"Id": [f"i{i}" for i in range(len(y))], "label": y})
    counts = fold_counts(make_folds(labels, n_splits=5, seed=0, groups=split))
    assert (counts.drop(index="total", columns="total") > 0).all().all()
    # Nothing to do when every class has groups enough.
    assert split_within_classes(graph, groups, y=y, n_splits=3) is None


def test_a_share_of_the_classes_keeps_its_views_whole() -> None:
    # Ten classes of three views of 8: cut evenly, each keeps one view whole (8, 4, 4, 4, 4);
    # kept whole, two (8, 8 and the third view in three pieces).
    graph, y = clusters([8] * 30, label_of=[f"c{i // 3}" for i in range(30)])
    groups = graph.groups([0.05], cap=40)[0]

    def whole_views(split: np.ndarray) -> pd.Series:
        sizes = pd.DataFrame({"y": y, "g": split}).value_counts()
        return (sizes == 8).groupby(level="y").sum()

    even = split_within_classes(graph, groups, y=y, n_splits=5)
    share = split_within_classes(graph, groups, y=y, n_splits=5, whole=0.4, seed=1)
    assert even is not None and share is not None
    assert whole_views(even[0]).eq(1).all() and even[1].whole == 0
    assert sorted(whole_views(share[0])) == [1] * 6 + [2] * 4 and share[1].whole == 4
    assert "in 4 of them the views were kept whole" in share[1].line()
    assert (pd.DataFrame({"y": y, "g": share[0]}).groupby("y")["g"].nunique() == 5).all()


def test_write_species_holds_out_a_view_train_never_has(tmp_path: Path) -> None:
    root = write_species(tmp_path / "species", species=6, frames=2, size=32, seed=3)
    train = pd.read_csv(root / "train_labels.csv", dtype=str)
    solution = pd.read_csv(root / "solution.csv", dtype=str)
    assert len(train) == 6 * 3 * 2 and len(solution) == 6 * 2
    assert train.groupby("label")["view"].nunique().eq(3).all()
    assert (train["view"] == "front").sum() == 12
    for label, views in train.groupby("label")["view"]:
        held = set(SPECIES_VIEWS) - set(views)
        assert len(held) == 1 and held != {"front"}
        assert (solution["label"] == label).sum() == 2
    assert len(list((root / "test").glob("*.png"))) == len(solution)


@pytest.fixture(scope="module")
def species(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 species in 3 views of 4 frames each in train; test: a fourth view of each."""
    return write_species(tmp_path_factory.mktemp("species"), species=30, frames=4, seed=1)


def test_comp_folds_keeps_every_class_in_every_fold_when_the_class_is_the_subject(
    species: Path, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    init_workspace(ws, species, overrides={**TINY, "n_splits": 5, "img_size": 32})
    result = CliRunner().invoke(cli, ["-w", str(ws), "folds"])
    assert result.exit_code == 0, result.output
    folds = pd.read_csv(ws / "folds" / "folds_k5_seed42.csv", dtype=str).astype({"fold": int})
    counts = fold_counts(folds)
    assert (counts.drop(index="total", columns="total") > 0).all().all()
    report = json.loads((ws / "folds" / "folds_k5_seed42.json").read_text())
    # Grouped, not plain: the plain folds leave a sibling frame of every validation image
    # in training, and the test set has none.
    assert report["chosen"]["split_classes"] is not None
    assert report["chosen"]["d_val"]["75%"] > 3 * report["candidates"][0]["d_val"]["75%"]
    assert "fewer groups than the 5 folds" in report["classes"]
    assert report["kind"].startswith("unseen views of known subjects")
    assert f"classes: {report['classes']}" in result.output
    assert "this looks like unseen views of known subjects" in result.output
