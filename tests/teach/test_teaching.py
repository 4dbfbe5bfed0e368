"""Pseudo-labels and distillation keep CV honest: test rows only in training parts, near-twins
of validation images barred, teachers that never saw the fold they teach for, lineage."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from timm.loss import SoftTargetCrossEntropy

import comp.fit.loop
import comp.teach.nested
import comp.train.run
from comp.cli import cli
from comp.config import load_config, make_config
from comp.data.competition import load_competition, resolve
from comp.errors import ConfigError
from comp.fit.losses import Mixing, TeacherLoss, soften
from comp.folds.split import folds_path, make_folds, write_folds
from comp.submit.ledger import Ledger
from comp.teach.lineage import describe, gain_over_parent

CLASSES = ["circle", "square", "triangle"]


def with_folds(root: Path, **overrides: object) -> Any:
    cfg = load_config(root, overrides)
    comp_ = load_competition(root, cfg)
    write_folds(
        folds_path(root, cfg), make_folds(comp_.train, n_splits=cfg.n_splits, seed=cfg.seed)
    )
    return cfg


def fake_parent(root: Path, name: str, *, confidence: float = 0.95) -> Path:
    """A finished 2-fold run of this split. Fold 0's model predicts the test answers with
    ``confidence``, fold 1's the class after each answer; the ensemble averages them."""
    run = root / "runs" / name
    (run / "fold0").mkdir(parents=True)
    shutil.copy(root / "comp.yaml", run / "config.yaml")
    (run / "fold1").mkdir()
    (run / "classes.json").write_text(json.dumps(CLASSES))
    (run / "cv.json").write_text(
        json.dumps({"run": name, "cv_macro_f1": 0.5, "fold_macro_f1": {"0": 0.5, "1": 0.5}})
    )
    folds = pd.read_csv(folds_path(root, load_config(root)), keep_default_na=False)
    folds.assign(**dict.fromkeys(CLASSES, 1 / 3)).to_csv(run / "oof.csv", index=False)
    solution = answers(root)
    truth = solution["label"].map(CLASSES.index).to_numpy()
    tables = []
    for k, shift in ((0, 0), (1, 1)):
        probs = np.full((len(solution), 3), (1 - confidence) / 2)
        probs[np.arange(len(solution)), (truth + shift) % 3] = confidence
        probs[0] = [0.4, 0.3, 0.3]  # one test image the parent is unsure of
        tables.append(pd.concat([solution[["Id"]], pd.DataFrame(probs, columns=CLASSES)], axis=1))
        tables[-1].to_csv(run / f"fold{k}" / "test_probs.csv", index=False)
    ensemble = tables[0].assign(**{c: (tables[0][c] + tables[1][c]) / 2 for c in CLASSES})
    ensemble.to_csv(run / "test_probs.csv", index=False)
    return run


def answers(root: Path) -> pd.DataFrame:
    cfg = load_config(root)
    path = resolve(root, cfg.solution)
    assert path is not None
    return pd.read_csv(path, keep_default_na=False)


