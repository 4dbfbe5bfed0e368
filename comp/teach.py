"""Pseudo-labels and distillation: what a run learns from an earlier run besides its labels.

Reads the parent run (``runs/<RUN>/``, a run or a blend): ``test_probs.csv``
(from ``comp predict RUN``) for pseudo-labels; ``config.yaml``, ``fold*/metrics.csv``
and ``blend.json`` for its nested teachers. Reads the folds file and its report
(``folds_k{n}_seed{s}.json``: the similarity features and the distance its
grouping joined at), and the train and test images.

Writes the nested teachers into the parent, once: ``runs/<RUN>/nested/pair{j}{k}/``
(``metrics.csv``, ``probs.csv``), each a model of RUN's config trained without
folds j and k. In the new run: ``lineage.json`` (what it was built from, also
copied into its cv.json) and ``pseudo.csv`` (the test images labelled, how, and
the folds each is barred from).

Why nested teachers: RUN's own out-of-fold prediction of an image in fold j
comes from a model that trained on every other fold, fold k included. A student
validated on fold k would then learn from a teacher that saw fold k's labels.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp import io
from comp.config import Config, ConfigError, validate
from comp.data import Competition, DataError, read_csv
from comp.distributed import Dist, barrier
from comp.io import Echo
from comp.losses import soften

LINEAGE_FILE = "lineage.json"


def find_parent(root: Path, name: str, *, classes: list[str], what: str) -> Path:
    from comp.predict import find_run

    try:
        parent = find_run(root, name)
    except DataError as e:
        raise ConfigError(f"{what} {name}: {e}") from None
    theirs = json.loads((parent / "classes.json").read_text())
    if theirs != classes:
        raise ConfigError(f"{what} {name}: the run was trained on other classes than these labels")
    return parent


def summary_of(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "cv.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


# --- pseudo-labels ---------------------------------------------------------------------------


def test_probs(path: Path, *, classes: list[str], test_ids: list[str]) -> np.ndarray:
    """A test_probs.csv as (n_test, C) probabilities in ``test_ids`` order."""
    from comp.ensemble import check_probabilities

    table = read_csv(path)
    probs = check_probabilities(table, classes, path=path)
    if sorted(table["Id"]) != sorted(test_ids):
        raise DataError(f"{path}: its Ids are not this competition's test images; predict again")
    order = pd.Series(np.arange(len(table)), index=table["Id"]).loc[test_ids].to_numpy()
    probs = probs[order]
    return np.asarray(probs / probs.sum(axis=1, keepdims=True))


def fold_test_probs(
    root: Path, parent: Path, *, classes: list[str], test_ids: list[str], n_folds: int
) -> np.ndarray:
    """(n_folds + 1, n_test, C): each fold model's test predictions, then the ensemble's.

    Fold k's pseudo-labels come from the parent's fold-k model, which never saw fold k's
    images: labels from the whole ensemble would carry fold k's answers into its training
    through the test images (a transfer set), and CV would rise above the leaderboard."""
    from comp.ensemble import blend_members

    members = blend_members(parent)
    if members is not None:
        parts = [
            w
            * fold_test_probs(
                root, root / "runs" / n, classes=classes, test_ids=test_ids, n_folds=n_folds
            )
            for n, w in zip(*members, strict=True)
        ]
        return np.asarray(sum(parts))
    paths = [parent / f"fold{k}" / "test_probs.csv" for k in range(n_folds)]
    paths.append(parent / "test_probs.csv")
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise ConfigError(
            f"pseudo {parent.name}: no test predictions ({missing[0].relative_to(parent)}); "
            f"run `comp predict {parent.name}` first"
        )
    return np.stack([test_probs(p, classes=classes, test_ids=test_ids) for p in paths])


def same_split(parent: Path, table: pd.DataFrame) -> bool:
    """Whether the parent validated every image on the fold this split puts it in."""
    if not (parent / "oof.csv").exists():
        return False
    theirs = read_csv(parent / "oof.csv")
    ours = dict(zip(table["Id"], table["fold"].astype(int), strict=True))
    return len(theirs) == len(ours) and all(
        ours.get(i) == int(k) for i, k in zip(theirs["Id"], theirs["fold"], strict=True)
    )


def twin_threshold(report_path: Path) -> tuple[list[str], list[float] | None, float, str]:
    """The similarity features, their scales and the distance at which the folds grouped
    images (twins only, for plain folds), as the folds report records them."""
    from comp.folds import TWIN_DISTANCE

    if not report_path.exists():
        # Folds from your own group column (or older ones): twins on the subject alone.
        return ["subject"], None, TWIN_DISTANCE, "twins on the subject; no folds report"
    report = json.loads(report_path.read_text())
    used = report.get("used") or report["chosen"]["name"]
    chosen = next((c for c in report["candidates"] if c["name"] == used), report["chosen"])
    threshold = chosen.get("threshold")
    if threshold is None:
        return report["features"], report["scales"], TWIN_DISTANCE, "twins; the folds are plain"
    return report["features"], report["scales"], float(threshold), used


def barred_folds(
    cfg: Config,
    comp: Competition,
    *,
    fold_of: np.ndarray,
    test_ids: list[str],
    report_path: Path,
    progress: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(n_test, n_folds) booleans: a test image within the folds' grouping distance of one of
    fold k's images is barred from fold k's training part, as it would have been grouped
    with that image had it been in train."""
    from comp.folds import similarity_features
    from comp.leaks import nearest

    methods, scales, threshold, how = twin_threshold(report_path)
    n = len(fold_of)
    feats = similarity_features(
        cfg, [*comp.train_paths(), *comp.test_paths(test_ids)], methods=methods, progress=progress
    )
    if scales is not None:
        feats = feats.scaled(scales)
    dist, idx = nearest(feats.take(slice(n, None)), feats.take(slice(0, n)), k=min(10, n))
    n_folds = int(fold_of.max()) + 1
    barred = np.zeros((len(test_ids), n_folds), dtype=bool)
    for col in range(dist.shape[1]):
        near = np.flatnonzero(dist[:, col] <= threshold)
        barred[near, fold_of[idx[near, col]]] = True
    return barred, {"twin_distance": threshold, "grouping": how, "features": methods}


