"""Trackers: what comp train, tune, blend and submit log to MLflow, TensorBoard and W&B, read
back through each library; a missing extra; quiet logs when output is not a terminal."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from comp.cli import cli
from comp.errors import ConfigError
from comp.track.trackers import merge_pulled, mlflow_uri, open_run


def comp(root: Path, *args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(cli, ["-w", str(root), *args])
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def mlflow_runs(root: Path) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri(root))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {r.info.run_name: r for r in runs}


@pytest.fixture
def trained(workspace: Callable[..., Path]) -> Path:
    root = workspace(epochs=2, freeze_epochs=0, tracker="mlflow,tensorboard")
    comp(root, "folds", "--groups", "none")
    comp(root, "train", "--name", "a")
    return root


def test_mlflow_holds_params_metrics_per_fold_and_epoch_artifacts_and_scores(trained: Path) -> None:
    from mlflow.tracking import MlflowClient

    root = trained
    comp(root, "train", "--name", "b", "--lr2", "0.002")
    comp(root, "blend", "a", "b", "--name", "ab")
    comp(root, "predict", "a")
    comp(root, "submit", str(root / "submissions" / "a.csv"), "--local", "-m", "a")
    client = MlflowClient(tracking_uri=mlflow_uri(root))
    runs = mlflow_runs(root)
    assert {"a", "b", "ab"} <= set(runs)
    a = runs["a"]
    assert a.data.params["model"] == "resnet10t" and a.data.params["epochs"] == "2"
    for k in (0, 1):
        history = client.get_metric_history(a.info.run_id, f"fold{k}/valid_macro_f1")
        assert [m.step for m in history] == [1, 2]
    cv = json.loads((root / "runs" / "a" / "cv.json").read_text())
    assert a.data.metrics["cv_macro_f1"] == pytest.approx(cv["cv_macro_f1"])
    # Scores arrive later, on the same tracker run.
    assert {"public_macro_f1", "private_macro_f1"} <= set(a.data.metrics)
    assert {f.path for f in client.list_artifacts(a.info.run_id)} >= {
        "cv.json",
        "curves.png",
        "config.yaml",
    }
    assert a.data.tags["folds_grouping"] == "plain stratified folds"
    assert runs["ab"].data.tags["parents"] == "a,b"
    assert (
        json.loads((root / "runs" / "a" / "trackers.json").read_text())["mlflow"] == a.info.run_id
    )


def test_tensorboard_event_files_read_back(trained: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained / "tensorboard" / "a"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "fold0/valid_macro_f1" in scalars and "cv_macro_f1" in scalars
    assert [e.step for e in events.Scalars("fold1/train_loss")] == [1, 2]
    assert "curves" in events.Tags()["images"]


def test_tune_trials_are_nested_runs(workspace: Callable[..., Path]) -> None:
    root = workspace(epochs=1, freeze_epochs=0, tracker="mlflow", tune_folds="0")
    comp(root, "folds", "--groups", "none")
    comp(root, "tune", "--trials", "2", "--study", "s")
    runs = mlflow_runs(root)
    parent = runs["tune s"]
    children = [
        r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    assert len(children) == 2
    assert all("cv_macro_f1" in r.data.metrics for r in children)
    assert not (root / "runs" / ".tune").exists() or not any(
        (root / "runs" / ".tune").rglob("trackers.json")
    )


def test_wandb_offline_needs_no_network(
    workspace: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    # Anything that tried the network would go to a port where nothing listens.
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(key, "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    root = workspace(epochs=1, freeze_epochs=0, tracker="wandb")
    comp(root, "folds", "--groups", "none")
    start = time.perf_counter()
    comp(root, "train", "--name", "w")
    assert time.perf_counter() - start < 120
    (folder,) = (root / "wandb").glob("offline-run-*")
    assert any(folder.glob("run-*.wandb"))
    ids = json.loads((root / "runs" / "w" / "trackers.json").read_text())
    assert folder.name.endswith(ids["wandb"])


def test_a_missing_extra_says_how_to_install_it(
    workspace: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'comp\[mlflow\]'"):
        open_run(Path("."), "mlflow", run="r", experiment="e")
    root = workspace(epochs=1, freeze_epochs=0)
    comp(root, "folds", "--groups", "none")
    out = comp(root, "train", "--name", "x", "--tracker", "mlflow", ok=False)
    assert out.strip().splitlines()[-1] == (
        "Error: tracker mlflow needs the mlflow package: pip install 'comp[mlflow]'"
    )
    assert not (root / "runs" / "x").exists()
    with pytest.raises(ConfigError, match="tracker 'neptune' must be none"):
        open_run(Path("."), "neptune", run="r", experiment="e")


def test_a_redirected_train_prints_no_bar_fragments(workspace: Callable[..., Path]) -> None:
    root = workspace(epochs=2, freeze_epochs=1)
    comp(root, "folds", "--groups", "none")
    out = comp(root, "train", "--name", "r")  # CliRunner's output is not a terminal
    assert "\r" not in out and "it/s" not in out and "batch/s" not in out
    assert out.count("epoch  1/2") == 2  # one line per epoch and fold
    quiet = comp(root, "-q", "train", "--name", "r2")
    assert "epoch  1/2" not in quiet and "CV" in quiet


def test_pull_merges_a_kernels_tracker_folder(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    # What a kernel leaves in runs/<run>/tracker/: its own MLflow store and event files.
    kernel = tmp_path / "kernel-tracker"
    monkeypatch.setenv("COMP_TRACKER_DIR", str(kernel))
    remote = open_run(trained, "mlflow,tensorboard", run="k", experiment="kaggle")
    remote.params({"model": "resnet10t"})
    remote.metrics({"fold0/valid_macro_f1": 0.5}, step=1)
    remote.metrics({"fold0/valid_macro_f1": 0.7}, step=2)
    remote.close()
    monkeypatch.delenv("COMP_TRACKER_DIR")
    run_dir = trained / "runs" / "k"
    run_dir.mkdir()
    (run_dir / "cv.json").write_text("{}")
    merged = merge_pulled(trained, "mlflow,tensorboard", kernel, run_dir=run_dir, experiment="ws")
    assert merged == ["mlflow", "tensorboard"]
    local = mlflow_runs(trained)["k"]
    client = MlflowClient(tracking_uri=mlflow_uri(trained))
    history = client.get_metric_history(local.info.run_id, "fold0/valid_macro_f1")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.7)]
    assert local.data.tags["pulled_from"] == "kaggle kernel"
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"] == local.info.run_id
    assert any((trained / "tensorboard" / "k").iterdir())
