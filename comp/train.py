"""Training: two-stage fine-tuning of a timm model on every fold, with early stopping on macro-F1.

Reads the workspace config, the folds file (``comp folds``) and the training
images. Writes one run folder, ``runs/<name>/``:

- ``config.yaml``      the resolved config, enough to reproduce the run
- ``classes.json``     the label space, in model-output order
- ``transforms.json``  the training augmentation, serialised by albumentations
- ``fold{k}/best.pt``  the best checkpoint of fold k (by validation macro-F1)
- ``fold{k}/last.pt``  while fold k trains: everything ``--resume`` needs after a kill
- ``fold{k}/metrics.csv``  one row per epoch: loss, accuracy, macro-F1, lr, seconds
- ``fold{k}/oof.csv``  fold k's validation probabilities at its best epoch
- ``oof.csv``, ``cv.json``  all folds' out-of-fold probabilities and the CV score
- ``curves.png``       loss, accuracy and macro-F1 per epoch and fold
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pandas as pd
import torch
import yaml
from sklearn.metrics import accuracy_score, f1_score
from sklearn.utils.class_weight import compute_class_weight
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    WeightedRandomSampler,
)

# Not tqdm.auto: its asyncio variant calls iter() on a loader when the bar is made, which
# starts a second pass over the data (and draws from the loader's seeded generator).
from tqdm import tqdm

from comp import io
from comp.cache import cache_dir, cached_images
from comp.config import Config, ConfigError, suggest, to_dict
from comp.data import DataError, load_competition, read_csv, resolve
from comp.folds import folds_path, read_folds
from comp.models import (
    cpu_state,
    create_model,
    normalisation,
    save_checkpoint,
    set_backbone_frozen,
    set_train_mode,
)
from comp.plots import plot_curves
from comp.transforms import ImageDataset, create_transform, to_input

Echo = Callable[[str], None]
EpochHook = Callable[[int, int, float], None]


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{spec}' asked for, but CUDA is not available here")
    return torch.device(spec)


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun launch: rank r of world processes (0 of 1 alone)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(spec: str) -> tuple[Dist, torch.device]:
    """Join the process group that torchrun describes in the environment, if there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(spec)
    if world <= 1:
        return Dist(), device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size()), device


def gather(obj: Any, dist_: Dist) -> list[Any]:
    """Every process's ``obj``, in rank order (just ``[obj]`` alone)."""
    if dist_.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist_.world
    dist.all_gather_object(out, obj)
    return out


def barrier(dist_: Dist) -> None:
    if dist_.world > 1:
        import torch.distributed as dist

        dist.barrier()


