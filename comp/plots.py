"""Pictures of a run, for where people would rather look than read.

Reads ``runs/<name>/fold*/metrics.csv`` and the submissions ledger. Writes
``runs/<name>/curves.png`` (loss, accuracy and macro-F1 per epoch, train against
validation, one line per fold) and ``submissions/leaderboard.png`` (CV against
public and private score, one point per submission).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from comp import files
from comp.runs import CURVES_FILE, METRICS_FILE


def plot_curves(run_dir: Path) -> Path | None:
    """Training curves of every trained fold; None when no fold has metrics yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folds = sorted(run_dir.glob(f"fold*/{METRICS_FILE}"))
    if not folds:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    panels = [
        ("loss", "train_loss", "valid_loss"),
        ("accuracy", "train_acc", "valid_acc"),
        ("macro-F1", None, "valid_macro_f1"),
    ]
    two_stages = False
    for i, path in enumerate(folds):
        m = pd.read_csv(path)
        colour = f"C{i}"
        for ax, (title, train_col, valid_col) in zip(axes, panels, strict=True):
            if train_col:
                ax.plot(m["epoch"], m[train_col], color=colour, linestyle="--", alpha=0.6)
            ax.plot(
                m["epoch"],
                m[valid_col],
                color=colour,
                marker="o",
                markersize=3,
                label=path.parent.name if valid_col == "valid_macro_f1" else None,
            )
            ax.set_title(title)
            ax.set_xlabel("epoch")
        unfrozen = m.loc[m["stage"] == 2, "epoch"]
        if i == 0 and len(unfrozen) and (m["stage"] == 1).any():
            two_stages = True
            for ax in axes:
                ax.axvline(unfrozen.iloc[0] - 0.5, color="grey", linewidth=0.8, linestyle=":")
    axes[2].legend(title="validation", fontsize=8)
    axes[0].plot([], [], color="black", linestyle="--", label="train")
    axes[0].plot([], [], color="black", marker="o", label="validation")
    axes[0].legend(fontsize=8)
    note = " (dotted line: backbone unfrozen)" if two_stages else ""
    fig.suptitle(f"{run_dir.name}: training curves{note}")
    out = run_dir / CURVES_FILE
    files.write_with(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return out


def plot_leaderboard(rows: list[dict[str, Any]], out: Path) -> Path | None:
    """CV against public and private score per submission; None when nothing has both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        r
        for r in rows
        if r["cv"] is not None and (r["public"] is not None or r["private"] is not None)
    ]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 6), constrained_layout=True)
    values = []
    for board, marker, colour in (("public", "o", "C0"), ("private", "s", "C3")):
        pts = [(r["cv"], r[board], r["id"]) for r in rows if r[board] is not None]
        if not pts:
            continue
        xs, ys, _ = zip(*pts, strict=True)
        ax.scatter(xs, ys, marker=marker, color=colour, label=board, alpha=0.8)
        for x, y, i in pts:
            ax.annotate(f"#{i}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        values += [*xs, *ys]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or 0.01
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("CV macro-F1")
    ax.set_ylabel("leaderboard score")
    ax.set_title("CV against leaderboard (dotted: equal)")
    ax.legend()
    files.write_with(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return out


def plot_fold_distances(report: dict[str, Any], distances: dict[str, Any], out: Path) -> Path:
    """How far validation images sit from their training images, against test images from
    train (one histogram each), and each candidate split's shift from the test set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), constrained_layout=True)
    logs = {k: np.log10(np.asarray(v, dtype=float) + 1e-3) for k, v in distances.items()}
    every = np.concatenate(list(logs.values()))
    bins = np.linspace(every.min(), every.max() + 1e-9, 40)
    for (name, x), colour in zip(logs.items(), ("black", "C3", "C0"), strict=False):
        left.hist(
            x, bins=bins, histtype="step", linewidth=2, color=colour, density=True, label=name
        )
    ticks = np.array([0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0])
    left.set_xticks(np.log10(ticks + 1e-3), [f"{t:g}" for t in ticks])
    left.set_xlabel("cosine distance to the nearest training image")
    left.set_ylabel("density")
    left.set_title("validation should sit as far from train as test does")
    left.legend(fontsize=8)
    rows = [c for c in report["candidates"] if c["shift"] is not None]
    if rows:
        labels = ["plain" if c["threshold"] is None else f"{c['threshold']:g}" for c in rows]
        colours = ["C2" if c["name"] == report["chosen"]["name"] else "grey" for c in rows]
        right.bar(range(len(rows)), [c["shift"] for c in rows], color=colours)
        right.set_xticks(range(len(rows)), labels, rotation=60, fontsize=7)
        right.set_xlabel("candidate split (plain, or grouped within this distance)")
        right.set_ylabel("shift from the test set (log10 quantile gap)")
        right.set_title(f"chosen (green): {report['chosen']['name']}")
    else:
        right.axis("off")
        right.text(0.5, 0.5, "no test images to match", ha="center", va="center")
    fig.suptitle("comp folds: distance-matched cross-validation")
    files.write_with(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return out
