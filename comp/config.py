"""Workspace configuration: comp.yaml, command-line overrides and the resolved config.

Reads ``comp.yaml`` from the workspace root (the folder that holds it, found from
the current directory upwards). Writes ``comp.yaml`` (``comp init``/``comp demo``)
and, through the callers, the resolved ``config.yaml`` saved beside every run.

Every key can be overridden from the command line, either by a dedicated flag
(``--epochs 5``) or by ``--set epochs=5``. Unknown keys are refused with the
closest valid name, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeAlias

import yaml

from comp import files
from comp.errors import ConfigError

CONFIG_FILE = "comp.yaml"
# The experiment trackers the ``tracker`` key may name (comp.track.trackers drives them).
TRACKERS = ("mlflow", "wandb", "tensorboard")
# "auto" in comp.yaml: the training recipe (comp/recipe.py) picks the value, from whether
# the model starts from pretrained weights, the device and the data. Stored as AUTO.
AUTO = -1
AUTO_KEYS = (
    "img_size",
    "epochs",
    "freeze_epochs",
    "lr2",
    "warmup_epochs",
    "label_smoothing",
    "layer_decay",
    "mixup_off_epoch",
)
# The schedule a ``time_limit`` sizes, by timing the machine that trains (comp.train.budget).
SIZED_KEYS = ("epochs", "freeze_epochs", "warmup_epochs", "mixup_off_epoch")
RecipeName: TypeAlias = Literal["auto", "scratch", "finetune"]
RECIPES: tuple[str, ...] = typing.get_args(RecipeName)
# The tune_* keys that may be auto: the recipe chooses whether and where to search them.
TUNE_AUTO = (
    "lr1",
    "lr2",
    "freeze_epochs",
    "weight_decay",
    "label_smoothing",
    "layer_decay",
    "model",
)
# What ``model: auto`` fine-tunes when its pretrained weights can be had.
PRETRAINED_MODEL = "resnet18"
# The choice keys' types are the one list of their values: validate, the CLI and the modules
# that act on them read these (a Literal is checked by mypy where a value is written in code).
AugPreset: TypeAlias = Literal["none", "shift", "light", "crop", "medium", "heavy"]
AUG_PRESETS: tuple[str, ...] = typing.get_args(AugPreset)
Pipeline: TypeAlias = Literal["auto", "batch", "image"]
PIPELINES: tuple[str, ...] = typing.get_args(Pipeline)
# linear first: the rest are the scikit-learn heads (comp.fit.heads).
Head: TypeAlias = Literal["linear", "logreg", "extratrees", "rf", "hgb", "xgb"]
HEADS: tuple[str, ...] = typing.get_args(Head)
Pruner: TypeAlias = Literal["median", "hyperband", "none"]
PRUNERS: tuple[str, ...] = typing.get_args(Pruner)
# Where "one of" would say less about a key's values than the noun comp's docs use.
CHOICE_NOUNS = {"aug": "a preset"}


def _key(default: Any, help: str, section: str) -> Any:
    return field(default=default, metadata={"help": help, "section": section})


@dataclass
class Config:
    # Paths are relative to the workspace root unless absolute.
    train_csv: str = _key(
        "data/train_labels.csv", "labels table (one row per training image)", "data"
    )
    id_column: str = _key("Id", "column of train_csv holding the image Id", "data")
    label_column: str = _key("label", "column of train_csv holding the class label", "data")
    train_dir: str = _key("data/train", "folder of training images, named <Id>.<ext>", "data")
    test_dir: str | None = _key("data/test", "folder of test images, named <Id>.<ext>", "data")
    sample_submission: str | None = _key(
        "data/sample_submission.csv", "the competition's sample submission", "data"
    )
    solution: str | None = _key(
        None, "held-back answers (Id,label,Usage) for local scoring", "data"
    )
    centre: bool = _key(
        False,
        "crop each image to its subject (found from the border colour or alpha), centred on a square",
        "data",
    )

    n_splits: int = _key(5, "number of cross-validation folds", "folds")
    seed: int = _key(42, "seed for folds, initialisation and augmentation", "folds")

    model: str = _key(
        "auto",
        "any timm model name, or comp's own nets: mlp, simple_cnn, airnet_xs/s/m/l (small images "
        "from scratch), classical (colour, shape and texture features, for a scikit-learn head)"
        f"; auto: {PRETRAINED_MODEL} where pretrained weights can be had, else the "
        "scratch recipe's net for the image size and device",
        "model",
    )
    small_input: bool = _key(
        False,
        "a timm CNN's first conv at stride 1 and no stem max-pool: a 32-64 px image is not "
        "quartered before the first block (up to 16x the compute; the same weights fit; comp's own "
        "nets are built for small images already)",
        "model",
    )
    pretrained: Literal["auto", "true", "false"] = _key(
        "auto",
        "auto: use pretrained weights when they can be had; true: require them; false: random init",
        "model",
    )
    pretrained_file: str | None = _key(
        None,
        "local weights file (.pth/.safetensors), e.g. from a Kaggle dataset; under another "
        "implementation's names, mapped onto timm's tensor by tensor where they fit",
        "model",
    )
    recipe: RecipeName = _key(
        "auto",
        "auto: finetune when pretrained weights are found, else scratch; the recipe fills every key set to auto",
        "model",
    )
    img_size: int = _key(
        AUTO,
        "images are resized to img_size x img_size (auto: from the images, at most 64 when training from scratch on a CPU; to fine-tune, small images upscaled to 96 on a CPU, 128 on a GPU)",
        "model",
    )
    head: Head = _key(
        "linear",
        "linear: the model's own classifier, fine-tuned; logreg, extratrees, rf, hgb (or xgb): "
        "a scikit-learn classifier fitted on the backbone's features per fold",
        "model",
    )
    features_from: str | None = _key(
        None,
        "with a scikit-learn head: embed with fold k's checkpoint of this earlier run, not timm's weights",
        "model",
    )

    aug: AugPreset = _key(
        "light",
        "augmentation preset: none, shift (no flips), light, crop (flip + shift, the small-image "
        "records'), medium, heavy",
        "train",
    )
    pipeline: Pipeline = _key(
        "auto",
        "batch: augment whole batches in torch on the device; image: albumentations per image in "
        "the DataLoader; auto: batch for every preset but heavy",
        "train",
    )
    epochs: int = _key(
        AUTO,
        "total epochs per fold, stage 1 + stage 2 (auto: 5 to fine-tune; from scratch, about 500 updates)",
        "train",
    )
    time_limit: str | None = _key(
        None,
        "fit the whole run (every fold) into this time, e.g. 20m or 1h30m: epochs are sized from a measured step",
        "train",
    )
    freeze_epochs: int = _key(
        AUTO,
        "stage 1: epochs with the backbone frozen, head only (auto: 1 to fine-tune, 0 from scratch)",
        "train",
    )
    lr1: float = _key(1e-3, "learning rate of stage 1 (head only)", "train")
    stage1: Literal["logreg", "sgd"] = _key(
        "logreg",
        "stage 1 on cached features: logreg (the head starts as a logistic regression fitted "
        "on them at once; further frozen epochs refine it at lr1) or sgd (lr1 from a fresh head)",
        "train",
    )
    bn: Literal["auto", "train", "frozen"] = _key(
        "auto",
        "BatchNorm in stage 2: train (batch statistics) or frozen (the pretrained running "
        "statistics kept, scale and shift still learnt) (auto: frozen to fine-tune, train from scratch)",
        "train",
    )
    lr2: float = _key(
        AUTO,
        "learning rate of stage 2, all layers (auto: 5e-5 to fine-tune, 2e-3 from scratch)",
        "train",
    )
    warmup_epochs: int = _key(
        AUTO,
        "stage 2: epochs of linear warmup before the cosine decay (auto: 0 / 1 from scratch)",
        "train",
    )
    layer_decay: float = _key(
        AUTO,
        "stage 2: each layer group below the head learns at this times the lr above it, 0 = off (auto: 0.75 to fine-tune, 0 from scratch)",
        "train",
    )
    weight_decay: float = _key(0.01, "AdamW weight decay", "train")
    optimizer: str = _key("adamw", "any timm optimizer name (adamw, sgd, lamb, ...)", "train")
    scheduler: Literal["cosine", "plateau"] = _key(
        "cosine", "learning-rate schedule per stage: cosine or plateau", "train"
    )
    patience: int = _key(
        5, "stage 2 stops after this many epochs without a better macro-F1", "train"
    )
    batch_size: int = _key(64, "training batch size", "train")
    loss: Literal["ce", "focal"] = _key(
        "ce", "ce (cross-entropy) or focal (down-weights easy examples)", "train"
    )
    focal_gamma: float = _key(
        2.0, "focal loss: how strongly easy examples are down-weighted", "train"
    )
    label_smoothing: float = _key(
        AUTO, "label smoothing, e.g. 0.1 (auto: 0.1 from scratch, 0 to fine-tune)", "train"
    )
    mixup: float = _key(0.0, "mixup alpha (timm Mixup), e.g. 0.2; 0 = off", "train")
    cutmix: float = _key(0.0, "cutmix alpha (timm Mixup), e.g. 1.0; 0 = off", "train")
    mixup_off_epoch: int = _key(
        AUTO,
        "mixup and cutmix stop after this epoch, so the last epochs see clean images (auto: 80%)",
        "train",
    )
    ema: bool = _key(
        False,
        "keep an exponential moving average of the weights (timm ModelEmaV3); it is validated, kept and predicted with",
        "train",
    )
    ema_decay: float = _key(0.999, "EMA decay per step (warmed up over the first steps)", "train")
    drop_path_rate: float = _key(
        0.0, "stochastic depth: the chance of dropping a residual block, e.g. 0.1", "train"
    )
    class_weights: Literal["none", "balanced"] = _key(
        "none", "none or balanced: weight the loss by inverse class frequency", "train"
    )
    sampler: Literal["random", "balanced"] = _key(
        "random", "random or balanced: draw every class equally often per epoch", "train"
    )
    pseudo: str | None = _key(
        None,
        "pseudo-labels: add the test images to every fold's training part, labelled by this run's "
        "(or blend's) test predictions (`comp predict RUN` first); never to validation",
        "train",
    )
    pseudo_threshold: float = _key(
        0.9, "pseudo-labels: only test images whose top probability reaches this", "train"
    )
    pseudo_soft: bool = _key(
        False, "pseudo-labels: train on the probabilities, not the top class", "train"
    )
    distill: str | None = _key(
        None,
        "self-distillation: soft targets from this run's (or blend's) out-of-fold predictions, "
        "made by models that never saw the fold's validation images",
        "train",
    )
    distill_weight: float = _key(
        0.3, "distillation: share of the teacher's soft targets against the true labels", "train"
    )
    distill_temperature: float = _key(
        1.0, "distillation: temperature of the teacher's and student's softmax (Hinton)", "train"
    )
    num_workers: int = _key(-1, "DataLoader workers; -1 picks from the cores and device", "train")
    device: str = _key("auto", "auto, cpu, cuda or cuda:N", "train")
    amp: Literal["auto", "true", "false"] = _key(
        "auto",
        "mixed precision: auto times a few training steps in fp32 and bf16 (fp16 on older GPUs) "
        "and keeps the faster, once per machine, model and size; true forces it; false is fp32",
        "train",
    )
    checkpoint_seconds: float = _key(
        60.0,
        "write the resume state (fold{k}/last.pt) and best.pt at most this often; 0: every epoch",
        "train",
    )
    compile: bool = _key(
        False, "torch.compile the model on CUDA (slow start, faster epochs)", "train"
    )
    cache_images: bool = _key(
        True, "decode images once into cache/images/ and memory-map them in later runs", "train"
    )
    cache_features: bool = _key(
        True,
        "stage 1: train the head on backbone features computed once, not on a backbone pass per epoch",
        "train",
    )
    feature_views: int = _key(
        2,
        "stage 1 with cache_features: augmented views of each image to compute features for",
        "train",
    )

    tta: str = _key(
        "none",
        "test-time augmentation: none, hflip, vflip, shift (4 views moved by 1/32 of the side), "
        "or a list like hflip,shift",
        "predict",
    )
    adjust: bool = _key(
        False,
        "scale class probabilities by the run's OOF-fitted priors (adjust.json) before the argmax",
        "predict",
    )

    tracker: str = _key(
        "none",
        "log runs to none, mlflow, wandb or tensorboard (or several, comma-separated); "
        "pip install 'comp[mlflow]' etc.",
        "train",
    )
    competition: str | None = _key(
        None,
        "Kaggle competition slug, as in kaggle.com/competitions/<slug> (for download, kernel, submit)",
        "kaggle",
    )

    # Search space of `comp tune`: "low..high" is a range (log scale for learning rates
    # and weight decay), "a,b,c" a choice; null leaves the key at its value above; auto
    # (the keys in TUNE_AUTO) lets the training recipe choose (comp.tune.study.recipe_space).
    tune_lr1: str | None = _key(
        "auto",
        "tune: stage-1 learning rate range (auto: around the recipe's, to fine-tune)",
        "tune",
    )
    tune_lr2: str | None = _key(
        "auto",
        "tune: stage-2 learning rate range (auto: a decade each way of the recipe's)",
        "tune",
    )
    tune_batch_size: str | None = _key(None, "tune: batch sizes to try, e.g. 16,32,64", "tune")
    tune_freeze_epochs: str | None = _key(
        "auto",
        "tune: unfreeze epoch (epochs of stage 1; auto: searched to fine-tune, 0 from scratch)",
        "tune",
    )
    tune_weight_decay: str | None = _key(
        "auto", "tune: weight decay range, e.g. 1e-4..0.1 (auto: searched from scratch)", "tune"
    )
    tune_aug: str | None = _key(None, "tune: augmentation presets, e.g. light,medium,heavy", "tune")
    tune_model: str | None = _key(
        "auto",
        "tune: models, e.g. resnet18,efficientnet_b0 (auto: the scratch net and its neighbours in width, e.g. airnet_xs,s,m)",
        "tune",
    )
    tune_img_size: str | None = _key(None, "tune: image sizes, e.g. 64,96,128", "tune")
    tune_label_smoothing: str | None = _key(
        "auto", "tune: label smoothing, e.g. 0..0.2 (auto: searched from scratch)", "tune"
    )
    tune_mixup: str | None = _key(None, "tune: mixup alpha, e.g. 0..0.4", "tune")
    tune_cutmix: str | None = _key(None, "tune: cutmix alpha, e.g. 0,1.0", "tune")
    tune_ema: str | None = _key(None, "tune: EMA of the weights or not, e.g. false,true", "tune")
    tune_ema_decay: str | None = _key(None, "tune: EMA decay, e.g. 0.99..0.9999", "tune")
    tune_drop_path_rate: str | None = _key(None, "tune: stochastic depth, e.g. 0..0.2", "tune")
    tune_layer_decay: str | None = _key(
        "auto", "tune: layer-wise lr decay, e.g. 0.6..0.9 (auto: searched to fine-tune)", "tune"
    )
    tune_folds: str = _key(
        "0", "tune: folds whose mean macro-F1 is the objective, e.g. 0 or 0,1,2", "tune"
    )
    tune_pruner: Pruner = _key("median", "tune: median, hyperband or none", "tune")
    tune_time_limit: str | None = _key(
        None,
        "tune: the study's budget, e.g. 2h: no trial starts that its measured length would carry past it",
        "tune",
    )


SECTIONS = ["data", "folds", "model", "train", "predict", "kaggle", "tune"]
KEYS = [f.name for f in fields(Config)]


def suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


@functools.cache
def _hints() -> dict[str, Any]:
    # Resolving the hints costs about 2 ms, and coerce asks once per key of every config.
    return typing.get_type_hints(Config)


def _field_type(name: str) -> Any:
    return _hints()[name]


def choices(key: str) -> tuple[str, ...]:
    """The values a choice key's Literal type allows; () for a key of free text or a number."""
    typ = _field_type(key)
    return typing.get_args(typ) if typing.get_origin(typ) is Literal else ()


