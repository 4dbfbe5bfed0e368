"""Blends: weights fitted on OOF, the blended CV reported, the same weights applied at predict."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from click.testing import CliRunner

from comp.cli import cli
from comp.predict.ensemble import fit_weights


def test_fitted_weights_prefer_the_better_model() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    good = np.full((300, 3), 0.1)
    good[np.arange(300), y] = 0.8
    noise = rng.dirichlet(np.ones(3), 300)
    w = fit_weights([good, noise], y)
    assert abs(w.sum() - 1) < 1e-9
    assert w[0] > 0.8


def test_blend_two_runs_then_predict(workspace: Callable[..., Path]) -> None:
    ws = workspace()
    runner = CliRunner()

    def comp(*args: str) -> str:
        result = runner.invoke(cli, ["-w", str(ws), *args])
        assert result.exit_code == 0, result.output
        return result.output

    comp("folds")
    comp("train", "--name", "a")
    comp("train", "--name", "b", "--lr2", "3e-3", "--aug", "none")
    out = comp("blend", "a", "b", "--name", "ab")
    assert "blend ab: CV macro-F1" in out
    cv = json.loads((ws / "runs" / "ab" / "cv.json").read_text())
    weights = [cv["members"][m]["weight"] for m in ("a", "b")]
    assert abs(sum(weights) - 1) < 1e-5
    comp("predict", "ab")
    probs = {
        r: pd.read_csv(ws / "runs" / r / "test_probs.csv", dtype={"Id": str}).set_index("Id")
        for r in ("a", "b", "ab")
    }
    mixed = weights[0] * probs["a"] + weights[1] * probs["b"].loc[probs["a"].index]
    assert np.allclose(mixed.to_numpy(), probs["ab"].loc[probs["a"].index].to_numpy(), atol=1e-5)
    assert (ws / "submissions" / "ab.csv").exists()
    result = runner.invoke(cli, ["-w", str(ws), "blend", "a", "--name", "solo"])
    assert result.exit_code == 1 and "two or more runs" in result.output
