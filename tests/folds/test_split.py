import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from comp.cli import cli
from comp.errors import DataError
from comp.folds.similarity import Features, Space
from comp.folds.split import (
    choose_folds,
    fold_counts,
    make_folds,
    match_score,
    method_sets,
    read_folds,
    shift_score,
    write_folds,
)
from comp.workspace.init import init_workspace
from tests.conftest import TINY
from tests.sprites import write_sprites, write_styles


def labels(counts: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{c}{i}", c) for c, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["Id", "label"])


def test_folds_are_stratified_and_seeded() -> None:
    table = labels({"a": 20, "b": 10, "c": 5})
    f1 = make_folds(table, n_splits=5, seed=1)
    assert list(f1.columns) == ["Id", "label", "fold"]
    counts = fold_counts(f1)
    assert counts.loc["a", 0] == 4 and counts.loc["b", 0] == 2 and counts.loc["c", 0] == 1
    assert f1.equals(make_folds(table, n_splits=5, seed=1))
    assert not f1["fold"].equals(make_folds(table, n_splits=5, seed=2)["fold"])


def test_small_classes_are_refused_by_name() -> None:
    with pytest.raises(
        DataError, match=r"1 class\(es\) have fewer images than the 5 folds: 'rare' \(3\)"
    ):
        make_folds(labels({"common": 10, "rare": 3}), n_splits=5, seed=0)


def test_folds_file_round_trip_and_staleness(tmp_path: Path) -> None:
    table = labels({"a": 6, "b": 6})
    path = tmp_path / "folds" / "f.csv"
    write_folds(path, make_folds(table, n_splits=3, seed=0))
    assert read_folds(path, labels=table)["fold"].dtype.kind == "i"
    changed = table.copy()
    changed.loc[0, "label"] = "b"
    with pytest.raises(DataError, match="no longer match"):
        read_folds(path, labels=changed)
    with pytest.raises(DataError, match=r"run `comp folds --n-splits 3 --seed 7` first"):
        read_folds(tmp_path / "folds_k3_seed7.csv")
    (tmp_path / "bad.csv").write_text("Id,label,fold\na,a,0\nb,b,x\n")
    with pytest.raises(DataError, match="row 3 has a fold that is not a whole number"):
        read_folds(tmp_path / "bad.csv")


# --- distance-matched folds on sprite competitions (tests/sprites.py) -------------


def _pixels(folder: Path, ids: pd.Series) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.open(folder / f"{i}.png"), dtype=np.float32).ravel() / 255 for i in ids]
    )


def _nn_gap(root: Path, folds: pd.DataFrame) -> tuple[float, float]:
    """A 1-nearest-neighbour's out-of-fold macro-F1 under ``folds``, and on the held-out test."""
    labels = pd.read_csv(root / "train_labels.csv", dtype=str).merge(folds[["Id", "fold"]])
    solution = pd.read_csv(root / "solution.csv", dtype=str)
    x, y = _pixels(root / "train", labels["Id"]), labels["label"].to_numpy()
    fold = labels["fold"].to_numpy()
    oof = np.empty_like(y)
    for k in np.unique(fold):
        oof[fold == k] = (
            KNeighborsClassifier(1).fit(x[fold != k], y[fold != k]).predict(x[fold == k])
        )
    test = KNeighborsClassifier(1).fit(x, y).predict(_pixels(root / "test", solution["Id"]))
    return (
        float(f1_score(y, oof, average="macro")),
        float(f1_score(solution["label"], test, average="macro")),
    )