def auto_workers(requested: int, device: torch.device) -> int:
    if requested >= 0:
        return requested
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    # On CPU the model needs every core and augmenting in-memory arrays is cheap, so
    # workers would only compete with it; on a GPU they keep the device fed.
    return min(8, cores - 1) if device.type == "cuda" else 0


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def make_autocast(device: torch.device, enabled: bool) -> Callable[[], Any]:
    """A context factory for mixed precision on CUDA (bf16 where supported), a no-op elsewhere."""
    dtype = amp_dtype(device, enabled)
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _reseed_worker(_: int) -> None:
    # Each worker gets its own augmentation stream, derived from the loader's seed.
    info = torch.utils.data.get_worker_info()
    if info is not None and getattr(info.dataset, "transform", None) is not None:
        info.dataset.transform.set_random_seed(torch.initial_seed() % 2**32)  # type: ignore[attr-defined]


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true) ** gamma.

    timm and torchvision only ship the sigmoid (multi-label) form.
    """

    def __init__(self, *, gamma: float, weight: torch.Tensor | None, label_smoothing: float):
        super().__init__()
        self.gamma = gamma
        self.ce = nn.CrossEntropyLoss(
            weight=weight, label_smoothing=label_smoothing, reduction="none"
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p_true = logits.float().softmax(1).gather(1, target[:, None]).squeeze(1)
        return ((1 - p_true) ** self.gamma * self.ce(logits.float(), target)).mean()


def make_loss(cfg: Config, train_targets: np.ndarray, *, n_classes: int) -> nn.Module:
    """Cross-entropy or focal loss, optionally class-weighted and label-smoothed."""
    weight = None
    if cfg.class_weights == "balanced":
        present = np.unique(train_targets)
        balanced = compute_class_weight("balanced", classes=present, y=train_targets)
        full = np.ones(n_classes)
        full[present] = balanced
        weight = torch.as_tensor(full, dtype=torch.float32)
    if cfg.loss == "focal":
        return FocalLoss(gamma=cfg.focal_gamma, weight=weight, label_smoothing=cfg.label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def _fast_macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    tp = np.bincount(y[y == pred], minlength=n_classes)
    support = np.bincount(y, minlength=n_classes)
    predicted = np.bincount(pred, minlength=n_classes)
    denom = support + predicted
    present = denom > 0
    return float((2 * tp[present] / denom[present]).mean()) if present.any() else 0.0


def fit_priors(probs: np.ndarray, y: np.ndarray, *, n_classes: int, passes: int = 3) -> np.ndarray:
    """Per-class probability multipliers that maximise macro-F1 (coordinate ascent in log space).

    Imbalanced data make the argmax favour big classes; macro-F1 rewards the small ones.
    """
    grid = np.exp(np.linspace(-2.0, 2.0, 21))
    w = np.ones(n_classes)
    best = _fast_macro_f1(y, probs.argmax(1), n_classes)
    for _ in range(passes):
        improved = False
        for c in range(n_classes):
            keep = w[c]
            for g in grid:
                w[c] = g
                score = _fast_macro_f1(y, (probs * w).argmax(1), n_classes)
                if score > best + 1e-9:
                    best, keep, improved = score, g, True
            w[c] = keep
        if not improved:
            break
    return w


def write_priors(run_dir: Path, probs: np.ndarray, y: np.ndarray, *, classes: list[str]) -> None:
    """Fit class priors on all of a run's OOF and keep them as adjust.json, for predict --adjust."""
    fitted = fit_priors(probs, y, n_classes=len(classes)).round(6).tolist()
    io.write_json(run_dir / "adjust.json", dict(zip(classes, fitted, strict=True)))


def load_priors(run_dir: Path, classes: list[str]) -> np.ndarray:
    path = run_dir / "adjust.json"
    if not path.exists():
        raise DataError(f"{run_dir}: no adjust.json (it needs two or more trained folds)")
    fitted = json.loads(path.read_text())
    return np.array([fitted[c] for c in classes])


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_score(y_true, y_pred, average="macro"))


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    best_f1: float
    epochs_run: int
    valid_probs: np.ndarray  # (n_valid, n_classes) at the best epoch
    pretrained: str


