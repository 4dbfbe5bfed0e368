"""A model's outputs over many images: softmax probabilities, and pooled backbone features.

Reads images (memory-mapped arrays) and a model; writes nothing. Used by training
(validation, the cached frozen stage), prediction, the scikit-learn heads and the
``embed`` similarity features of comp.folds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

# Not tqdm.auto: its asyncio variant calls iter() on a loader when the bar is made, which
# starts a second pass over the data (and draws from the loader's seeded generator).
from tqdm import tqdm

from comp import console
from comp.data.transforms import ImageDataset, to_input
from comp.hardware.distributed import Dist, gather


@torch.inference_mode()
def head_probs(
    head: nn.Module,
    features: torch.Tensor,
    targets: torch.Tensor,
    *,
    device: torch.device,
    autocast: Callable[[], Any],
    batch_size: int = 4096,
) -> tuple[np.ndarray, float]:
    """The classifier's probabilities and mean cross-entropy on cached features."""
    head.eval()
    out, total_loss = [], 0.0
    for start in range(0, len(features), batch_size):
        with autocast():
            logits = head(features[start : start + batch_size].to(device)).float()
        y = targets[start : start + batch_size].to(device)
        total_loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        out.append(torch.softmax(logits, 1).cpu().numpy())
    head.train()
    return np.concatenate(out).astype(np.float32), total_loss / max(len(features), 1)


@torch.inference_mode()
def predict_probs(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    autocast: Callable[[], Any] = nullcontext,
    channels_last: bool = False,
    desc: str | None = None,
) -> tuple[np.ndarray, float]:
    """Softmax probabilities over a loader, and the mean cross-entropy where targets are known."""
    model.eval()
    out, total_loss, seen = [], 0.0, 0
    for xb, yb in tqdm(
        loader,
        desc=desc,
        leave=False,
        unit="batch",
        disable=True if desc is None else console.no_bar(),
    ):
        x = to_input(xb, mean=mean, std=std, device=device, channels_last=channels_last)
        with autocast():
            logits = model(x).float()
        if (yb >= 0).all():
            total_loss += float(nn.functional.cross_entropy(logits, yb.to(device), reduction="sum"))
            seen += len(yb)
        out.append(torch.softmax(logits, 1).cpu().numpy())
    if not out:
        return np.zeros((0, 0), np.float32), 0.0
    return np.concatenate(out).astype(np.float32), total_loss / max(seen, 1)


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    images: np.ndarray,
    index: np.ndarray,
    *,
    transform: A.Compose | None,
    views: int,
    batch_size: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    autocast: Callable[[], Any],
    channels_last: bool,
    dist_: Dist,
    desc: str,
    workers: int = 0,
) -> torch.Tensor:
    """Pooled backbone features (views, n, D) of ``images[index]``, float32 on the CPU.

    With the backbone frozen these are exactly what the head sees in stage 1 (BatchNorm
    and dropout are off in the backbone then), so they are computed once, not per epoch.
    """
    model.eval()
    out = []
    for view in range(views):
        # Each process embeds one contiguous part; the parts are gathered in order.
        part = np.array_split(index, dist_.world)[dist_.rank]
        loader = DataLoader(
            ImageDataset(images, None, transform, index=part),
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=device.type == "cuda",
        )
        chunks = []
        for xb, _ in tqdm(
            loader,
            desc=f"{desc} view {view + 1}/{views}",
            leave=False,
            unit="batch",
            disable=console.no_bar(),
        ):
            x = to_input(xb, mean=mean, std=std, device=device, channels_last=channels_last)
            with autocast():
                f = model.forward_head(model.forward_features(x), pre_logits=True)  # type: ignore[operator]
            chunks.append(f.float().cpu())
        empty = torch.empty(0, 0)
        local = torch.cat(chunks) if chunks else empty
        out.append(torch.cat([p for p in gather(local, dist_) if p.numel()]))
    return torch.stack(out)
