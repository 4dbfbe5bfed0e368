"""The recipe by measurement: a run that found weights trains its first fold both ways."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import timm
import torch
import yaml

from comp.config import load_config
from comp.train import probe
from tests.conftest import Said, with_folds


def _weights(root: Path) -> str:
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet10t").state_dict(), root / "r10.pth")
    return "r10.pth"


def test_weights_found_train_the_first_fold_both_ways_and_keep_the_better(
    workspace: Callable[..., Path], said: Said
) -> None:
    root = workspace(pretrained="auto", epochs=2, freeze_epochs=0)
    root, cfg = with_folds(root, pretrained_file=_weights(root))
    summary = probe.train(root, cfg, name="p")
    run = root / "runs" / "p"
    facts = json.loads((run / probe.PROBE_FILE).read_text())
    chosen, other = facts["chosen"], "scratch" if facts["chosen"] == "finetune" else "finetune"
    assert facts[chosen]["macro_f1"] >= facts[other]["macro_f1"]
    assert yaml.safe_load((run / "config.yaml").read_text())["recipe"] == chosen
    # The winning fold is the run's own (not trained again); the other kept beside it.
    metrics = pd.read_csv(run / "fold0" / "metrics.csv")
    assert metrics["valid_macro_f1"].max() == facts[chosen]["macro_f1"]
    assert (run / "probe" / other / "fold0" / "best.pt").exists()
    assert not (run / "probe" / chosen).exists()
    assert summary["complete"] and (run / "fold1" / "best.pt").exists()
    # Another fold of the same run later (folds trained apart): under the recipe it chose.
    (run / "fold1" / "oof.csv").unlink()
    probe.train(root, cfg, name="p", folds=[1])
    assert (run / "fold1" / "oof.csv").exists() and not (run / "probe" / chosen).exists()
    assert any(f"recipe probe on fold 0: {chosen}" in line for line in said)
    # The scratch arm is comp's own net for small images, not the weights' model from random init.
    scratch = yaml.safe_load(
        ((run if chosen == "scratch" else run / "probe" / "scratch") / "config.yaml").read_text()
    )
    assert scratch["model"] != "resnet10t" and scratch["pretrained_file"] is None


def test_a_recipe_you_set_is_not_probed(workspace: Callable[..., Path]) -> None:
    root = workspace(pretrained="auto", epochs=1, freeze_epochs=0)
    root, _ = with_folds(root)
    cfg = load_config(root, {"recipe": "finetune", "pretrained_file": _weights(root)})
    probe.train(root, cfg, name="f", folds=[0])
    assert not (root / "runs" / "f" / probe.PROBE_FILE).exists()
    saved = yaml.safe_load((root / "runs" / "f" / "config.yaml").read_text())
    assert saved["recipe"] == "finetune" and saved["pretrained_file"].endswith("r10.pth")
