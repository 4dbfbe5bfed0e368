"""Model factory, stage freezing and checkpoints.

Reads timm weights: from ``pretrained_file`` (a local .pth/.safetensors, e.g. an
attached Kaggle dataset, or an earlier comp checkpoint; fitted by comp.models.weights,
also under another implementation's key names), from timm's cache or the hub. Writes checkpoints: the weights under ``state_dict`` plus plain metadata, so
timm's own ``load_state_dict`` and ``pretrained_cfg_overlay=dict(file=...)`` read
them back.
"""

from __future__ import annotations

import logging
import socket
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from comp import files
from comp.config import PRETRAINED_MODEL
from comp.errors import ModelError
from comp.models import nets, weights

log = logging.getLogger(__name__)


def create_model(
    name: str,
    *,
    num_classes: int,
    pretrained: str = "auto",
    pretrained_file: str | Path | None = None,
    drop_path_rate: float = 0.0,
    small_input: bool = False,
) -> tuple[nn.Module, str]:
    """A timm model with a fresh ``num_classes`` head, and where its weights came from.

    ``small_input`` gives a timm CNN a stem for small images (``small_stem``), after its
    weights are loaded: they fit either stem. comp's own nets are left as they are.

    ``pretrained`` is "auto" (weights if they can be had, else random init with a
    warning), "true" (weights or an error) or "false" (random init). The baseline nets
    ``mlp`` and ``simple_cnn`` (comp.models.nets) have no pretrained weights: they start from
    random init, or from ``pretrained_file``, a comp checkpoint of the same net.

    A timm model loaded from ``pretrained_file`` carries one line on what was loaded, by
    name or mapped by order: ``comp.models.weights.loaded_from(model)``.
    """
    if name in nets.NAMES:
        return _create_baseline(
            name, num_classes=num_classes, pretrained=pretrained, pretrained_file=pretrained_file
        )
    model, source = _create_timm(
        name,
        num_classes=num_classes,
        pretrained=pretrained,
        pretrained_file=pretrained_file,
        drop_path_rate=drop_path_rate,
    )
    return (small_stem(model) if small_input else model), source


def small_stem(model: nn.Module) -> nn.Module:
    """``model`` with its first conv at stride 1 and its stem max-pool gone, in place.

    A timm ResNet quarters its input before the first block (a 64 px sprite is 16x16
    there, 2x2 at the end); the records for small images from scratch keep the resolution
    instead (CIFAR ResNets). Weights are unchanged, so pretrained ones still load.
    """
    first = getattr(model, "pretrained_cfg", {}).get("first_conv")
    conv = model.get_submodule(first) if isinstance(first, str) else None
    name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    if not isinstance(conv, nn.Conv2d) or hasattr(model, "patch_embed"):
        raise ModelError(
            f"small_input: {name} has no convolutional stem to change (a ViT cuts its image "
            "into patches); leave small_input off for it"
        )
    conv.stride = (1, 1)
    if isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()
    return model


def _create_timm(
    name: str,
    *,
    num_classes: int,
    pretrained: str,
    pretrained_file: str | Path | None,
    drop_path_rate: float,
) -> tuple[nn.Module, str]:
    _check_timm_name(name)
    # Only when asked for: not every timm model takes it.
    extra: dict[str, Any] = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    if pretrained_file is not None:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise ModelError(f"{path}: pretrained_file not found")
        # Built bare and fitted here, not through timm's pretrained_cfg_overlay: that one
        # loads a file under other key names with strict=False, i.e. loads nothing.
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **extra)
        setattr(model, weights.ATTRIBUTE, weights.load_weights(model=model, path=path, name=name))
        return model, f"file:{path}"
    if pretrained == "false":
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **extra), "random"
    try:
        if not _hub_reachable():
            # Offline (a Kaggle notebook without internet): the local caches or nothing,
            # without waiting through the hub client's retries.
            cached = cached_weights(name)
            if cached is None:
                raise OSError(
                    "the model hub cannot be reached and the weights are not in the local cache"
                )
            # timm's own weights of this very model: timm loads them, with the checkpoint
            # filters some of its architectures need.
            return timm.create_model(
                name,
                pretrained=True,
                num_classes=num_classes,
                pretrained_cfg_overlay={"file": cached},
                **extra,
            ), f"cache:{cached}"
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **extra), "timm"
    except Exception as e:  # the hub raises many kinds of network and lookup errors
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if pretrained == "true":
            raise ModelError(
                f"cannot get pretrained weights for {name} ({reason}); download them where there is "
                "internet and pass --pretrained-file, or use --pretrained false"
            ) from None
        warnings.warn(
            f"no pretrained weights for {name} ({reason}); training from random init. "
            "Pass --pretrained-file to use a local weights file.",
            stacklevel=2,
        )
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **extra), "random"


def _check_timm_name(name: str) -> None:
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ModelError(f"unknown timm model '{name}'{hint}")


def weights_source(name: str, *, pretrained: str, pretrained_file: str | Path | None) -> str:
    """Where ``create_model`` would find weights ("random" for none), without building the model.

    For ``comp init``, which prints the recipe before anything is downloaded. ``auto``
    looks for the weights of the model it would fine-tune.
    """
    if name == "auto":
        name = PRETRAINED_MODEL
    if pretrained_file is not None:
        return f"file:{pretrained_file}"
    if pretrained == "false" or name in nets.NAMES or not timm.is_model(name):
        return "random"
    if timm.models.get_pretrained_cfg(name) is None:
        return "random"
    if _hub_reachable():
        return "timm"
    cached = cached_weights(name)
    return f"cache:{cached}" if cached else "random"


