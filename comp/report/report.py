"""Reports of a run, as pictures: what the model gets wrong, where, and how sure it was.

Reads ``runs/<name>/``: ``oof.csv`` (Id, label, fold and one probability per
class), ``classes.json``, ``fold*/metrics.csv``, and the train images for the
mistakes grid. Writes ``runs/<name>/report/``: ``curves.png``,
``confusion.png`` (normalised and in counts), ``per_class.png`` and
``per_class.csv`` (precision, recall, F1, support), ``mistakes.png`` (the most
confident out-of-fold mistakes), ``gradcam.png`` (Grad-CAM overlays of the most
confident correct and wrong out-of-fold predictions, from ``fold*/best.pt``) and
``README.md`` linking them all.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    confusion_matrix,
    precision_recall_fscore_support,
)

from comp import files
from comp.data.competition import Competition, encode_labels
from comp.data.images import read_image
from comp.data.transforms import to_input
from comp.errors import ModelError
from comp.models.factory import load_checkpoint, normalisation
from comp.plots import plot_curves
from comp.runs import (
    BEST_FILE,
    CONFIG_FILE,
    CURVES_FILE,
    fold_dir,
    read_classes,
    read_oof,
    read_summary,
)
from comp.teach.lineage import describe, gain_over_parent

if TYPE_CHECKING:
    import torch
    from torch import nn


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    files.write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight"))
    _plt().close(fig)
    return path


def load_oof(run_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    classes = read_classes(run_dir)
    return read_oof(run_dir, classes), classes


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
        (axes[0], norm, "normalised by true class (recall on the diagonal)", ".2f"),
        (axes[1], counts, "counts", "d"),
    ):
        shown = ConfusionMatrixDisplay(matrix, display_labels=classes).plot(
            ax=ax,
            cmap="Blues",
            colorbar=False,
            include_values=len(classes) <= 30,
            values_format=fmt,
            xticks_rotation=90 if len(classes) > 6 else 0,
            im_kw={"vmin": 0, "vmax": 1},
            text_kw={"fontsize": 7},
        )
        # Both panels are coloured by recall, the counts too, and so is their text.
        shown.im_.set_data(norm)
        if shown.text_ is not None:
            for (i, j), text in np.ndenumerate(shown.text_):
                if matrix[i, j]:
                    text.set_color("white" if norm[i, j] > 0.5 else "black")
                else:
                    text.remove()  # empty cells stay blank
        ax.set(xlabel="predicted", ylabel="true", title=title)
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


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> np.ndarray | None:
    """Grad-CAM maps (N, H, W), each scaled to [0, 1], of class ``target`` (N,) for the
    normalised batch ``x`` (N, 3, H, W); None when the model has no spatial feature map.

    The target layer is the output of ``forward_features``: in timm's CNNs (and comp's
    simple_cnn), the last feature map before global pooling. Where that map is smaller
    than 4x4 (small images: a 32 px image ends at 1x1 in most CNNs), it is the last layer
    whose map is at least 4x4 instead. Its channels are weighted by their mean gradient
    of the class score, summed, rectified and resized to the image.
    """
    import torch
    import torch.nn.functional as F

    model.eval()
    maps: list[torch.Tensor] = []

    def keep(_: nn.Module, __: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == 4 and min(out.shape[2:]) >= 4:
            maps.append(out)

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(keep) for m in leaves]
    try:
        with torch.enable_grad():
            # An input that needs gradients makes the features need them, even with frozen weights.
            feats = model.forward_features(x.detach().clone().requires_grad_(True))  # type: ignore[operator]
            if not isinstance(feats, torch.Tensor) or feats.ndim != 4:
                return None
            score = model.forward_head(feats).gather(1, target.view(-1, 1)).sum()  # type: ignore[operator]
            channels = getattr(model, "num_features", None)
            channels_first = feats.shape[1] == channels or feats.shape[3] != channels
            layer = feats
            if channels_first and min(feats.shape[2:]) < 4 and maps:
                layer = maps[-1]
            (grads,) = torch.autograd.grad(score, layer)
    finally:
        for h in hooks:
            h.remove()
    feats = layer
    if not channels_first:
        # Channels last (N, H, W, C), as some timm transformers with a spatial grid give.
        feats, grads = feats.permute(0, 3, 1, 2), grads.permute(0, 3, 1, 2)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * feats).sum(dim=1, keepdim=True)).detach().float()
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.view(-1, 1, 1)
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
    return cam.clamp(0, 1).cpu().numpy()


def _gradcam_picks(oof: pd.DataFrame, classes: list[str], n: int) -> list[pd.DataFrame]:
    """The ``n`` most confident correct and the ``n`` most confident wrong OOF predictions."""
    probs = oof[classes].to_numpy()
    table = oof.assign(
        predicted=[classes[i] for i in probs.argmax(1)], confidence=probs.max(1)
    ).sort_values("confidence", ascending=False, kind="stable")
    right = table["predicted"] == table["label"]
    return [table[right].head(n), table[~right].head(n)]


def plot_gradcam(
    oof: pd.DataFrame,
    classes: list[str],
    comp: Competition,
    run_dir: Path,
    out: Path,
    *,
    n: int = 8,
) -> tuple[Path | None, str | None]:
    """Grad-CAM overlays of the predicted class, for the most confident correct and wrong
    OOF predictions, each from its fold's best.pt; or None and why it was skipped."""
    import torch

    config_path = run_dir / CONFIG_FILE
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    centre = bool((config or {}).get("centre", False))
    groups = _gradcam_picks(oof, classes, n)
    picked = pd.concat(groups)
    if picked.empty:
        return None, "no out-of-fold predictions"
    folds = sorted({int(k) for k in picked["fold"]})
    if not any((fold_dir(run_dir, k) / BEST_FILE).exists() for k in folds):
        return None, "the run has no fold checkpoints (fold*/best.pt), e.g. a blend"
    tiles: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # Id -> (image, CAM)
    for k in folds:
        ckpt = fold_dir(run_dir, k) / BEST_FILE
        rows = picked[picked["fold"].astype(int) == k]
        if not ckpt.exists() or rows.empty:
            continue
        try:
            model, meta = load_checkpoint(ckpt, classes=classes)
        except ModelError as e:
            return None, str(e)
        size = int(meta.get("img_size") or (config or {}).get("img_size") or 64)
        images = np.stack(
            [read_image(p, size, centre=centre) for p in comp.train_paths(list(rows["Id"]))]
        )
        mean, std = normalisation(model)
        x = to_input(torch.from_numpy(images), mean=mean, std=std, device=torch.device("cpu"))
        target = torch.as_tensor(encode_labels(rows["predicted"], classes), dtype=torch.long)
        cams = grad_cam(model, x, target)
        if cams is None:
            return None, (
                f"{meta.get('model', 'the model')}'s features are not a spatial map; "
                "Grad-CAM needs a CNN backbone"
            )
        for ident, image, cam in zip(rows["Id"], images, cams, strict=True):
            tiles[ident] = (image, cam)
    groups = [g[g["Id"].isin(list(tiles))] for g in groups]
    groups = [g for g in groups if not g.empty]
    plt = _plt()
    cols = max(len(g) for g in groups)
    fig, axes = plt.subplots(
        len(groups), cols, figsize=(2.0 * cols, 2.5 * len(groups)), squeeze=False
    )
    for ax_row, group in zip(axes, groups, strict=True):
        for ax, (_, row) in zip(ax_row, group.iterrows(), strict=False):
            image, cam = tiles[row["Id"]]
            ax.imshow(image)
            ax.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
            right = row["predicted"] == row["label"]
            ax.set_title(
                f"true {row['label']}\npred {row['predicted']} ({row['confidence']:.2f})",
                fontsize=8,
                color="darkgreen" if right else "darkred",
            )
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(
        "Grad-CAM of the predicted class: most confident correct (green) and wrong (red), out of fold"
    )
    return _save(fig, out), None


