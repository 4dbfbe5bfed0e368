"""Pretrained weights from a file, fitted onto a timm model.

Reads a weights file: a plain state dict, a timm or comp checkpoint (``state_dict``,
``model`` or ``state_dict_ema`` inside, ``module.`` prefixes), as .pth, .bin or
.safetensors, also one saved by another implementation of the same architecture under
other key names, as Kaggle weight datasets often are (EfficientNet-PyTorch,
torchvision). Writes nothing.

timm's own ``pretrained_cfg_overlay={"file": ...}`` drops the classifier and loads with
strict=False: under other key names nothing at all loads, and training silently starts
from random init. Here a file fits by name, or tensor for tensor in order, or it is
refused, naming the first tensor that does not fit; a model is never half loaded.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import nn

from comp.errors import ModelError

# How implementations other than timm name their tensors, by the prefixes they start with.
NAMINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("EfficientNet-PyTorch", ("_conv_stem.", "_blocks.")),
    ("torchvision", ("features.",)),
)
# Tried, in this order, when a file fits neither the model asked for nor by order: the
# architectures whose weights Kaggle datasets hold most.
COMMON_ARCHITECTURES = (
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
    "efficientnet_b0",
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenetv2_100",
)
# What create_model leaves on the model it built from a file: the description of it.
ATTRIBUTE = "comp_weights"

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class Fit:
    """Which of a file's tensors go where: the model's key -> the file's key."""

    pairs: dict[str, str]
    by: Literal["name", "order"]
    head: int | None  # classes of the head taken from the file; None: a fresh head


