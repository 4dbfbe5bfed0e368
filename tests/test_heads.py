from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from comp.config import load_config
from comp.errors import ConfigError, ModelError
from comp.predict.predict import predict
from comp.train.heads import make_head
from comp.train.run import train
from tests.test_train import with_folds

quiet = lambda s: None  # noqa: E731


@pytest.mark.parametrize("head", ["logreg", "extratrees", "rf", "hgb"])
def test_every_head_fits(head: str) -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (20, 4)), rng.normal(3, 1, (20, 4))])
    y = np.repeat([0, 1], 20)
    model = make_head(head, seed=0).fit(x, y)
    assert (model.predict(x) == y).mean() > 0.9


def test_a_head_run_works_like_a_neural_run(workspace: Callable[..., Path]) -> None:
    root, cfg = with_folds(workspace(epochs=1, freeze_epochs=1))
    train(root, cfg, name="net", echo=quiet)  # type: ignore[arg-type]
    heads = load_config(root, {"head": "extratrees", "features_from": "net"})
    said: list[str] = []
    summary = train(root, heads, name="trees", echo=said.append)
    assert summary["complete"] and summary["n_oof"] == 30
    assert any("extratrees head" in s for s in said)
    run = root / "runs" / "trees"
    oof = pd.read_csv(run / "oof.csv")
    assert list(oof.columns) == ["Id", "label", "fold", "circle", "square", "triangle"]
    assert np.allclose(oof.iloc[:, 3:].sum(1), 1, atol=1e-5)
    assert (run / "fold0" / "head.pkl").exists() and not (run / "fold0" / "best.pt").exists()

    facts = predict(root, heads, run="trees", tta="hflip", echo=quiet)
    assert facts["folds"] == ["fold0", "fold1"] and len(facts["tta"]) == 2
    sub = pd.read_csv(facts["file"], dtype=str)
    assert len(sub) == 9 and set(sub.iloc[:, 1]) <= {"circle", "square", "triangle"}


def test_features_from_needs_the_run(workspace: Callable[..., Path]) -> None:
    root, _ = with_folds(workspace(epochs=1, freeze_epochs=1))
    cfg = load_config(root, {"head": "logreg", "features_from": "nope"})
    with pytest.raises(ModelError, match="features_from run nope"):
        train(root, cfg, name="x", echo=quiet)
    with pytest.raises(ConfigError, match="did you mean 'extratrees'"):
        load_config(root, {"head": "extratree"})
