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
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from comp import io

CONFIG_FILE = "comp.yaml"
AUG_PRESETS = ("none", "shift", "light", "medium", "heavy")
HEADS = ("linear", "logreg", "extratrees", "rf", "hgb", "xgb")


class ConfigError(ValueError):
    """A config file, key or value that cannot be used."""


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
        "resnet18", "any timm model name, or a baseline net: mlp, simple_cnn", "model"
    )
    pretrained: str = _key(
        "auto",
        "auto: use pretrained weights when they can be had; true: require them; false: random init",
        "model",
    )
    pretrained_file: str | None = _key(
        None, "local weights file (.pth/.safetensors), e.g. from a Kaggle dataset", "model"
    )
    img_size: int = _key(64, "images are resized to img_size x img_size", "model")
    head: str = _key(
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

    aug: str = _key(
        "light", "augmentation preset: none, shift (no flips), light, medium, heavy", "train"
    )
    epochs: int = _key(15, "total epochs per fold (stage 1 + stage 2)", "train")
    freeze_epochs: int = _key(3, "stage 1: epochs with the backbone frozen, head only", "train")
    lr1: float = _key(1e-3, "learning rate of stage 1 (head only)", "train")
    lr2: float = _key(1e-4, "learning rate of stage 2 (all layers)", "train")
    weight_decay: float = _key(0.01, "AdamW weight decay", "train")
    optimizer: str = _key("adamw", "any timm optimizer name (adamw, sgd, lamb, ...)", "train")
    scheduler: str = _key("cosine", "learning-rate schedule per stage: cosine or plateau", "train")
    patience: int = _key(
        5, "stage 2 stops after this many epochs without a better macro-F1", "train"
    )
    batch_size: int = _key(64, "training batch size", "train")
    loss: str = _key("ce", "ce (cross-entropy) or focal (down-weights easy examples)", "train")
    focal_gamma: float = _key(
        2.0, "focal loss: how strongly easy examples are down-weighted", "train"
    )
    label_smoothing: float = _key(0.0, "label smoothing, e.g. 0.1", "train")
    class_weights: str = _key(
        "none", "none or balanced: weight the loss by inverse class frequency", "train"
    )
    sampler: str = _key(
        "random", "random or balanced: draw every class equally often per epoch", "train"
    )
    num_workers: int = _key(-1, "DataLoader workers; -1 picks from the cores and device", "train")
    device: str = _key("auto", "auto, cpu, cuda or cuda:N", "train")
    amp: bool = _key(True, "mixed precision on CUDA (ignored on CPU)", "train")
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
        "none", "test-time augmentation: none, hflip, or a list like hflip,vflip", "predict"
    )
    adjust: bool = _key(
        False,
        "scale class probabilities by the run's OOF-fitted priors (adjust.json) before the argmax",
        "predict",
    )

    competition: str | None = _key(
        None,
        "Kaggle competition slug, as in kaggle.com/competitions/<slug> (for download, kernel, submit)",
        "kaggle",
    )

    # Search space of `comp tune`: "low..high" is a range (log scale for learning rates
    # and weight decay), "a,b,c" a choice; null leaves the key at its value above.
    tune_lr1: str | None = _key("1e-4..1e-2", "tune: stage-1 learning rate range", "tune")
    tune_lr2: str | None = _key("1e-5..1e-3", "tune: stage-2 learning rate range", "tune")
    tune_batch_size: str | None = _key("16,32,64", "tune: batch sizes to try", "tune")
    tune_freeze_epochs: str | None = _key(
        "0..5", "tune: unfreeze epoch (epochs of stage 1)", "tune"
    )
    tune_weight_decay: str | None = _key(None, "tune: weight decay range, e.g. 1e-4..0.1", "tune")
    tune_aug: str | None = _key(None, "tune: augmentation presets, e.g. light,medium,heavy", "tune")
    tune_model: str | None = _key(None, "tune: models, e.g. resnet18,efficientnet_b0", "tune")
    tune_img_size: str | None = _key(None, "tune: image sizes, e.g. 64,96,128", "tune")
    tune_folds: str = _key(
        "0", "tune: folds whose mean macro-F1 is the objective, e.g. 0 or 0,1,2", "tune"
    )
    tune_pruner: str = _key("median", "tune: median, hyperband or none", "tune")


