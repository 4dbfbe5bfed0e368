"""Helpers of the training tests: two runs' fold 0 compared, and an interrupt of a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

COMPARED = ["epoch", "stage", "lr", "train_loss", "train_acc", "valid_loss", "valid_macro_f1"]


def same_run(a: Path, b: Path) -> None:
    """Runs ``a`` and ``b`` ended alike: fold 0's curves, the OOF, and no resume state left."""
    ma, mb = (pd.read_csv(r / "fold0" / "metrics.csv") for r in (a, b))
    assert np.allclose(ma[COMPARED].to_numpy(), mb[COMPARED].to_numpy(), atol=1e-5)
    oa, ob = (pd.read_csv(r / "oof.csv") for r in (a, b))
    assert np.allclose(oa.iloc[:, 3:].to_numpy(), ob.iloc[:, 3:].to_numpy(), atol=1e-5)
    assert not (b / "fold0" / "last.pt").exists(), "a finished fold keeps no resume state"


class Interrupt(Exception):
    """Raised from a run's callback to stop it mid-fold, as a kill would."""
