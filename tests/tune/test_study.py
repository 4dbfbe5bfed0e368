"""comp tune: search space, pruning, out-of-memory trials, resume after SIGKILL, shared storages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from comp.cli import cli
from comp.config import load_config
from comp.data.workspace import init_workspace
from comp.errors import ConfigError
from comp.tune.study import Dimension, load_study, objective_folds, optimize, parse_dimension
from tests.conftest import TINY, make_kaggle

FAST = {**TINY, "epochs": 2, "tune_batch_size": "8,16", "tune_freeze_epochs": "0..1"}
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    init_workspace(root, make_kaggle(tmp_path / "data", n_per_class=8), overrides=FAST)
    assert CliRunner().invoke(cli, ["-w", str(root), "folds"]).exit_code == 0
    return root


def comp(ws: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["-w", str(ws), *args])
    return result.exit_code, result.output


def test_the_regularisers_are_tunable() -> None:
    from comp.config import make_config
    from comp.tune.study import search_space

    cfg = make_config(
        {
            "tune_mixup": "0..0.4",
            "tune_ema": "false,true",
            "tune_layer_decay": "0.6..0.9",
            "tune_drop_path_rate": "0,0.1",
            "tune_label_smoothing": "0..0.2",
            "tune_ema_decay": "0.99..0.9999",
        }
    )
    space = {d.key: d for d in search_space(cfg)}
    assert space["mixup"] == Dimension("mixup", low=0.0, high=0.4)
    assert space["ema"].choices == (False, True)
    assert space["drop_path_rate"].choices == (0.0, 0.1)
    assert {"layer_decay", "label_smoothing", "ema_decay"} <= set(space)


def test_search_space_specs() -> None:
    assert parse_dimension("lr1", "1e-5..1e-2") == Dimension("lr1", low=1e-5, high=1e-2, log=True)
    assert parse_dimension("freeze_epochs", "0..5") == Dimension("freeze_epochs", low=0, high=5)
    assert parse_dimension("batch_size", "16, 32,64").choices == (16, 32, 64)
    assert parse_dimension("aug", "light,heavy").choices == ("light", "heavy")
    for key, spec in (("lr1", "0..1e-2"), ("lr1", "1e-2..1e-5"), ("batch_size", "a,b")):
        with pytest.raises(ConfigError, match=f"tune_{key}|batch_size"):
            parse_dimension(key, spec)


def test_objective_folds_are_checked(ws: Path) -> None:
    assert objective_folds(load_config(ws, {"tune_folds": "0,1"})) == [0, 1]
    with pytest.raises(ConfigError, match=r"folds are 0\.\.1"):
        objective_folds(load_config(ws, {"tune_folds": "3"}))


def test_a_small_study_then_show_and_train_with_the_best(ws: Path) -> None:
    code, out = comp(ws, "tune", "--trials", "3")
    assert code == 0, out
    assert "study comp:" in out and "best: trial" in out
    study = load_study(f"sqlite:///{ws / 'tune' / 'comp.db'}", "comp")
    assert len(study.get_trials(states=DONE)) == 3
    code, out = comp(ws, "tune", "--trials", "3")  # already there: runs nothing
    assert code == 0 and "already has 3 finished trials" in out
    code, out = comp(ws, "tune", "--show")
    assert code == 0, out
    best = ws / "tune" / "comp-best.yaml"
    assert best.exists() and (ws / "tune" / "comp" / "history.png").exists()
    params = study.best_trial.params
    assert {"batch_size", "freeze_epochs"} <= set(params)
    written = yaml.safe_load(best.read_text())
    assert {k: written[k] for k in params} == params

    code, out = comp(ws, "train", "--config", str(best), "--fold", "0", "--name", "best")
    assert code == 0, out
    run = ws / "runs" / "best"
    # The run trained with the best trial's parameters, as its own config.yaml records them.
    trained = yaml.safe_load((run / "config.yaml").read_text())
    assert {k: trained[k] for k in params} == params
    assert trained["epochs"] == FAST["epochs"] and trained["model"] == FAST["model"]
    metrics = pd.read_csv(run / "fold0" / "metrics.csv")
    assert len(metrics) == FAST["epochs"]
    assert (metrics["stage"] == 1).sum() == params["freeze_epochs"]
    # ... and produced a CV over its fold, the one the command printed.
    summary = json.loads((run / "cv.json").read_text())
    assert summary["folds_trained"] == 1 and 0 <= summary["cv_macro_f1"] <= 1
    assert f"CV over 1/2 folds macro-F1 {summary['cv_macro_f1']:.4f}" in out
    assert len(pd.read_csv(run / "oof.csv")) == summary["n_oof"] > 0


def test_out_of_memory_trials_are_pruned_with_their_reason(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import comp.tune.study

    real = comp.tune.study.train

    def small_gpu(root: Path, cfg: object, **kwargs: object) -> object:
        if getattr(cfg, "batch_size") == 16:  # noqa: B009
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(root, cfg, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(comp.tune.study, "train", small_gpu)
    cfg = load_config(ws, {"tune_batch_size": "8,16"})
    study = optimize(
        ws, cfg, study_name="oom", storage=f"sqlite:///{ws / 'oom.db'}", trials=6, progress=False
    )
    trials = study.get_trials()
    assert len([t for t in trials if t.state in DONE]) == 6
    oom = [t for t in trials if t.params["batch_size"] == 16]
    assert oom and all(t.state == optuna.trial.TrialState.PRUNED for t in oom)
    assert all(t.user_attrs["reason"] == "out of memory at batch_size 16" for t in oom)
    assert any(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def _tune(ws: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "comp", "-w", str(ws), "tune", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_a_killed_study_resumes_without_losing_trials(ws: Path) -> None:
    url = f"sqlite:///{ws / 'tune' / 'comp.db'}"
    args = ("--trials", "4", "--heartbeat", "1", "--pruner", "none", "--epochs", "3")
    proc = _tune(ws, *args)
    # Look into the storage only once the worker has created it: two processes creating
    # one fresh SQLite schema at once collide in Optuna's alembic table.
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert "study comp" in first, first
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(0.3)
        trials = load_study(url, "comp", heartbeat=1).get_trials()
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        if done and running:
            break
        assert proc.poll() is None, proc.communicate()[0]
    else:
        pytest.fail("no trial finished in time")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: t.value for t in done}
    killed = running[0].number

    time.sleep(2.5)  # the dead trial's heartbeat goes stale
    proc = _tune(ws, *args)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    study = load_study(url, "comp", heartbeat=1)
    trials = study.get_trials()
    assert {t.number: t.value for t in trials if t.number in before} == before
    assert trials[killed].state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert retried and retried[0].params == trials[killed].params
    assert len([t for t in trials if t.state in DONE]) == 4


@pytest.mark.slow
def test_two_workers_share_one_study(ws: Path) -> None:
    code, out = comp(ws, "tune", "--trials", "6", "--n-workers", "2", "--pruner", "none")
    assert code == 0, out
    study = load_study(f"sqlite:///{ws / 'tune' / 'comp.db'}", "comp")
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # Each worker stops once 6 are finished; at most the other's running trial comes on top.
    assert 6 <= len(trials) <= 7
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params)


def test_a_study_on_postgresql(ws: Path) -> None:
    url = os.environ.get("COMP_TEST_POSTGRES")
    if not url:
        reason = (
            os.environ.get("COMP_TEST_POSTGRES_SKIP")
            or "COMP_TEST_POSTGRES is not set (.ci/run starts a server)"
        )
        pytest.skip(f"no PostgreSQL server: {reason}")
    try:
        import sqlalchemy

        sqlalchemy.create_engine(url).connect().close()
    except Exception as e:
        pytest.skip(f"no PostgreSQL server at {url.split('@')[-1]}: {e}")
    name = f"test-{uuid.uuid4().hex[:8]}"
    code, out = comp(ws, "tune", "--trials", "2", "--storage", url, "--study", name)
    assert code == 0, out
    assert "comp:comp@" not in out  # the password stays out of the output
    study = load_study(url, name)
    assert len(study.get_trials(states=DONE)) == 2
    optuna.delete_study(study_name=name, storage=url)
