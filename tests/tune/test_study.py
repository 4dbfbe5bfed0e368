"""comp tune: search space (the recipe's and yours), trial 0, the study's time limit, pruning,
out-of-memory trials, --show against trial 0, resume after SIGKILL, shared storages."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from comp.cli import cli
from comp.config import Config, is_auto, load_config, make_config, to_dict
from comp.errors import ConfigError
from comp.train.recipe import resolve
from comp.tune.study import (
    Dimension,
    Space,
    load_study,
    objective_folds,
    optimize,
    parse_dimension,
    recipe_space,
)
from comp.workspace.init import init_workspace
from tests.conftest import TINY, make_kaggle
from tests.tune.conftest import fake_train, scratch

FAST = {**TINY, "epochs": 2, "tune_batch_size": "8,16", "tune_freeze_epochs": "0..1"}
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    init_workspace(root, make_kaggle(tmp_path / "data", n_per_class=8), overrides=FAST)
    assert CliRunner().invoke(cli, ["-w", str(root), "folds"]).exit_code == 0
    return root


@pytest.fixture
def auto_ws(tmp_path: Path) -> Path:
    """A workspace as `comp init` writes it: the recipe's keys and the tune_* keys at auto."""
    root = tmp_path / "auto"
    overrides = {**TINY, "freeze_epochs": "auto", "lr2": "auto"}
    init_workspace(root, make_kaggle(tmp_path / "data", n_per_class=8), overrides=overrides)
    assert CliRunner().invoke(cli, ["-w", str(root), "folds"]).exit_code == 0
    return root


def comp(ws: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["-w", str(ws), *args])
    return result.exit_code, result.output


def test_init_writes_auto_for_the_keys_the_recipe_searches(auto_ws: Path) -> None:
    text = (auto_ws / "comp.yaml").read_text()
    for key in ("lr1", "lr2", "freeze_epochs", "weight_decay", "label_smoothing", "layer_decay"):
        assert f"tune_{key}: auto" in text
    assert load_config(auto_ws).tune_lr2 == "auto"
    with pytest.raises(ConfigError, match="tune_aug: auto is for the keys the recipe searches"):
        make_config({"tune_aug": "auto"})


def test_a_scratch_space_has_no_frozen_stage() -> None:
    _, space = scratch()
    assert space.recipe == "scratch"
    assert {d.key: d for d in space.dimensions} == {
        "lr2": Dimension("lr2", low=2e-4, high=2e-2, log=True),  # a decade each way of 2e-3
        "weight_decay": Dimension("weight_decay", low=1e-3, high=0.1, log=True),
        "label_smoothing": Dimension("label_smoothing", low=0.0, high=0.2),
    }
    assert "no frozen stage" in space.fixed["freeze_epochs"]
    assert set(space.fixed) >= {"lr1", "layer_decay", "model"}
    assert space.baseline == {"lr2": 2e-3, "weight_decay": 0.01, "label_smoothing": 0.1}


def test_the_scratch_space_moves_along_the_nets_family(monkeypatch: pytest.MonkeyPatch) -> None:
    from comp.models import nets

    cfg = make_config({"pretrained": "false"})
    resolved, recipe = resolve(cfg, weights="random", device="cpu")
    family = ("airnet_xs", resolved.model, "airnet_m")
    monkeypatch.setattr(nets, "FAMILIES", {resolved.model: family}, raising=False)
    space = recipe_space(cfg, resolved, recipe)
    assert Dimension("model", choices=family) in space.dimensions
    assert space.baseline["model"] == resolved.model
    monkeypatch.delattr(nets, "FAMILIES")  # a model factory without families
    assert "model" in recipe_space(cfg, resolved, recipe).fixed
    # A model you chose stays yours.
    cfg = make_config({"pretrained": "false", "model": resolved.model})
    monkeypatch.setattr(nets, "FAMILIES", {resolved.model: family}, raising=False)
    mine = recipe_space(cfg, *resolve(cfg, weights="random", device="cpu"))
    assert "yours" in mine.fixed["model"]


