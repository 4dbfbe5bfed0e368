"""Studies that travel to Kaggle kernels: seeds split the trials, a kernel's trials come home
once, and a trial its session cut comes home failed and is retried by the next push."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from comp.config import make_config
from comp.errors import ConfigError, DataError
from comp.kernels.pull import tune_progress
from comp.tune import merge
from comp.tune.study import Dimension, Space, load_study, optimize, progress_line
from tests.conftest import Said
from tests.tune.conftest import fake_train, scratch

COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL


def run_kernel(root: Path, seed_file: Path, *, trials: int, cut: Space | None = None) -> None:
    """What a tuning kernel does with its seed (training faked); with ``cut`` (the space),
    the session then ends in the middle of one more trial, which stays running in the file."""
    cfg = make_config({"pretrained": "false", "tune_pruner": "none", "n_splits": 2})
    url = f"sqlite:///{seed_file}"
    optimize(root, cfg, study_name="s", storage=url, trials=trials)
    if cut is not None:
        trial = optuna.load_study(study_name="s", storage=url).ask()
        for d in cut.dimensions:
            d.suggest(trial, cfg=cfg)
        trial.report(0.25, 1)


def test_seeds_split_the_trials_and_queue_trial_0_once(tmp_path: Path, said: Said) -> None:
    seeds = merge.plan_seeds(None, trials=5, kernels=2)
    assert [(s.share, s.trials, s.baseline) for s in seeds] == [(3, 3, True), (2, 2, False)]
    assert len(merge.plan_seeds(None, trials=1, kernels=3)) == 1
    assert list(said) == ["1 trials left to run: 1 kernel(s), not 3"]
    _, space = scratch()
    path = tmp_path / "seed.db"
    merge.write_seed(path, study_name="s", local=None, space=space, seed=seeds[0], push="p")
    study = load_study(f"sqlite:///{path}", "s")
    assert study.user_attrs[merge.KERNEL_ATTR] == {
        "push": "p",
        "kernel": 0,
        "seeded": 0,
        "trials": 3,
    }
    assert study.user_attrs["recipe"] == "scratch"
    (first,) = study.trials
    assert first.state == optuna.trial.TrialState.WAITING and first.user_attrs["baseline"]
    with pytest.raises(ConfigError, match="already has 3 finished trials"):
        local = optuna.create_study(direction="maximize", study_name="s")
        for v in (0.1, 0.2, 0.3):
            local.add_trial(optuna.trial.create_trial(value=v))
        merge.plan_seeds(local, trials=3, kernels=2)


def test_a_cut_trial_comes_home_failed_and_the_next_push_retries_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_train(monkeypatch, score=lambda cfg, k: 0.5 if cfg.lr2 == "auto" else 0.6)
    root = tmp_path / "ws"
    (root / "tune").mkdir(parents=True)
    _, space = scratch()
    (seed,) = merge.plan_seeds(None, trials=3, kernels=1)
    first = tmp_path / "k0.db"
    merge.write_seed(first, study_name="s", local=None, space=space, seed=seed, push="p1")
    run_kernel(root, first, trials=2, cut=space)

    facts = merge.merge_kernel_study(root, "s", first, source="me/k0")
    assert facts["added"] == {"complete": 2, "fail": 1}
    local = merge.open_local(root, "s")
    assert local is not None and Space.from_attrs(local.user_attrs) == space
    done = [t for t in local.trials if t.state == COMPLETE]
    assert len(done) == 2 and all(t.intermediate_values for t in done)
    (cut,) = [t for t in local.trials if t.state == FAIL]
    assert cut.system_attrs[merge.CUT] and cut.intermediate_values == {1: 0.25}
    assert cut.system_attrs[merge.MARK] == "p1/0/2" and cut.system_attrs[merge.SOURCE] == "me/k0"
    # Pulled again: nothing new.
    again = merge.merge_kernel_study(root, "s", first, source="me/k0")
    assert again["added"] == {} and again["already"] == 3
    assert len(merge.open_local(root, "s").trials) == 3  # type: ignore[union-attr]

    # The next push: one trial left, the cut one, with its parameters.
    (seed,) = merge.plan_seeds(local, trials=3, kernels=2)
    assert seed.retries == (cut.number,) and not seed.baseline and seed.trials == 3
    second = tmp_path / "k1.db"
    merge.write_seed(second, study_name="s", local=local, space=space, seed=seed, push="p2")
    run_kernel(root, second, trials=seed.trials)
    facts = merge.merge_kernel_study(root, "s", second, source="me/k1")
    assert facts["added"] == {"complete": 1}
    local = merge.open_local(root, "s")
    assert local is not None
    retry = local.trials[-1]
    assert retry.state == COMPLETE and retry.params == cut.params
    assert retry.system_attrs["failed_trial"] == cut.number
    assert retry.system_attrs["retry_history"] == [cut.number]
    assert merge.cut_trials(local) == []
    assert [t.number for t in local.trials] == [0, 1, 2, 3]
    line = progress_line(local, trials=3)
    assert (
        line
        == f"progress: 3/3 trials finished, best macro-F1 0.6000 (trial {local.best_trial.number})"
    )
    assert tune_progress(f'{{"data": "{line}\\n"}}') == line.removeprefix("progress: ")


def test_a_kernel_that_searched_another_space_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_train(monkeypatch)
    root = tmp_path / "ws"
    (root / "tune").mkdir(parents=True)
    _, space = scratch()
    (seed,) = merge.plan_seeds(None, trials=1, kernels=1)
    for name, dims in (
        ("a.db", space.dimensions),
        ("b.db", (Dimension("lr2", low=1e-4, high=1e-2, log=True),)),
    ):
        other = Space(**{**space.__dict__, "dimensions": dims})
        merge.write_seed(
            tmp_path / name, study_name="s", local=None, space=other, seed=seed, push=name
        )
        run_kernel(root, tmp_path / name, trials=1)
    merge.merge_kernel_study(root, "s", tmp_path / "a.db", source="me/a")
    with pytest.raises(DataError, match=r"searched another space than tune/s\.db"):
        merge.merge_kernel_study(root, "s", tmp_path / "b.db", source="me/b")
    assert len(merge.open_local(root, "s").trials) == 1  # type: ignore[union-attr]
