"""Tuning kernels: `comp kernel push --tune` bundles, run as Kaggle runs them on the stand-in,
watched with `comp kernel status` and pulled into one local study that `comp tune --show` reads."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner

from comp.cli import cli
from comp.workspace.init import init_workspace
from tests.conftest import SLUG, TINY, make_kaggle
from tests.kaggle_standin import GOOD_TOKEN, KaggleStandIn

# One objective fold of two, one epoch: a trial trains in seconds.
TUNED = {**TINY, "epochs": 1, "freeze_epochs": 0, "competition": SLUG, "tune_pruner": "none"}


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    init_workspace(root, make_kaggle(tmp_path / "kaggle-side", n_per_class=6), overrides=TUNED)
    assert CliRunner().invoke(cli, ["-w", str(root), "folds"]).exit_code == 0
    return root


def comp(ws: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["-w", str(ws), *args])
    return result.exit_code, result.output


def constants(script: Path) -> dict[str, Any]:
    """The constants the kernel script sets before its code: whatever values it wrote."""
    namespace: dict[str, Any] = {}
    exec(script.read_text().split("# Kaggle's folders")[0], namespace)
    return namespace


def payload(script: Path) -> zipfile.ZipFile:
    lines = constants(script)["PAYLOAD"]
    return zipfile.ZipFile(io.BytesIO(base64.b64decode("".join(lines))))


def test_a_dry_run_writes_one_bundle_per_kernel_and_no_study(ws: Path) -> None:
    code, out = comp(
        ws, "kernel", "push", "--tune", "--trials", "5", "--kernels", "2", "--name", "t",
        "--owner", "me", "--dry-run", "--time-limit", "2h",
    )  # fmt: skip
    assert code == 0, out
    assert "space (scratch recipe, chosen for the kernels' GPU):" in out
    assert "kernel 0: 3 trial(s) (trial 0 first)" in out and "kernel 1: 2 trial(s)" in out
    bundles = [ws / "kernels" / "t" / f"tune{k}" for k in (0, 1)]
    assert not (ws / "tune" / "comp.db").exists()  # a dry run writes the bundles only
    pushes = set()
    for k, bundle in enumerate(bundles):
        info = json.loads((bundle / "comp-kernel.json").read_text())
        assert info["ref"] == f"me/comp-t-tune-{k}" and info["tune"]["kernel"] == k
        pushes.add(info["tune"]["push"])
        script = bundle / f"comp-t-tune-{k}.py"
        values = constants(script)
        assert values["TUNE"]["trials"] == 3 - k and values["TUNE"]["storage"] is None
        # The session's budget is the study's; the trials' own time limit is unset.
        assert (
            values["CONFIG"]["tune_time_limit"] == "2h" and values["CONFIG"]["time_limit"] is None
        )
        seed = payload(script).read("tune/comp.db")
        assert seed.startswith(b"SQLite format 3")
    assert len(pushes) == 1


def test_tuning_flags_are_checked(ws: Path) -> None:
    for args, said in (
        (("--kernels", "2"), "--kernels is for tuning kernels: add --tune"),
        (("--tune", "--folds-per-kernel", "1"), "--tune splits trials, not folds"),
        (("--tune", "--storage", "study.log"), "kernels on Kaggle share only a database"),
        (("--tune", "--study", "a b"), "study name 'a b'"),
    ):
        code, out = comp(ws, "kernel", "push", "--name", "x", "--owner", "me", "--dry-run", *args)
        assert code == 1 and said in out, out
        assert len(out.strip().splitlines()) == 1 or "space" not in out
    assert not (ws / "kernels" / "x").exists()


def test_a_shared_storage_password_stays_out_of_the_bundle(ws: Path, tmp_path: Path) -> None:
    url = "postgresql://tuner:pl4nted-pw@db.example.org:5432/studies"
    code, out = comp(
        ws, "kernel", "push", "--tune", "--kernels", "2", "--storage", url, "--name", "pg",
        "--owner", "me", "--dry-run",
    )  # fmt: skip
    assert code == 0, out
    assert "pl4nted-pw" not in out
    scripts = sorted((ws / "kernels" / "pg").rglob("*.py"))
    assert len(scripts) == 2
    for path in (ws / "kernels" / "pg").rglob("*"):
        assert path.is_dir() or b"pl4nted-pw" not in path.read_bytes(), path
    tune = constants(scripts[0])["TUNE"]
    assert tune["storage"] == "postgresql://tuner@db.example.org:5432/studies"
    assert tune["secret"] == "COMP_STORAGE_PASSWORD" and tune["trials"] == 20
    assert "tune/comp.db" not in payload(scripts[0]).namelist()
    # Run without the secret: the kernel stops with one line, before any trial.
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / SLUG).symlink_to(tmp_path / "kaggle-side")
    env = {k: v for k, v in os.environ.items() if k != "COMP_STORAGE_PASSWORD"}
    env.update(
        COMP_KAGGLE_INPUT=str(tmp_path / "input"),
        COMP_KAGGLE_WORKING=str(tmp_path / "working"),
        COMP_KAGGLE_CODE=str(tmp_path / "code"),
        COMP_KAGGLE_TEMP=str(tmp_path / "temp"),
    )
    proc = subprocess.run(
        [sys.executable, str(scripts[0])], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "the study's storage db.example.org:5432/studies needs its password: add a Kaggle "
        "secret named COMP_STORAGE_PASSWORD to this kernel (Add-ons > Secrets), or set "
        "COMP_STORAGE_PASSWORD to run it by hand"
    )


@pytest.mark.slow
def test_two_tuning_kernels_come_home_as_one_study(
    kaggle_machines: KaggleStandIn, ws: Path
) -> None:
    """Push 4 trials over 2 kernels; the stand-in runs both scripts; status reads their
    progress; pull merges them into tune/comp.db, once; comp tune --show reads it."""
    code, out = comp(
        ws, "kernel", "push", "--tune", "--trials", "4", "--kernels", "2", "--name", "t"
    )
    assert code == 0, out
    assert "then: comp tune --show --study comp" in out
    assert GOOD_TOKEN not in json.dumps([k.request for k in kaggle_machines.kernels.values()])
    code, out = comp(ws, "kernel", "status", "t", "--wait", "--interval", "0.5", "--timeout", "300")
    failures = {r: k.failure for r, k in kaggle_machines.kernels.items() if k.failure}
    assert code == 0, (out, failures)
    for k in (0, 1):
        assert f"tester/comp-t-tune-{k}: study comp, 2/2 trials finished, best macro-F1 0." in out
    code, out = comp(ws, "kernel", "pull", "t")
    assert code == 0, out
    assert "tester/comp-t-tune-1: 2 trial(s) into tune/comp.db (2 complete)" in out
    assert "study comp: 4 complete" in out and "next: comp tune --show --study comp" in out
    study = optuna.load_study(study_name="comp", storage=f"sqlite:///{ws / 'tune' / 'comp.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert all(len(t.intermediate_values) == TUNED["epochs"] for t in trials)
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    assert not list((ws / "runs").glob(".pull-*"))
    code, out = comp(ws, "kernel", "pull", "t")
    assert code == 0 and "0 trial(s) into tune/comp.db (2 already there)" in out, out
    assert len(optuna.load_study(study_name="comp", storage=study._storage).trials) == 4
    code, out = comp(ws, "tune", "--show")
    assert code == 0, out
    assert "study comp" in out and "4 complete" in out and "best config: tune/comp-best.yaml" in out
    # Nothing left to do: another push for the same 4 trials is refused in one line.
    code, out = comp(ws, "kernel", "push", "--tune", "--trials", "4", "--name", "t2")
    assert code == 1 and "already has 4 finished trials" in out
