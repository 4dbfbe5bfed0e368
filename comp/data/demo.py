"""The built-in demo competition: scikit-learn's handwritten digits, shipped as Kaggle ships data.

Reads ``sklearn.datasets.load_digits`` (1,797 real 8x8 scans, installed with
scikit-learn, so nothing is downloaded). Writes a ready workspace: ``comp.yaml``,
``data/train/*.png`` and ``data/test/*.png`` (RGB, upscaled, random-UUID Ids),
``data/train_labels.csv``, ``data/sample_submission.csv``, and a held-back
``solution.csv`` (Id,label,Usage) for local public/private scoring.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from comp.config import CONFIG_FILE, make_config, write_workspace_config

# Sized to run demo -> folds -> train -> predict -> submit in a few minutes on 2 CPU cores.
DEMO_CONFIG = {
    "train_csv": "data/train_labels.csv",
    "train_dir": "data/train",
    "test_dir": "data/test",
    "sample_submission": "data/sample_submission.csv",
    "solution": "solution.csv",
    "n_splits": 5,
    "model": "resnet10t",
    # No hub here; a random init trains well on digits at this size.
    "pretrained": "false",
    "img_size": 32,
    # Digits are not mirror-symmetric, so the preset without flips.
    "aug": "shift",
    "epochs": 10,
    # Random init: there is no pretrained backbone for a frozen stage to protect.
    "freeze_epochs": 0,
    "lr1": 3e-3,
    "lr2": 3e-3,
    "patience": 3,
    "batch_size": 64,
}

WORKSPACE_DIRS = ("folds", "submissions", "kernels", "runs")


def _render(digit: np.ndarray, size: int) -> Image.Image:
    # Dark ink on white paper, as scans look; bilinear upscaling keeps strokes smooth.
    gray = (255 - digit * (255 / 16)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").resize((size, size), Image.Resampling.BILINEAR).convert("RGB")


def write_demo(
    target: Path,
    *,
    size: int = 32,
    test_fraction: float = 0.2,
    public_fraction: float = 0.3,
    seed: int = 0,
    force: bool = False,
) -> dict[str, int]:
    """Write the demo workspace into ``target``; refuse a non-empty folder unless ``force``."""
    target = Path(target)
    if target.exists() and any(target.iterdir()) and not force:
        raise FileExistsError(
            f"{target}: folder exists and is not empty (use --force to replace it)"
        )
    digits = load_digits()
    rng = np.random.default_rng(seed)
    ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(len(digits.target))]
    labels = digits.target.astype(str)
    train_i, test_i = train_test_split(
        np.arange(len(ids)), test_size=test_fraction, stratify=labels, random_state=seed
    )

    # Build beside the target and swap it in, so a failure never leaves half a workspace.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for split, idx in (("train", train_i), ("test", test_i)):
            folder = tmp / "data" / split
            folder.mkdir(parents=True)
            for i in idx:
                _render(digits.images[i], size).save(folder / f"{ids[i]}.png")
        pd.DataFrame({"Id": [ids[i] for i in train_i], "label": labels[train_i]}).to_csv(
            tmp / "data" / "train_labels.csv", index=False
        )
        test_ids = [ids[i] for i in test_i]
        pd.DataFrame({"Id": test_ids, "label": labels[train_i][0]}).to_csv(
            tmp / "data" / "sample_submission.csv", index=False
        )
        usage = np.where(rng.random(len(test_i)) < public_fraction, "Public", "Private")
        pd.DataFrame({"Id": test_ids, "label": labels[test_i], "Usage": usage}).to_csv(
            tmp / "solution.csv", index=False
        )
        for d in WORKSPACE_DIRS:
            (tmp / d).mkdir()
        write_workspace_config(
            tmp / CONFIG_FILE,
            make_config({**DEMO_CONFIG, "img_size": size}),
            header="comp demo: scikit-learn's handwritten digits as a Kaggle competition.\n"
            "Every key can be overridden on the command line: --epochs 3 or --set epochs=3.",
        )
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "train": len(train_i),
        "test": len(test_i),
        "classes": len(set(labels)),
        "public": int((usage == "Public").sum()),
    }