def describe_file(
    name: str, *, path: str | Path, num_classes: int | None = None, guess: bool = False
) -> str:
    """What ``create_model(name, pretrained_file=path)`` would load, as one line, or a
    ``ModelError`` where the file does not fit: for `comp init` and `comp train`, which
    must refuse a file before they write anything, cheaply (no weights are allocated).

    ``name`` "auto" is the model comp fine-tunes; then, or with ``guess``, a refusal
    names the common architecture the file fits, if one does. ``num_classes`` None
    leaves the head out of the description.
    """
    guess = guess or name == "auto"
    name = PRETRAINED_MODEL if name == "auto" else name
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"{path}: pretrained_file not found")
    if name in nets.NAMES:
        _create_baseline(
            name, num_classes=num_classes or 2, pretrained="auto", pretrained_file=path
        )
        return f"weights: a comp checkpoint of {name} from {path}"
    _check_timm_name(name)
    return weights.check_file(name=name, path=path, num_classes=num_classes, guess=guess)


def _create_baseline(
    name: str, *, num_classes: int, pretrained: str, pretrained_file: str | Path | None
) -> tuple[nn.Module, str]:
    model = nets.build(name, num_classes)
    if pretrained_file is None:
        if pretrained == "true":
            raise ModelError(
                f"{name} is trained from scratch and has no pretrained weights; use "
                "--pretrained false (or auto), or --pretrained-file with a comp checkpoint of it"
            )
        return model, "random"
    path = Path(pretrained_file).expanduser()
    if not path.is_file():
        raise ModelError(f"{path}: pretrained_file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"{path}: not a weights file ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path}: not a state dict or comp checkpoint")
    own = model.state_dict()
    # Like timm's pretrained weights: the head is kept only where it fits the classes.
    head_fits = all(
        k in state and getattr(state[k], "shape", None) == v.shape
        for k, v in own.items()
        if k.startswith("head.")
    )
    if not head_fits:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ModelError(
            f"{path}: weights do not fit {name} ({str(e).splitlines()[-1].strip()})"
        ) from None
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        wrong = (missing or unexpected)[0]
        raise ModelError(f"{path}: weights do not fit {name} (e.g. '{wrong}')")
    return model, f"file:{path}"


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def cached_weights(name: str) -> str | None:
    """Pretrained weights of ``name`` already in the Hugging Face or torch hub cache, if any."""
    from huggingface_hub import try_to_load_from_cache

    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    cfg: dict[str, Any] = pretrained_cfg.to_dict() if pretrained_cfg is not None else {}
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return found
    url = cfg.get("url")
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if path.is_file():
            return str(path)
    return None


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Stage 1 trains the classifier alone; stage 2 trains everything."""
    for p in model.parameters():
        p.requires_grad = not frozen
    head = model.get_classifier()  # type: ignore[operator]
    for p in head.parameters():
        p.requires_grad = True


def set_train_mode(model: nn.Module, *, frozen: bool, frozen_bn: bool = False) -> None:
    """Train mode, except that a frozen backbone (or, with ``frozen_bn``, every BatchNorm
    below the head) keeps its running statistics fixed."""
    model.train()
    if frozen or frozen_bn:
        head = set(model.get_classifier().modules())  # type: ignore[operator]
        for m in model.modules():
            if m not in head and isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def normalisation(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = timm.data.resolve_data_config({}, model=model)
    return torch.tensor(cfg["mean"], dtype=torch.float32), torch.tensor(
        cfg["std"], dtype=torch.float32
    )


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's weights on the CPU, untouched by further training."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def save_checkpoint(
    path: Path, model: nn.Module | dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state = cpu_state(model) if isinstance(model, nn.Module) else model
    files.write_with(path, lambda tmp: torch.save({"state_dict": state, "meta": meta}, tmp))


def load_checkpoint(
    path: Path, *, classes: list[str] | None = None, model_name: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a comp checkpoint, refusing one trained for other classes or another model."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta = ckpt["meta"]
    except FileNotFoundError:
        raise ModelError(f"{path}: checkpoint not found") from None
    except Exception as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        if "Weights only load failed" in first:
            first = (
                "a pickled object such as torch.save(model), not comp's weights and metadata"
                if "safe_globals" in str(e)
                else "not a file torch.save wrote"
            )
        raise ModelError(
            f"{path}: not a comp checkpoint ({type(e).__name__}: {first[:120]})"
        ) from None
    if classes is not None and list(meta["classes"]) != list(classes):
        differ = sorted(set(meta["classes"]) ^ set(classes))
        detail = (
            f"; differing: {', '.join(differ[:5])}" if differ else "; the same in another order"
        )
        raise ModelError(
            f"{path}: checkpoint was trained on other classes ({len(meta['classes'])} classes, "
            f"expected {len(classes)}{detail})"
        )
    if model_name is not None and meta["model"] != model_name:
        raise ModelError(f"{path}: checkpoint is a {meta['model']}, expected {model_name}")
    model = _build(meta["model"], num_classes=len(meta["classes"]))
    if meta.get("small_input") and meta["model"] not in nets.NAMES:
        model = small_stem(model)
    model.load_state_dict(ckpt["state_dict"])
    return model, meta


def _build(name: str, *, num_classes: int) -> nn.Module:
    """A randomly initialised model by name: a baseline net of comp.models.nets or a timm model."""
    if name in nets.NAMES:
        return nets.build(name, num_classes)
    return timm.create_model(name, pretrained=False, num_classes=num_classes)