# --- nested teachers -------------------------------------------------------------------------


def teacher_epochs(parent: Path, cfg: Config) -> int:
    """The median epoch at which the parent's folds did best: its teachers train that long."""
    best = []
    for metrics in sorted(parent.glob("fold*/metrics.csv")):
        rows = pd.read_csv(metrics)
        if len(rows):
            f1 = rows["valid_macro_f1"].to_numpy()
            best.append(int(rows["epoch"].to_numpy()[int(np.argmax(f1))]))
    epochs = int(np.median(best)) if best else cfg.epochs
    return max(epochs, cfg.freeze_epochs + 1)


def fixed_config(parent: Path, cfg: Config) -> Config:
    """``cfg`` for a model that picks nothing by validation: as many epochs as the parent's
    folds did best at, and its last weights. A nested teacher, so no choice it makes depends
    on the labels it predicts; a model trained on every image, which has none to score."""
    epochs = teacher_epochs(parent, cfg)
    return validate(
        dataclasses.replace(
            cfg,
            epochs=epochs,
            patience=epochs + 1,
            time_limit=None,
            warmup_epochs=min(cfg.warmup_epochs, max(0, epochs - cfg.freeze_epochs - 1)),
            mixup_off_epoch=max(1, round(cfg.mixup_off_epoch * epochs / max(cfg.epochs, 1))),
            # Teachers learn from the labels: a teacher of a teacher would need nesting again.
            pseudo=None,
            distill=None,
        )
    )


