"""The command line: every --help, error handling, and the whole loop end to end."""

import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pandas as pd
import pytest
from click.testing import CliRunner

from comp.cli import cli
from tests.conftest import make_imagefolder


def walk(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The path of every command and subcommand of ``group``, groups included."""
    for name, command in sorted(group.commands.items()):
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))


COMMANDS = list(walk(cli))
# What `comp --help` must not import: every command imports its own heavy libraries.
HEAVY = (
    "torch",
    "torchvision",
    "timm",
    "optuna",
    "sklearn",
    "scipy",
    "albumentations",
    "cv2",
    "matplotlib",
    "pandas",  # a third of a second on its own
    "numpy",
)


def run(*args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def test_the_walk_reaches_the_subcommands() -> None:
    assert ("kernel", "push") in COMMANDS and ("train",) in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="comp")
    assert result.exit_code == 0, result.output
    out, name = result.output, f"comp {' '.join(path)}"
    assert out.startswith(f"Usage: {name} "), out
    command = command_at(path)
    if isinstance(command, click.Group):
        # A group's example is a round trip through its subcommands, each of which it lists.
        assert re.search(rf"^\s+{name} ({'|'.join(command.commands)}) ", out, re.M), out
        assert all(re.search(rf"^  {sub}\b", out, re.M) for sub in command.commands), out
    else:
        assert "Example" in out and re.search(rf"^\s+{name}\b", out, re.M), out


def test_top_level_help_is_fast_and_imports_no_torch() -> None:
    # Which modules `import comp.cli` loads, from the interpreter's own import log.
    log = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import comp.cli"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in log.splitlines() if "|" in line}
    assert "comp.cli" in loaded
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, heavy
    # CPU time, not wall time: a busy machine stretches the second, not the first, and
    # both processes alike. Without torch, the help costs a fraction of torch's import.
    help_seconds, out = cpu_seconds(sys.executable, "-m", "comp", "--help")
    assert all(f"  {name} " in out for (name, *sub) in COMMANDS if not sub), out
    torch_seconds, _ = cpu_seconds(sys.executable, "-c", "import torch")
    assert help_seconds < 0.75 * torch_seconds, (help_seconds, torch_seconds)


def cpu_seconds(*args: str) -> tuple[float, str]:
    """The user and system CPU seconds of one run of ``args``, and what it printed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(list(args), capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return used, done.stdout


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