def _a(typ: Any) -> str:
    """The type of a key as a message says it: "an int", "a float", "one of a, b"."""
    if typing.get_origin(typ) is Literal:
        return f"one of {', '.join(typing.get_args(typ))}"
    return f"{'an' if typ.__name__[0] in 'aeiou' else 'a'} {typ.__name__}"


def coerce(name: str, value: Any) -> Any:
    """Turn ``value`` (from YAML or a command line string) into the type of key ``name``."""
    if name not in KEYS:
        raise ConfigError(f"unknown config key '{name}'{suggest(name, KEYS)}")
    if name in AUTO_KEYS and isinstance(value, str) and value.strip().lower() == "auto":
        return AUTO
    if name == "amp" and isinstance(value, bool | str):
        text = str(value).strip().lower()
        return {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false"}.get(
            text, {"off": "false"}.get(text, text)
        )
    typ = _field_type(name)
    optional = isinstance(typ, types.UnionType) and type(None) in typing.get_args(typ)
    base = next(t for t in typing.get_args(typ) if t is not type(None)) if optional else typ
    # A choice key arrives as text; validate, not coerce, holds it to its choices.
    textual = base is str or typing.get_origin(base) is Literal
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
        if optional:
            return None
        if textual and value is not None:
            return value
        raise ConfigError(f"config key '{name}' needs {_a(base)}, not null")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value) if not isinstance(value, str) else int(value.strip())
        if base is float:
            return float(value)
        if textual:
            if isinstance(value, bool):
                return "true" if value else "false"
            return str(value)
    except ValueError:
        raise ConfigError(f"config key '{name}' needs {_a(base)}, got {value!r}") from None
    raise ConfigError(f"config key '{name}' has an unsupported type")