def write_report(run_dir: Path, comp: Competition) -> dict[str, Any]:
    oof, classes = load_oof(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    y = encode_labels(oof["label"], classes)
    pred = oof[classes].to_numpy().argmax(1)
    table = per_class(y, pred, classes)
    files.write_csv(out / "per_class.csv", table)
    curves = plot_curves(run_dir)
    if curves is not None:
        shutil.copy2(curves, out / CURVES_FILE)
    plot_confusion(y, pred, classes, out / "confusion.png")
    plot_per_class(table, out / "per_class.png")
    mistakes, worst = plot_mistakes(oof, classes, comp, out / "mistakes.png")
    gradcam, gradcam_skipped = plot_gradcam(oof, classes, comp, run_dir, out / "gradcam.png")
    cv = read_summary(run_dir)
    lines = [
        f"# {run_dir.name}",
        "",
        f"CV macro-F1 **{cv.get('cv_macro_f1', float('nan')):.4f}**, accuracy {cv.get('cv_accuracy', float('nan')):.4f}, "
        f"{len(oof)} out-of-fold predictions over {cv.get('folds_trained', '?')} folds.",
        "",
    ]
    if cv.get("adjusted_macro_f1") is not None:
        lines += [f"With prior adjustment: macro-F1 **{cv['adjusted_macro_f1']:.4f}**.", ""]
    lines += parent_section(cv, out)
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
    lines += ["## Grad-CAM", ""]
    if gradcam is not None:
        lines += [
            "Where each fold's best model looked for the class it predicted (red: most), "
            "for its most confident correct and wrong out-of-fold predictions.",
            "",
            "![gradcam](gradcam.png)",
            "",
        ]
    else:
        lines += [f"Skipped: {gradcam_skipped}.", ""]
    files.write_text(out / "README.md", "\n".join(lines))
    return {
        "folder": out,
        "classes": table,
        "mistakes": len(worst),
        "gradcam": gradcam,
        "gradcam_skipped": gradcam_skipped,
    }


def parent_section(cv: dict[str, Any], out: Path) -> list[str]:
    """The run against the run it was built from (pseudo-labels, a teacher), fold by fold."""
    gain = gain_over_parent(cv)
    if gain is None:
        return []
    folds = pd.DataFrame(
        [{"fold": k, **v} for k, v in gain["folds"].items()],
        columns=["fold", "parent", "run", "gain"],
    )
    plot_gain(folds, parent=str(gain["parent"]), run=str(cv.get("run")), out=out / "parent.png")
    spread = f" ± {gain['spread']:.4f}" if gain["spread"] is not None else ""
    return [
        f"## Against {gain['parent']}",
        "",
        f"Built from: {describe(cv.get('built_from'))}.",
        "",
        f"Mean gain per fold **{gain['mean_gain']:+.4f}**{spread} (standard error of the "
        f"per-fold gains): {gain['verdict']}.",
        "",
        "![against the parent](parent.png)",
        "",
        _markdown(folds),
        "",
    ]


def plot_gain(folds: pd.DataFrame, *, parent: str, run: str, out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 * len(folds) + 3, 3.5), constrained_layout=True)
    x = np.arange(len(folds))
    ax.bar(x - 0.2, folds["parent"], width=0.4, label=parent, color="C7")
    ax.bar(x + 0.2, folds["run"], width=0.4, label=run, color="C0")
    for i, g in enumerate(folds["gain"]):
        top = max(folds["parent"].iloc[i], folds["run"].iloc[i])
        ax.annotate(f"{g:+.3f}", (i, top), ha="center", va="bottom", fontsize=8)
    low = float(min(folds["parent"].min(), folds["run"].min()))
    ax.set_ylim(max(0.0, low - 0.1), 1.02)
    ax.set_xticks(x, [f"fold {k}" for k in folds["fold"]])
    ax.set_ylabel("validation macro-F1")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, out)


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "---|" * len(table.columns)
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows])
