"""Class imbalance: weighted and focal losses, a balanced sampler, and OOF-fitted class priors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from click.testing import CliRunner
from sklearn.metrics import f1_score

from comp.cli import cli
from comp.config import make_config
from comp.fit.losses import make_loss
from comp.metrics import _fast_macro_f1, fit_priors, macro_f1


def test_focal_with_gamma_zero_is_cross_entropy() -> None:
    logits, target = torch.randn(16, 4), torch.randint(0, 4, (16,))
    focal = make_loss(
        make_config({"loss": "focal", "focal_gamma": 0.0}), target.numpy(), n_classes=4
    )
    ce = make_loss(make_config({}), target.numpy(), n_classes=4)
    assert torch.allclose(focal(logits, target), ce(logits, target), atol=1e-6)
    sharper = make_loss(
        make_config({"loss": "focal", "focal_gamma": 2.0}), target.numpy(), n_classes=4
    )
    assert sharper(logits, target) < ce(logits, target)


def test_balanced_weights_favour_the_rare_class() -> None:
    y = np.array([0] * 90 + [1] * 10)
    loss = make_loss(
        make_config({"class_weights": "balanced", "label_smoothing": 0.1}), y, n_classes=3
    )
    assert isinstance(loss, torch.nn.CrossEntropyLoss)
    w = loss.weight.numpy()  # type: ignore[union-attr]
    assert w[1] > w[0] * 8 and w[2] == 1.0 and loss.label_smoothing == 0.1


def test_fitted_priors_raise_macro_f1_on_imbalanced_probabilities() -> None:
    rng = np.random.default_rng(0)
    y = np.array([0] * 900 + [1] * 100)
    # A model biased to the big class: the small class's probability is systematically low.
    logits = rng.normal(0, 1, (1000, 2)) + np.where(y[:, None] == np.arange(2), 3.0, 0.0)
    logits[:, 0] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    w = fit_priors(probs, y, n_classes=2)
    assert _fast_macro_f1(y, probs.argmax(1), 2) == macro_f1(y, probs.argmax(1))
    assert macro_f1(y, (probs * w).argmax(1)) > macro_f1(y, probs.argmax(1)) + 0.05


def test_imbalance_options_train_and_adjust_at_predict(workspace: Callable[..., Path]) -> None:
    ws = workspace()
    runner = CliRunner()
    assert runner.invoke(cli, ["-w", str(ws), "folds"]).exit_code == 0
    result = runner.invoke(
        cli,
        [
            "-w",
            str(ws),
            "train",
            "--name",
            "imb",
            "--loss",
            "focal",
            "--class-weights",
            "balanced",
            "--sampler",
            "balanced",
            "--label-smoothing",
            "0.1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "with OOF-fitted class priors (cross-fitted): macro-F1" in result.output
    cv = json.loads((ws / "runs" / "imb" / "cv.json").read_text())
    priors = json.loads((ws / "runs" / "imb" / "adjust.json").read_text())
    assert set(priors) == {"circle", "square", "triangle"}
    # The adjusted CV is the out-of-fold predictions' own, each fold's under priors fitted on
    # the other fold (never on itself), not any number in [0, 1].
    oof = pd.read_csv(
        ws / "runs" / "imb" / "oof.csv", dtype={"Id": str}, float_precision="round_trip"
    )
    classes = ["circle", "square", "triangle"]
    oof_probs, y = oof[classes].to_numpy(), oof["label"].map(classes.index).to_numpy()
    crossed = np.empty(len(oof), dtype=int)
    for k in (0, 1):
        held = (oof["fold"] == k).to_numpy()
        crossed[held] = (
            oof_probs[held] * fit_priors(oof_probs[~held], y[~held], n_classes=3)
        ).argmax(1)
    assert cv["adjusted_macro_f1"] == round(f1_score(y, crossed, average="macro"), 6)
    # The priors kept for predict are fitted on all of the OOF, from no adjustment up:
    # on that OOF they score at least the plain CV.
    in_sample = (oof_probs * np.array([priors[c] for c in classes])).argmax(1)
    assert f1_score(y, in_sample, average="macro") >= cv["cv_macro_f1"] - 1e-6
    result = runner.invoke(cli, ["-w", str(ws), "predict", "imb", "--adjust", "true"])
    assert result.exit_code == 0, result.output
    sidecar = json.loads((ws / "submissions" / "imb.json").read_text())
    assert sidecar["adjusted"] is True and sidecar["cv_macro_f1"] == cv["adjusted_macro_f1"]
    probs = pd.read_csv(ws / "runs" / "imb" / "test_probs.csv", dtype={"Id": str}).set_index("Id")
    sub = pd.read_csv(ws / "submissions" / "imb.csv", dtype=str).set_index("Id")
    w = np.array([priors[c] for c in probs.columns])
    expected = [probs.columns[i] for i in (probs.to_numpy() * w).argmax(1)]
    assert list(sub.loc[probs.index, "label"]) == expected