def read_state_dict(*, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, by timm's reader (so every wrapper timm knows is undone)."""
    if not path.is_file():
        raise ModelError(f"{path}: pretrained_file not found")
    try:
        state: Any = timm.models.load_state_dict(str(path))
    except Exception as e:  # torch.load and safetensors raise many kinds for a non-weights file
        raise ModelError(f"{path}: not a weights file ({_reason(e)})") from None
    tensors = (
        {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        if isinstance(state, Mapping)
        else {}
    )
    if not tensors:
        what = (
            f"keys {', '.join(map(str, list(state)[:4]))}"
            if isinstance(state, Mapping)
            else type(state).__name__
        )
        raise ModelError(f"{path}: not a weights file (no tensors in it: {what})")
    return tensors


def _reason(e: Exception) -> str:
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    if "Weights only load failed" in first or "weights_only" in first:
        # torch.save(model) pickles the class too; only a state dict can be read safely.
        return "a pickled object such as torch.save(model); save model.state_dict() instead"
    if isinstance(e, (struct.error, pickle.UnpicklingError, EOFError)):
        return "not a file torch.save wrote, nor a .safetensors file"
    return f"{type(e).__name__}: {first[:120]}"


def head_keys(*, model: nn.Module) -> frozenset[str]:
    """The keys of the model's classifier: fresh for the competition's classes, unless the
    file's fits them."""
    cfg = getattr(model, "pretrained_cfg", None)
    named = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    prefixes: tuple[str, ...] = (named,) if isinstance(named, str) else tuple(named or ())
    if not prefixes and callable(getattr(model, "get_classifier", None)):
        head = model.get_classifier()  # type: ignore[operator]
        prefixes = tuple(n for n, m in model.named_modules() if m is head and n)
    return frozenset(
        k for k in model.state_dict() if any(k == p or k.startswith(p + ".") for p in prefixes)
    )


def _counter(key: str) -> bool:
    # BatchNorm's step counter: some implementations save it, some do not, and with a set
    # momentum (timm's and torch's default) it changes no output.
    return key.endswith("num_batches_tracked")


def _shape(shape: tuple[int, ...]) -> str:
    return f"[{', '.join(map(str, shape))}]"


def fit_shapes(*, model: Shapes, head: Collection[str], file: Shapes, name: str) -> Fit:
    """How ``file``'s tensors fit ``model``'s: by name, else in order; ``ModelError`` (without
    the file's path) naming the first that does not.

    By order, each of the model's tensors but its classifier takes the file's tensor at
    the same place (BatchNorm counters left out on both sides); a trailing 2-D weight and
    1-D bias beyond them is the file's own classifier, kept where it fits the model's.
    """
    body = [k for k in model if k not in head and not _counter(k)]
    own_head = [k for k in model if k in head]
    classes = model[own_head[0]][0] if own_head and model[own_head[0]] else None
    if all(file.get(k) == model[k] for k in body):
        keep = bool(own_head) and all(file.get(k) == model[k] for k in own_head)
        pairs = {k: k for k in body + (own_head if keep else [])}
        return Fit(pairs, "name", classes if keep else None)
    theirs = [k for k in file if not _counter(k)]
    their_head: list[str] = []
    if len(theirs) == len(body) + 2 and len(file[theirs[-2]]) == 2 and len(file[theirs[-1]]) == 1:
        theirs, their_head = theirs[:-2], theirs[-2:]
    differ = next(
        (
            (i, m, t)
            for i, (m, t) in enumerate(zip(body, theirs, strict=False))
            if model[m] != file[t]
        ),
        None,
    )
    first = (
        f"tensor {differ[0] + 1}: the file's '{differ[2]}' {_shape(file[differ[2]])} against "
        f"{name}'s '{differ[1]}' {_shape(model[differ[1]])}"
        if differ
        else None
    )
    if sum(k in file for k in body) * 2 >= len(body):
        # Mostly timm's own names: what is missing or of another shape says more than order.
        wrong = next(k for k in body if file.get(k) != model[k])
        detail = (
            f"the file's '{wrong}' is {_shape(file[wrong])}, {name}'s {_shape(model[wrong])}"
            if wrong in file
            else f"'{wrong}' {_shape(model[wrong])} is not in the file"
        )
        raise ModelError(f"weights do not fit {name} ({detail})")
    if len(theirs) != len(body):
        raise ModelError(
            f"weights do not fit {name} (the file has {len(file) - sum(map(_counter, file))} "
            f"tensors, {name} {len(body)} and {len(own_head)} in its classifier"
            + (f"; first to differ: {first}" if first else "")
            + ")"
        )
    if first:
        raise ModelError(f"weights do not fit {name} ({first})")
    pairs = dict(zip(body, theirs, strict=True))
    keep = [file[t] for t in their_head] == [model[k] for k in own_head]
    if keep:
        pairs.update(zip(own_head, their_head, strict=True))
    return Fit(pairs, "order", classes if keep and their_head else None)


def naming(keys: Collection[str]) -> str:
    """Whose names a file's keys are, for the description of a file mapped by order."""
    for who, prefixes in NAMINGS:
        if any(k.startswith(prefixes) for k in keys):
            return who
    return "another implementation's"


def describe(*, fit: Fit, path: Path, classes: int | None) -> str:
    """One line on what was loaded: how many tensors, from where, by name or by order."""
    n = sum(not _counter(k) for k in fit.pairs)
    if fit.by == "name":
        line = f"weights: {n} tensors by name from {path}"
    else:
        renamed = next(((m, t) for m, t in fit.pairs.items() if m != t), None)
        example = f" ({renamed[1]} -> {renamed[0]})" if renamed else ""
        line = (
            f"weights: {n} tensors from {path}, mapped by order from "
            f"{naming(list(fit.pairs.values()))} names{example}"
        )
    if fit.head is not None:
        return f"{line}; the file's {fit.head}-class head kept"
    return f"{line}; fresh {classes}-class head" if classes else line


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_weights(*, model: nn.Module, path: Path, name: str) -> str:
    """Load ``path`` into ``model`` (by name or by order) and return the one-line description;
    ``ModelError`` where it does not fit, leaving no tensor of the backbone unset."""
    state = read_state_dict(path=path)
    head = head_keys(model=model)
    try:
        fit = fit_shapes(
            model=_shapes(model),
            head=head,
            file={k: tuple(v.shape) for k, v in state.items()},
            name=name,
        )
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    missing, unexpected = model.load_state_dict(
        {m: state[t] for m, t in fit.pairs.items()}, strict=False
    )
    unset = [k for k in missing if k not in head and not _counter(k)]
    if unset or unexpected:
        # fit_shapes has paired every tensor; this guards against a model whose state dict
        # does not round-trip, which would otherwise train partly from random init.
        raise ModelError(
            f"{path}: weights do not fit {name} ('{(unset or unexpected)[0]}' was not set)"
        )
    classes = next((int(v.shape[0]) for k, v in model.state_dict().items() if k in head), None)
    return describe(fit=fit, path=path, classes=classes)


def check_file(*, name: str, path: Path, num_classes: int | None, guess: bool = False) -> str:
    """What ``load_weights`` would say for ``name`` built with ``num_classes`` (None: no head
    part), without building real weights: the model is made on the meta device.

    With ``guess``, a file that does not fit says which common architecture it does fit,
    when ``name`` was comp's choice rather than the user's.
    """
    state = read_state_dict(path=path)
    file = {k: tuple(v.shape) for k, v in state.items()}
    model = _meta_model(name, num_classes=num_classes or 0)
    try:
        fit = fit_shapes(model=_shapes(model), head=head_keys(model=model), file=file, name=name)
    except ModelError as e:
        fits = guess_architecture(file=file, exclude=name) if guess else None
        hint = f"; they fit {fits}: pass --model {fits}" if fits else ""
        raise ModelError(f"{path}: {e}{hint}") from None
    return describe(fit=fit, path=path, classes=num_classes)


def guess_architecture(*, file: Shapes, exclude: str) -> str | None:
    """The first of COMMON_ARCHITECTURES (but ``exclude``) that the file's tensors fit."""
    for arch in COMMON_ARCHITECTURES:
        if arch == exclude:
            continue
        model = _meta_model(arch, num_classes=0)
        try:
            fit_shapes(model=_shapes(model), head=head_keys(model=model), file=file, name=arch)
        except ModelError:
            continue
        return arch
    return None


def _meta_model(name: str, *, num_classes: int) -> nn.Module:
    # Shapes only: on the meta device a model is built without allocating or initialising.
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, num_classes=num_classes)


def loaded_from(model: nn.Module) -> str | None:
    """The description ``create_model`` left on a model it loaded from a pretrained file."""
    value = getattr(model, ATTRIBUTE, None)
    return value if isinstance(value, str) else None