def run_name(cfg: Config) -> str:
    return f"{cfg.model.replace('/', '_')}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def train(
    root: Path,
    cfg: Config,
    *,
    name: str | None = None,
    folds: list[int] | None = None,
    echo: Echo = tqdm.write,
    on_epoch: EpochHook | None = None,
    progress: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``folds`` (default: all) of a run and return its CV summary (also written to cv.json).

    With ``resume``, folds that finished are kept and an interrupted fold continues from
    its last completed epoch (``fold{k}/last.pt``), ending as an uninterrupted run would.

    ``on_epoch(fold, epoch, valid_macro_f1)`` is called after every epoch; tuning
    reports to Optuna through it, and may stop the run by raising.
    """
    comp = load_competition(root, cfg)
    table = read_folds(folds_path(root, cfg), labels=comp.train)
    classes = comp.classes
    all_folds = sorted(int(k) for k in table["fold"].unique())
    folds = all_folds if folds is None else folds
    for k in folds:
        if k not in all_folds:
            raise ConfigError(f"--fold {k}: folds are {all_folds[0]}..{all_folds[-1]}")
    dist_, device = init_distributed(cfg.device)
    if not dist_.main:
        # One process writes the run and speaks; the others only compute.
        echo, progress = (lambda _: None), False
    optimizers = [str(o) for o in list_optimizers()]
    if cfg.optimizer.lower() not in optimizers:
        raise ConfigError(
            f"optimizer '{cfg.optimizer}' is not a timm optimizer{suggest(cfg.optimizer, optimizers)}"
        )

    # Every process must write to (and the first one name) the same run.
    run_dir = root / "runs" / gather(name or run_name(cfg), dist_)[0]
    resolved = to_dict(cfg)
    saved = run_dir / "config.yaml"
    if resume and not saved.exists():
        raise ConfigError(f"--resume: {run_dir} is not a run to resume (no config.yaml)")
    if saved.exists() and yaml.safe_load(saved.read_text()) != resolved:
        raise ConfigError(f"{run_dir}: this run was trained with another config; pick a new --name")
    transform = create_transform(cfg.aug, img_size=cfg.img_size)
    if cfg.pretrained_file is not None:
        # Like every path in comp.yaml, relative to the workspace, not to where comp runs.
        cfg = dataclasses.replace(cfg, pretrained_file=str(resolve(root, cfg.pretrained_file)))
    elif cfg.pretrained == "auto":
        # Find out once, not once per fold, whether pretrained weights can be had.
        _, source = create_model(cfg.model, num_classes=len(classes), pretrained="auto")
        if source == "random":
            cfg = dataclasses.replace(cfg, pretrained="false")
        echo(f"weights: {source}")
    processes = f", {dist_.world} processes" if dist_.world > 1 else ""
    echo(
        f"run {run_dir.name}: {cfg.model}, {len(classes)} classes, {len(table)} images, folds {folds}, device {device}{processes}"
    )

    # Decode every image once (and, with the cache, once across runs); each fold and
    # epoch reads the same memory-mapped array. The first process builds the cache.
    if not dist_.main:
        barrier(dist_)
    images = cached_images(
        comp.train_paths(list(table["Id"])),
        cfg.img_size,
        cache_dir=cache_dir(root, enabled=cfg.cache_images),
        centre=cfg.centre,
        desc="decode train",
        progress=progress,
    )
    if dist_.main:
        barrier(dist_)
        # Only now that every image has been read: bad data leaves no run folder behind.
        io.write_yaml(run_dir / "config.yaml", resolved)
        io.write_json(run_dir / "classes.json", classes)
        io.write_json(run_dir / "transforms.json", A.to_dict(transform))
    targets = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)

    if cfg.head != "linear":
        if dist_.world > 1:
            raise ConfigError(f"head '{cfg.head}' is fitted in one process; drop --devices")
        from comp.heads import train_heads

        todo = [k for k in folds if not (resume and (run_dir / f"fold{k}" / "oof.csv").exists())]
        train_heads(
            root,
            cfg,
            run_dir=run_dir,
            images=images,
            targets=targets,
            fold_of=table["fold"].to_numpy(),
            folds=todo,
            table=table,
            classes=classes,
            device=device,
            echo=echo,
            progress=progress,
        )
        return summarise(run_dir, classes=classes, n_folds=len(all_folds))

    for k in folds:
        if resume and (run_dir / f"fold{k}" / "oof.csv").exists():
            echo(f"fold {k}: already trained")
            continue
        if not resume and (run_dir / f"fold{k}" / "last.pt").exists():
            echo(f"fold {k}: was interrupted; training it again (--resume would go on from it)")
        valid_idx = np.flatnonzero(table["fold"].to_numpy() == k)
        train_idx = np.flatnonzero(table["fold"].to_numpy() != k)
        result = train_fold(
            cfg,
            fold=k,
            images=images,
            targets=targets,
            train_idx=train_idx,
            valid_idx=valid_idx,
            n_classes=len(classes),
            classes=classes,
            device=device,
            transform=transform,
            out_dir=run_dir / f"fold{k}",
            echo=echo,
            on_epoch=on_epoch,
            progress=progress,
            dist_=dist_,
            resume=resume,
        )
        if dist_.main:
            oof = table.iloc[valid_idx][["Id", "label", "fold"]].reset_index(drop=True)
            oof = pd.concat([oof, pd.DataFrame(result.valid_probs, columns=classes)], axis=1)
            io.write_csv(run_dir / f"fold{k}" / "oof.csv", oof)
            # A finished fold is never resumed; its optimizer state would only take space.
            (run_dir / f"fold{k}" / "last.pt").unlink(missing_ok=True)
        echo(
            f"fold {k}: best macro-F1 {result.best_f1:.4f} at epoch {result.best_epoch} ({result.epochs_run} epochs run)"
        )
    summary = summarise(run_dir, classes=classes, n_folds=len(all_folds)) if dist_.main else {}
    barrier(dist_)
    return summary


def summarise(run_dir: Path, *, classes: list[str], n_folds: int) -> dict[str, Any]:
    """Gather every fold's OOF of a run into oof.csv and cv.json (folds may be trained apart)."""
    parts = []
    for k in range(n_folds):
        path = run_dir / f"fold{k}" / "oof.csv"
        if path.exists():
            # As text, so labels and Ids such as "NA" or "None" stay what they are.
            part = read_csv(path)
            parts.append(part.astype(dict.fromkeys(classes, np.float64)).astype({"fold": int}))
    if not parts:
        raise DataError(f"{run_dir}: no trained folds")
    oof = pd.concat(parts, ignore_index=True)
    probs = oof[classes].to_numpy(np.float64)
    y = oof["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    pred = probs.argmax(1)
    per_fold = {}
    folds = oof["fold"].to_numpy()
    for k in sorted(set(folds.tolist())):
        idx = np.flatnonzero(folds == k)
        per_fold[str(k)] = round(macro_f1(y[idx], pred[idx]), 6)
    adjusted = None
    if len(per_fold) >= 2:
        # Class priors that maximise macro-F1, fitted on the other folds and scored on each
        # held-out fold, so the adjusted CV is as honest as the plain one.
        adjusted_pred = np.empty_like(pred)
        for fold_name in per_fold:
            held = folds == int(fold_name)
            w = fit_priors(probs[~held], y[~held], n_classes=len(classes))
            adjusted_pred[held] = (probs[held] * w).argmax(1)
        adjusted = round(macro_f1(y, adjusted_pred), 6)
        write_priors(run_dir, probs, y, classes=classes)
    summary = {
        "run": run_dir.name,
        "cv_macro_f1": round(macro_f1(y, pred), 6),
        "adjusted_macro_f1": adjusted,
        "cv_accuracy": round(float(accuracy_score(y, pred)), 6),
        "fold_macro_f1": per_fold,
        "folds_trained": len(parts),
        "n_folds": n_folds,
        "complete": len(parts) == n_folds,
        "n_oof": len(oof),
    }
    io.write_csv(run_dir / "oof.csv", oof)
    io.write_json(run_dir / "cv.json", summary)
    plot_curves(run_dir)
    return summary


def make_batches(
    n: int,
    *,
    batch_size: int,
    generator: torch.Generator,
    weights: np.ndarray | None,
    dist_: Dist,
) -> ShardedBatches:
    """Training batches of the whole run, the same on every process; each process takes its slice.

    A last batch of one sample breaks BatchNorm in train mode, and a slice must never be
    empty, so a last batch smaller than both is dropped.
    """
    sampler: Sampler[int]
    if weights is not None:
        # Every class drawn equally often: each image weighs 1 / its class's count.
        sampler = WeightedRandomSampler(weights.tolist(), n, generator=generator)
    else:
        sampler = RandomSampler(range(n), generator=generator)
    remainder = n % batch_size
    drop_last = 0 < remainder < max(2, dist_.world)
    return ShardedBatches(BatchSampler(sampler, batch_size, drop_last), dist_)


class ShardedBatches(Sampler[list[int]]):
    """Process r of W takes items r, r+W, ... of each global batch (all of it when W is 1)."""

    def __init__(self, batches: BatchSampler, dist_: Dist):
        self.batches, self.dist = batches, dist_

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[self.dist.rank :: self.dist.world]


class Rows(Dataset[int]):
    """Row numbers, served a batch at a time: the loader of the cached-feature stage."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, rows: list[int]) -> list[int]:
        return rows


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
    progress: bool,
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
            disable=not progress,
        ):
            x = to_input(xb, mean=mean, std=std, device=device, channels_last=channels_last)
            with autocast():
                f = model.forward_head(model.forward_features(x), pre_logits=True)  # type: ignore[operator]
            chunks.append(f.float().cpu())
        empty = torch.empty(0, 0)
        local = torch.cat(chunks) if chunks else empty
        out.append(torch.cat([p for p in gather(local, dist_) if p.numel()]))
    return torch.stack(out)


def _aug_streams(transform: Any) -> list[Any]:
    """The Compose and every transform in it: each draws from its own generators."""
    return [transform] + [s for t in getattr(transform, "transforms", []) for s in _aug_streams(t)]


def rng_state(generator: torch.Generator, transform: A.Compose) -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "loader": generator.get_state(),
        "aug": [
            (t.random_generator.bit_generator.state, t.py_random.getstate())
            for t in _aug_streams(transform)
        ],
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator, transform: A.Compose) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["loader"])
    for t, (np_state, py_state) in zip(_aug_streams(transform), state["aug"], strict=True):
        t.random_generator.bit_generator.state = np_state
        t.py_random.setstate(py_state)


def save_last(path: Path, state: dict[str, Any]) -> None:
    io.write_with(path, lambda tmp: torch.save(state, tmp))


def load_last(path: Path) -> dict[str, Any] | None:
    """The last-epoch state of an interrupted fold, if there is one."""
    if not path.exists():
        return None
    try:
        # Our own file, holding RNG states and numpy arrays besides tensors.
        return dict(torch.load(path, map_location="cpu", weights_only=False))
    except Exception as e:
        raise DataError(f"{path}: cannot resume from it ({type(e).__name__}: {e})") from None


def train_fold(
    cfg: Config,
    *,
    fold: int,
    images: np.ndarray,
    targets: np.ndarray,
    train_idx: np.ndarray,
    valid_idx: np.ndarray,
    n_classes: int,
    classes: list[str],
    device: torch.device,
    transform: A.Compose,
    out_dir: Path,
    echo: Echo = tqdm.write,
    on_epoch: EpochHook | None = None,
    progress: bool = True,
    dist_: Dist = Dist(),
    resume: bool = False,
) -> FoldResult:
    seed_everything(cfg.seed + fold)
    transform.set_random_seed(cfg.seed + fold)
    model, source = create_model(
        cfg.model,
        num_classes=n_classes,
        pretrained=cfg.pretrained,
        pretrained_file=cfg.pretrained_file,
    )
    # NHWC is faster for convolutions on CPUs (oneDNN) and on tensor cores alike.
    channels_last = True
    model = model.to(device).to(memory_format=torch.channels_last)
    if dist_.world > 1 and device.type == "cuda":
        # BatchNorm statistics over the global batch, as in a single-process run
        # (SyncBatchNorm runs on GPUs only; on CPU each process normalises its slice).
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    mean, std = (t.to(device) for t in normalisation(model))
    autocast = make_autocast(device, cfg.amp)
    # bf16 needs no loss scaling; fp16 (e.g. a Kaggle T4) does.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(device, cfg.amp) == torch.float16)

    workers = auto_workers(cfg.num_workers, device)
    loader_args: dict[str, Any] = dict(
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=_reseed_worker if workers > 0 else None,
    )
    generator = torch.Generator().manual_seed(cfg.seed + fold)
    weights = None
    if cfg.sampler == "balanced":
        counts = np.bincount(targets[train_idx], minlength=n_classes)
        weights = 1.0 / counts[targets[train_idx]]
    batches = make_batches(
        len(train_idx), batch_size=cfg.batch_size, generator=generator, weights=weights, dist_=dist_
    )
    n_steps = len(batches)
    # The size of the last global batch, for weighting each process's slice of it.
    last_batch = (
        len(train_idx) % cfg.batch_size
        if not batches.batches.drop_last and len(train_idx) % cfg.batch_size
        else cfg.batch_size
    )
    train_loader = DataLoader(
        ImageDataset(images, targets, transform, index=train_idx),
        batch_sampler=batches,
        generator=generator,
        **loader_args,
    )
    # Each process scores one part of the validation fold; the parts are gathered in order.
    my_valid = np.array_split(valid_idx, dist_.world)[dist_.rank]
    valid_loader = DataLoader(
        ImageDataset(images, targets, index=my_valid), batch_size=cfg.batch_size * 2, **loader_args
    )
    loss_fn = make_loss(cfg, targets[train_idx], n_classes=n_classes).to(device)
    y_valid = targets[valid_idx]
    y_train = torch.as_tensor(targets[train_idx])

    best_f1, best_epoch, stale = -1.0, -1, 0
    best_probs = np.zeros((len(valid_idx), n_classes), dtype=np.float32)
    rows: list[dict[str, Any]] = []
    features: tuple[torch.Tensor, torch.Tensor] | None = None
    net: nn.Module = model

    def best_meta(epoch: int, f1: float) -> dict[str, Any]:
        return {
            "model": cfg.model,
            "classes": classes,
            "img_size": cfg.img_size,
            "fold": fold,
            "epoch": epoch,
            "valid_macro_f1": f1,
            "pretrained": source,
        }

    def learn(grad_loss: torch.Tensor) -> None:
        """One optimizer step (with AMP loss scaling where fp16 needs it)."""
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(grad_loss).backward()
        scaler.step(optimizer)
        scaler.update()

    best_state: dict[str, torch.Tensor] | None = None  # best weights not yet on disk
    saved_at = time.perf_counter()
    start = 0
    last = load_last(out_dir / "last.pt") if resume else None
    if last is not None:
        model.load_state_dict(last["model"])
        best_f1, best_epoch, stale = last["best_f1"], last["best_epoch"], last["stale"]
        best_probs, rows, start = last["best_probs"], last["rows"], last["epoch"]
        echo(f"fold {fold}: resuming after epoch {start}")
    epoch = start
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        stage = 1 if epoch < cfg.freeze_epochs else 2
        stage_begins = epoch in (0, cfg.freeze_epochs)
        resuming = last is not None and epoch == start
        if resuming:
            # Mid-stage, the stage is rebuilt from the random state it began with (its
            # cached features are drawn from it), then the epoch's own state is restored.
            assert last is not None
            set_rng_state(last["rng"] if stage_begins else last["stage_rng"], generator, transform)
        if stage_begins or resuming:
            stage_rng = rng_state(generator, transform)
            # A new stage starts with a fresh optimizer and schedule: stage 1 sees only the
            # head's parameters, and stage 2 must not inherit the head's momentum or lr decay.
            frozen = stage == 1
            set_backbone_frozen(model, frozen)
            stage_start = 0 if frozen else cfg.freeze_epochs
            stage_epochs = cfg.freeze_epochs if frozen else cfg.epochs - cfg.freeze_epochs
            optimizer = create_optimizer_v2(
                model,
                opt=cfg.optimizer,
                lr=cfg.lr1 if frozen else cfg.lr2,
                weight_decay=cfg.weight_decay,
            )
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore"
                )  # timm marks plateau deprecated; it is what people ask for
                scheduler, _ = create_scheduler_v2(
                    optimizer,
                    sched=cfg.scheduler,
                    num_epochs=stage_epochs,
                    patience_epochs=max(1, cfg.patience // 2),
                    plateau_mode="max",
                )
            features = None
            net = model
            if frozen and cfg.cache_features:
                views = cfg.feature_views if transform.transforms else 1
                embed = functools.partial(
                    extract_features,
                    model,
                    images,
                    batch_size=cfg.batch_size * 2,
                    mean=mean,
                    std=std,
                    device=device,
                    autocast=autocast,
                    channels_last=channels_last,
                    dist_=dist_,
                    workers=workers,
                    progress=progress,
                )
                features = (
                    embed(
                        train_idx,
                        transform=transform if transform.transforms else None,
                        views=min(views, stage_epochs),
                        desc=f"fold {fold} features",
                    ),
                    embed(valid_idx, transform=None, views=1, desc=f"fold {fold} valid features")[
                        0
                    ],
                )
            elif dist_.world > 1:
                # Wrapped per stage: DDP only synchronises the parameters that were
                # trainable when it was built.
                from torch.nn.parallel import DistributedDataParallel

                net = DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None
                )
            if cfg.compile and device.type == "cuda":
                net = torch.compile(net)  # type: ignore[assignment]
            if resuming and not stage_begins:
                assert last is not None
                optimizer.load_state_dict(last["optimizer"])
                if scheduler is not None:
                    scheduler.load_state_dict(last["scheduler"])
                scaler.load_state_dict(last["scaler"])
                set_rng_state(last["rng"], generator, transform)
        lr = optimizer.param_groups[0]["lr"]

        set_train_mode(model, frozen=stage == 1)
        # Summed on the device: reading them every step would stall a GPU on each batch.
        sum_loss = torch.zeros((), dtype=torch.float64, device=device)
        sum_correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        if features is not None:
            # Stage 1 from cached features: the head alone, on every process alike (the
            # features are gathered), so no gradient needs synchronising.
            view = features[0][(epoch - stage_start) % len(features[0])]
            head = model.get_classifier()  # type: ignore[operator]
            drop = float(getattr(model, "drop_rate", 0.0) or 0.0)
            loader = DataLoader(
                Rows(len(train_idx)),
                batch_sampler=make_batches(
                    len(train_idx),
                    batch_size=cfg.batch_size,
                    generator=generator,
                    weights=weights,
                    dist_=Dist(),
                ),
                generator=generator,
                collate_fn=torch.as_tensor,
            )
            for rows_b in loader:
                x = view[rows_b].to(device)
                y = y_train[rows_b].to(device)
                if drop:
                    # What timm's forward_head does to the pooled features in train mode.
                    x = nn.functional.dropout(x, drop, training=True)
                with autocast():
                    logits = head(x)
                    loss = loss_fn(logits, y)
                learn(loss)
                sum_loss += loss.detach() * len(y)
                sum_correct += (logits.argmax(1) == y).sum()
                seen += len(y)
        else:
            bar = tqdm(
                train_loader,
                desc=f"fold {fold} epoch {epoch + 1}/{cfg.epochs} stage {stage}",
                leave=False,
                unit="batch",
                disable=not progress,
            )
            for step, (xb, yb) in enumerate(bar):
                x = to_input(xb, mean=mean, std=std, device=device, channels_last=channels_last)
                y = yb.to(device, non_blocking=True)
                with autocast():
                    logits = net(x)
                    loss = loss_fn(logits, y)
                grad_loss = loss
                if dist_.world > 1:
                    # DDP averages gradients over processes; weighting each slice by its
                    # share of the global batch makes that the global batch's mean.
                    global_n = last_batch if step == n_steps - 1 else cfg.batch_size
                    grad_loss = loss * (len(y) * dist_.world / global_n)
                learn(grad_loss)
                sum_loss += loss.detach() * len(y)
                sum_correct += (logits.argmax(1) == y).sum()
                seen += len(y)
                if progress and step % 20 == 0:
                    bar.set_postfix(loss=f"{sum_loss.item() / seen:.4f}")
        totals = (sum_loss.item(), int(sum_correct), seen)
        if features is None:
            # Each process saw its slice; the cached stage ran the whole epoch everywhere.
            totals = tuple(sum(v) for v in zip(*gather(totals, dist_), strict=True))
        total_loss, correct, seen = totals
        train_loss, train_acc = total_loss / max(seen, 1), correct / max(seen, 1)
        train_seconds = time.perf_counter() - t0

        if features is not None:
            probs, valid_loss = head_probs(
                model.get_classifier(),  # type: ignore[operator]
                features[1],
                torch.as_tensor(y_valid),
                device=device,
                autocast=autocast,
            )
        else:
            local_probs, local_loss = predict_probs(
                model,
                valid_loader,
                mean=mean,
                std=std,
                device=device,
                autocast=autocast,
                channels_last=channels_last,
            )
            parts = gather((local_probs, local_loss * len(my_valid)), dist_)
            probs = np.concatenate([p for p, _ in parts if len(p)])
            valid_loss = sum(s for _, s in parts) / max(len(valid_idx), 1)
        pred = probs.argmax(1)
        valid_f1, valid_acc = macro_f1(y_valid, pred), float(accuracy_score(y_valid, pred))
        if scheduler is not None:
            scheduler.step(epoch - stage_start + 1, valid_f1)

        improved = valid_f1 > best_f1
        if improved:
            best_f1, best_epoch, best_probs, stale = valid_f1, epoch + 1, probs, 0
            # Kept in memory and written with the resume state (below) or at the end:
            # a fast epoch should not wait for a checkpoint on disk.
            best_state = cpu_state(model)
        elif stage == 2:
            # Patience counts only in stage 2, so a slow frozen stage never ends training
            # before the backbone has been unfrozen.
            stale += 1
        rows.append(
            {
                "epoch": epoch + 1,
                "stage": stage,
                "lr": lr,
                "train_loss": round(train_loss, 6),
                "train_acc": round(train_acc, 6),
                "valid_loss": round(valid_loss, 6),
                "valid_acc": round(valid_acc, 6),
                "valid_macro_f1": round(valid_f1, 6),
                "train_seconds": round(train_seconds, 3),
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
        if dist_.main:
            io.write_csv(out_dir / "metrics.csv", pd.DataFrame(rows))
        if dist_.main and time.perf_counter() - saved_at >= cfg.checkpoint_seconds:
            # Everything the next epoch depends on, so `comp train --resume` after a kill
            # ends exactly where an uninterrupted run would; best.pt first, so the two agree.
            if best_state is not None:
                save_checkpoint(out_dir / "best.pt", best_state, best_meta(best_epoch, best_f1))
                best_state = None
            save_last(
                out_dir / "last.pt",
                {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict(),
                    "rng": rng_state(generator, transform),
                    "stage_rng": stage_rng,
                    "best_f1": best_f1,
                    "best_epoch": best_epoch,
                    "stale": stale,
                    "best_probs": best_probs,
                    "rows": rows,
                },
            )
            saved_at = time.perf_counter()
        echo(
            f"fold {fold} epoch {epoch + 1:>2}/{cfg.epochs} stage {stage} | train loss {train_loss:.4f} acc {train_acc:.3f} "
            f"| valid loss {valid_loss:.4f} acc {valid_acc:.3f} macro-F1 {valid_f1:.4f}{' *' if improved else ''} "
            f"| {rows[-1]['seconds']:.1f}s"
        )
        if on_epoch is not None:
            on_epoch(fold, epoch + 1, valid_f1)
        if stale >= cfg.patience:
            echo(f"fold {fold}: early stop, no better macro-F1 for {cfg.patience} epochs")
            break
    if dist_.main and best_state is not None:
        save_checkpoint(out_dir / "best.pt", best_state, best_meta(best_epoch, best_f1))
    return FoldResult(fold, best_epoch, best_f1, epoch + 1, best_probs, source)


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
    loader: DataLoader[Any],
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
    for xb, yb in tqdm(loader, desc=desc, leave=False, unit="batch", disable=desc is None):
        x = to_input(xb, mean=mean, std=std, device=device, channels_last=channels_last)
        with autocast():
            logits = model(x).float()
        if (yb >= 0).all():
            total_loss += float(nn.functional.cross_entropy(logits, yb.to(device), reduction="sum"))
            seen += len(yb)
        out.append(torch.softmax(logits, 1).cpu().numpy())
    return np.concatenate(out).astype(np.float32), total_loss / max(seen, 1)


def load_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "cv.json"
    if not path.exists():
        raise DataError(f"{run_dir}: no cv.json; the run has no finished fold")
    return dict(json.loads(path.read_text()))
