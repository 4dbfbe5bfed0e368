"""Helpers of the tuning tests: trials that train nothing, and a from-scratch search space."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from comp.config import Config, make_config
from comp.train.recipe import resolve
from comp.tune.study import Space, recipe_space


def fake_train(
    monkeypatch: pytest.MonkeyPatch,
    *,
    score: Callable[[Config, int], float] = lambda cfg, k: 0.5,
    seconds: float = 0.0,
) -> list[Config]:
    """Trials that train nothing: each records its config, sleeps ``seconds`` and scores
    every fold ``score(cfg, fold)``; the list fills with the configs as trials run."""
    import comp.tune.study

    seen: list[Config] = []

    def train(
        root: Path,
        cfg: Config,
        *,
        folds: list[int],
        on_epoch: Callable[[int, int, float], None],
        **_: Any,
    ) -> dict[str, Any]:
        seen.append(cfg)
        time.sleep(seconds)
        per_fold = {str(k): score(cfg, k) for k in folds}
        for k in folds:
            on_epoch(k, 1, per_fold[str(k)])
        return {"cv_macro_f1": sum(per_fold.values()) / len(folds), "fold_macro_f1": per_fold}

    monkeypatch.setattr(comp.tune.study, "train", train)
    return seen


def scratch(**values: Any) -> tuple[Config, Space]:
    """A from-scratch config (with ``values``) and the search space its recipe gives."""
    cfg = make_config({"pretrained": "false", **values})
    resolved, recipe = resolve(cfg, weights="random", device="cpu")
    return cfg, recipe_space(cfg, resolved, recipe, families={})