def nested_teachers(root: Path, parent: Path, **kw: Any) -> tuple[np.ndarray, str]:
    """(n_folds, n_train, n_classes): ``out[k, i]`` is a prediction for train image i (not in
    fold k) by a model that trained on neither fold k nor image i's fold; and what they are.
    ``kw``: those of _pair_teachers.

    A blend's teachers are its members' teachers, weighed as the blend weighs them."""
    from comp.ensemble import blend_members

    members = blend_members(parent)
    if members is None:
        return _pair_teachers(root, parent, **kw)
    total = sum(
        weight * nested_teachers(root, root / "runs" / name, **kw)[0]
        for name, weight in zip(*members, strict=True)
    )
    return np.asarray(total), f"the nested teachers of blend members {', '.join(members[0])}"


def _pair_teachers(
    root: Path,
    parent: Path,
    *,
    comp: Competition,
    table: pd.DataFrame,
    classes: list[str],
    device: Any,
    dist_: Dist,
    echo: Echo,
    progress: bool,
) -> tuple[np.ndarray, str]:
    from comp.cache import cache_dir, cached_images
    from comp.predict import run_config
    from comp.train import setup_fold, train_fold
    from comp.transforms import create_transform

    pcfg = run_config(parent)
    if pcfg.head != "linear":
        raise ConfigError(
            f"distill {parent.name}: head '{pcfg.head}' runs have no model to train as a teacher"
        )
    tcfg = fixed_config(parent, pcfg)
    fold_of = table["fold"].to_numpy()
    n_folds = int(fold_of.max()) + 1
    if n_folds < 3:
        raise ConfigError(
            f"distill: a nested teacher trains without two folds, and {n_folds} folds leave it "
            "nothing; use --n-splits 3 or more"
        )
    targets = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    out = np.zeros((n_folds, len(table), len(classes)), dtype=np.float32)
    pairs = [(j, k) for j in range(n_folds) for k in range(j + 1, n_folds)]
    todo = [p for p in pairs if _load_pair(parent, p, table, classes) is None]
    how = (
        f"{len(pairs)} models of {parent.name}'s config, each trained without two folds, "
        f"{tcfg.epochs} epochs, last weights"
    )
    if todo:
        echo(
            f"distill {parent.name}: training {len(todo)} of {len(pairs)} nested teachers "
            f"({tcfg.model}, {tcfg.epochs} epochs each, without two folds), once -> "
            f"runs/{parent.name}/nested/"
        )
        images = cached_images(
            comp.train_paths(list(table["Id"])),
            tcfg.img_size,
            cache_dir=cache_dir(root, enabled=tcfg.cache_images),
            centre=tcfg.centre,
            desc="decode train",
            progress=progress,
        )
        transform = create_transform(tcfg.aug, img_size=tcfg.img_size)
    for j, k in pairs:
        probs = _load_pair(parent, (j, k), table, classes)
        if probs is None:
            held = np.isin(fold_of, (j, k))
            f = setup_fold(
                tcfg,
                fold=1000 + j * n_folds + k,
                images=images,
                targets=targets,
                train_idx=np.flatnonzero(~held),
                valid_idx=np.flatnonzero(held),
                n_classes=len(classes),
                device=device,
                transform=transform,
                dist_=dist_,
                progress=progress,
            )
            pair_dir = parent / "nested" / f"pair{j}-{k}"
            result = train_fold(
                f, classes=classes, out_dir=pair_dir, echo=lambda _: None, select=False
            )
            probs = np.zeros((len(table), len(classes)), dtype=np.float32)
            probs[held] = result.valid_probs
            if dist_.main:
                part = table.loc[held, ["Id", "fold"]].reset_index(drop=True)
                part = pd.concat([part, pd.DataFrame(result.valid_probs, columns=classes)], axis=1)
                io.write_csv(pair_dir / "probs.csv", part)
                for leftover in ("last.pt", "best.pt"):
                    (pair_dir / leftover).unlink(missing_ok=True)
            barrier(dist_)
            echo(f"  teacher without folds {j} and {k}: done")
        out[k, fold_of == j] = probs[fold_of == j]
        out[j, fold_of == k] = probs[fold_of == k]
    return out, how