def is_auto(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == AUTO


def validate(cfg: Config) -> Config:
    _check_choices(cfg)
    _check_numbers(cfg)
    _check_combinations(cfg)
    if cfg.time_limit is not None:
        parse_duration(cfg.time_limit)
    if cfg.tune_time_limit is not None:
        parse_duration(cfg.tune_time_limit, key="tune_time_limit")
    for f in fields(cfg):
        spec = getattr(cfg, f.name)
        key = f.name.removeprefix("tune_")
        if f.name.startswith("tune_") and spec == "auto" and key not in TUNE_AUTO:
            raise ConfigError(
                f"{f.name}: auto is for the keys the recipe searches (tune_{', tune_'.join(TUNE_AUTO)}); "
                f"give a range or choices, e.g. {f.metadata['help'].split('e.g. ')[-1]}"
            )
    parse_trackers(cfg.tracker)
    return cfg


def _check_choices(cfg: Config) -> None:
    for key in KEYS:
        allowed = choices(key)
        value = getattr(cfg, key)
        if allowed and value not in allowed:
            noun = CHOICE_NOUNS.get(key)
            must = f"is not {noun}:" if noun else "must be one of"
            raise ConfigError(
                f"{key} '{value}' {must} {', '.join(allowed)}{suggest(str(value), list(allowed))}"
            )
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device) is None:
        raise ConfigError(f"device '{cfg.device}' must be auto, cpu, mps, cuda or cuda:N")


