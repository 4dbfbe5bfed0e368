from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.ensemble import ExtraTreesClassifier

from comp.config import load_config
from comp.errors import ConfigError, ModelError
from comp.fit.heads import make_head
from comp.predict.predict import predict
from comp.submit.submission import publish
from comp.train.run import train
from tests.conftest import Said, with_folds


@pytest.mark.parametrize("head", ["logreg", "extratrees", "rf", "hgb"])
def test_every_head_fits(head: str) -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (20, 4)), rng.normal(3, 1, (20, 4))])
    y = np.repeat([0, 1], 20)
    model = make_head(head, seed=0).fit(x, y)
    assert (model.predict(x) == y).mean() > 0.9


def test_a_head_run_works_like_a_neural_run(workspace: Callable[..., Path], said: Said) -> None:
    root, cfg = with_folds(workspace(epochs=1, freeze_epochs=1))
    train(root, cfg, name="net")
    heads = load_config(root, {"head": "extratrees", "features_from": "net"})
    summary = train(root, heads, name="trees")
    assert summary["complete"] and summary["n_oof"] == 30
    assert any("extratrees head" in s for s in said)
    run = root / "runs" / "trees"
    oof = pd.read_csv(run / "oof.csv")
    assert list(oof.columns) == ["Id", "label", "fold", "circle", "square", "triangle"]
    assert np.allclose(oof.iloc[:, 3:].sum(axis=1), 1, atol=1e-5)
    assert (run / "fold0" / "head.pkl").exists() and not (run / "fold0" / "best.pt").exists()

    facts = publish(root, predict(root, heads, run="trees", tta="hflip"))
    assert facts["folds"] == ["fold0", "fold1"] and len(facts["tta"]) == 2
    sub = pd.read_csv(facts["file"], dtype=str)
    assert len(sub) == 9 and set(sub.iloc[:, 1]) <= {"circle", "square", "triangle"}


def test_classical_features_make_a_run_of_their_own(
    workspace: Callable[..., Path], said: Said
) -> None:
    root, cfg = with_folds(workspace())
    cfg = load_config(root, {"model": "classical", "head": "logreg", "amp": "auto"})
    summary = train(root, cfg, name="classical")
    assert summary["complete"] and summary["cv_macro_f1"] > 0.5  # shapes by silhouette
    # Hand-made features run in fp32 whatever autocast says: nothing is timed.
    assert any("fp32 (hand-made features, not timed)" in line for line in said), said
    facts = publish(root, predict(root, cfg, run="classical", tta="hflip"))
    assert len(pd.read_csv(facts["file"])) == 9


def test_features_from_needs_the_run(workspace: Callable[..., Path]) -> None:
    root, _ = with_folds(workspace(epochs=1, freeze_epochs=1))
    cfg = load_config(root, {"head": "logreg", "features_from": "nope"})
    with pytest.raises(ModelError, match="features_from run nope"):
        train(root, cfg, name="x")
    with pytest.raises(ConfigError, match="did you mean 'extratrees'"):
        load_config(root, {"head": "extratree"})


