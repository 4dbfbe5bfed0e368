"""Kill a training run, resume it, and end exactly where an uninterrupted run ends."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from comp.train.run import train
from tests.conftest import Said, with_folds
from tests.train.conftest import Interrupt, same_run


@pytest.mark.parametrize("after", [1, 3], ids=["mid-stage-1", "mid-stage-2"])
def test_an_interrupted_fold_resumes_to_the_same_end(
    workspace: Callable[..., Path], after: int, said: Said
) -> None:
    root, cfg = with_folds(
        workspace(epochs=4, freeze_epochs=2, aug="light", feature_views=2, checkpoint_seconds=0)
    )
    train(root, cfg, name="whole", folds=[0])

    def stop(fold: int, epoch: int, f1: float) -> None:
        if epoch == after:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(root, cfg, name="cut", folds=[0], on_epoch=stop)
    assert (root / "runs" / "cut" / "fold0" / "last.pt").exists()
    train(root, cfg, name="cut", folds=[0], resume=True)
    assert f"fold 0: resuming after epoch {after}" in said
    same_run(root / "runs" / "whole", root / "runs" / "cut")
    # Resuming a finished run trains nothing.
    said.clear()
    train(root, cfg, name="cut", folds=[0], resume=True)
    assert "fold 0: already trained" in said


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path: Path) -> None:
    """The real thing: SIGKILL a `comp train` process while it is inside an epoch."""
    from comp.data.demo import write_demo

    root = tmp_path / "ws"
    write_demo(root)
    flags = ["--model", "resnet10t", "--pretrained", "false", "--img-size", "16"]
    flags += ["--epochs", "4", "--freeze-epochs", "1", "--batch-size", "64", "--aug", "light"]
    flags += ["--set", "checkpoint_seconds=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}

    def comp(*args: str) -> list[str]:
        return [sys.executable, "-m", "comp", "-w", str(root), *args]

    subprocess.run(comp("folds"), check=True, capture_output=True, env=env)
    subprocess.run(
        comp("train", "--fold", "0", "--name", "whole", *flags),
        check=True,
        capture_output=True,
        env=env,
    )
    metrics = root / "runs" / "cut" / "fold0" / "metrics.csv"
    proc = subprocess.Popen(
        comp("train", "--fold", "0", "--name", "cut", *flags),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    last = metrics.parent / "last.pt"

    def after_epoch_2() -> bool:
        # metrics.csv shows epoch 2, and the resume state written after it is in place.
        return (
            metrics.exists()
            and len(pd.read_csv(metrics)) >= 2
            and last.exists()
            and last.stat().st_mtime_ns >= metrics.stat().st_mtime_ns
        )

    deadline = time.monotonic() + 300
    while not after_epoch_2():
        assert proc.poll() is None and time.monotonic() < deadline, "training ended early"
        time.sleep(0.02)
    # An epoch here takes seconds, so a moment later the process is inside epoch 3.
    time.sleep(0.3)
    assert proc.poll() is None, "the kill must land mid-run"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(pd.read_csv(metrics)) == 2, "killed inside epoch 3"

    resumed = subprocess.run(
        comp("train", "--fold", "0", "--name", "cut", "--resume"),
        capture_output=True,
        text=True,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after epoch 2" in resumed.stdout
    same_run(root / "runs" / "whole", root / "runs" / "cut")