def _check_numbers(cfg: Config) -> None:
    for key in AUTO_KEYS:
        value = getattr(cfg, key)
        if value < 0 and not is_auto(value):
            raise ConfigError(f"{key} must be auto or at least 0, got {value}")
    auto = {key for key in AUTO_KEYS if is_auto(getattr(cfg, key))}
    checks = [
        (cfg.n_splits >= 2, "n_splits must be at least 2"),
        ("img_size" in auto or cfg.img_size >= 8, "img_size must be at least 8"),
        ("epochs" in auto or cfg.epochs >= 1, "epochs must be at least 1"),
        (
            bool(auto & {"epochs", "freeze_epochs"}) or 0 <= cfg.freeze_epochs <= cfg.epochs,
            f"freeze_epochs ({cfg.freeze_epochs}) must be between 0 and epochs ({cfg.epochs}); "
            "e.g. --freeze-epochs 0",
        ),
        (cfg.batch_size >= 1, "batch_size must be at least 1"),
        (cfg.feature_views >= 1, "feature_views must be at least 1"),
        (cfg.lr1 > 0 and ("lr2" in auto or cfg.lr2 > 0), "lr1 and lr2 must be positive"),
        (cfg.mixup >= 0 and cfg.cutmix >= 0, "mixup and cutmix must be at least 0"),
        (0 < cfg.ema_decay < 1, "ema_decay must be between 0 and 1, e.g. 0.999"),
        (0 <= cfg.drop_path_rate < 1, "drop_path_rate must be in [0, 1)"),
        ("layer_decay" in auto or cfg.layer_decay <= 1, "layer_decay must be in [0, 1], 0 = off"),
        (0 <= cfg.pseudo_threshold <= 1, "pseudo_threshold must be in [0, 1]"),
        (0 <= cfg.distill_weight <= 1, "distill_weight must be in [0, 1]"),
        (cfg.distill_temperature > 0, "distill_temperature must be above 0"),
        (cfg.patience >= 1, "patience must be at least 1"),
        ("label_smoothing" in auto or cfg.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
        (cfg.focal_gamma >= 0, "focal_gamma must be at least 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _check_combinations(cfg: Config) -> None:
    hard_targets = cfg.loss == "focal" or cfg.class_weights != "none"
    checks = [
        (
            not (cfg.pipeline == "batch" and cfg.aug == "heavy"),
            "aug heavy needs albumentations per image: use pipeline image (or auto)",
        ),
        (
            not ((cfg.mixup or cfg.cutmix) and hard_targets),
            "mixup and cutmix train on soft targets with plain cross-entropy; drop loss: focal and "
            "class_weights (sampler: balanced evens classes out instead)",
        ),
        (
            not ((cfg.distill or (cfg.pseudo and cfg.pseudo_soft)) and hard_targets),
            "distill and pseudo_soft train on soft targets with plain cross-entropy; drop loss: "
            "focal and class_weights",
        ),
        (
            cfg.head == "linear" or not (cfg.pseudo or cfg.distill),
            f"pseudo and distill train the model itself; head '{cfg.head}' fits a classifier on "
            "fixed features",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def parse_trackers(spec: str | None) -> list[str]:
    """The trackers a ``tracker`` value names, checked."""
    names = [n.strip().lower() for n in (spec or "none").split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    unknown = sorted(set(names) - set(TRACKERS))
    if unknown:
        raise ConfigError(
            f"tracker '{unknown[0]}' must be none, {', '.join(TRACKERS)} (or several)"
        )
    return list(dict.fromkeys(names))


def parse_duration(text: str, *, key: str = "time_limit") -> float:
    """Seconds in a duration such as 90s, 20m, 1h30m, 1.5h or 1 hour (a bare number is minutes)."""
    # Imported here: comp.cli imports this module, and pandas would add ~0.3 s to `comp --help`.
    import pandas as pd

    spec = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", spec):
        return float(spec) * 60
    not_a_duration = ConfigError(f"{key} '{text}' is not a duration such as 20m, 1h30m or 900s")
    try:
        with warnings.catch_warnings():
            # pandas deprecates some lower-case units (1d, 2w): refused now, so a comp.yaml
            # that works today keeps working on the pandas that drops them.
            warnings.simplefilter("error")
            seconds = pd.Timedelta(spec).total_seconds()
    except (ValueError, Warning):
        raise not_a_duration from None
    if math.isnan(seconds):  # pandas reads "", "nan" and "nat" as NaT, no duration at all
        raise not_a_duration
    if seconds <= 0:
        raise ConfigError(f"{key} '{text}' must be longer than zero")
    return seconds


def make_config(values: dict[str, Any] | None = None) -> Config:
    """Build a validated Config from defaults updated with ``values``."""
    values = values or {}
    return validate(Config(**{k: coerce(k, v) for k, v in values.items()}))


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(
            f"{path}: not valid YAML{line} ({getattr(e, 'problem', None) or 'syntax error'})"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value")
    for key in data:
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key '{key}'{suggest(str(key), KEYS)}")
    return data


def parse_sets(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Parse ``--set key=value`` items."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in KEYS:
            raise ConfigError(f"--set: unknown config key '{key}'{suggest(key, KEYS)}")
        out[key] = value
    return out


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def render(values: dict[str, Any], header: str = "") -> str:
    """Render a commented comp.yaml, one section at a time, so people can read and edit it."""
    by_section: dict[str, list[dataclasses.Field[Any]]] = {s: [] for s in SECTIONS}
    for f in fields(Config):
        by_section[f.metadata["section"]].append(f)
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    for section in SECTIONS:
        lines.append(f"\n# --- {section} ---")
        for f in by_section[section]:
            shown = "auto" if f.name in AUTO_KEYS and is_auto(values[f.name]) else values[f.name]
            value = yaml.safe_dump({f.name: shown}, default_flow_style=True).strip()
            lines.append(f"# {f.metadata['help']}")
            lines.append(value[1:-1] if value.startswith("{") else value)
    return "\n".join(lines).lstrip("\n") + "\n"


def write_workspace_config(path: Path, cfg: Config, header: str = "") -> None:
    files.write_text(path, render(to_dict(cfg), header))


def find_workspace(start: Path | None = None) -> Path:
    """The nearest folder, from ``start`` upwards, that holds comp.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise ConfigError(
        f"no {CONFIG_FILE} in {here} or its parents; run `comp init DIR --data PATH` "
        "or `comp demo DIR` first, or pass --workspace"
    )


def load_config(root: Path, overrides: dict[str, Any] | None = None) -> Config:
    values = read_config_file(root / CONFIG_FILE)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return make_config(values)
