"""The recipe: keys left at auto resolve from where the model starts; the user's keys win."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from comp.config import AUTO, load_config, make_config, parse_duration, render
from comp.errors import ConfigError
from comp.hardware.precision import amp_dtype, cpu_bf16
from comp.train.recipe import FINETUNE, SCRATCH, resolve, with_epochs
from comp.train.run import train
from comp.workspace.init import init_workspace
from tests.conftest import Said, with_folds

SPRITE_SIZES = np.array([[64, 64]] * 10)
PHOTO_SIZES = np.array([[400, 300]] * 10)


def test_random_init_resolves_to_the_scratch_recipe() -> None:
    cfg, recipe = resolve(make_config(), weights="random", device="cpu", sizes=PHOTO_SIZES)
    assert recipe.name == "scratch" and cfg.recipe == "scratch"
    assert cfg.freeze_epochs == 0 and cfg.lr2 == SCRATCH["lr2"] and cfg.label_smoothing == 0.1
    assert cfg.warmup_epochs == 1 and cfg.epochs == SCRATCH["epochs"]
    # From scratch on a CPU, photos are shrunk to what trains in minutes.
    assert cfg.img_size == 64
    assert "scratch" in recipe.describe() and "no pretrained weights" in recipe.describe()
    # Epochs from a number of updates: more for a small set, fewer for a large one.
    epochs = {
        n: resolve(make_config(), weights="random", device="cpu", n_train=n)[0].epochs
        for n in (416, 3520, 100_000)
    }
    assert epochs == {416: 40, 3520: 9, 100_000: 8}


def test_pretrained_weights_resolve_to_the_finetune_recipe() -> None:
    cfg, recipe = resolve(make_config(), weights="timm", device="cuda", sizes=PHOTO_SIZES)
    assert recipe.name == "finetune"
    assert cfg.freeze_epochs == FINETUNE["freeze_epochs"] and cfg.layer_decay == 0.75
    assert cfg.lr2 == FINETUNE["lr2"] and cfg.warmup_epochs == 0
    assert cfg.img_size == 224  # the median short side, capped at 224
    cfg, _ = resolve(make_config(), weights="timm", device="cpu", sizes=PHOTO_SIZES)
    assert cfg.img_size == 128
    # Small images are upscaled towards ImageNet's scale to fine-tune, never from scratch.
    sprites = np.full((20, 2), 64)
    assert resolve(make_config(), weights="timm", device="cpu", sizes=sprites)[0].img_size == 96
    assert resolve(make_config(), weights="timm", device="cuda", sizes=sprites)[0].img_size == 128
    assert resolve(make_config(), weights="random", device="cpu", sizes=sprites)[0].img_size == 64
    # BatchNorm keeps pretrained statistics; random init has none worth keeping.
    assert cfg.bn == "frozen" and cfg.label_smoothing == 0
    assert resolve(make_config(), weights="random", device="cpu")[0].bn == "train"


def test_keys_the_user_set_always_win() -> None:
    mine = make_config({"freeze_epochs": 2, "lr2": 5e-4, "img_size": 96, "label_smoothing": 0})
    cfg, recipe = resolve(mine, weights="random", device="cpu", sizes=PHOTO_SIZES)
    assert (cfg.freeze_epochs, cfg.lr2, cfg.img_size, cfg.label_smoothing) == (2, 5e-4, 96, 0)
    assert recipe.kept["freeze_epochs"] == 2 and "freeze_epochs" not in recipe.filled
    assert "yours: " in recipe.describe()
    with pytest.raises(
        ConfigError, match=r"freeze_epochs \(20\) must be between 0 and epochs \(12\)"
    ):
        resolve(make_config({"freeze_epochs": 20}), weights="random", device="cpu")
    forced, recipe = resolve(make_config({"recipe": "finetune"}), weights="random", device="cpu")
    assert recipe.name == "finetune" and forced.freeze_epochs == FINETUNE["freeze_epochs"]


def test_auto_round_trips_through_comp_yaml_and_flags(tmp_path: Path) -> None:
    text = render(vars(make_config()))
    assert "\nepochs: auto\n" in text and "\nimg_size: auto\n" in text
    (tmp_path / "comp.yaml").write_text(text)
    cfg = load_config(tmp_path, {"lr2": "auto", "epochs": "7"})
    assert cfg.lr2 == AUTO and cfg.epochs == 7
    with pytest.raises(ConfigError, match="epochs must be auto or at least 0"):
        make_config({"epochs": -3})
    with pytest.raises(ConfigError, match="soft targets"):
        make_config({"mixup": 0.2, "loss": "focal"})


def test_durations() -> None:
    assert parse_duration("20m") == 1200 and parse_duration("1h30m") == 5400
    assert parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    assert parse_duration("15") == 900
    for bad in ("soon", "20x", "0m", "m20"):
        with pytest.raises(ConfigError, match="time_limit"):
            parse_duration(bad)


def test_rescheduling_scales_what_the_recipe_chose() -> None:
    cfg, recipe = resolve(make_config({"mixup": 0.2}), weights="timm", device="cuda")
    assert (cfg.epochs, cfg.freeze_epochs, cfg.mixup_off_epoch) == (5, 1, 4)
    short = with_epochs(cfg, 10, auto=set(recipe.filled))
    assert (short.epochs, short.freeze_epochs, short.mixup_off_epoch) == (10, 2, 8)


def test_cpu_bf16_only_where_the_cores_have_it_and_images_are_large() -> None:
    cpu = torch.device("cpu")
    assert amp_dtype(cpu, "auto", img_size=16) is None
    assert amp_dtype(cpu, "false", img_size=224) is None
    assert amp_dtype(cpu, "auto", img_size=224) == (torch.bfloat16 if cpu_bf16() else None)
    assert amp_dtype(cpu, "true", img_size=16) == torch.bfloat16  # forced


def test_init_prints_and_train_records_the_recipe(
    workspace: Callable[..., Path], tmp_path: Path, said: Said
) -> None:
    from tests.conftest import make_kaggle

    _, text = init_workspace(
        tmp_path / "fresh", make_kaggle(tmp_path / "c"), overrides={"pretrained": "false"}
    )
    assert "recipe: scratch (pretrained: false; airnet_s" in text and "img_size: auto" in text
    assert yaml.safe_load((tmp_path / "fresh" / "comp.yaml").read_text())["epochs"] == "auto"

    root, cfg = with_folds(workspace(epochs="auto", freeze_epochs="auto", lr2="auto", patience=1))
    train(root, cfg, name="r", folds=[0])
    assert any(s.startswith("recipe: scratch") for s in said)
    saved = yaml.safe_load((root / "runs" / "r" / "config.yaml").read_text())
    assert saved["recipe"] == "scratch" and saved["freeze_epochs"] == 0
    assert saved["epochs"] == 40 and saved["img_size"] == 16  # 2 steps an epoch; TINY's own size


def test_model_auto_is_a_small_image_net_from_scratch_and_resnet18_to_fine_tune() -> None:
    cfg, recipe = resolve(make_config(), weights="random", device="cpu", sizes=SPRITE_SIZES)
    assert cfg.model == "airnet_s" and "airnet_s, a net for 64 px images on cpu" in recipe.why
    cfg, _ = resolve(make_config(), weights="random", device="cuda", sizes=SPRITE_SIZES)
    assert cfg.model == "airnet_l"
    cfg, _ = resolve(make_config(), weights="random", device="cuda", sizes=PHOTO_SIZES)
    assert cfg.model == "resnet18"  # large images on a GPU: a timm ResNet from scratch
    cfg, _ = resolve(make_config(), weights="timm", device="cpu", sizes=SPRITE_SIZES)
    assert cfg.model == "resnet18"
    cfg, _ = resolve(make_config({"model": "simple_cnn"}), weights="random", device="cpu")
    assert cfg.model == "simple_cnn"  # yours wins
