"""A semantic embedding of the competition's own images, learned with no weights and no labels.

Reads the decoded train and test images (comp.data.cache's uint8 array); writes nothing.
comp.folds.similarity uses it for ``--method embed`` when no pretrained backbone can be had.

Twins that share a meaning but not pixels (one object drawn by two artists, a product
photographed from two sides) look unalike to the pixel and colour features. A backbone
pretrained on photos sees them as alike; without one, a small net (comp's ``airnet_s``)
learns it here, by contrast (SimCLR's NT-Xent): two restyled views of each image must
find each other among the batch. The restyling (crops and flips, colour jitter, grey,
inverted or permuted colours, edges for fills, pixelation) is what an image can lose
and stay itself, so images that differ only in such ways land near each other.

No labels, on purpose: a net trained on the labels pulls whole classes together, and
folds built on it would keep classes, not twins, apart. Every image, train and test,
trains it: the test set's images are what its distances are measured on.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from comp import console
from comp.data.batches import BatchAugment
from comp.models.nets import AIRNETS, AirNet

# Fixed, not timed, so two runs give one embedding: about 40 s on two CPU cores
# (benchmarks/README.md), whatever the data's size: the steps do not grow with it.
STEPS = 600
BATCH = 128
SIZE = 16  # images are learned and embedded at this side: layouts, not fine detail
TEMPERATURE = 0.2
NET = "airnet_xs"


def learn_embedding(
    images: np.ndarray,
    *,
    steps: int | None = None,
    batch_size: int = BATCH,
    net_name: str = NET,
    seed: int = 0,
) -> np.ndarray:
    """L2-normalised embeddings (N, D) of ``images`` (N, H, W, 3 uint8), from a net trained
    on them for ``steps`` (default STEPS) contrastive steps on the CPU."""
    steps = STEPS if steps is None else steps  # read now: a test may shorten it
    x = _to_tensor(images)
    if not len(x):
        return np.zeros((0, AIRNETS[net_name][-1]), np.float32)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = AirNet(128, name=net_name, widths=AIRNETS[net_name])
        net.init_whitening(x[torch.randperm(len(x))[:512]])
        optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=2e-3, total_steps=max(1, steps), pct_start=0.15
        )
        batch = min(batch_size, len(x))
        net.train()
        bar = tqdm(range(steps), desc="embed: learning", disable=console.no_bar(), leave=False)
        for _ in bar:
            rows = torch.randint(0, len(x), (batch,))
            views = torch.cat([restyle(x[rows]), restyle(x[rows])])
            loss = nt_xent(net(views), temperature=TEMPERATURE)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        net.eval()
        with torch.inference_mode():
            feats = torch.cat(
                [net.forward_head(net.forward_features(b), pre_logits=True) for b in x.split(512)]
            )
    return F.normalize(feats, dim=1).numpy()


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """Float NCHW in [0, 1] at SIZE (area-averaged: small images keep their layout)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    if x.shape[-1] != SIZE or x.shape[-2] != SIZE:
        x = F.interpolate(x, size=(SIZE, SIZE), mode="area")
    return x


# Moves and crops a drawing can take and stay itself.
GEOMETRY = BatchAugment(flip=True, affine=2.0, affine_p=0.9, colour=0.4, colour_p=0.8)


def restyle(x: torch.Tensor) -> torch.Tensor:
    """One random restyling of each image of a float NCHW batch in [0, 1]."""
    n = len(x)
    x = GEOMETRY(x)

    def some(p: float) -> torch.Tensor:
        return (torch.rand(n, 1, 1, 1) < p).to(x.dtype)

    # Another palette: the channels in another order, or the colours inverted.
    perm = x[:, torch.randperm(3)]
    pick = some(0.5)
    x = pick * perm + (1 - pick) * x
    pick = some(0.2)
    x = pick * (1 - x) + (1 - pick) * x
    # Ink for paint: the edges of the fills, dark on light.
    grey = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    pick = some(0.25)
    x = pick * (1 - edges(grey)).expand_as(x) + (1 - pick) * x
    pick = some(0.25)
    x = pick * grey.expand_as(x) + (1 - pick) * x
    # Coarser pixels.
    pick = some(0.2)
    coarse = F.interpolate(F.avg_pool2d(x, 4), scale_factor=4, mode="nearest")
    return pick * coarse + (1 - pick) * x


def edges(grey: torch.Tensor) -> torch.Tensor:
    """Sobel edge strength of a grey N1HW batch, scaled to [0, 1] per image."""
    k = grey.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), torch.stack([k, k.T])[:, None])
    m = g.norm(dim=1, keepdim=True)
    return m / m.amax((2, 3), keepdim=True).clamp_min(1e-6)


def nt_xent(z: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """SimCLR's loss for 2N projections, rows i and i + N being two views of one image."""
    n = len(z) // 2
    z = F.normalize(z.float(), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(-math.inf)  # an image is not its own pair
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return nn.functional.cross_entropy(sim, target)