def test_a_finetune_space_searches_the_frozen_stage() -> None:
    cfg = make_config({"recipe": "finetune"})
    resolved, recipe = resolve(cfg, weights="timm hub", device="cpu")
    space = recipe_space(cfg, resolved, recipe, families={})
    dims = {d.key: d for d in space.dimensions}
    assert set(dims) == {"freeze_epochs", "lr2", "layer_decay"}
    assert dims["freeze_epochs"] == Dimension("freeze_epochs", low=0, high=1)  # of 5 epochs
    assert dims["lr2"] == Dimension("lr2", low=5e-6, high=5e-4, log=True)
    assert space.baseline == {"freeze_epochs": 1, "lr2": 5e-5, "layer_decay": 0.75}
    assert {"weight_decay", "label_smoothing", "lr1"} <= set(space.fixed)


def test_keys_you_set_override_the_space() -> None:
    _, space = scratch(tune_lr2="1e-4..1e-3", tune_freeze_epochs="0..2", label_smoothing=0.05)
    dims = {d.key: d for d in space.dimensions}
    # Your ranges are searched as you set them, even a frozen stage from scratch...
    assert dims["lr2"] == Dimension("lr2", low=1e-4, high=1e-3, log=True)
    assert dims["freeze_epochs"] == Dimension("freeze_epochs", low=0, high=2)
    assert space.sources["lr2"] == space.sources["freeze_epochs"] == "yours"
    # ... a training key you set stays yours, and a null tune_* key is not searched.
    assert "label_smoothing" not in dims and "yours" in space.fixed["label_smoothing"]
    _, space = scratch(tune_weight_decay=None)
    assert "weight_decay" not in {d.key for d in space.dimensions} | set(space.fixed)
    # Trial 0 keeps the recipe's values where your ranges hold them (2e-3 is outside yours).
    _, space = scratch(tune_lr2="1e-4..1e-3", tune_freeze_epochs="0..2")
    assert space.baseline["freeze_epochs"] == 0 and "lr2" not in space.baseline
    assert Space.from_attrs(json.loads(json.dumps(space.to_attrs()))) == space


