"""DistributedDataParallel through torchrun: 2 CPU processes with gloo, as on a 2-GPU machine."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.test_train import with_folds

pytestmark = pytest.mark.slow


def comp_train(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "comp", "-w", str(root), "train", "--fold", "0", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_two_processes_make_the_run_one_process_makes(workspace: Callable[..., Path]) -> None:
    root, _ = with_folds(
        workspace(epochs=2, freeze_epochs=1, aug="none", batch_size=7, cache_features=False)
    )
    single = comp_train(root, "--name", "single")
    assert single.returncode == 0, single.stderr[-2000:]
    # No --name: every process must agree on the one the first process makes up.
    double = comp_train(root, "--devices", "2", "--master-port", "29517")
    assert double.returncode == 0, double.stderr[-3000:]
    assert "2 processes" in double.stdout

    a = root / "runs" / "single"
    (b,) = (r for r in (root / "runs").iterdir() if r.name != "single")
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert (a / "config.yaml").read_text() == (b / "config.yaml").read_text()

    ma, mb = (pd.read_csv(r / "fold0" / "metrics.csv") for r in (a, b))
    cols = ["train_loss", "train_acc", "valid_loss", "valid_acc", "valid_macro_f1"]
    # Stage 1 (BatchNorm frozen): the global batch's gradient, so the same numbers.
    assert np.allclose(ma[cols].iloc[:1], mb[cols].iloc[:1], atol=1e-4)
    # Stage 2: on CPU each process normalises its half of the batch (SyncBatchNorm is
    # GPU-only), so the numbers are close, not equal.
    assert abs(ma["train_loss"].iloc[1] - mb["train_loss"].iloc[1]) < 0.25

    oa, ob = (pd.read_csv(r / "oof.csv") for r in (a, b))
    assert oa["Id"].tolist() == ob["Id"].tolist()
    assert np.allclose(ob.iloc[:, 3:].sum(1), 1, atol=1e-4)