def test_fold_k_embeds_with_fold_ks_own_checkpoint(
    workspace: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fold k's head is fitted on, and predicts from, features of runs/net/fold{k}/best.pt."""
    import comp.fit.heads as heads

    root, cfg = with_folds(workspace(epochs=1, freeze_epochs=0))
    train(root, cfg, name="net")
    net = root / "runs" / "net"
    ckpts = {
        k: torch.load(net / f"fold{k}" / "best.pt", weights_only=True)["state_dict"] for k in (0, 1)
    }
    # The two folds' backbones differ, so the weights tell which one embedded.
    assert any(not torch.equal(v, ckpts[1][n]) for n, v in ckpts[0].items())

    def which_checkpoint(model: torch.nn.Module) -> int | None:
        state = model.state_dict()
        same = [
            k
            for k, ckpt in ckpts.items()
            if state.keys() == ckpt.keys() and all(torch.equal(state[n], ckpt[n]) for n in ckpt)
        ]
        return same[0] if len(same) == 1 else None

    embedded: list[tuple[int | None, np.ndarray]] = []  # (fold of the weights, features)
    real_embed = heads.embed

    def spy_embed(model: torch.nn.Module, images: np.ndarray, **kwargs: Any) -> np.ndarray:
        fold = which_checkpoint(model)
        feats = real_embed(model, images, **kwargs)
        embedded.append((fold, feats))
        return feats

    # ExtraTrees is seeded with seed + k: each call names the fold whose head it is.
    used: list[tuple[str, int, np.ndarray]] = []
    real_fit, real_proba = ExtraTreesClassifier.fit, ExtraTreesClassifier.predict_proba

    def spy_fit(self: ExtraTreesClassifier, x: np.ndarray, y: np.ndarray) -> Any:
        used.append(("fit", self.random_state - cfg.seed, np.array(x)))
        return real_fit(self, x, y)

    def spy_proba(self: ExtraTreesClassifier, x: np.ndarray) -> np.ndarray:
        used.append(("predict", self.random_state - cfg.seed, np.array(x)))
        return real_proba(self, x)

    monkeypatch.setattr(heads, "embed", spy_embed)
    monkeypatch.setattr(ExtraTreesClassifier, "fit", spy_fit)
    monkeypatch.setattr(ExtraTreesClassifier, "predict_proba", spy_proba)

    trees = load_config(root, {"head": "extratrees", "features_from": "net"})
    train(root, trees, name="trees")
    fitted = [(what, k) for what, k, _ in used]
    assert sorted(set(fitted)) == [("fit", 0), ("fit", 1), ("predict", 0), ("predict", 1)]
    n_train = len(used)
    publish(root, predict(root, trees, run="trees", tta="hflip"))
    # Test time: each fold's head on both views of the test images.
    assert sorted(k for what, k, _ in used[n_train:] if what == "predict") == [0, 0, 1, 1]
    assert {k for k, _ in embedded} == {0, 1}

    for what, k, x in used:
        if what == "predict":
            # Every row it scored: the features of an embedding by fold k's checkpoint.
            assert any(fold == k and np.array_equal(f, x) for fold, f in embedded), (what, k)
        else:
            # Fitted on (the training rows of) an embedding by fold k's checkpoint.
            rows = [{r.tobytes() for r in f} for fold, f in embedded if fold == k]
            assert any(all(r.tobytes() in seen for r in x) for seen in rows), (what, k)
            others = [{r.tobytes() for r in f} for fold, f in embedded if fold != k]
            assert not any(all(r.tobytes() in seen for r in x) for seen in others), (what, k)


def test_stage_one_head_is_the_logistic_regression_on_the_same_features() -> None:
    """The head set by fit_linear_head predicts what scikit-learn's regression predicts, on
    raw features (the scaler folded in), for many classes and for two."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from torch import nn

    from comp.fit.heads import fit_linear_head

    rng = np.random.default_rng(0)
    for n_classes in (5, 2):
        y = rng.integers(0, n_classes, 300)
        # Large, offset features, as an ImageNet backbone's pooled ones are.
        x = rng.normal(3.0, 4.0, (300, 16)) + np.eye(n_classes, 16)[y] * 16
        views = torch.as_tensor(np.stack([x, x + rng.normal(0, 0.5, x.shape)]), dtype=torch.float32)
        head = nn.Linear(16, n_classes)
        loss, acc = fit_linear_head(head, views, y, balanced=False) or (None, None)
        assert loss is not None and acc is not None and acc > 0.9
        reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        reference.fit(views.reshape(-1, 16).double().numpy(), np.tile(y, 2))
        with torch.no_grad():
            ours = torch.softmax(head(views[0]), 1).numpy()
        np.testing.assert_allclose(ours, reference.predict_proba(x), atol=1e-3)
    # Not a linear head, or a class missing from the fold: nothing fitted.
    assert fit_linear_head(nn.Identity(), views, y, balanced=False) is None