def _load_pair(
    parent: Path, pair: tuple[int, int], table: pd.DataFrame, classes: list[str]
) -> np.ndarray | None:
    """A finished teacher's probabilities over the train table, if they match its folds."""
    path = parent / "nested" / f"pair{pair[0]}-{pair[1]}" / "probs.csv"
    if not path.exists():
        return None
    part = read_csv(path)
    held = table["fold"].isin(pair).to_numpy()
    if list(part["Id"]) != list(table.loc[held, "Id"]):
        return None  # trained on another split: train it again
    probs = np.zeros((len(table), len(classes)), dtype=np.float32)
    probs[held] = part[classes].astype(np.float32).to_numpy()
    return probs


# --- a run's teaching: extra rows and soft targets ---------------------------------------------


@dataclass
class Teaching:
    """Training rows and targets beyond a fold's labelled images.

    Rows: the train images, then every test image (fold -1: never validated). Fold k
    trains on the test images its pseudo-labels keep (``keep[k]``), labelled by the
    parent's fold-k model; ``k`` None means a model trained on everything, labelled by
    the parent's ensemble. ``soft(k)`` packs the targets for comp.losses.TeacherLoss.
    """

    n_train: int
    n_classes: int
    images: np.ndarray
    base_targets: np.ndarray  # the train images' labels
    fold_of: np.ndarray
    pseudo_probs: np.ndarray | None  # (n_folds + 1, n_test, C); the last: the ensemble's
    keep: np.ndarray | None  # (n_folds + 1, n_test): confident enough and not barred
    barred: np.ndarray | None  # (n_test, n_folds): near-twin of one of fold k's images
    soft_pseudo: bool
    packed: bool  # train on soft targets (a teacher, or soft pseudo-labels)
    smoothing: float
    teacher: np.ndarray | None  # (n_folds, n_train, C) the nested teachers' probabilities
    full_teacher: np.ndarray | None  # (n_train, C) the parent's OOF, for a model on everything
    weight: float
    lineage: dict[str, Any]
    pseudo: pd.DataFrame | None  # per test image, for pseudo.csv

    @classmethod
    def plain(
        cls, images: np.ndarray, targets: np.ndarray, fold_of: np.ndarray, *, n_classes: int
    ) -> Teaching:
        """A run that learns from its labels alone: fold k trains on the other folds."""
        return cls(
            n_train=len(targets),
            n_classes=n_classes,
            images=images,
            base_targets=targets,
            fold_of=fold_of,
            pseudo_probs=None,
            keep=None,
            barred=None,
            soft_pseudo=False,
            packed=False,
            smoothing=0.0,
            teacher=None,
            full_teacher=None,
            weight=0.0,
            lineage={},
            pseudo=None,
        )

    def _slot(self, k: int | None) -> int:
        assert self.keep is not None
        return len(self.keep) - 1 if k is None else k

    def train_idx(self, k: int | None) -> np.ndarray:
        """Fold k's training rows; with ``k`` None, every train image and kept test image."""
        labelled = np.arange(self.n_train)
        if k is not None:
            labelled = np.flatnonzero(self.fold_of[: self.n_train] != k)
        if self.keep is None:
            return labelled
        return np.concatenate([labelled, self.n_train + np.flatnonzero(self.keep[self._slot(k)])])

    def targets(self, k: int | None) -> np.ndarray:
        """Every row's hard label as fold k sees it (test rows: its labelling model's top class)."""
        if self.pseudo_probs is None:
            return self.base_targets
        pseudo = self.pseudo_probs[self._slot(k)].argmax(axis=1)
        return np.concatenate([self.base_targets, pseudo]).astype(np.int64)

    def soft(self, k: int | None) -> np.ndarray | None:
        if not self.packed:
            return None
        targets = self.targets(k)
        first = np.full((len(targets), self.n_classes), self.smoothing / self.n_classes, np.float32)
        first[np.arange(len(targets)), targets] += 1 - self.smoothing
        if self.soft_pseudo and self.pseudo_probs is not None:
            first[self.n_train :] = self.pseudo_probs[self._slot(k)]
        second = np.zeros_like(first)
        teacher = (
            self.full_teacher if k is None else None if self.teacher is None else self.teacher[k]
        )
        if teacher is not None:
            first[: self.n_train] *= 1 - self.weight
            second[: self.n_train] = self.weight * teacher
        return np.concatenate([first, second], axis=1)


