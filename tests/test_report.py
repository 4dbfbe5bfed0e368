"""comp report: pictures, a per-class table and a linked summary of a trained run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from comp.cli import cli


def test_report_of_a_run(workspace: Callable[..., Path]) -> None:
    ws = workspace()
    runner = CliRunner()
    for args in (["folds"], ["train", "--name", "r1"]):
        result = runner.invoke(cli, ["-w", str(ws), *args])
        assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["-w", str(ws), "report", "r1"])
    assert result.exit_code == 0, result.output
    assert "weakest classes:" in result.output
    out = ws / "runs" / "r1" / "report"
    for name in ("confusion.png", "per_class.png", "curves.png", "README.md", "per_class.csv"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "per_class.csv")
    assert list(table.columns) == ["class", "precision", "recall", "f1", "support"]
    assert table["support"].sum() == 30
    readme = (out / "README.md").read_text()
    assert "![confusion](confusion.png)" in readme and "CV macro-F1" in readme
    if (out / "mistakes.png").exists():
        assert "![mistakes](mistakes.png)" in readme


def test_report_of_a_missing_run(workspace: Callable[..., Path]) -> None:
    ws = workspace()
    result = CliRunner().invoke(cli, ["-w", str(ws), "report", "nope"])
    assert result.exit_code == 1 and "no run 'nope'" in result.output