SECTIONS = ["data", "folds", "model", "train", "predict", "kaggle", "tune"]
KEYS = [f.name for f in fields(Config)]


def suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _field_type(name: str) -> Any:
    return typing.get_type_hints(Config)[name]


def _a(typ: type) -> str:
    """The type of a key as a message says it: "an int", "a float"."""
    return f"{'an' if typ.__name__[0] in 'aeiou' else 'a'} {typ.__name__}"


def coerce(name: str, value: Any) -> Any:
    """Turn ``value`` (from YAML or a command line string) into the type of key ``name``."""
    if name not in KEYS:
        raise ConfigError(f"unknown config key '{name}'{suggest(name, KEYS)}")
    typ = _field_type(name)
    optional = isinstance(typ, types.UnionType) and type(None) in typing.get_args(typ)
    base = next(t for t in typing.get_args(typ) if t is not type(None)) if optional else typ
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
        if optional:
            return None
        if base is str and value is not None:
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
        if base is str:
            if isinstance(value, bool):
                return "true" if value else "false"
            return str(value)
    except ValueError:
        raise ConfigError(f"config key '{name}' needs {_a(base)}, got {value!r}") from None
    raise ConfigError(f"config key '{name}' has an unsupported type")


def validate(cfg: Config) -> Config:
    checks = [
        (cfg.n_splits >= 2, "n_splits must be at least 2"),
        (cfg.img_size >= 8, "img_size must be at least 8"),
        (cfg.epochs >= 1, "epochs must be at least 1"),
        (
            0 <= cfg.freeze_epochs <= cfg.epochs,
            f"freeze_epochs ({cfg.freeze_epochs}) must be between 0 and epochs ({cfg.epochs}); "
            "e.g. --freeze-epochs 0",
        ),
        (
            cfg.aug in AUG_PRESETS,
            f"aug '{cfg.aug}' is not a preset: {', '.join(AUG_PRESETS)}{suggest(cfg.aug, list(AUG_PRESETS))}",
        ),
        (
            re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device) is not None,
            f"device '{cfg.device}' must be auto, cpu, mps, cuda or cuda:N",
        ),
        (cfg.batch_size >= 1, "batch_size must be at least 1"),
        (cfg.feature_views >= 1, "feature_views must be at least 1"),
        (
            cfg.head in HEADS,
            f"head '{cfg.head}' must be one of {', '.join(HEADS)}{suggest(cfg.head, list(HEADS))}",
        ),
        (cfg.lr1 > 0 and cfg.lr2 > 0, "lr1 and lr2 must be positive"),
        (cfg.patience >= 1, "patience must be at least 1"),
        (cfg.pretrained in ("auto", "true", "false"), "pretrained must be auto, true or false"),
        (cfg.scheduler in ("cosine", "plateau"), "scheduler must be cosine or plateau"),
        (cfg.loss in ("ce", "focal"), f"loss '{cfg.loss}' must be ce or focal"),
        (0 <= cfg.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
        (cfg.focal_gamma >= 0, "focal_gamma must be at least 0"),
        (cfg.class_weights in ("none", "balanced"), "class_weights must be none or balanced"),
        (cfg.sampler in ("random", "balanced"), "sampler must be random or balanced"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return cfg


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
            value = yaml.safe_dump({f.name: values[f.name]}, default_flow_style=True).strip()
            lines.append(f"# {f.metadata['help']}")
            lines.append(value[1:-1] if value.startswith("{") else value)
    return "\n".join(lines).lstrip("\n") + "\n"


def write_workspace_config(path: Path, cfg: Config, header: str = "") -> None:
    io.write_text(path, render(to_dict(cfg), header))


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