class Spy:
    """Records every fold set up, a run's and its nested teachers': its rows and targets."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[dict[str, Any]] = []
        real = comp.fit.loop.setup_fold

        def spy(cfg: Any, **kw: Any) -> Any:
            self.calls.append(kw)
            return real(cfg, **kw)

        for module in (comp.train.run, comp.teach.nested):
            monkeypatch.setattr(module, "setup_fold", spy)


def test_pseudo_rows_train_only_and_twins_barred(
    workspace: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = workspace(epochs=1, freeze_epochs=0)
    cfg = with_folds(root)
    comp_ = load_competition(root, cfg)
    # A test image that is a copy of a training image: a twin of that image's fold.
    twin_of = comp_.train["Id"].iloc[3]
    test_ids = comp_.test_ids()
    twin_path = comp_.test_paths([test_ids[1]])[0]
    shutil.copy(
        comp_.train_paths([twin_of])[0],
        twin_path.with_suffix(comp_.train_paths([twin_of])[0].suffix),
    )
    if twin_path.suffix != comp_.train_paths([twin_of])[0].suffix:
        twin_path.unlink()
    fake_parent(root, "parent")
    spy = Spy(monkeypatch)
    cfg = load_config(root, {"pseudo": "parent", "pseudo_threshold": 0.9})
    summary = comp.train.run.train(root, cfg, name="p")

    n_train = len(comp_.train)
    folds = pd.read_csv(folds_path(root, cfg))
    twin_fold = int(folds.set_index("Id").loc[twin_of, "fold"])
    pseudo = pd.read_csv(root / "runs" / "p" / "pseudo.csv", keep_default_na=False).set_index("Id")
    assert list(pseudo.index) == test_ids
    assert pseudo.loc[test_ids[0], "used_in_folds"] == ""  # below the threshold
    assert pseudo.loc[test_ids[1], "barred_from_folds"] == str(twin_fold)
    truth = answers(root).set_index("Id")["label"].map(CLASSES.index)
    assert len(spy.calls) == 2
    for call in spy.calls:
        k = call["fold"]
        assert (call["valid_idx"] < n_train).all()  # test images are never validated
        assert set(call["valid_idx"]) == set(np.flatnonzero(folds["fold"] == k))
        used = call["train_idx"][call["train_idx"] >= n_train] - n_train
        expected = set(range(1, len(test_ids))) - ({1} if k == twin_fold else set())
        assert set(used) == expected  # confident ones, but not the twin of a fold-k image
        # Fold k's pseudo-labels are its own model's: fold 0 the answers, fold 1 the next class.
        labels = call["targets"][n_train + used]
        assert list(labels) == [(truth[test_ids[i]] + k) % 3 for i in used]
    lineage = summary["built_from"]["pseudo"]
    assert lineage["run"] == "parent" and lineage["threshold"] == 0.9
    per_fold = [len(test_ids) - 1 - (k == twin_fold) for k in (0, 1)]
    assert lineage["images_per_fold"] == {"0": per_fold[0], "1": per_fold[1]}
    assert sum(lineage["per_class"].values()) == sum(per_fold)
    assert lineage["barred_per_fold"][str(twin_fold)] >= 1


def test_pseudo_refuses_a_parent_of_another_split(workspace: Callable[..., Path]) -> None:
    root = workspace(epochs=1, freeze_epochs=0)
    with_folds(root)
    parent = fake_parent(root, "parent")
    oof = pd.read_csv(parent / "oof.csv")
    oof.assign(fold=1 - oof["fold"]).to_csv(parent / "oof.csv", index=False)
    with pytest.raises(ConfigError, match="other folds"):
        comp.train.run.train(root, load_config(root, {"pseudo": "parent"}), name="s")
    assert not (root / "runs" / "s").exists()


def test_distillation_targets_come_from_teachers_blind_to_the_fold(
    workspace: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = workspace(epochs=1, freeze_epochs=0, n_splits=3)
    cfg = with_folds(root)
    comp.train.run.train(root, cfg, name="teacher")
    spy = Spy(monkeypatch)
    student = load_config(root, {"distill": "teacher", "distill_weight": 0.5})
    summary = comp.train.run.train(root, student, name="student")

    fold_of = pd.read_csv(folds_path(root, cfg))["fold"].to_numpy()
    teachers = {c["fold"]: c for c in spy.calls if c["fold"] >= 1000}
    students = {c["fold"]: c for c in spy.calls if c["fold"] < 1000}
    assert len(teachers) == 3 and sorted(students) == [0, 1, 2]
    # Each teacher trained on neither of its two folds, and predicted exactly those.
    seen_by: dict[tuple[int, int], set[int]] = {}
    for number, call in teachers.items():
        j, k = divmod(number - 1000, 3)
        assert set(fold_of[call["train_idx"]]) == {0, 1, 2} - {j, k}
        seen_by[(j, k)] = set(call["train_idx"])
    for k, call in students.items():
        soft = call["soft"]
        valid = set(call["valid_idx"])
        for j in {0, 1, 2} - {k}:
            rows = np.flatnonzero(fold_of == j)
            pair = (min(j, k), max(j, k))
            assert not (seen_by[pair] & valid)  # the teacher of these targets never saw fold k
            probs = pd.read_csv(
                root / "runs" / "teacher" / "nested" / f"pair{pair[0]}-{pair[1]}" / "probs.csv"
            )
            expected = probs.set_index("Id").loc[
                pd.read_csv(folds_path(root, cfg))["Id"].iloc[rows], CLASSES
            ]
            # Teacher half of the packed targets: weight x the teacher's probabilities.
            assert np.allclose(soft[rows, 3:], 0.5 * expected.to_numpy(), atol=1e-5)
        assert np.allclose(soft[call["train_idx"]].sum(1), 1, atol=1e-5)
    assert summary["built_from"]["distill"]["run"] == "teacher"
    assert "nested" not in {p.name for p in (root / "runs" / "student").iterdir()}


def test_distill_needs_three_folds(workspace: Callable[..., Path]) -> None:
    root = workspace(epochs=1, freeze_epochs=0)
    cfg = with_folds(root)
    comp.train.run.train(root, cfg, name="t", folds=[0, 1])
    with pytest.raises(ConfigError, match="3 or more"):
        comp.train.run.train(root, load_config(root, {"distill": "t"}), name="s")
    assert not (root / "runs" / "s").exists()


def test_pseudo_needs_the_parents_test_predictions(workspace: Callable[..., Path]) -> None:
    root = workspace(epochs=1, freeze_epochs=0)
    cfg = with_folds(root)
    comp.train.run.train(root, cfg, name="t")
    with pytest.raises(ConfigError, match="comp predict t"):  # no per-fold test predictions
        comp.train.run.train(root, load_config(root, {"pseudo": "t"}), name="s")
    with pytest.raises(ConfigError, match="no run 'nope'"):
        comp.train.run.train(root, load_config(root, {"pseudo": "nope"}), name="s")


def test_config_refuses_soft_targets_with_focal_and_heads() -> None:
    with pytest.raises(ConfigError, match="soft targets"):
        make_config({"distill": "r", "loss": "focal"})
    with pytest.raises(ConfigError, match="fixed features"):
        make_config({"pseudo": "r", "head": "logreg"})
    with pytest.raises(ConfigError, match="distill_weight"):
        make_config({"distill_weight": 1.5})


def test_teacher_loss_is_soft_target_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    labels = torch.softmax(torch.randn(6, 4), 1) * 0.7
    teacher = torch.softmax(torch.randn(6, 4), 1) * 0.3
    packed = torch.cat([labels, teacher], 1)
    ce = SoftTargetCrossEntropy()
    assert torch.isclose(TeacherLoss(temperature=1.0)(logits, packed), ce(logits, labels + teacher))
    t = 2.0
    expected = ce(logits, labels) + t * t * ce(logits / t, teacher)
    assert torch.isclose(TeacherLoss(temperature=t)(logits, packed), expected)
    p = np.array([[0.7, 0.2, 0.1]])
    assert np.allclose(soften(p, 1.0), p)
    hot = soften(p, 2.0)
    assert np.isclose(hot.sum(), 1) and hot[0, 0] < 0.7 and hot[0, 2] > 0.1


@pytest.mark.parametrize("n", [7, 8])
def test_mixing_mixes_soft_targets_as_it_mixes_images(n: int) -> None:
    cfg = make_config({"mixup": 0.4, "cutmix": 1.0, "label_smoothing": 0.0})
    mixing = Mixing(cfg, n_classes=3)
    torch.manual_seed(1)
    np.random.seed(1)
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, 8, 8).clone()
    soft = torch.eye(n)  # each image its own target: the mix shows how much of which image
    mixed_x, mixed_t = mixing(x, soft)
    assert mixed_t.shape == (n, n) and torch.allclose(mixed_t.sum(1), torch.ones(n))
    # Each mixed image's mean pixel is the mix of the images its target names.
    share = mixed_x.mean(dim=(1, 2, 3))
    assert torch.allclose(share, mixed_t @ torch.arange(n, dtype=torch.float32), atol=1e-4)


def test_gain_over_parent_tells_noise_from_gain() -> None:
    built = {"parent": "p", "parent_fold_macro_f1": {"0": 0.5, "1": 0.6, "2": 0.7}}
    noisy = {"fold_macro_f1": {"0": 0.52, "1": 0.58, "2": 0.71}, "built_from": built}
    clear = {"fold_macro_f1": {"0": 0.55, "1": 0.66, "2": 0.74}, "built_from": built}
    assert "noise" in gain_over_parent(noisy)["verdict"]  # type: ignore[index]
    gain = gain_over_parent(clear)
    assert gain is not None and gain["verdict"] == "a gain beyond the folds' spread"
    assert gain["folds"]["1"] == {"parent": 0.6, "run": 0.66, "gain": 0.06}
    assert gain_over_parent({"fold_macro_f1": {"0": 0.5}}) is None
    line = describe(
        {
            "pseudo": {
                "run": "r1",
                "soft": False,
                "threshold": 0.9,
                "images": 5.5,
                "test_images": 9,
                "built_from": {
                    "pseudo": {
                        "run": "r0",
                        "soft": True,
                        "threshold": 0.0,
                        "images": 9,
                        "test_images": 9,
                    }
                },
            },
        }
    )
    assert line == "pseudo r1 (hard >= 0.9, 5.5/9 a fold) <- pseudo r0 (soft >= 0, 9/9 a fold)"


def test_a_ledger_from_before_lineage_gains_the_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "ledger.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE submissions (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, "
        "file TEXT NOT NULL, sha256 TEXT NOT NULL, run TEXT, cv REAL, public REAL, private REAL, "
        "message TEXT NOT NULL DEFAULT '', target TEXT NOT NULL, status TEXT NOT NULL, "
        "competition TEXT, kaggle_ref TEXT, error TEXT)"
    )
    conn.execute(
        "INSERT INTO submissions (created_at, file, sha256, target, status) VALUES ('t', 'a.csv', 'x', 'local', 'scored')"
    )
    conn.commit()
    conn.close()
    ledger = Ledger(path)
    assert ledger.rows()[0]["lineage"] is None
    ledger.add(file="b.csv", sha256="y", target="local", status="scored", lineage="pseudo r0")
    assert [r["lineage"] for r in ledger.rows()] == [None, "pseudo r0"]


@pytest.mark.slow
def test_round_trip_train_pseudo_distill_predict_submit(workspace: Callable[..., Path]) -> None:
    root = workspace(epochs=2, freeze_epochs=0, n_splits=3)

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, ["-w", str(root), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("folds", "--groups", "none")
    run("train", "--name", "r0")
    run("predict", "r0")
    out = run("train", "--name", "r1", "--pseudo", "r0", "--pseudo-threshold", "0.0")
    assert "pseudo-labels from r0" in out and "against r0: mean gain per fold" in out
    run("predict", "r1")
    # A second round labels with the first round's predictions.
    run(
        "train",
        "--name",
        "r2",
        "--pseudo",
        "r1",
        "--pseudo-soft",
        "true",
        "--pseudo-threshold",
        "0",
    )
    cv = json.loads((root / "runs" / "r2" / "cv.json").read_text())
    assert cv["built_from"]["pseudo"]["run"] == "r1"
    assert cv["built_from"]["pseudo"]["built_from"]["pseudo"]["run"] == "r0"
    out = run("distill", "r0", "--model", "resnet10t", "--name", "student")
    assert "full model" in out
    assert "one model on every image" in run("predict", "student")
    facts = json.loads((root / "submissions" / "student.json").read_text())
    assert facts["folds"] == ["full"]
    assert (
        yaml.safe_load((root / "runs" / "student" / "config.yaml").read_text())["distill"] == "r0"
    )
    run("report", "r1")
    assert (root / "runs" / "r1" / "report" / "parent.png").exists()
    assert "Against r0" in (root / "runs" / "r1" / "report" / "README.md").read_text()
    run("submit", str(root / "submissions" / "r1.csv"), "--local", "-m", "round 1")
    run("submit", str(root / "submissions" / "student.csv"), "--local", "-m", "student")
    rows = Ledger(root / "submissions" / "ledger.sqlite").rows()
    assert rows[0]["lineage"].startswith("pseudo r0 (hard >= 0, ")
    assert (root / "runs" / "r0" / "fold1" / "test_probs.csv").exists()
    assert rows[1]["lineage"].startswith("distill r0 (weight 0.3, T 1) + pseudo r0 (soft >= 0")
    listing = run("submissions")
    assert "lineage" in listing and "pseudo r0" in listing
