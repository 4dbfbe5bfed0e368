"""Reports of a run, as pictures: what the model gets wrong, where, and how sure it was.

Reads ``runs/<name>/``: ``oof.csv`` (Id, label, fold and one probability per
class), ``classes.json``, ``fold*/metrics.csv``, and the train images for the
mistakes grid. Writes ``runs/<name>/report/``: ``curves.png``,
``confusion.png`` (normalised and in counts), ``per_class.png`` and
``per_class.csv`` (precision, recall, F1, support), ``mistakes.png`` (the most
confident out-of-fold mistakes) and ``README.md`` linking them all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from comp import io
from comp.data import Competition, DataError, read_csv, read_image
from comp.plots import plot_curves


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    io.write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight"))
    _plt().close(fig)
    return path


def load_oof(run_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    if not (run_dir / "oof.csv").exists():
        raise DataError(f"{run_dir}: no oof.csv; train the run first")
    classes = json.loads((run_dir / "classes.json").read_text())
    oof = read_csv(run_dir / "oof.csv").astype(dict.fromkeys(classes, np.float64))
    return oof, classes


def per_class(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    idx = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=idx, zero_division=0)
    return pd.DataFrame(
        {"class": classes, "precision": p, "recall": r, "f1": f, "support": s}
    ).round(4)


def plot_confusion(y: np.ndarray, pred: np.ndarray, classes: list[str], out: Path) -> Path:
    plt = _plt()
    counts = confusion_matrix(y, pred, labels=list(range(len(classes))))
    norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(6.0, 0.45 * len(classes) + 3)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side, side), constrained_layout=True)
    for ax, matrix, title, fmt in (
        (axes[0], norm, "normalised by true class (recall on the diagonal)", "{:.2f}"),
        (axes[1], counts, "counts", "{:d}"),
    ):
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(classes)), classes, rotation=90 if len(classes) > 6 else 0)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        if len(classes) <= 30:
            for i in range(len(classes)):
                for j in range(len(classes)):
                    if matrix[i, j]:
                        colour = "white" if norm[i, j] > 0.5 else "black"
                        text = fmt.format(int(matrix[i, j]) if fmt == "{:d}" else matrix[i, j])
                        ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    fig.suptitle("out-of-fold confusion matrix")
    return _save(fig, out)


def plot_per_class(table: pd.DataFrame, out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(table) + 2), 4.5), constrained_layout=True)
    x = np.arange(len(table))
    for i, metric in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (i - 1) * 0.27, table[metric], width=0.27, label=metric)
    ax.set_xticks(
        x, [f"{c}\n(n={n})" for c, n in zip(table["class"], table["support"], strict=True)]
    )
    ax.set_ylim(0, 1.05)
    ax.set_title("per class, out of fold")
    ax.legend(loc="lower right")
    return _save(fig, out)


def plot_mistakes(
    oof: pd.DataFrame, classes: list[str], comp: Competition, out: Path, *, n: int = 24
) -> tuple[Path | None, pd.DataFrame]:
    """The out-of-fold predictions that were most sure and wrong: often mislabelled images."""
    probs = oof[classes].to_numpy()
    pred = probs.argmax(1)
    wrong = oof.assign(predicted=[classes[i] for i in pred], confidence=probs.max(1)).loc[
        lambda d: d["predicted"] != d["label"]
    ]
    worst = wrong.sort_values("confidence", ascending=False).head(n)
    if worst.empty:
        return None, worst
    plt = _plt()
    cols = min(6, len(worst))
    rows = int(np.ceil(len(worst) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
    paths = comp.train_paths(list(worst["Id"]))
    for ax, (_, row), path in zip(axes.flat, worst.iterrows(), paths, strict=False):
        ax.imshow(read_image(path, 96))
        ax.set_title(
            f"true {row['label']}\npred {row['predicted']} ({row['confidence']:.2f})", fontsize=8
        )
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("most confident out-of-fold mistakes")
    return _save(fig, out), worst


def write_report(run_dir: Path, comp: Competition) -> dict[str, Any]:
    oof, classes = load_oof(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    index = {c: i for i, c in enumerate(classes)}
    y = oof["label"].map(index).to_numpy()
    pred = oof[classes].to_numpy().argmax(1)
    table = per_class(y, pred, classes)
    io.write_csv(out / "per_class.csv", table)
    curves = plot_curves(run_dir)
    if curves is not None:
        shutil.copy2(curves, out / "curves.png")
    plot_confusion(y, pred, classes, out / "confusion.png")
    plot_per_class(table, out / "per_class.png")
    mistakes, worst = plot_mistakes(oof, classes, comp, out / "mistakes.png")
    cv = json.loads((run_dir / "cv.json").read_text()) if (run_dir / "cv.json").exists() else {}
    lines = [
        f"# {run_dir.name}",
        "",
        f"CV macro-F1 **{cv.get('cv_macro_f1', float('nan')):.4f}**, accuracy {cv.get('cv_accuracy', float('nan')):.4f}, "
        f"{len(oof)} out-of-fold predictions over {cv.get('folds_trained', '?')} folds.",
        "",
    ]
    if cv.get("adjusted_macro_f1") is not None:
        lines += [f"With prior adjustment: macro-F1 **{cv['adjusted_macro_f1']:.4f}**.", ""]
    if curves is not None:
        lines += ["## Training curves", "", "![curves](curves.png)", ""]
    lines += ["## Confusion matrix", "", "![confusion](confusion.png)", ""]
    lines += [
        "## Per class",
        "",
        "![per class](per_class.png)",
        "",
        _markdown(table),
        "",
        "[per_class.csv](per_class.csv)",
        "",
    ]
    if mistakes is not None:
        lines += [
            "## Most confident mistakes",
            "",
            "Often mislabelled or ambiguous images: worth a look before more tuning.",
            "",
            "![mistakes](mistakes.png)",
            "",
        ]
    io.write_text(out / "README.md", "\n".join(lines))
    return {"folder": out, "classes": table, "mistakes": len(worst)}


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "---|" * len(table.columns)
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows])
