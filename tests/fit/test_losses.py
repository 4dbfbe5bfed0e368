"""Losses and the regularisers timm brings: mixup/cutmix, EMA, drop-path, layer decay, a time limit."""

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from comp.config import make_config
from comp.fit.losses import Mixing
from comp.train.run import train
from tests.conftest import Said, with_folds
from tests.train.conftest import Interrupt, same_run


@pytest.mark.parametrize("batch", [8, 7, 1])
def test_mixing_gives_soft_targets_for_any_batch(batch: int) -> None:
    torch.manual_seed(0)
    mixing = Mixing(make_config({"mixup": 0.4, "cutmix": 1.0, "label_smoothing": 0.1}), n_classes=3)
    x, y = torch.rand(batch, 3, 8, 8), torch.randint(0, 3, (batch,))
    x_mixed, soft = mixing(x.clone(), y)
    assert x_mixed.shape == x.shape and soft.shape == (batch, 3)
    assert torch.allclose(soft.sum(1), torch.ones(batch))
    loss = mixing.loss(torch.randn(batch, 3), soft)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_regularisers_train_and_the_ema_weights_are_kept(
    workspace: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    mixed: list[int] = []  # batches mixed so far, read at the end of each epoch
    real_call = Mixing.__call__

    def counted(
        self: Mixing, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mixed.append(len(x))
        return real_call(self, x, y)

    monkeypatch.setattr(Mixing, "__call__", counted)
    per_epoch: list[int] = []
    root, cfg = with_folds(
        workspace(
            epochs=3,
            freeze_epochs=0,
            mixup=0.2,
            cutmix=1.0,
            mixup_off_epoch=2,
            ema=True,
            ema_decay=0.9,
            drop_path_rate=0.1,
            layer_decay=0.7,
            warmup_epochs=1,
        )
    )
    train(
        root,
        cfg,
        name="reg",
        folds=[0],
        on_epoch=lambda fold, epoch, f1: per_epoch.append(len(mixed)),
    )
    # Mixup and cutmix mix every batch of the first two epochs and none after.
    assert per_epoch[0] > 0 and per_epoch[1] == 2 * per_epoch[0] and per_epoch[2] == per_epoch[1]
    best = torch.load(root / "runs" / "reg" / "fold0" / "best.pt", weights_only=True)
    assert best["meta"]["ema"] is True
    metrics = pd.read_csv(root / "runs" / "reg" / "fold0" / "metrics.csv")
    # Warmup: the first epoch starts far below the peak rate.
    assert metrics["lr"].iloc[0] < metrics["lr"].iloc[1]
    saved = yaml.safe_load((root / "runs" / "reg" / "config.yaml").read_text())
    assert saved["ema"] is True


def test_layer_decay_and_drop_path_reach_the_model(workspace: Callable[..., Path]) -> None:
    from timm.layers import DropPath

    from comp.fit.loop import begin_stage, stages
    from comp.train.run import plan_run, setup_run_fold

    root, cfg = with_folds(
        workspace(epochs=2, freeze_epochs=1, drop_path_rate=0.1, layer_decay=0.7)
    )
    plan = plan_run(root, cfg, name="ld", folds=[0], resume=False)
    f = setup_run_fold(plan, 0)
    assert any(isinstance(m, DropPath) and m.drop_prob > 0 for m in f.model.modules())
    frozen, whole = stages(plan.cfg)
    # Stage 2: lower block groups learn at powers of 0.7 of the head's rate; stage 1 trains
    # the head alone, at one rate.
    scales = sorted({g.get("lr_scale", 1.0) for g in begin_stage(f, whole).optimizer.param_groups})
    assert scales[-1] == 1.0 and len(scales) > 2 and scales[0] <= 0.7**2 + 1e-9
    assert {g.get("lr_scale", 1.0) for g in begin_stage(f, frozen).optimizer.param_groups} == {1.0}


def test_an_interrupted_fold_with_ema_and_mixup_resumes_to_the_same_end(
    workspace: Callable[..., Path],
) -> None:
    root, cfg = with_folds(
        workspace(
            epochs=3, freeze_epochs=0, mixup=0.2, ema=True, ema_decay=0.9, checkpoint_seconds=0
        )
    )
    train(root, cfg, name="whole", folds=[0])

    def stop(fold: int, epoch: int, f1: float) -> None:
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(root, cfg, name="cut", folds=[0], on_epoch=stop)
    train(root, cfg, name="cut", folds=[0], resume=True)
    same_run(root / "runs" / "whole", root / "runs" / "cut")


def test_a_time_limit_sizes_the_epochs(workspace: Callable[..., Path], said: Said) -> None:
    # No early stop (patience beyond any epoch count), so every fold runs its whole schedule.
    root, cfg = with_folds(
        workspace(epochs="auto", freeze_epochs="auto", time_limit="20s", patience=10_000)
    )
    train(root, cfg, name="timed")
    (line,) = [s for s in said if s.startswith("time limit 20s")]
    run = root / "runs" / "timed"
    sized = yaml.safe_load((run / "config.yaml").read_text())
    epochs, frozen = sized["epochs"], sized["freeze_epochs"]
    assert f"{epochs} epochs per fold ({frozen} frozen" in line and epochs >= 1

    def every_epoch_ran(k: int) -> None:
        # Never cut mid-schedule: each fold ran every epoch it was given, stage 1 then 2.
        metrics = pd.read_csv(run / f"fold{k}" / "metrics.csv")
        assert metrics["epoch"].tolist() == list(range(1, epochs + 1)), (k, metrics)
        assert metrics["stage"].tolist() == [1] * frozen + [2] * (epochs - frozen), (k, metrics)

    for k in (0, 1):
        every_epoch_ran(k)
    # A fold trained again later under the same name keeps the run's sizing: no new
    # measurement, the same epochs in config.yaml and in the fold's metrics.
    said.clear()
    train(root, cfg, name="timed", folds=[1])
    assert not [s for s in said if s.startswith("time limit")], said
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == epochs
    every_epoch_ran(1)


def test_a_time_limit_too_short_is_refused(workspace: Callable[..., Path]) -> None:
    from comp.errors import ConfigError

    root, cfg = with_folds(workspace(epochs="auto", time_limit="0.01s"))
    with pytest.raises(ConfigError, match="an epoch takes about"):
        train(root, cfg, name="rushed")
    assert not (root / "runs" / "rushed" / "config.yaml").exists()
