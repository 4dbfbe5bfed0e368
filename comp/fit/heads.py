"""Classical heads: a scikit-learn classifier fitted per fold on a backbone's pooled features.

Reads the decoded images (comp.data.cache) and a backbone: timm's (pretrained, or
``pretrained_file``) or, with ``features_from: RUN``, fold k's best checkpoint of
an earlier comp run for fold k, so no image is ever embedded by a backbone that
trained on it. Writes into the run folder, as a neural run does:
``fold{k}/head.pkl`` (the fitted classifier), ``fold{k}/metrics.csv`` (one row)
and ``fold{k}/oof.csv``; comp.train.summarise then writes oof.csv and cv.json,
so blending, reports, predict and submit work unchanged.
"""

from __future__ import annotations

import logging
import pickle
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import ClassifierMixin, clone
from sklearn.ensemble import (
    ExtraTreesClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from comp import files
from comp.config import HEADS, Config
from comp.errors import ConfigError, ModelError
from comp.hardware.distributed import Dist
from comp.hardware.precision import make_autocast
from comp.metrics import macro_f1
from comp.models.factory import create_model, load_checkpoint, normalisation
from comp.models.inference import extract_features
from comp.runs import BEST_FILE, HEAD_FILE, METRICS_FILE, OOF_FILE, fold_dir, runs_dir, write_probs

log = logging.getLogger(__name__)


def make_head(name: str, *, seed: int) -> ClassifierMixin:
    """A fresh, unfitted classifier for a head name."""
    if name == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    if name == "extratrees":
        return ExtraTreesClassifier(n_estimators=500, n_jobs=-1, random_state=seed)
    if name == "rf":
        return RandomForestClassifier(n_estimators=500, n_jobs=-1, random_state=seed)
    if name == "hgb":
        return HistGradientBoostingClassifier(random_state=seed)
    if name == "xgb":
        try:
            from xgboost import XGBClassifier
        except ImportError:
            raise ConfigError("head 'xgb' needs xgboost: pip install xgboost") from None
        return XGBClassifier(n_estimators=400, learning_rate=0.1, random_state=seed)
    raise ConfigError(f"head '{name}' is not a classical head: {', '.join(HEADS[1:])}")


def backbone(root: Path, cfg: Config, *, fold: int, classes: list[str]) -> nn.Module:
    """The feature extractor for ``fold``: the fold's checkpoint of ``features_from``, else timm's."""
    if cfg.features_from:
        ckpt = fold_dir(runs_dir(root) / cfg.features_from, fold) / BEST_FILE
        if not ckpt.exists():
            raise ModelError(
                f"{ckpt}: features_from run {cfg.features_from} has no fold {fold}; train it first"
            )
        return load_checkpoint(ckpt, classes=classes)[0]
    return create_model(
        cfg.model,
        num_classes=len(classes),
        pretrained=cfg.pretrained,
        pretrained_file=cfg.pretrained_file,
        small_input=cfg.small_input,
    )[0]


def embed(
    model: nn.Module,
    images: np.ndarray,
    *,
    device: torch.device,
    batch_size: int,
    transform: Any = None,
    desc: str,
) -> np.ndarray:
    """Pooled features of every image: the frozen stage's cached-feature path, one view."""
    model = model.to(device).to(memory_format=torch.channels_last)
    mean, std = (t.to(device) for t in normalisation(model))
    feats = extract_features(
        model,
        images,
        np.arange(len(images)),
        transform=transform,
        views=1,
        batch_size=batch_size,
        mean=mean,
        std=std,
        device=device,
        autocast=make_autocast(device, True),
        channels_last=True,
        dist_=Dist(),
        desc=desc,
    )
    return feats[0].numpy()


def train_heads(
    root: Path,
    cfg: Config,
    *,
    run_dir: Path,
    images: np.ndarray,
    targets: np.ndarray,
    fold_of: np.ndarray,
    folds: list[int],
    table: pd.DataFrame,
    classes: list[str],
    device: torch.device,
) -> None:
    """Fit the head on each fold's training features and write its OOF probabilities."""
    shared: np.ndarray | None = None
    for k in folds:
        t0 = time.perf_counter()
        if cfg.features_from or shared is None:
            feats = embed(
                backbone(root, cfg, fold=k, classes=classes),
                images,
                device=device,
                batch_size=cfg.batch_size * 2,
                desc=f"fold {k} features",
            )
            # A backbone that no fold trained embeds every fold alike: once is enough.
            shared = None if cfg.features_from else feats
        else:
            feats = shared
        train_idx, valid_idx = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        head = clone(make_head(cfg.head, seed=cfg.seed + k))
        t1 = time.perf_counter()
        head.fit(feats[train_idx], targets[train_idx])
        probs = _full_probs(head, feats, n_classes=len(classes))
        pv, yv = probs[valid_idx], targets[valid_idx]
        labels = list(range(len(classes)))
        row = {
            "epoch": 1,
            "stage": 1,
            "lr": 0.0,
            "train_loss": round(
                float(log_loss(targets[train_idx], probs[train_idx], labels=labels)), 6
            ),
            "train_acc": round(
                float(accuracy_score(targets[train_idx], probs[train_idx].argmax(1))), 6
            ),
            "valid_loss": round(float(log_loss(yv, pv, labels=labels)), 6),
            "valid_acc": round(float(accuracy_score(yv, pv.argmax(1))), 6),
            "valid_macro_f1": round(macro_f1(yv, pv.argmax(1)), 6),
            "train_seconds": round(time.perf_counter() - t1, 3),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        out = fold_dir(run_dir, k)
        files.write_with(out / HEAD_FILE, partial(_dump, head))
        files.write_csv(out / METRICS_FILE, pd.DataFrame([row]))
        write_probs(out / OOF_FILE, table.iloc[valid_idx][["Id", "label", "fold"]], pv, classes)
        log.info(
            f"fold {k}: {cfg.head} head, valid macro-F1 {row['valid_macro_f1']:.4f} "
            f"(features {t1 - t0:.1f}s, fit {row['train_seconds']:.1f}s)"
        )


def _dump(obj: Any, path: Path) -> None:
    path.write_bytes(pickle.dumps(obj))


def _full_probs(head: Any, feats: np.ndarray, *, n_classes: int) -> np.ndarray:
    """predict_proba over every class, also those a fold's training part happened to lack."""
    part = head.predict_proba(feats)
    probs = np.zeros((len(feats), n_classes), dtype=np.float64)
    probs[:, np.asarray(head.classes_, dtype=int)] = part
    return probs.astype(np.float32)


def predict_heads(
    root: Path,
    trained: Config,
    run_dir: Path,
    *,
    images: np.ndarray,
    views: list[Any],
    classes: list[str],
    device: torch.device,
    batch_size: int,
) -> tuple[np.ndarray, list[str]]:
    """Test probabilities of a head run: every finished fold's head, averaged over folds and views."""
    fold_dirs = sorted(
        p.parent for p in run_dir.glob(f"fold*/{HEAD_FILE}") if (p.parent / OOF_FILE).exists()
    )
    total = np.zeros((len(images), len(classes)), dtype=np.float64)
    shared: dict[int, np.ndarray] = {}
    for d in fold_dirs:
        k = int(d.name.removeprefix("fold"))
        head = pickle.loads((d / HEAD_FILE).read_bytes())
        model = None
        for v, view in enumerate(views):
            if trained.features_from or v not in shared:
                if model is None:
                    model = backbone(root, trained, fold=k, classes=classes)
                feats = embed(
                    model,
                    images,
                    device=device,
                    batch_size=batch_size,
                    transform=view,
                    desc=f"{d.name} view {v + 1}/{len(views)}",
                )
                if not trained.features_from:
                    shared[v] = feats
            else:
                feats = shared[v]
            total += _full_probs(head, feats, n_classes=len(classes))
    return total / max(len(fold_dirs) * len(views), 1), [d.name for d in fold_dirs]


def fit_linear_head(
    head: nn.Module,
    features: torch.Tensor,
    targets: np.ndarray,
    *,
    balanced: bool,
) -> tuple[float, float] | None:
    """Set ``head`` (an ``nn.Linear``) to a logistic regression fitted on ``features``
    (views, n, D) of the images labelled ``targets``; its training loss and accuracy.

    A regression on frozen features finds the head's optimum in seconds, where epochs of
    AdamW from a random head stop short of it (the first logits of a random head on large
    ImageNet features are far from chance). The scaler that conditions the fit is folded
    into the weights, so the head reads raw features. None where ``head`` is not linear
    or a class is missing from ``targets``.
    """
    if not isinstance(head, nn.Linear) or len(np.unique(targets)) != head.out_features:
        return None
    n_classes = head.out_features
    x = features.reshape(-1, features.shape[-1]).double().numpy()
    y = np.tile(targets, features.shape[0])
    # The `--head logreg` regression, so stage 1 is that head on the same features.
    pipe = make_head("logreg", seed=0)
    scaler, reg = pipe[0], pipe[-1]
    reg.set_params(class_weight="balanced" if balanced else None)
    z = scaler.fit_transform(x)
    reg.fit(z, y)
    coef, intercept = reg.coef_, reg.intercept_
    if n_classes == 2:
        # sklearn keeps one row for two classes: softmax over (-z/2, z/2) is sigmoid(z).
        coef, intercept = np.concatenate([-coef, coef]) / 2, np.array([-1.0, 1.0]) * intercept / 2
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
    probs = reg.predict_proba(z)
    return float(log_loss(y, probs, labels=reg.classes_)), float(
        accuracy_score(y, reg.classes_[probs.argmax(1)])
    )
