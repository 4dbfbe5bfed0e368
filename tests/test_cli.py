"""The command line: every --help, error handling, and the whole loop end to end."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from comp.cli import cli
from tests.conftest import make_imagefolder

COMMANDS = ["init", "demo", "folds", "train", "predict", "submit", "submissions"]


def run(*args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert (result.exit_code == 0) == ok, result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    out = run(command, "--help")
    assert "Example" in out and f"comp {command}" in out


def test_top_level_help_is_fast_and_imports_no_torch() -> None:
    code = "import sys, comp.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "comp", "--help"], check=True, capture_output=True)
    assert time.perf_counter() - t0 < 5


def test_errors_are_one_line_with_nonzero_exit(tmp_path: Path) -> None:
    out = run("-w", str(tmp_path), "folds", ok=False)
    assert out.startswith("Error: no comp.yaml") and out.count("\n") == 1
    (tmp_path / "comp.yaml").write_text("epoch: 3\n")
    out = run("-w", str(tmp_path), "train", ok=False)
    assert "unknown key 'epoch'; did you mean 'epochs'" in out
    out = run("-w", str(tmp_path), "train", "--set", "lr=1", ok=False)
    assert "unknown config key 'lr'" in out


@pytest.mark.slow
def test_whole_loop_on_the_demo(tmp_path: Path) -> None:
    ws = str(tmp_path / "demo")
    run("demo", ws, "--size", "16")
    out = run("-w", ws, "folds", "--n-splits", "3")
    # The digits were split at random by the demo: plain folds match the test set.
    assert "3 folds (stratified) of 1437 images" in out
    out = run(
        "-w",
        ws,
        "train",
        "--n-splits",
        "3",
        "--epochs",
        "2",
        "--model",
        "resnet10t",
        "--img-size",
        "16",
        "--name",
        "tiny",
        "--fold",
        "0",
        "--fold",
        "1",
        "--fold",
        "2",
    )
    cv = float(re.search(r"CV macro-F1 ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert cv > 0.5
    out = run("-w", ws, "predict", "tiny")
    assert "submissions/tiny.csv" in out
    out = run("-w", ws, "submit", f"{ws}/submissions/tiny.csv", "--local", "-m", "first")
    scores = re.search(r"CV macro-F1 ([0-9.]+) \| public ([0-9.]+) \| private ([0-9.]+)", out)
    assert scores and float(scores.group(1)) == pytest.approx(cv, abs=1e-4)
    assert float(scores.group(2)) > 0.5 and float(scores.group(3)) > 0.5
    table = run("-w", ws, "submissions")
    assert "tiny" in table and "first" in table and "local" in table
    # A submission with a wrong Id never reaches the ledger.
    bad = pd.read_csv(f"{ws}/submissions/tiny.csv", dtype=str)
    bad.loc[0, "Id"] = "not-a-test-id"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    out = run("-w", ws, "submit", str(tmp_path / "bad.csv"), "--local", ok=False)
    assert "not in the sample submission" in out
    assert run("-w", ws, "submissions").count("local") == 1


@pytest.mark.slow
def test_whole_loop_on_an_imagefolder_of_mixed_jpegs(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "animals", n_per_class=10)
    ws = str(tmp_path / "ws")
    out = run(
        "init",
        ws,
        "--data",
        str(data),
        "--model",
        "resnet10t",
        "--set",
        "pretrained=false",
        "--n-splits",
        "2",
    )
    assert (
        "layout: imagefolder" in out
        and "train images: 24 in 3 classes" in out
        and "JPEG" not in out
    )
    run("-w", ws, "folds")
    run(
        "-w",
        ws,
        "train",
        "--epochs",
        "2",
        "--freeze-epochs",
        "1",
        "--img-size",
        "16",
        "--batch-size",
        "8",
        "--name",
        "r",
    )
    run("-w", ws, "predict")
    out = run("-w", ws, "submit", f"{ws}/submissions/r.csv", "--local")
    assert re.search(r"public [0-9.]+ \| private [0-9.]+", out)