@dataclass
class PseudoRows:
    """Every test image as a training row: each fold's labels for it, and whether it keeps it."""

    probs: np.ndarray  # (n_folds + 1, n_test, C): each fold model's, then the ensemble's
    keep: np.ndarray  # (n_folds + 1, n_test)
    barred: np.ndarray  # (n_test, n_folds)
    table: pd.DataFrame  # for pseudo.csv
    images: np.ndarray
    lineage: dict[str, Any]


def pseudo_rows(
    root: Path,
    cfg: Config,
    *,
    comp: Competition,
    table: pd.DataFrame,
    classes: list[str],
    report_path: Path,
    echo: Echo,
    progress: bool,
) -> PseudoRows:
    """The test images as rows for ``--pseudo``: labelled per fold by the parent's fold-k model,
    kept where confident enough and not a near-twin of one of fold k's images."""
    from comp.cache import cache_dir, cached_images

    assert cfg.pseudo is not None
    fold_of = table["fold"].to_numpy()
    n_folds = int(fold_of.max()) + 1
    parent = find_parent(root, cfg.pseudo, classes=classes, what="--pseudo")
    if not same_split(parent, table):
        raise ConfigError(
            f"--pseudo {parent.name}: it was trained on other folds than "
            f"{report_path.with_suffix('.csv').name}; its fold-k model saw some of this "
            "run's fold-k images, so its pseudo-labels would leak them. Pseudo-label from a "
            "run of this split"
        )
    test_ids = comp.test_ids()
    pseudo_probs = fold_test_probs(
        root, parent, classes=classes, test_ids=test_ids, n_folds=n_folds
    )
    barred, twins = barred_folds(
        cfg,
        comp,
        fold_of=fold_of,
        test_ids=test_ids,
        report_path=report_path,
        progress=progress,
    )
    confident = pseudo_probs.max(axis=2) >= cfg.pseudo_threshold
    keep = confident & np.c_[~barred, np.ones(len(test_ids), dtype=bool)].T
    test_images = cached_images(
        comp.test_paths(test_ids),
        cfg.img_size,
        cache_dir=cache_dir(root, enabled=cfg.cache_images),
        centre=cfg.centre,
        desc="decode test",
        progress=progress,
    )
    ensemble = pseudo_probs[-1]
    pseudo = pd.DataFrame(
        {
            "Id": test_ids,
            "label": np.asarray(classes)[ensemble.argmax(axis=1)],
            "confidence": ensemble.max(axis=1).round(6),
            "used_in_folds": [";".join(str(k) for k in np.flatnonzero(r)) for r in keep[:-1].T],
            "barred_from_folds": [";".join(str(k) for k in np.flatnonzero(r)) for r in barred],
        }
    )
    per_fold = keep[:-1].sum(axis=1)
    counts = pd.Series(
        np.asarray(classes)[pseudo_probs[:-1].argmax(axis=2)[keep[:-1]]]
    ).value_counts()
    lineage = {
        "run": parent.name,
        "cv_macro_f1": summary_of(parent).get("cv_macro_f1"),
        "threshold": cfg.pseudo_threshold,
        "soft": cfg.pseudo_soft,
        "labelled_by": "the parent's fold-k model for fold k; its ensemble for a model on every image",
        "test_images": len(test_ids),
        "images": round(float(per_fold.mean()), 1),
        "images_per_fold": {str(k): int(n) for k, n in enumerate(per_fold)},
        "per_class": {c: int(counts.get(c, 0)) for c in classes},
        "barred_per_fold": {str(k): int(barred[:, k].sum()) for k in range(n_folds)},
        **twins,
        "built_from": summary_of(parent).get("built_from"),
    }
    echo(
        f"pseudo-labels from {parent.name} (fold k's from its fold-k model): "
        f"{', '.join(str(int(n)) for n in per_fold)} of {len(test_ids)} test images per fold "
        f"({'probabilities' if cfg.pseudo_soft else 'top class'}, confidence >= "
        f"{cfg.pseudo_threshold:g}); near-twins of a fold's images left out of that fold: "
        f"{', '.join(str(int(b)) for b in barred.sum(axis=0))} "
        f"(within {twins['twin_distance']:g}: {twins['grouping']})"
    )

    return PseudoRows(pseudo_probs, keep, barred, pseudo, test_images, lineage)


