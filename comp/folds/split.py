"""Cross-validation folds.

Reads the labels table (``train_csv``) and, for the distance-matched folds, the
similarity features of the train and test images (comp.folds.similarity). Writes
``folds/folds_k{n}_seed{s}.csv`` with columns Id,label,fold (and group, when
groups of similar images are kept together), and beside it (comp folds) a
report as ``.json`` and ``.png``; ``comp train`` reads the file that matches its
config, so changing n_splits or seed never mixes two splits.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import gaussian_kde
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_score
from tqdm.auto import tqdm

from comp import console, files
from comp.config import PRETRAINED_MODEL, Config
from comp.data.competition import read_csv
from comp.errors import DataError
from comp.folds.similarity import Features, Graph, Space, features, nearest, neighbour_graph


def folds_path(root: Path, cfg: Config) -> Path:
    return root / "folds" / f"folds_k{cfg.n_splits}_seed{cfg.seed}.csv"


def similarity_features(cfg: Config, paths: list[Path], *, methods: list[str]) -> Features:
    """The similarity features of ``paths`` (train then test) as `comp folds` computes them."""
    return features(
        paths,
        methods=methods,
        embed={
            "model": PRETRAINED_MODEL if cfg.model == "auto" else cfg.model,
            "pretrained": cfg.pretrained,
            "pretrained_file": cfg.pretrained_file,
            # The backbone's own preferred size is unknown here; 64 px keeps it quick.
            "img_size": cfg.img_size if cfg.img_size > 0 else 64,
        },
        seed=cfg.seed,
    )


def check_class_counts(labels: pd.DataFrame, *, n_splits: int) -> None:
    """Refuse a split in which some class cannot be in every validation fold."""
    counts = labels["label"].value_counts()
    small = counts[counts < n_splits]
    if len(small):
        listed = ", ".join(f"'{c}' ({n})" for c, n in small.sort_values().items())
        raise DataError(
            f"{len(small)} class(es) have fewer images than the {n_splits} folds: {listed}. "
            "Lower --n-splits, or add or merge images of those classes."
        )


def make_folds(
    labels: pd.DataFrame, *, n_splits: int, seed: int, groups: np.ndarray | None = None
) -> pd.DataFrame:
    """Stratified K folds: every class spread evenly over the folds, reproducibly.

    With ``groups``, no group is split across folds (sklearn's StratifiedGroupKFold),
    so near-duplicates never sit on both sides of a validation split. The table then
    has a ``group`` column.
    """
    check_class_counts(labels, n_splits=n_splits)
    fold = np.full(len(labels), -1, dtype=np.int64)
    y = labels["label"].to_numpy()
    skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    if groups is None:
        for k, (_, valid) in enumerate(skf.split(y, y)):
            fold[valid] = k
        return labels[["Id", "label"]].assign(fold=fold)
    groups = np.asarray(groups)
    _, codes, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    if len(sizes) < n_splits:
        raise DataError(
            f"only {len(sizes)} groups of images for {n_splits} folds; lower --n-splits"
        )
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    together = sizes[codes] > 1

    def in_parts() -> bool:
        # Images alone in their group are split as plain stratified folds, the groups of
        # several as StratifiedGroupKFold: the same folds, and 100,000 singletons need not
        # pass one by one through the group search.
        for part, splitter in ((~together, skf), (together, sgkf)):
            rows = np.flatnonzero(part)
            if (
                len(set(codes[rows])) < n_splits
                or pd.Series(y[rows]).value_counts().max() < n_splits
            ):
                return False  # a part too small to split alone: split everything as groups
            with warnings.catch_warnings():
                # A class with fewer lone images than folds: the groups part spreads it.
                warnings.simplefilter("ignore", UserWarning)
                for k, (_, valid) in enumerate(splitter.split(rows, y[rows], groups[rows])):
                    fold[rows[valid]] = k
        return True

    if together.all() or not in_parts():
        try:
            for k, (_, valid) in enumerate(sgkf.split(y, y, groups)):
                fold[valid] = k
        except ValueError as e:  # sklearn's word for groups that cannot make the folds
            raise DataError(f"these groups cannot make {n_splits} folds ({e})") from None
    return labels[["Id", "label"]].assign(fold=fold, group=groups)


def fold_counts(folds: pd.DataFrame) -> pd.DataFrame:
    """Images per class (rows) and fold (columns), with totals."""
    return pd.crosstab(folds["label"], folds["fold"], margins=True, margins_name="total")


def _params(path: Path) -> tuple[str, str]:
    m = re.fullmatch(r"folds_k(\d+)_seed(-?\d+)\.csv", path.name)
    return (m.group(1), m.group(2)) if m else ("N", "S")


def write_folds(path: Path, folds: pd.DataFrame) -> None:
    files.write_csv(path, folds)


def read_folds(path: Path, *, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read a folds file, checking that it still matches the labels table."""
    n_splits, seed = _params(path)
    if not path.exists():
        raise DataError(
            f"{path}: no folds file for this config; run `comp folds --n-splits {n_splits} --seed {seed}` first"
        )
    df = read_csv(path)
    if list(df.columns[:3]) != ["Id", "label", "fold"]:
        raise DataError(f"{path}: expected columns Id,label,fold")
    folds = pd.to_numeric(df["fold"], errors="coerce")
    if folds.isna().any() or (folds % 1 != 0).any():
        row = int(np.flatnonzero(folds.isna() | (folds % 1 != 0))[0]) + 2
        raise DataError(f"{path}: row {row} has a fold that is not a whole number")
    df["fold"] = folds.astype(int)
    if labels is not None:
        merged = labels.merge(df, on="Id", how="outer", suffixes=("", "_folds"), indicator=True)
        if (merged["_merge"] != "both").any() or (merged["label"] != merged["label_folds"]).any():
            raise DataError(
                f"{path}: folds no longer match the labels table; run `comp folds` again"
            )
    return df


# --- distance-matched folds -----------------------------------------------------
#
# A validation image should sit as far from its fold's training images as a test
# image sits from train. Each candidate split (plain folds, or groups of similar
# images kept in one fold, joined at a ladder of distances) is scored by how far its
# validation-to-train distances lie from the test-to-train ones: the mean gap between
# their quantiles (quantile matching), and the closest wins. The report also gives
# splito's MOOD score, 1 - Jensen-Shannon divergence of the two densities.

# Distances below this (cosine, in the similarity features) are twins: the same image,
# re-encoded, resized or recoloured.
TWIN_DISTANCE = 0.01
# Near-duplicates: frames of one clip, a subject on another backdrop. With no test set
# to match (a hold-out cut from train), these are kept on one side.
NEAR_DUPLICATE = 0.05
# Distance distributions are compared from this many sampled images: enough for a
# density, and a fixed cost however large the competition.
SAMPLE = 2000
# Plain folds are drawn this many more times, as the groupings are many draws (choose_folds).
NOISE_DRAWS = 4
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
# A best shift above this (quantiles some 3x apart on average) means no split imitates
# the test set. Seen here: 0.03-0.04 on random splits, 0.2-0.4 on unseen subjects.
MISMATCH = 0.5
# When a class is one subject, the share of its classes cut so that its views stay whole
# as long as they can (the rest are cut evenly, across views). Keeping every view whole
# copies the test set's distances best, but a fold then trains on one view fewer than the
# final model. On 150 species of 3 views (test: a fourth), two seeds, the probes' CV ran
# 0.07-0.16 below the held-out score with all whole, up to 0.15 above with none; with a
# third 0.00-0.07 off, with half 0.03-0.07 off (a net's CV 0.08 below): 0.4 between them.
WHOLE_SHARE = 0.4


@dataclass
class ClassSplit:
    """Classes left in fewer groups than folds by a grouping, and so cut into pieces."""

    classes: int  # how many classes
    fewest: int  # the fewest groups one of them had
    n_splits: int
    whole: int = 0  # how many of them were cut so as to keep views whole

    def summary(self) -> dict[str, int]:
        return {"classes": self.classes, "fewest_groups": self.fewest, "views_whole": self.whole}

    def line(self) -> str:
        kept = (
            f"; in {self.whole} of them the views were kept whole as long as they could be "
            "(only the newest pieces cut further), the others were cut evenly"
            if self.whole
            else ""
        )
        return (
            f"{self.classes} class(es) formed fewer groups than the {self.n_splits} folds "
            f"(as few as {self.fewest}): each was cut into {self.n_splits} pieces at its "
            f"loosest links (views apart first, nearest images last), so it reaches every "
            f"fold{kept}"
        )


@dataclass
class Candidate:
    name: str
    threshold: float | None  # None: plain stratified folds
    groups: np.ndarray | None
    folds: pd.DataFrame | None = None
    d_val: np.ndarray | None = None
    match: float = float("nan")
    shift: float = float("nan")
    problem: str | None = None  # why it cannot be used
    # Classes in fewer groups than folds, cut into pieces so that each reaches every fold.
    split: ClassSplit | None = None

    def summary(self) -> dict[str, Any]:
        sizes = np.bincount(self.groups) if self.groups is not None else np.ones(1, dtype=int)
        return {
            "name": self.name,
            "threshold": self.threshold,
            "split_classes": None if self.split is None else self.split.summary(),
            "groups": len(sizes) if self.groups is not None else None,
            "largest_group": int(sizes.max()),
            "match": None if np.isnan(self.match) else round(float(self.match), 4),
            "shift": None if np.isnan(self.shift) else round(float(self.shift), 4),
            "d_val": quantiles(self.d_val) if self.d_val is not None else None,
            "problem": self.problem,
        }


@dataclass
class FoldChoice:
    chosen: Candidate
    plain: Candidate
    candidates: list[Candidate]
    d_test: np.ndarray | None
    x_train: Features  # the features, each method scaled as the choice measured them
    x_test: Features | None
    d_train: np.ndarray  # each train image's distance to its nearest other train image


def quantiles(d: np.ndarray) -> dict[str, float]:
    return {f"{round(q * 100)}%": round(float(np.quantile(d, q)), 4) for q in QUANTILES}


def _log(d: np.ndarray) -> np.ndarray:
    # Twins at 0.001 and strangers at 0.3 are worlds apart: compare distances on a log scale.
    return np.log10(np.asarray(d, dtype=np.float64) + 1e-3)


def shift_score(d_val: np.ndarray, d_test: np.ndarray) -> float:
    """How far validation distances lie from test distances: the mean gap between their
    quantiles (1 %..99 %), in log10 units; 0 is the same distribution, 1 a tenfold gap.

    A validation image nearer its training images than test images come is a leak that
    makes CV optimistic, the costly error: gaps on that side count twice."""
    q = np.linspace(0.01, 0.99, 99)
    gap = np.quantile(_log(d_val), q) - np.quantile(_log(d_test), q)
    return float(np.mean(np.where(gap < 0, -2 * gap, gap)))


def match_score(a: np.ndarray, b: np.ndarray) -> float:
    """1 - Jensen-Shannon divergence (base 2) between the densities of two distance samples,
    on a log scale (twins at 0.001 and strangers at 0.3 are worlds apart): 1 is the same
    distribution, 0 two that never overlap."""
    la, lb = _log(a), _log(b)
    grid = np.linspace(min(la.min(), lb.min()) - 0.5, max(la.max(), lb.max()) + 0.5, 512)

    def density(x: np.ndarray) -> np.ndarray:
        # A constant sample (all twins) has no spread to estimate: give it a narrow one.
        if np.ptp(x) < 1e-9:
            x = x + np.random.default_rng(0).normal(0, 0.05, len(x))
        return np.asarray(gaussian_kde(x)(grid)) + 1e-12

    jsd = float(jensenshannon(density(la), density(lb), base=2) ** 2)
    return 1.0 - jsd


def _problem(folds: pd.DataFrame, n_splits: int) -> str | None:
    """Why a split cannot serve: a class missing from a fold, or folds of uneven size."""
    present = pd.crosstab(folds["label"], folds["fold"])
    if present.shape[1] < n_splits or (present == 0).any().any():
        missing = present.index[(present == 0).any(axis=1)].tolist() or present.index.tolist()
        return f"class {missing[0]!r} is missing from a fold"
    sizes = folds["fold"].value_counts()
    if sizes.max() > 1.5 * sizes.min():
        return f"uneven folds ({sizes.min()} to {sizes.max()} images)"
    return None


def candidate_thresholds(d_test: np.ndarray | None, *, steps: int = 12) -> list[float]:
    """A ladder of grouping distances up to beyond where most test images sit."""
    if d_test is None or not len(d_test):
        return []
    top = float(min(1.0, 1.5 * np.quantile(d_test, 0.9)))
    if top <= 2 * TWIN_DISTANCE:
        return [TWIN_DISTANCE]
    return [round(float(t), 4) for t in np.geomspace(TWIN_DISTANCE, top, steps)]


def choose_folds(
    labels: pd.DataFrame,
    x_train: Features,
    x_test: Features | None,
    *,
    n_splits: int,
    seed: int,
    threshold: float | None = None,
    tolerance: float = 0.01,
    methods: Sequence[str] | None = None,
) -> FoldChoice:
    """Folds whose validation-to-train distances best match the test set's distances to train.

    ``x_train``/``x_test``: similarity features (comp.folds.similarity.features) of the
    images in ``labels`` order and of the test images. Candidates are plain stratified
    folds and groups joined through neighbours up to a ladder of distances (each group at
    most N/(2K) images; comp.folds.similarity.Graph), on all the features and, at rungs
    where those groups fill up to that cap, on the first feature with each other one left
    out (_all_candidates; ``methods`` names them). Each feature's distances are scaled by
    the test set's typical distance in it, and each is matched on its own (shift_score,
    averaged; plain folds keep their best over 1 + NOISE_DRAWS seeds); a candidate within
    ``tolerance`` of the smallest shift that groups less wins, so CV does not turn
    pessimistic on a random split. With
    ``threshold``, the groups are cut there instead of chosen. Without test images there
    is nothing to match: twins (TWIN_DISTANCE) are kept together.
    """
    check_class_counts(labels, n_splits=n_splits)
    rng = np.random.default_rng(seed)
    n = len(labels)
    x_train, x_test, d_tests = _test_distances(x_train, x_test, n_splits=n_splits, rng=rng)
    d_test = np.minimum.reduce(d_tests) if d_tests else None
    # Drawn after the test sample, from the same generator: the same seed, the same folds.
    queries = np.sort(rng.choice(n, min(n, SAMPLE), replace=False))
    graph = neighbour_graph(x_train)
    d_train = np.full(n, np.inf)
    np.minimum.at(d_train, graph.a, graph.distance)
    if threshold is not None:
        ladder = [threshold]
    elif d_test is None:
        ladder = [TWIN_DISTANCE]
    else:
        ladder = candidate_thresholds(d_test)
    # Nothing to match with a threshold given or no test set: take the grouping asked for.
    matching = threshold is None and d_test is not None
    candidates = _all_candidates(
        graph,
        x_train,
        ladder,
        y=labels["label"].to_numpy(),
        n_splits=n_splits,
        seed=seed,
        matching=matching,
        methods=methods,
    )
    for c in tqdm(candidates, desc="candidate folds", leave=False, disable=console.no_bar()):
        _measure(c, labels, x_train, queries, d_tests, n_splits=n_splits, seed=seed)
    if matching:
        # Each grouping is one draw of folds among many candidates, and the best of many
        # draws looks better by luck alone: plain folds get as many more draws, and their
        # best shift counts (their folds stay those of ``seed``).
        for k in range(1, NOISE_DRAWS + 1):
            again = Candidate("plain", None, None)
            _measure(again, labels, x_train, queries, d_tests, n_splits=n_splits, seed=seed + k)
            candidates[0].shift = min(candidates[0].shift, again.shift)
    return FoldChoice(
        chosen=_choose(candidates, matching=matching, tolerance=tolerance),
        plain=candidates[0],
        candidates=candidates,
        d_test=d_test,
        x_train=x_train,
        x_test=x_test,
        d_train=d_train,
    )


def _all_candidates(
    graph: Graph,
    x_train: Features,
    ladder: list[float],
    *,
    y: np.ndarray,
    n_splits: int,
    seed: int,
    matching: bool,
    methods: Sequence[str] | None,
) -> list[Candidate]:
    """fold_candidates on every feature (``graph``) and, when matching, at the rungs where
    those groups fill up to the cap, on the first feature with each other one left out
    (method_sets; ``methods`` names them): each grouping once, by rung."""
    n = len(y)
    cap = group_cap(n, n_splits)
    rungs = graph.groups(ladder, cap=cap)
    found = fold_candidates(graph, ladder, n=n, n_splits=n_splits, y=y, seed=seed, groups=rungs)
    # Where the groups on every feature fill up to the cap, a feature's false twins may
    # have kept out true ones: fewer features are tried there too.
    full = [t for t, g in zip(ladder, rungs, strict=True) if np.bincount(g).max() >= cap]
    if matching and full:
        names = (
            list(methods) if methods is not None else [str(i) for i in range(len(x_train.spaces))]
        )
        for subset in method_sets(len(x_train.spaces))[1:]:
            on = neighbour_graph(Features([x_train.spaces[i] for i in subset]))
            # [1:]: plain folds are in once already.
            for c in fold_candidates(on, full, n=n, n_splits=n_splits, y=y, seed=seed)[1:]:
                c.name += " on " + "+".join(names[i] for i in subset)
                found.append(c)
    unique: dict[bytes, Candidate] = {}
    for c in found:
        # The same groups, found by another way of looking, count once.
        unique.setdefault(b"" if c.groups is None else pd.factorize(c.groups)[0].tobytes(), c)
    # By rung, as _choose reads them (least grouping first); within a rung the groups on
    # every feature come first, as they did before fewer were tried.
    return sorted(unique.values(), key=lambda c: -1.0 if c.threshold is None else c.threshold)


def group_cap(n: int, n_splits: int) -> int:
    """The most images a group may hold: N/(2K), so that groups can still make K folds."""
    return max(2, n // (2 * n_splits))


def method_sets(n: int) -> list[tuple[int, ...]]:
    """Which features the groups are joined on: all ``n``, then the first with each other one
    left out. A way of looking can call strangers twins (every ink drawing has one colour):
    as near as in any feature, they would fill groups to the cap and keep out the twins that
    another feature sees. Which set the test set copies is for the matching to say."""
    every = tuple(range(n))
    return [every] + [tuple(i for i in every if i != out) for out in range(1, n)]


def _test_distances(
    x_train: Features, x_test: Features | None, *, n_splits: int, rng: np.random.Generator
) -> tuple[Features, Features | None, list[np.ndarray]]:
    """Each method's distances from sampled test images to train, and the features scaled
    so that those distances are alike in every method (none without test images)."""
    if x_test is None or not len(x_test):
        return x_train, x_test, []
    n = len(x_train)
    # A fold trains on (K-1)/K of train: measure test images against as many.
    base = rng.choice(n, max(1, round(n * (n_splits - 1) / n_splits)), replace=False)
    tests = rng.choice(len(x_test), min(len(x_test), SAMPLE), replace=False)
    d_tests = [
        nearest(Features([t]).take(tests), Features([s]).take(base))[0][:, 0]
        for s, t in zip(x_train.spaces, x_test.spaces, strict=True)
    ]
    # Each method's distances in the first one's units: a test image's typical distance
    # to train is the same in all.
    typical = [max(1e-4, float(np.median(d))) for d in d_tests]
    scales = [t / typical[0] for t in typical]
    d_tests = [d / k for d, k in zip(d_tests, scales, strict=True)]
    return x_train.scaled(scales), x_test.scaled(scales), d_tests


def fold_candidates(
    graph: Graph,
    ladder: list[float],
    *,
    n: int,
    n_splits: int,
    y: np.ndarray | None = None,
    seed: int = 0,
    groups: list[np.ndarray] | None = None,
) -> list[Candidate]:
    """Plain folds first, then one candidate per rung of ``ladder`` that groups differently
    (``groups``: the graph's groups at each rung, where the caller has made them already).

    With the labels ``y``, a rung that leaves some class in fewer groups than folds (the
    class is the subject: all its images are near each other) also gives two candidates
    whose groups of those classes are split until each class can reach every fold
    (split_within_classes): evenly, and with WHOLE_SHARE of them keeping their views
    whole; listed before the rung itself as they group less."""
    cap = group_cap(n, n_splits)
    candidates = [Candidate("plain stratified folds", None, None)]
    seen: set[int] = set()
    split_seen: set[tuple[int, float]] = set()
    rungs = groups if groups is not None else graph.groups(ladder, cap=cap)
    for t, grouped in zip(ladder, rungs, strict=True):
        for whole in (0.0, WHOLE_SHARE) if y is not None else ():
            assert y is not None
            split = split_within_classes(
                graph, grouped, y=y, n_splits=n_splits, whole=whole, seed=seed
            )
            if split is None or (int(split[0].max()) + 1, whole) in split_seen:
                continue
            split_seen.add((int(split[0].max()) + 1, whole))
            name = f"within {t:g}, split to {n_splits} a class"
            if whole:
                name += f", {whole:.0%} with views whole"
            candidates.append(Candidate(name, t, split[0], split=split[1]))
        count = int(grouped.max()) + 1
        if count in seen or count == n:
            continue  # no grouping, or the same as a lower rung
        seen.add(count)
        candidates.append(Candidate(f"groups within distance {t:g}", t, grouped))
    return candidates


def split_within_classes(
    graph: Graph,
    groups: np.ndarray,
    *,
    y: np.ndarray,
    n_splits: int,
    whole: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, ClassSplit] | None:
    """``groups`` with every class that has fewer than ``n_splits`` groups of several images,
    and at least half its images in them, cut afresh into ``n_splits`` pieces, so that it
    can reach every fold: its largest piece at a time is cut at its loosest link
    (loosest_cut), so views of a subject part first and near-duplicates last. In a share
    ``whole`` of those classes (drawn with ``seed``), once half the pieces stand only the
    newest two are cut further, so the first views stay whole, as the test set's unseen
    view is. None when every class has enough groups."""
    table = pd.DataFrame({"y": y, "g": groups})
    size = table.groupby(["y", "g"])["g"].transform("size").to_numpy()
    several = table[size > 1].drop_duplicates().groupby("y")["g"].size()
    per_class = several.reindex(pd.unique(y), fill_value=0)
    images = table["y"].value_counts().reindex(per_class.index)
    # A class of mostly lone images is many subjects, not one: it reaches every fold as is,
    # and cutting it would only part look-alikes that the test set does not part.
    grouped = table[size > 1]["y"].value_counts().reindex(per_class.index, fill_value=0)
    short = per_class[(per_class < n_splits) & (images >= n_splits) & (grouped >= images / 2)]
    if not len(short):
        return None
    out = groups.copy()
    next_id = int(groups.max()) + 1
    # The graph's edges between two images of one class.
    same = y[graph.a] == y[graph.b]
    a, b, d = graph.a[same], graph.b[same], graph.distance[same]
    edges_of = pd.Series(np.arange(len(a))).groupby(y[a]).indices
    members_of = pd.Series(np.arange(len(y))).groupby(y).indices
    drawn = np.random.default_rng(seed).permutation(len(short))[: round(whole * len(short))]
    deep = set(short.index[drawn])
    for c in short.index:
        edges = edges_of.get(c, np.zeros(0, dtype=np.int64))
        pieces: list[np.ndarray] = [np.asarray(members_of[c])]  # sorted; cuts keep them so
        while len(pieces) < n_splits:
            newest = c in deep and len(pieces) >= (n_splits + 1) // 2
            first = len(pieces) - 2 if newest else 0
            rows = pieces.pop(first + int(np.argmax([len(p) for p in pieces[first:]])))
            ea, eb = (np.searchsorted(rows, end[edges]).clip(max=len(rows) - 1) for end in (a, b))
            keep = (rows[ea] == a[edges]) & (rows[eb] == b[edges])
            side = loosest_cut(len(rows), ea[keep], eb[keep], d[edges][keep])
            pieces += [rows[side], rows[~side]]
        for piece in pieces:
            out[piece] = next_id
            next_id += 1
    return pd.factorize(out)[0].astype(np.int64), ClassSplit(
        classes=len(short), fewest=int(short.min()), n_splits=n_splits, whole=len(deep)
    )


def loosest_cut(n: int, a: np.ndarray, b: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """One side of the cut of ``n`` nodes (edges ``a``-``b`` at ``distance``) at the longest
    link of their minimum spanning tree that leaves at least a third of them on each side
    (the most even cut where none does): single linkage's top split, kept from chipping
    off one odd image."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components, depth_first_order, minimum_spanning_tree

    # Parts the edges leave apart are chained by links longer than any edge; twins at
    # distance 0 would be no edge at all in a sparse matrix.
    links = coo_matrix((distance + 1e-9, (a, b)), shape=(n, n))
    count, component = connected_components(links, directed=False)
    if count > 1:
        roots = np.unique(component, return_index=True)[1]
        far = np.full(count - 1, 2.0 + float(distance.max(initial=0)))
        links = coo_matrix(
            (np.r_[links.data, far], (np.r_[links.row, roots[:-1]], np.r_[links.col, roots[1:]])),
            shape=(n, n),
        )
    tree = minimum_spanning_tree(links.tocsr())
    tree = tree.maximum(tree.T).tocsr()
    order, parent = depth_first_order(tree, 0, directed=False, return_predecessors=True)
    below = np.ones(n, dtype=np.int64)  # each node's subtree, itself included
    for v in order[:0:-1]:
        below[parent[v]] += below[v]
    child = order[1:]
    length = np.asarray(tree[child, parent[child]]).ravel()
    smaller = np.minimum(below[child], n - below[child])
    pick = np.where(smaller >= n / 3, length, -np.inf).argmax()
    if smaller[pick] < n / 3:
        pick = smaller.argmax()
    # A preorder walk lists a subtree as one run from its root.
    start = int(np.flatnonzero(order == child[pick])[0])
    side = np.zeros(n, dtype=bool)
    side[order[start : start + below[child[pick]]]] = True
    return side


def _measure(
    c: Candidate,
    labels: pd.DataFrame,
    x_train: Features,
    queries: np.ndarray,
    d_tests: list[np.ndarray],
    *,
    n_splits: int,
    seed: int,
) -> None:
    """Fill in a candidate's folds, whether they can serve, and how well each method's
    validation-to-train distances (of the ``queries`` rows) match its test-to-train ones."""
    try:
        c.folds = make_folds(labels, n_splits=n_splits, seed=seed, groups=c.groups)
    except DataError as e:
        c.problem = str(e)
        return
    c.problem = _problem(c.folds, n_splits)
    fold = c.folds["fold"].to_numpy()
    # Each method on its own: folds should copy the test set in every way of looking.
    d_vals = [
        nearest(
            Features([space]).take(queries),
            Features([space]),
            query_keys=fold[queries],
            base_keys=fold,
        )[0][:, 0]
        for space in x_train.spaces
    ]
    c.d_val = np.minimum.reduce(d_vals)
    if d_tests:
        pairs = list(zip(d_vals, d_tests, strict=True))
        c.match = float(np.mean([match_score(v, t) for v, t in pairs]))
        c.shift = float(np.mean([shift_score(v, t) for v, t in pairs]))


def _choose(candidates: list[Candidate], *, matching: bool, tolerance: float) -> Candidate:
    """The least grouping within ``tolerance`` of the best match; without ``matching``, the
    last grouping that can serve. Plain folds when none can."""
    usable = [c for c in candidates if c.problem is None and c.folds is not None]
    if not matching:
        return usable[-1] if usable else candidates[0]
    best = min(c.shift for c in usable)
    return next(c for c in usable if c.shift <= best + tolerance)


def adversarial_auc(x_train: Features, x_test: Features, *, threshold: float, seed: int) -> float:
    """Cross-validated ROC AUC of a classifier told to tell test images from train ones
    on the similarity features: 0.5 when it cannot, 1.0 when test is another world.

    Images within ``threshold`` of each other share a fold of this CV too; otherwise
    the classifier tells test from train by recognising test subjects it saw in training.
    """
    # Here: sklearn.ensemble is slow to import, and only the report of `comp folds` needs it.
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(seed)
    a = rng.choice(len(x_train), min(len(x_train), SAMPLE), replace=False)
    b = rng.choice(len(x_test), min(len(x_test), SAMPLE), replace=False)
    if min(len(a), len(b)) < 20:
        return float("nan")  # a fold of the CV would hold only one side
    both = Features(
        [
            Space(
                np.concatenate([s.x[a], t.x[b]]),
                None
                if s.mirror is None or t.mirror is None
                else np.concatenate([s.mirror[a], t.mirror[b]]),
                s.scale,
            )
            for s, t in zip(x_train.spaces, x_test.spaces, strict=True)
        ]
    )
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    groups = neighbour_graph(both).groups([threshold], cap=max(2, len(y) // 10))[0]
    model = HistGradientBoostingClassifier(max_iter=50, random_state=seed)
    cv = StratifiedGroupKFold(5, shuffle=True, random_state=seed)
    return float(cross_val_score(model, both.x, y, groups=groups, cv=cv, scoring="roc_auc").mean())


def auc_meaning(auc: float) -> str:
    if np.isnan(auc):
        return "too few images to tell"
    if auc < 0.6:
        return "a classifier cannot tell test images from train ones: same kind of images"
    if auc < 0.75:
        return "a classifier tells test from train a little: some shift between them"
    return (
        "a classifier tells test from train easily: the test set differs from train "
        "(other sources, styles or conditions), so CV will be optimistic"
    )


def fold_report(
    choice: FoldChoice,
    *,
    methods: list[str],
    n_splits: int,
    seed: int,
) -> dict[str, Any]:
    """What `comp folds` found and chose, as written to folds_k{n}_seed{s}.json."""
    x_train, x_test = choice.x_train, choice.x_test
    report: dict[str, Any] = {
        "features": methods,
        "scales": [s.scale for s in x_train.spaces],
        "n_splits": n_splits,
        "seed": seed,
        "train_images": len(x_train),
        "test_images": len(x_test) if x_test is not None else 0,
        "chosen": choice.chosen.summary(),
        "candidates": [c.summary() for c in choice.candidates],
        "d_test": quantiles(choice.d_test) if choice.d_test is not None else None,
        "twin_distance": TWIN_DISTANCE,
        "warnings": [],
    }
    report["train_with_twin"] = int((choice.d_train <= TWIN_DISTANCE).sum())
    if x_test is not None and len(x_test):
        d_full = nearest(x_test, x_train)[0][:, 0]
        report["test_with_twin"] = int((d_full <= TWIN_DISTANCE).sum())
        auc = adversarial_auc(
            x_train, x_test, threshold=choice.chosen.threshold or TWIN_DISTANCE, seed=seed
        )
        report["adversarial_auc"] = None if np.isnan(auc) else round(auc, 3)
        report["adversarial_meaning"] = auc_meaning(auc)
        if auc >= 0.75:
            report["warnings"].append(f"adversarial validation AUC {auc:.2f}: {auc_meaning(auc)}")
        if choice.chosen.shift > MISMATCH and choice.chosen.split is not None:
            report["warnings"].append(
                f"no split imitates the test set closely (shift {choice.chosen.shift:.2f}): "
                "to keep every class in every fold, some near-duplicates of validation images "
                "stay in training"
                + (
                    " (CV runs high) and some views are held out whole, so a fold trains on "
                    "fewer views than the final model (CV runs low): expect CV a few points "
                    "either side of the leaderboard"
                    if choice.chosen.split.whole
                    else "; CV may run somewhat above the leaderboard"
                )
            )
        elif choice.chosen.shift > MISMATCH and choice.chosen.d_val is not None:
            val, test = float(np.median(choice.chosen.d_val)), float(np.median(d_full))
            report["warnings"].append(
                "no split imitates the test set: validation images sit "
                f"{'nearer to' if val < test else 'further from'} their training images than "
                f"test images do from train (median distance {val:.3g} against {test:.3g}). "
                "The test set differs from train in a way folds cannot copy (domain shift): "
                "expect CV to miss the leaderboard"
            )
    else:
        report["warnings"].append(
            "no test images to match: only twins are kept together, so CV can only be as "
            "honest as the test set is like train"
        )
    report["classes"] = class_line(choice, n_splits=n_splits)
    report["kind"], report["kind_why"] = competition_kind(
        choice,
        auc=report.get("adversarial_auc"),
        test_twins=report.get("test_with_twin", 0),
        n_splits=n_splits,
    )
    return report


def class_line(choice: FoldChoice, *, n_splits: int) -> str | None:
    """What comp did about classes left in fewer groups than folds, if any were."""
    if choice.chosen.split is not None:
        return choice.chosen.split.line()
    short = [c for c in choice.candidates if c.split is not None]
    if not short:
        return None
    return (
        f"{max(c.split.classes for c in short if c.split)} class(es) formed fewer groups than "
        f"the {n_splits} folds at some distances; {choice.chosen.name} matched the test set "
        "better than splitting them"
    )


def competition_kind(
    choice: FoldChoice, *, auc: float | None, test_twins: int, n_splits: int
) -> tuple[str, str]:
    """Which kind of competition the distances say this is, and why, in a sentence."""
    chosen, d_test = choice.chosen, choice.d_test
    if d_test is None:
        return "no test set", "there is no test set to compare with: a hold-out cut from train"
    med_test = float(np.median(d_test))
    med_plain = float(np.median(choice.plain.d_val)) if choice.plain.d_val is not None else 0.0
    if (auc is not None and auc >= 0.75) or (chosen.shift > MISMATCH and chosen.split is None):
        return "a domain shift", (
            f"no split copies the test distances (best shift {chosen.shift:.2f})"
            + (f" and a classifier tells test from train (AUC {auc:.2f})" if auc else "")
        )
    # Groups that leave validation images as near their training images as plain folds do
    # (a few twins kept together) do not make a split of unseen subjects.
    med_chosen = float(np.median(chosen.d_val)) if chosen.d_val is not None else med_plain
    if chosen.groups is None or med_chosen <= 1.1 * med_plain:
        return "a random split", (
            f"test images sit as near to train as validation images of plain folds do "
            f"(median distance {med_test:.3g} against {med_plain:.3g}); {test_twins} test "
            "images have a twin in train"
        )
    whole = _whole_classes(choice, at=med_test, n_splits=n_splits)
    if chosen.split is not None and whole is not None and whole > 0.5:
        return "unseen views of known subjects (the class is the subject)", (
            f"a class's images all lie near each other ({chosen.split.classes} classes in fewer "
            f"groups than folds at distance {chosen.threshold:g}), and test images sit further "
            f"from train (median {med_test:.3g}) than a frame from its sibling ({med_plain:.3g}): "
            "views of a subject train knows, that train never shows"
        )
    kept = (
        f"each class is cut into {n_splits} pieces at its loosest links"
        if chosen.split is not None
        else f"groups within {chosen.threshold:g} are kept together"
    )
    return "unseen subjects", (
        f"test images sit as far from train (median {med_test:.3g}) as validation images do when "
        f"{kept}, not as near as in plain folds ({med_plain:.3g}): subjects train never sees"
    )


def _whole_classes(choice: FoldChoice, *, at: float, n_splits: int) -> float | None:
    """The share of classes that are fewer groups than folds when images are grouped up to
    distance ``at`` (the first rung there): near 1 when a class is one subject, near 0 when
    a class holds many (None: no such rung)."""
    for c in choice.candidates:
        rung = c.split is None and c.groups is not None and c.folds is not None
        if rung and c.threshold is not None and c.threshold >= at:
            assert c.folds is not None
            table = pd.DataFrame({"y": c.folds["label"].to_numpy(), "g": c.groups})
            return float((table.groupby("y")["g"].nunique() < n_splits).mean())
    return None