@pytest.fixture(scope="module")
def unseen_subjects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Frames, back views and palette swaps of 250 creatures; the test set holds 150 others."""
    return write_sprites(
        tmp_path_factory.mktemp("sprites"), train_subjects=250, test_subjects=150, jitter=0.01
    )


def _comp_folds(root: Path, ws: Path, *args: str) -> pd.DataFrame:
    init_workspace(ws, root, overrides={**TINY, "n_splits": 5, "img_size": 32})
    result = CliRunner().invoke(cli, ["-w", str(ws), "folds", *args])
    assert result.exit_code == 0, result.output
    return pd.read_csv(ws / "folds" / "folds_k5_seed42.csv", dtype=str)


def test_default_folds_predict_the_held_out_score_on_unseen_subjects(
    unseen_subjects: Path, tmp_path: Path
) -> None:
    default = _comp_folds(unseen_subjects, tmp_path / "ws")
    cv, held = _nn_gap(unseen_subjects, default)
    assert abs(cv - held) <= 0.05, (cv, held)
    plain_cv, _ = _nn_gap(
        unseen_subjects, _comp_folds(unseen_subjects, tmp_path / "plain", "--groups", "none")
    )
    assert plain_cv >= held + 0.3, (plain_cv, held)
    # Every class in every fold, folds of even size, and a report that says why.
    counts = fold_counts(default.astype({"fold": int}))
    assert (counts.drop(index="total", columns="total") > 0).all().all()
    sizes = default["fold"].value_counts()
    assert sizes.max() <= 1.5 * sizes.min()
    report = json.loads((tmp_path / "ws" / "folds" / "folds_k5_seed42.json").read_text())
    plain = report["candidates"][0]
    assert plain["name"] == "plain stratified folds"
    assert report["chosen"]["shift"] < plain["shift"] / 3
    assert plain["d_val"]["50%"] < report["d_test"]["50%"] / 2 < report["chosen"]["d_val"]["50%"]
    assert report["kind"] == "unseen subjects", report["kind_why"]


def test_default_folds_predict_the_held_out_score_on_objects_drawn_in_several_styles(
    tmp_path: Path,
) -> None:
    """Twins in meaning: one object drawn by several artists shares its layout, hardly a
    pixel. The default folds keep an object's drawings in one style together, and many of
    its other drawings: grouped on 'subject' alone, as 'colour' calls every ink drawing a
    twin of every other. What CV keeps of the rest (issue 23: +0.05 at seed 2, +0.08 with
    groups on both features only, +0.02 with the true objects as groups and +0.18 for
    plain folds) is bounded here."""
    root = write_styles(tmp_path / "styles", train_objects=150, test_objects=60, seed=2)
    default = _comp_folds(root, tmp_path / "ws")
    cv, held = _nn_gap(root, default)
    assert abs(cv - held) <= 0.08, (cv, held)
    plain_cv, _ = _nn_gap(root, _comp_folds(root, tmp_path / "plain", "--groups", "none"))
    assert plain_cv >= cv + 0.06, (plain_cv, cv, held)
    report = json.loads((tmp_path / "ws" / "folds" / "folds_k5_seed42.json").read_text())
    assert report["kind"] == "unseen subjects", report["kind_why"]


def test_groups_of_few_images_a_class_still_make_folds() -> None:
    """Every class has 4 images in pairs and 20 alone: the pairs alone cannot be split 5 ways
    by class (sklearn raises), so every image is split as groups, with no traceback."""
    y = np.repeat([f"c{k}" for k in range(9)], 24)
    groups = np.arange(len(y))
    for k in range(9):
        start = 24 * k
        groups[start + 1] = groups[start]
        groups[start + 3] = groups[start + 2]
    labels = pd.DataFrame({"Id": [f"i{i}" for i in range(len(y))], "label": y})
    folds = make_folds(labels, n_splits=5, seed=0, groups=groups)
    counts = fold_counts(folds)
    assert (counts.drop(index="total", columns="total") > 0).all().all()
    pairs = folds.groupby("group")["fold"].nunique()
    assert pairs.max() == 1


def test_a_random_split_keeps_plain_folds(tmp_path: Path) -> None:
    root = write_sprites(
        tmp_path / "random", train_subjects=200, test_subjects=100, jitter=0.01, split="random"
    )
    default = _comp_folds(root, tmp_path / "ws")
    plain = _comp_folds(root, tmp_path / "plain", "--groups", "none")
    assert abs(_nn_gap(root, default)[0] - _nn_gap(root, plain)[0]) <= 0.03
    report = json.loads((tmp_path / "ws" / "folds" / "folds_k5_seed42.json").read_text())
    assert report["test_with_twin"] > 0
    assert report["adversarial_auc"] < 0.65
    assert report["kind"] == "a random split", report["kind_why"]


def test_matching_prefers_the_candidate_whose_distances_look_like_the_test_set() -> None:
    rng = np.random.default_rng(0)
    test = rng.lognormal(np.log(0.3), 0.3, 500)
    assert shift_score(rng.lognormal(np.log(0.3), 0.3, 500), test) < 0.05
    assert shift_score(rng.lognormal(np.log(0.01), 0.3, 500), test) > 1.0
    assert match_score(rng.lognormal(np.log(0.3), 0.3, 500), test) > 0.95
    assert match_score(rng.lognormal(np.log(0.01), 0.3, 500), test) < 0.1
    # All-twin samples have no spread; the score still comes out.
    assert 0 <= match_score(np.zeros(50), test) < 0.1


@pytest.mark.slow
def test_a_trained_model_has_a_cv_that_predicts_its_held_out_score(tmp_path: Path) -> None:
    """comp folds, then comp train (the smallest airnet from scratch) and predict, on unseen
    subjects."""
    # 400 unseen test subjects: the held-out score's own noise stays well under the bound.
    root = write_sprites(tmp_path / "data", train_subjects=150, test_subjects=400, jitter=0.01)
    ws = tmp_path / "ws"
    overrides = {**TINY, "model": "airnet_xs", "n_splits": 3, "img_size": 32}
    init_workspace(ws, root, overrides=overrides)
    for args in (
        ["folds"],
        ["train", "--name", "t", "--epochs", "6", "--freeze-epochs", "0", "--lr2", "2e-3"],
        ["predict", "t"],
    ):
        result = CliRunner().invoke(cli, ["-w", str(ws), *args])
        assert result.exit_code == 0, result.output
    cv = json.loads((ws / "runs" / "t" / "cv.json").read_text())["cv_macro_f1"]
    solution = pd.read_csv(root / "solution.csv", dtype=str)
    predicted = pd.read_csv(ws / "submissions" / "t.csv", dtype=str)
    held = f1_score(solution["label"], solution[["Id"]].merge(predicted)["label"], average="macro")
    print(f"CV {cv:.3f}, held-out {held:.3f}")
    assert held > 0.3  # it learned something (4 types: chance is 0.25)
    assert abs(cv - held) <= 0.05, (cv, held)


def test_groups_are_also_tried_without_a_feature_that_calls_strangers_twins() -> None:
    """Half the subjects are ink drawings: one colour, so 'colour' calls every ink drawing a
    twin of every other. On both features, ink drawings fill groups to the cap before a
    subject's own drawings can join; on 'subject' alone each subject is one group, and the
    matching takes that."""
    rng = np.random.default_rng(0)

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def drawings(subjects: int) -> tuple[np.ndarray, np.ndarray]:
        centres = rng.normal(size=(subjects, 16))
        shape = np.repeat(centres, 4, axis=0) + rng.normal(0, 0.05, (4 * subjects, 16))
        ink = np.repeat(np.arange(subjects) % 2 == 0, 4)
        colour = np.where(ink[:, None], 1.0, rng.normal(size=(4 * subjects, 8)))
        return unit(shape), unit(colour)

    train, test = drawings(120), drawings(40)
    subject = np.repeat(np.arange(120), 4)
    labels = pd.DataFrame(
        {"Id": [f"i{i}" for i in range(480)], "label": np.array(["a", "b", "c"])[subject % 3]}
    )
    choice = choose_folds(
        labels,
        Features([Space(train[0]), Space(train[1])]),
        Features([Space(test[0]), Space(test[1])]),
        n_splits=4,
        seed=0,
        methods=["subject", "colour"],
    )
    assert method_sets(3) == [(0, 1, 2), (0, 2), (0, 1)] and method_sets(1) == [(0,)]
    assert choice.chosen.name.endswith(" on subject"), choice.chosen.name
    assert choice.chosen.folds is not None
    folds_per_subject = pd.Series(choice.chosen.folds["fold"].to_numpy()).groupby(subject).nunique()
    assert folds_per_subject.max() == 1
    both = [c for c in choice.candidates if c.groups is not None and " on " not in c.name]
    assert all(pd.Series(c.groups).groupby(subject).nunique().max() > 1 for c in both)