def distill_targets(
    root: Path,
    cfg: Config,
    *,
    comp: Competition,
    table: pd.DataFrame,
    classes: list[str],
    device: Any,
    dist_: Dist,
    echo: Echo,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """For ``--distill``: the nested teachers' probabilities per student fold, the parent's
    OOF for a model trained on everything (both softened), and their lineage."""
    assert cfg.distill is not None
    parent = find_parent(root, cfg.distill, classes=classes, what="--distill")
    probs, how = nested_teachers(
        root,
        parent,
        comp=comp,
        table=table,
        classes=classes,
        device=device,
        dist_=dist_,
        echo=echo,
        progress=progress,
    )
    teacher = np.stack([soften(p, cfg.distill_temperature) for p in probs])
    # With no validation images to keep clean, the parent's own OOF teaches.
    oof = read_csv(parent / "oof.csv").set_index("Id")
    full_teacher = soften(
        oof.loc[list(table["Id"]), classes].astype(np.float64).to_numpy(),
        cfg.distill_temperature,
    )
    lineage = {
        "run": parent.name,
        "cv_macro_f1": summary_of(parent).get("cv_macro_f1"),
        "weight": cfg.distill_weight,
        "temperature": cfg.distill_temperature,
        "teachers": how,
        "built_from": summary_of(parent).get("built_from"),
    }
    echo(
        f"distillation from {parent.name}: {cfg.distill_weight:g} teacher, "
        f"{1 - cfg.distill_weight:g} labels, temperature {cfg.distill_temperature:g}"
    )

    return teacher, full_teacher, lineage


def prepare(
    root: Path,
    cfg: Config,
    *,
    comp: Competition,
    table: pd.DataFrame,
    classes: list[str],
    images: np.ndarray,
    targets: np.ndarray,
    fold_of: np.ndarray,
    report_path: Path,
    device: Any,
    dist_: Dist,
    echo: Echo,
    progress: bool,
) -> Teaching:
    """The pseudo-labelled rows and soft targets ``cfg`` asks for, and their lineage."""
    n_train = len(table)
    lineage: dict[str, Any] = {}
    if cfg.distill:
        # Checked before the (long) pseudo-label features and nested teachers.
        oof = read_csv(
            find_parent(root, cfg.distill, classes=classes, what="--distill") / "oof.csv"
        )
        if set(oof["Id"]) != set(table["Id"]):
            raise ConfigError(
                f"--distill {cfg.distill}: its out-of-fold predictions cover {len(oof)} of "
                f"{len(table)} training images; train all its folds first"
            )
    pseudo_probs = keep = barred = pseudo = None
    all_fold_of = fold_of
    if cfg.pseudo:
        rows = pseudo_rows(
            root,
            cfg,
            comp=comp,
            table=table,
            classes=classes,
            report_path=report_path,
            echo=echo,
            progress=progress,
        )
        pseudo_probs, keep, barred, pseudo = rows.probs, rows.keep, rows.barred, rows.table
        lineage["pseudo"] = rows.lineage
        images = np.concatenate([np.asarray(images), np.asarray(rows.images)])
        all_fold_of = np.concatenate([fold_of, np.full(len(pseudo), -1)])
    teacher = full_teacher = None
    if cfg.distill:
        teacher, full_teacher, lineage["distill"] = distill_targets(
            root,
            cfg,
            comp=comp,
            table=table,
            classes=classes,
            device=device,
            dist_=dist_,
            echo=echo,
            progress=progress,
        )

    parent_name = cfg.distill or cfg.pseudo
    assert parent_name is not None
    parent_dir = find_parent(root, parent_name, classes=classes, what="parent")
    lineage["parent"] = parent_dir.name
    # Fold by fold, a comparison holds only where both runs validated on the same folds.
    lineage["parent_fold_macro_f1"] = (
        summary_of(parent_dir).get("fold_macro_f1") if same_split(parent_dir, table) else None
    )
    return Teaching(
        n_train=n_train,
        n_classes=len(classes),
        images=images,
        base_targets=targets,
        fold_of=all_fold_of,
        pseudo_probs=pseudo_probs,
        keep=keep,
        barred=barred,
        soft_pseudo=bool(cfg.pseudo and cfg.pseudo_soft),
        packed=bool(cfg.distill or (cfg.pseudo and cfg.pseudo_soft)),
        smoothing=max(cfg.label_smoothing, 0.0),
        teacher=teacher,
        full_teacher=full_teacher,
        weight=cfg.distill_weight,
        lineage=lineage,
        pseudo=pseudo,
    )


def write_lineage(run_dir: Path, teaching: Teaching) -> None:
    io.write_json(run_dir / LINEAGE_FILE, teaching.lineage)
    if teaching.pseudo is not None:
        io.write_csv(run_dir / "pseudo.csv", teaching.pseudo)


def describe(built_from: dict[str, Any] | None) -> str:
    """One line of a run's lineage, for the ledger: 'pseudo r1 (top class >= 0.9, 812/1500) <- ...'."""
    if not built_from:
        return ""
    parts = []
    if "distill" in built_from:
        d = built_from["distill"]
        parts.append(f"distill {d['run']} (weight {d['weight']:g}, T {d['temperature']:g})")
    if "pseudo" in built_from:
        p = built_from["pseudo"]
        kind = "soft" if p["soft"] else "hard"
        parts.append(
            f"pseudo {p['run']} ({kind} >= {p['threshold']:g}, "
            f"{p['images']:g}/{p['test_images']} a fold)"
        )
    text = " + ".join(parts)
    grand = next(
        (built_from[k].get("built_from") for k in ("distill", "pseudo") if k in built_from), None
    )
    return f"{text} <- {describe(grand)}" if grand else text


def gain_over_parent(summary: dict[str, Any]) -> dict[str, Any] | None:
    """A run against the run it was built from, fold by fold: the mean gain, its spread
    (standard error of the paired differences), and whether the gain stands out of it."""
    lineage = summary.get("built_from") or {}
    theirs = lineage.get("parent_fold_macro_f1") or {}
    ours = summary.get("fold_macro_f1") or {}
    folds = [k for k in ours if k in theirs]
    if not folds:
        return None
    diff = np.array([ours[k] - theirs[k] for k in folds])
    spread = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    gain = float(diff.mean())
    if np.isnan(spread):
        verdict = "one fold: no spread to judge the gain by"
    elif abs(gain) <= 2 * spread:
        verdict = "within the folds' spread: noise"
    else:
        verdict = (
            "a gain beyond the folds' spread" if gain > 0 else "a loss beyond the folds' spread"
        )
    return {
        "parent": lineage.get("parent"),
        "folds": {
            k: {"parent": theirs[k], "run": ours[k], "gain": round(ours[k] - theirs[k], 6)}
            for k in folds
        },
        "mean_gain": round(gain, 6),
        "spread": None if np.isnan(spread) else round(spread, 6),
        "verdict": verdict,
    }


def lineage_text(run_dir: Path) -> str:
    """What a run was built from, in one line: its teachers and pseudo-labels, or its blend."""
    from comp.ensemble import blend_members

    members = blend_members(run_dir)
    if members is not None:
        return "blend of " + ", ".join(
            f"{n} x{w:.2f}" for n, w in zip(members[0], members[1], strict=True)
        )
    return describe(summary_of(run_dir).get("built_from"))