def test_the_first_trial_is_the_recipe(auto_ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from comp.data.competition import load_competition
    from comp.train.run import resolve_run_config

    seen = fake_train(monkeypatch)
    code, out = comp(auto_ws, "tune", "--trials", "3", "--pruner", "none")
    assert code == 0, out
    # The space, a line per key, before the first trial.
    assert out.index("space (scratch recipe):") < out.index("trial 0:")
    assert "\n  lr2 " in out
    assert re.search(r"\n  freeze_epochs +0, not searched \(no frozen stage", out)
    study = load_study(f"sqlite:///{auto_ws / 'tune' / 'comp.db'}", "comp")
    assert study.user_attrs["recipe"] == "scratch"
    space = Space.from_attrs(study.user_attrs)
    assert space is not None and {d.key for d in space.dimensions} == {
        "lr2",
        "weight_decay",
        "label_smoothing",
    }
    first = study.trials[0]
    assert first.user_attrs["baseline"] and first.params == space.baseline
    # Trial 0 trains what `comp train` would: the same config once the recipe is resolved.
    cfg = load_config(auto_ws, {"tune_pruner": "none"})

    def resolved(c: Config) -> dict[str, Any]:
        comp_ = load_competition(auto_ws, c)
        out = resolve_run_config(auto_ws, c, comp=comp_, device=torch.device("cpu"))
        return to_dict(out[0])

    assert resolved(seen[0]) == resolved(cfg)
    assert resolved(seen[0])["lr2"] == first.params["lr2"] == 2e-3
    # A scratch study never proposes a frozen stage: every trial resolves to none.
    assert all(resolved(c)["freeze_epochs"] == 0 for c in seen)
    assert all("freeze_epochs" not in t.params for t in study.trials)


def test_a_finetune_study_proposes_a_frozen_stage(
    auto_ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = fake_train(monkeypatch)
    code, out = comp(auto_ws, "tune", "--trials", "4", "--recipe", "finetune", "--epochs", "6")
    assert code == 0, out
    assert "space (finetune recipe):" in out and re.search(r"\n  freeze_epochs +0\.\.2 ", out)
    study = load_study(f"sqlite:///{auto_ws / 'tune' / 'comp.db'}", "comp")
    assert study.trials[0].params["freeze_epochs"] == 1  # the recipe's
    assert all(0 <= t.params["freeze_epochs"] <= 2 for t in study.trials)
    assert {"lr2", "layer_decay"} <= set(study.trials[0].params)
    assert all(c.recipe == "finetune" for c in seen)


def test_a_resumed_study_searches_the_space_it_began_with(
    auto_ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_train(monkeypatch)
    assert comp(auto_ws, "tune", "--trials", "2")[0] == 0
    code, out = comp(auto_ws, "tune", "--trials", "3", "--set", "tune_lr2=1e-6..1e-5")
    assert code == 0, out
    assert "searches the space it began with, not your tune_lr2" in out
    study = load_study(f"sqlite:///{auto_ws / 'tune' / 'comp.db'}", "comp")
    assert len(study.trials) == 3 and study.trials[2].params["lr2"] >= 2e-4


def test_a_study_under_a_time_limit_starts_no_trial_past_it(
    auto_ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = fake_train(monkeypatch, seconds=0.7)
    start = datetime.now()
    code, out = comp(auto_ws, "tune", "--trials", "50", "--time-limit", "5s", "--pruner", "none")
    assert code == 0, out
    assert "time limit 5s:" in out and "no more trials start" in out
    study = load_study(f"sqlite:///{auto_ws / 'tune' / 'comp.db'}", "comp")
    trials = study.get_trials(states=DONE)
    assert 2 <= len(trials) == len(seen) < 50
    # Every trial started, and ended, within the limit (the last one measured to fit).
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    assert len(ends) == len(trials) and max(ends) <= start + timedelta(seconds=5.5)


def test_a_trial_time_limit_sizes_each_trial_and_the_study(
    auto_ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = fake_train(monkeypatch)
    args = ("tune", "--trials", "2", "--pruner", "none", "--trial-time-limit", "5m")
    assert comp(auto_ws, *args)[0] == 0
    assert [c.time_limit for c in seen] == ["5m", "5m"]
    # Before any trial is measured, a trial takes its time limit: none fits in 2 minutes.
    code, out = comp(auto_ws, *args, "--study", "short", "--time-limit", "2m")
    assert code == 0, out
    assert "a trial takes about 300s; no more trials start" in out and len(seen) == 2


def test_show_compares_the_best_trial_with_trial_0(
    auto_ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def score(cfg: Config, k: int) -> float:
        """Climbs with lr2 (trial 0 leaves it to the recipe: 2e-3), a little lower on fold 1."""
        return min(1.0, 100 * (2e-3 if is_auto(cfg.lr2) else cfg.lr2)) - 0.01 * k

    fake_train(monkeypatch, score=score)
    code, out = comp(auto_ws, "tune", "--trials", "4", "--folds", "0,1", "--pruner", "none")
    assert code == 0, out
    code, out = comp(auto_ws, "tune", "--show", "--folds", "0,1")
    assert code == 0, out
    assert "recipe: scratch" in out and "space (scratch recipe):" in out
    assert "default: trial 0, macro-F1 0.1950 (per fold 0: 0.2000, 1: 0.1900)" in out
    assert "best: trial" in out, out
    study = load_study(f"sqlite:///{auto_ws / 'tune' / 'comp.db'}", "comp")
    if study.best_trial.number != 0:
        assert "best against trial 0: mean gain per fold +" in out
        # Both folds gain alike: no spread, so the gain stands out of it.
        assert "a gain beyond the folds' spread" in out


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
    study = optimize(ws, cfg, study_name="oom", storage=f"sqlite:///{ws / 'oom.db'}", trials=6)
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
        # Kill a trial once it has drawn all its parameters (it is training), not while it
        # is still drawing them: a retry is judged on the parameters it had.
        running = [
            t
            for t in trials
            if t.state == optuna.trial.TrialState.RUNNING
            and done
            and set(t.params) == set(done[0].params)
        ]
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
