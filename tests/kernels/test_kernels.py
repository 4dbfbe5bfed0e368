"""Kernel bundles, pushed to the stand-in, run as Kaggle would run them, and pulled back as runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from comp.cli import cli
from comp.config import load_config
from comp.errors import ConfigError, DataError
from comp.kernels.bundle import INFO
from comp.kernels.output import import_output
from comp.kernels.push import build_bundles, data_layout, kernel_groups, slugify
from comp.workspace.init import init_workspace
from tests.conftest import SLUG, TINY, make_kaggle
from tests.kaggle_standin import GOOD_TOKEN, KaggleStandIn


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    init_workspace(
        root, make_kaggle(tmp_path / "kaggle-side"), overrides={**TINY, "competition": SLUG}
    )
    assert CliRunner().invoke(cli, ["-w", str(root), "folds"]).exit_code == 0
    return root


def comp(ws: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["-w", str(ws), *args])
    return result.exit_code, result.output


def test_slugs_and_fold_groups() -> None:
    assert slugify("comp Effb0_v2 fold 3") == "comp-effb0-v2-fold-3"
    assert kernel_groups(5, None, None) == [[0, 1, 2, 3, 4]]
    assert kernel_groups(5, None, 2) == [[0, 1], [2, 3], [4]]
    assert kernel_groups(5, [1, 3], 1) == [[1], [3]]
    with pytest.raises(ConfigError, match="--fold 7"):
        kernel_groups(5, [7], None)


def test_data_paths_become_relative_to_the_competition_folder(ws: Path) -> None:
    layout, carried = data_layout(ws, load_config(ws))
    assert carried == {}
    assert layout == {
        "train_csv": "train_labels.csv",
        "train_dir": "train",
        "test_dir": "test",
        "sample_submission": "sample_submission.csv",
    }


def test_dry_run_writes_a_bundle_without_credentials(
    ws: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAGGLE_API_TOKEN", GOOD_TOKEN)
    code, out = comp(
        ws, "kernel", "push", "--name", "try1", "--owner", "tester", "--dry-run", "--epochs", "1"
    )
    assert code == 0, out
    bundle = ws / "kernels" / "try1"
    meta = json.loads((bundle / "kernel-metadata.json").read_text())
    assert meta["id"] == "tester/comp-try1" and meta["code_file"] == "comp-try1.py"
    assert slugify(meta["title"]) == "comp-try1"
    assert meta["language"] == "python" and meta["kernel_type"] == "script"
    assert meta["competition_sources"] == [SLUG] and meta["enable_gpu"] and meta["is_private"]
    script = (bundle / "comp-try1.py").read_text()
    compile(script, "comp-try1.py", "exec")
    assert "'epochs': 1" in script
    for f in bundle.rglob("*"):
        assert GOOD_TOKEN not in f.read_text(errors="replace")


def test_a_kernel_carries_its_time_limit_and_resolves_its_recipe_on_kaggle(ws: Path) -> None:
    code, out = comp(
        ws, "kernel", "push", "--name", "timed", "--owner", "t", "--dry-run", "--time-limit", "2h"
    )
    assert code == 0, out
    script = (ws / "kernels" / "timed" / "comp-timed.py").read_text()
    # The recipe is resolved where the kernel runs (its GPU, its weights), sized to 2 hours.
    assert "'time_limit': '2h'" in script and "'recipe': 'auto'" in script


def test_fan_out_writes_one_bundle_per_fold(ws: Path) -> None:
    bundles = build_bundles(
        ws, load_config(ws), name="fan", owner="me", competition=SLUG, folds_per_kernel=1
    )
    assert [b.name for b in bundles] == ["fold0", "fold1"]
    ids = [json.loads((b / "kernel-metadata.json").read_text())["id"] for b in bundles]
    assert ids == ["me/comp-fan-fold-0", "me/comp-fan-fold-1"]


def test_imagefolder_tables_travel_with_the_kernel(tmp_path: Path, imagefolder: Path) -> None:
    """comp init wrote the labels and the hold-out into the workspace; the kernel carries them."""
    import base64
    import io
    import zipfile

    root = tmp_path / "animals-ws"
    init_workspace(root, imagefolder, overrides=TINY)
    assert comp(root, "folds")[0] == 0
    layout, _ = data_layout(root, load_config(root))
    assert layout["train_dir"] == "." and layout["train_csv"] == "carried/train_labels.csv"
    code, out = comp(
        root,
        "kernel",
        "push",
        "--name",
        "animals",
        "--owner",
        "me",
        "--dry-run",
        "--data-dataset",
        "someone/animals10",
    )
    assert code == 0, out
    bundle = root / "kernels" / "animals"
    meta = json.loads((bundle / "kernel-metadata.json").read_text())
    assert meta["dataset_sources"] == ["someone/animals10"] and meta["competition_sources"] == []
    namespace: dict[str, object] = {}
    exec((bundle / "comp-animals.py").read_text().split("# Kaggle's folders")[0], namespace)
    payload = zipfile.ZipFile(io.BytesIO(base64.b64decode("".join(namespace["PAYLOAD"]))))  # type: ignore[arg-type]
    assert {"carried/train_labels.csv", "carried/sample_submission.csv"} <= set(payload.namelist())


def test_no_data_source_is_a_clear_error(ws: Path) -> None:
    cfg = load_config(ws, {"competition": None})
    with pytest.raises(ConfigError, match="where are the data on Kaggle"):
        build_bundles(ws, cfg, name="x", owner="me", competition=None)


def test_a_failed_rebuild_keeps_the_bundle_already_there(ws: Path) -> None:
    name = "a" * 40
    (first,) = build_bundles(ws, load_config(ws), name=name, owner="me", competition=SLUG)
    before = (first / "kernel-metadata.json").read_text()
    with pytest.raises(ConfigError, match="longer than Kaggle's 50"):
        build_bundles(
            ws, load_config(ws), name=name, owner="me", competition=SLUG, folds_per_kernel=1
        )
    assert (first / "kernel-metadata.json").read_text() == before
    assert [p.name for p in (ws / "kernels").iterdir()] == [name]


def test_local_weights_need_a_code_dataset(ws: Path) -> None:
    cfg = load_config(ws, {"pretrained_file": "weights/w.pth"})
    with pytest.raises(ConfigError, match="comp kernel dataset --weights"):
        build_bundles(ws, cfg, name="w", owner="me", competition=SLUG)


def _kernel_output(tmp_path: Path, fold: int, **cfg: object) -> tuple[Path, Path]:
    """A bundle for one fold of run 'fan' and what its kernel sent home."""
    bundle, pulled = tmp_path / f"bundle{fold}", tmp_path / f"pulled{fold}"
    bundle.mkdir()
    (bundle / INFO).write_text(
        json.dumps(
            {"ref": f"tester/comp-fan-fold-{fold}", "run": "fan", "folds": [fold], "n_splits": 2}
        )
    )
    run = pulled / "runs" / "fan"
    (run / f"fold{fold}").mkdir(parents=True)
    (run / f"fold{fold}" / "oof.csv").write_text("Id,label\n")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "airnet_s", "epochs": 9, **cfg}))
    return bundle, pulled


def test_kernels_that_measured_their_machines_differently_make_one_run(tmp_path: Path) -> None:
    """Precision and a time limit's epochs are measured on each kernel's machine: the folds keep
    their own, and the run is still one run; any other difference is another run."""
    root = tmp_path / "ws"
    import_output(root, *_kernel_output(tmp_path, 0, amp="true", time_limit=600))
    facts = import_output(root, *_kernel_output(tmp_path, 1, amp="false", time_limit=600, epochs=7))
    assert facts["folds"] == ["fold1"]
    assert facts["measured"] == {"amp": ("true", "false"), "epochs": (9, 7)}
    assert yaml.safe_load((root / "runs/fan/fold1/config.yaml").read_text())["amp"] == "false"
    assert yaml.safe_load((root / "runs/fan/config.yaml").read_text())["amp"] == "true"
    with pytest.raises(DataError, match="different run"):
        import_output(
            root, *_kernel_output(tmp_path, 2, amp="true", time_limit=600, model="airnet_m")
        )
    (tmp_path / "untimed").mkdir()
    untimed = tmp_path / "untimed"
    import_output(untimed, *_kernel_output(untimed, 0))
    with pytest.raises(DataError, match="different run"):
        import_output(untimed, *_kernel_output(untimed, 1, epochs=7))


def test_push_and_status_and_a_failed_kernel(standin: KaggleStandIn, ws: Path) -> None:
    code, out = comp(ws, "kernel", "push", "--name", "k1", "--no-internet")
    assert code == 0, out
    assert "pushed tester/comp-k1 version 1: https://www.kaggle.com/code/tester/comp-k1" in out
    sent = standin.kernels["tester/comp-k1"].request
    assert sent["competitionDataSources"] == [SLUG]
    assert sent["enableGpu"] is True and sent.get("enableInternet", False) is False
    assert GOOD_TOKEN not in json.dumps(sent)
    info = json.loads((ws / "kernels" / "k1" / "comp-kernel.json").read_text())
    assert info["version"] == 1 and info["url"].endswith("comp-k1")

    code, out = comp(ws, "kernel", "pull", "k1")
    assert code == 1 and "not complete: tester/comp-k1" in out
    code, out = comp(ws, "kernel", "status", "k1", "--wait", "--interval", "0")
    assert code == 0, out
    assert "tester/comp-k1: running" in out and "tester/comp-k1: complete" in out
    # Complete, but the stand-in kernel wrote nothing: the pull says so and writes no run.
    standin.kernels["tester/comp-k1"].log = "Traceback: CUDA out of memory"
    standin.kernels["tester/comp-k1"].outputs = {"comp-k1.log": b"Traceback: CUDA out of memory"}
    code, out = comp(ws, "kernel", "pull", "k1")
    assert code == 1 and "produced no run 'k1'" in out
    assert not (ws / "runs" / "k1").exists()
    assert not list((ws / "runs").glob(".pull-*"))


def test_an_error_page_is_never_saved_as_an_output(standin: KaggleStandIn, ws: Path) -> None:
    assert comp(ws, "kernel", "push", "--name", "k3")[0] == 0
    standin.kernels["tester/comp-k3"].status = "COMPLETE"
    standin.kernels["tester/comp-k3"].polls = 5
    standin.kernels["tester/comp-k3"].outputs = {"runs/k3/config.yaml": b"model: x\n"}
    standin.fail("GET", 403)
    code, out = comp(ws, "kernel", "pull", "k3")
    assert code == 1 and "HTTP 403" in out
    assert not (ws / "runs" / "k3").exists()


def test_push_to_an_unknown_competition_is_refused(standin: KaggleStandIn, ws: Path) -> None:
    code, out = comp(ws, "kernel", "push", "--name", "k2", "--competition", "nope")
    assert code == 1
    assert "unknown or inaccessible source(s) nope" in out


def test_code_dataset_is_created_then_versioned(
    standin: KaggleStandIn, ws: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    code, out = comp(ws, "kernel", "dataset", "--weights", str(weights))
    assert code == 0, out
    assert "created tester/comp-code" in out
    code, out = comp(ws, "kernel", "dataset", "-m", "v2")
    assert code == 0, out
    assert "new version of tester/comp-code" in out
    versions = standin.datasets["tester/comp-code"]["versions"]
    assert len(versions) == 2
    assert {"comp.zip", "w.pth"} <= set(versions[0]) and "w.pth" not in versions[1]


@pytest.mark.slow
def test_dry_run_script_runs_to_completion_on_a_simulated_kaggle(ws: Path, tmp_path: Path) -> None:
    """The bundle's script, run as Kaggle runs it: /kaggle/input simulated by a folder."""
    code, out = comp(ws, "kernel", "push", "--name", "local", "--owner", "me", "--dry-run")
    assert code == 0, out
    inp, working = tmp_path / "input", tmp_path / "working"
    # Mounted the way older competitions are: train/ still zipped as train.zip.
    mount = inp / SLUG
    shutil.copytree(tmp_path / "kaggle-side", mount)
    shutil.make_archive(str(mount / "train"), "zip", mount, "train")
    shutil.rmtree(mount / "train")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(
        COMP_KAGGLE_INPUT=str(inp),
        COMP_KAGGLE_WORKING=str(working),
        COMP_KAGGLE_CODE=str(tmp_path / "code"),
        COMP_KAGGLE_TEMP=str(tmp_path / "temp"),
    )
    proc = subprocess.run(
        [sys.executable, str(ws / "kernels" / "local" / "comp-local.py")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "unzipping" in proc.stdout
    assert (working / "submission.csv").exists()
    for f in ("cv.json", "oof.csv", "test_probs.csv", "fold0/best.pt", "fold1/best.pt"):
        assert (working / "runs" / "local" / f).exists(), f
    sample = pd.read_csv(tmp_path / "kaggle-side" / "sample_submission.csv", dtype=str)
    made = pd.read_csv(working / "submission.csv", dtype=str)
    assert list(made["Id"]) == list(sample["Id"])


@pytest.mark.slow
def test_round_trip_fan_out_pull_and_predict(kaggle_machines: KaggleStandIn, ws: Path) -> None:
    """Push one kernel per fold, with comp from a code dataset; the stand-in runs each script;
    pull merges them into one run that `comp predict` uses like a local one."""
    code, out = comp(ws, "kernel", "dataset")
    assert code == 0, out
    code, out = comp(
        ws,
        "kernel",
        "push",
        "--name",
        "fan",
        "--folds-per-kernel",
        "1",
        "--code-dataset",
        "tester/comp-code",
    )
    assert code == 0, out
    assert len(kaggle_machines.kernels) == 2
    code, out = comp(ws, "kernel", "pull", "fan", "--wait", "--interval", "0.5", "--timeout", "300")
    failures = {r: k.failure for r, k in kaggle_machines.kernels.items() if k.failure}
    assert code == 0, (out, failures)
    assert "tester/comp-fan-fold-0: fold0 -> runs/fan" in out
    run = ws / "runs" / "fan"
    cv = json.loads((run / "cv.json").read_text())
    assert cv["complete"] and cv["folds_trained"] == 2
    assert (run / "logs" / "comp-fan-fold-1.log").exists()
    assert (run / "fold0" / "test_probs_folds0.csv").exists()
    assert "the kernels' submission: submissions/fan.csv" in out
    from_kernels = pd.read_csv(run / "test_probs.csv").set_index("Id")
    code, out = comp(ws, "predict", "fan")
    assert code == 0, out
    here = pd.read_csv(run / "test_probs.csv").set_index("Id")
    pd.testing.assert_frame_equal(from_kernels, here.loc[from_kernels.index], atol=1e-5)
    code, out = comp(ws, "submit", str(ws / "submissions" / "fan.csv"), "--local")
    assert code == 0, out
