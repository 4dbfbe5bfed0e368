"""The fold loop: one model trained on one fold, stage after stage, epoch after epoch.

Reads the decoded images and targets it is given (nothing from disk but its own
``last.pt`` when resuming). Writes the fold's folder, ``out_dir``:
``metrics.csv`` (one row per epoch), ``best.pt`` (the best epoch's weights, or the
last with ``select=False``) and ``last.pt`` (everything ``--resume`` needs).

Read top to bottom: ``setup_fold`` builds the model, loaders, loss and precision;
``train_fold`` loops over stages and epochs; ``begin_stage`` builds a stage's
optimizer and schedule; ``train_epoch`` and ``step`` train; ``evaluate`` scores.
Both a run's folds (comp.train.run) and the nested teachers (comp.teach.nested)
train through it.
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score
from sklearn.utils.class_weight import compute_sample_weight
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from timm.utils import random_seed as seed_everything
from torch import nn
from torch.utils.data import DataLoader, Dataset

# Not tqdm.auto: its asyncio variant calls iter() on a loader when the bar is made, which
# starts a second pass over the data (and draws from the loader's seeded generator).
from tqdm import tqdm

from comp import console, files
from comp.config import Config
from comp.data.batches import BatchAugment, MemoryBatches, batch_augment
from comp.data.transforms import ImageDataset, to_input
from comp.errors import DataError
from comp.fit.heads import fit_linear_head
from comp.fit.losses import Mixing, TeacherLoss, make_loss, mixing_enabled
from comp.hardware.distributed import (
    Dist,
    ShardedBatches,
    gather,
    make_batches,
    wrap,
)
from comp.hardware.precision import amp_dtype, auto_workers, make_autocast
from comp.metrics import macro_f1
from comp.models.factory import (
    cpu_state,
    create_model,
    normalisation,
    save_checkpoint,
    set_backbone_frozen,
    set_train_mode,
)
from comp.models.inference import extract_features, head_probs, predict_probs
from comp.runs import BEST_FILE, LAST_FILE, METRICS_FILE

log = logging.getLogger(__name__)

EpochHook = Callable[[int, int, float], None]


def _reseed_worker(_: int) -> None:
    # A worker starts with a copy of the transform's generators: reseeded from the loader's
    # seed, workers draw different augmentations, and the same ones on every rerun.
    info = torch.utils.data.get_worker_info()
    if info is not None and getattr(info.dataset, "transform", None) is not None:
        info.dataset.transform.set_random_seed(torch.initial_seed() % 2**32)  # type: ignore[attr-defined]


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    best_f1: float
    epochs_run: int
    valid_probs: np.ndarray  # (n_valid, n_classes) at the best epoch
    pretrained: str


# --- one fold: stages of epochs of steps -----------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """Epochs [start, end) of a fold, with the backbone frozen (stage 1) or not (stage 2)."""

    number: int
    start: int
    end: int
    lr: float

    @property
    def frozen(self) -> bool:
        return self.number == 1

    @property
    def epochs(self) -> int:
        return self.end - self.start


def stages(cfg: Config) -> list[Stage]:
    out = []
    if cfg.freeze_epochs:
        out.append(Stage(1, 0, cfg.freeze_epochs, cfg.lr1))
    if cfg.epochs > cfg.freeze_epochs:
        out.append(Stage(2, cfg.freeze_epochs, cfg.epochs, cfg.lr2))
    return out


@dataclass
class FoldData:
    """A fold's rows, and the batches and loaders serving them (``generator`` draws the order)."""

    images: np.ndarray
    targets: np.ndarray  # every row's label
    train_idx: np.ndarray
    valid_idx: np.ndarray
    transform: A.Compose
    generator: torch.Generator
    weights: np.ndarray | None  # per-image sampling weights (balanced sampler)
    batches: ShardedBatches
    train_loader: DataLoader[Any] | MemoryBatches
    valid_loader: DataLoader[Any] | MemoryBatches
    augment: BatchAugment | None  # the batch pipeline's augmentation (None: per image)
    workers: int


@dataclass
class Fold(FoldData):
    """What every epoch of one fold shares: its data (FoldData), the model, loss and precision."""

    cfg: Config
    number: int
    model: nn.Module
    source: str  # where the weights came from
    device: torch.device
    dist: Dist
    loss_fn: nn.Module
    mixing: Mixing | None
    # With a teacher or soft pseudo-labels: every row's packed soft targets (comp.fit.
    # losses.TeacherLoss), and the loaders serve row numbers to look them up by.
    soft: torch.Tensor | None = None
    # Made from the fields above (__post_init__), so they cannot disagree with them.
    y_train: torch.Tensor = field(init=False)
    y_valid: np.ndarray = field(init=False)
    labels: torch.Tensor | None = field(init=False)  # every row's label, beside soft targets
    mean: torch.Tensor = field(init=False)
    std: torch.Tensor = field(init=False)
    autocast: Callable[[], Any] = field(init=False)
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        cfg, device = self.cfg, self.device
        self.y_train = torch.as_tensor(self.targets[self.train_idx])
        self.y_valid = self.targets[self.valid_idx]
        self.labels = None if self.soft is None else torch.tensor(self.targets)
        self.mean, self.std = (t.to(device) for t in normalisation(self.model))
        self.autocast = make_autocast(device, cfg.amp, img_size=cfg.img_size)
        # bf16 needs no loss scaling; fp16 (e.g. a Kaggle T4) does.
        fp16 = amp_dtype(device, cfg.amp, img_size=cfg.img_size) == torch.float16
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16)


@dataclass
class StageRun:
    """One stage under way: its optimizer, schedule, the module it steps, and its EMA."""

    stage: Stage
    optimizer: torch.optim.Optimizer
    scheduler: Any
    net: nn.Module  # the model, DDP-wrapped or compiled; the head alone on cached features
    features: tuple[torch.Tensor, torch.Tensor] | None  # cached (views, train) and valid features
    ema: ModelEmaV3 | None
    rng: dict[str, Any]  # the random state the stage began with
    per_step: bool  # the schedule moves every step (cosine) or every epoch (plateau)


@dataclass
class Best:
    """Early stopping: the best macro-F1 so far, its epoch, probabilities and weights."""

    f1: float = -1.0
    epoch: int = -1
    stale: int = 0
    probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    state: dict[str, torch.Tensor] | None = None  # best weights not yet on disk
    last: bool = False  # keep the last epoch, whatever it scores (a model chosen blind)

    def update(
        self, f1: float, epoch: int, probs: np.ndarray, weights: nn.Module, *, counts: bool
    ) -> bool:
        if self.last or f1 > self.f1:
            self.f1, self.epoch, self.probs, self.stale = f1, epoch, probs, 0
            # Kept in memory and written with the resume state or at the end: a fast
            # epoch should not wait for a checkpoint on disk.
            self.state = cpu_state(weights)
            return True
        if counts:
            self.stale += 1
        return False


def train_fold(
    f: Fold,
    *,
    classes: list[str],
    out_dir: Path,
    on_epoch: EpochHook | None = None,
    resume: bool = False,
    select: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> FoldResult:
    """Train one fold, stage after stage and epoch after epoch, keeping the best epoch's weights.

    Without ``select``, the last epoch's are kept and nothing stops early: a model whose
    validation labels must not steer it (a nested teacher; a model trained on every image)."""
    cfg, fold = f.cfg, f.number
    best = Best(probs=np.zeros((len(f.valid_idx), len(classes)), dtype=np.float32), last=not select)
    rows: list[dict[str, Any]] = []
    start = 0
    last = load_last(out_dir / LAST_FILE) if resume else None
    if last is not None:
        f.model.load_state_dict(last["model"])
        best = Best(
            last["best_f1"], last["best_epoch"], last["stale"], last["best_probs"], last=not select
        )
        rows, start = last["rows"], last["epoch"]
        log.info(f"fold {fold}: resuming after epoch {start}")
    saved_at = time.perf_counter()
    epoch = start
    for stage in stages(cfg):
        if stage.end <= start:
            continue
        run = enter_stage(f, stage, last=last, start=start)
        for epoch in range(max(stage.start, start), stage.end):
            t0 = time.perf_counter()
            lr = run.optimizer.param_groups[-1]["lr"]  # the head's, with layer decay
            train_loss, train_acc = train_epoch(f, run, epoch)
            train_seconds = time.perf_counter() - t0
            weights = run.ema.module if run.ema is not None else f.model
            probs, valid = evaluate(f, run, weights)
            if run.scheduler is not None:
                run.scheduler.step(epoch - stage.start + 1, valid["valid_macro_f1"])
            # Patience counts only in stage 2, so a slow frozen stage never ends training
            # before the backbone has been unfrozen.
            improved = best.update(
                valid["valid_macro_f1"], epoch + 1, probs, weights, counts=not stage.frozen
            )
            rows.append(
                {"epoch": epoch + 1, "stage": stage.number, "lr": lr}
                | {"train_loss": round(train_loss, 6), "train_acc": round(train_acc, 6), **valid}
                | {"train_seconds": round(train_seconds, 3)}
                | {"seconds": round(time.perf_counter() - t0, 3)}
            )
            if f.dist.main:
                files.write_csv(out_dir / METRICS_FILE, pd.DataFrame(rows))
            if f.dist.main and time.perf_counter() - saved_at >= cfg.checkpoint_seconds:
                save_resume_state(
                    f, run, best, rows, epoch=epoch + 1, out_dir=out_dir, classes=classes
                )
                saved_at = time.perf_counter()
            log.log(console.PROGRESS, epoch_line(f, rows[-1], improved))
            if on_row is not None and f.dist.main:
                on_row(rows[-1])
            if on_epoch is not None:
                on_epoch(fold, epoch + 1, valid["valid_macro_f1"])
            if best.stale >= cfg.patience:
                break
        if best.stale >= cfg.patience:
            log.info(f"fold {fold}: early stop, no better macro-F1 for {cfg.patience} epochs")
            break
    if f.dist.main and best.state is not None:
        save_checkpoint(out_dir / BEST_FILE, best.state, best_meta(f, classes, best))
    return FoldResult(fold, best.epoch, best.f1, epoch + 1, best.probs, f.source)


def setup_fold(
    cfg: Config,
    *,
    fold: int,
    images: np.ndarray,
    targets: np.ndarray,
    train_idx: np.ndarray,
    valid_idx: np.ndarray,
    n_classes: int,
    device: torch.device,
    transform: A.Compose,
    dist_: Dist,
    soft: np.ndarray | None = None,
) -> Fold:
    """The model, loaders, loss and precision of fold ``fold``, seeded so a rerun is identical.

    ``soft``: packed soft targets of every row of ``images`` (comp.teach), trained on with
    comp.fit.losses.TeacherLoss instead of the labels alone."""
    seed_everything(cfg.seed + fold)
    transform.set_random_seed(cfg.seed + fold)
    # The model first: its initial weights are the first draws after seeding.
    model, source = _fold_model(cfg, n_classes=n_classes, device=device, dist_=dist_)
    data = _fold_data(
        cfg,
        seed=cfg.seed + fold,
        images=images,
        targets=targets,
        by_row=soft is not None,
        train_idx=train_idx,
        valid_idx=valid_idx,
        transform=transform,
        device=device,
        dist_=dist_,
    )
    _init_whitening(model, images, train_idx, device=device)
    return Fold(
        **vars(data),
        cfg=cfg,
        number=fold,
        model=model,
        source=source,
        device=device,
        dist=dist_,
        loss_fn=_fold_loss(cfg, targets[train_idx], n_classes=n_classes, soft=soft, device=device),
        mixing=Mixing(cfg, n_classes=n_classes) if mixing_enabled(cfg) else None,
        soft=None if soft is None else torch.as_tensor(soft, dtype=torch.float32),
    )


def _fold_model(
    cfg: Config, *, n_classes: int, device: torch.device, dist_: Dist
) -> tuple[nn.Module, str]:
    """The fold's fresh model on ``device``, and where its weights came from."""
    model, source = create_model(
        cfg.model,
        num_classes=n_classes,
        pretrained=cfg.pretrained,
        pretrained_file=cfg.pretrained_file,
        drop_path_rate=cfg.drop_path_rate,
        small_input=cfg.small_input,
    )
    # NHWC is faster for convolutions on CPUs (oneDNN) and on tensor cores alike.
    model = model.to(device).to(memory_format=torch.channels_last)
    if dist_.world > 1 and device.type == "cuda":
        # BatchNorm statistics over the global batch, as in a single-process run
        # (SyncBatchNorm runs on GPUs only; on CPU each process normalises its slice).
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, source


def _sampling_weights(cfg: Config, y_train: np.ndarray) -> np.ndarray | None:
    """Per-image sampling weights of the balanced sampler (None: every image alike)."""
    if cfg.sampler != "balanced":
        return None
    # In proportion to 1 / the image's class count, all the WeightedRandomSampler needs.
    return np.asarray(compute_sample_weight("balanced", y_train))


def _fold_data(
    cfg: Config,
    *,
    seed: int,
    images: np.ndarray,
    targets: np.ndarray,
    by_row: bool,
    train_idx: np.ndarray,
    valid_idx: np.ndarray,
    transform: A.Compose,
    device: torch.device,
    dist_: Dist,
) -> FoldData:
    """The batches of ``train_idx`` (in an order drawn from ``seed``), their training loader
    and this process's validation loader.

    With the batch pipeline's augmentation, both loaders are batches of memory augmented on
    the device; without, DataLoaders that apply ``transform`` image by image. ``by_row``: the
    training loader serves row numbers, to look each row's soft targets up by."""
    workers = auto_workers(cfg.num_workers, device)
    generator = torch.Generator().manual_seed(seed)
    weights = _sampling_weights(cfg, targets[train_idx])
    batches = make_batches(
        len(train_idx), batch_size=cfg.batch_size, generator=generator, weights=weights, dist_=dist_
    )
    augment = batch_augment(preset=cfg.aug, pipeline=cfg.pipeline, img_size=cfg.img_size)
    # Each process scores one part of the validation fold, so validating takes a share of
    # the time; validation_probs gathers the parts in order.
    my_valid = np.array_split(valid_idx, dist_.world)[dist_.rank]
    rows = np.arange(len(images)) if by_row else targets
    train_loader: DataLoader[Any] | MemoryBatches
    valid_loader: DataLoader[Any] | MemoryBatches
    if augment is not None:
        step = cfg.batch_size * 2
        chunks = [
            list(range(i, min(i + step, len(my_valid)))) for i in range(0, len(my_valid), step)
        ]
        train_loader = MemoryBatches(
            images, rows, index=train_idx, batches=batches, generator=generator
        )
        valid_loader = MemoryBatches(images, targets, index=my_valid, batches=chunks)
    else:
        loader_args: dict[str, Any] = dict(
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            worker_init_fn=_reseed_worker if workers > 0 else None,
        )
        train_loader = DataLoader(
            ImageDataset(images, rows, transform, index=train_idx),
            batch_sampler=batches,
            generator=generator,
            **loader_args,
        )
        valid_loader = DataLoader(
            ImageDataset(images, targets, index=my_valid),
            batch_size=cfg.batch_size * 2,
            **loader_args,
        )
    return FoldData(
        images=images,
        targets=targets,
        train_idx=train_idx,
        valid_idx=valid_idx,
        transform=transform,
        generator=generator,
        weights=weights,
        batches=batches,
        train_loader=train_loader,
        valid_loader=valid_loader,
        augment=augment,
        workers=workers,
    )


def _init_whitening(
    model: nn.Module, images: np.ndarray, train_idx: np.ndarray, *, device: torch.device
) -> None:
    """The airnets' first conv whitens the patches of this fold's own training images (other
    models have no such conv: nothing to do)."""
    if not hasattr(model, "init_whitening"):
        return
    mean, std = normalisation(model)
    sample = train_idx[:: max(1, len(train_idx) // 2048)]
    model.init_whitening(  # type: ignore[operator]
        to_input(
            torch.from_numpy(np.asarray(images[np.sort(sample)])),
            mean=mean.to(device),
            std=std.to(device),
            device=device,
        )
    )


def _fold_loss(
    cfg: Config,
    y_train: np.ndarray,
    *,
    n_classes: int,
    soft: np.ndarray | None,
    device: torch.device,
) -> nn.Module:
    """The loss on ``device``: on the labels (make_loss; class weights, if asked, from the
    fold's own training labels), or, given ``soft`` targets, the teacher's."""
    if soft is None:
        return make_loss(cfg, y_train, n_classes=n_classes).to(device)
    return TeacherLoss(temperature=cfg.distill_temperature).to(device)


def begin_stage(f: Fold, stage: Stage) -> StageRun:
    """A fresh optimizer and schedule for ``stage``, and in stage 1 the cached features.

    Stage 1 sees only the head's parameters, and stage 2 must not inherit the head's
    momentum or lr decay, so each stage starts its own.
    """
    cfg = f.cfg
    rng = rng_state(f.generator, f.transform)
    set_backbone_frozen(f.model, stage.frozen)
    layer_decay = None
    if not stage.frozen and cfg.layer_decay and hasattr(f.model, "group_matcher"):
        # Lower blocks hold more general features and should move less: timm's layer-wise
        # decay trains each block group at layer_decay x the lr of the group above.
        layer_decay = cfg.layer_decay
    optimizer = create_optimizer_v2(
        f.model,
        opt=cfg.optimizer,
        lr=stage.lr,
        weight_decay=cfg.weight_decay,
        layer_decay=layer_decay,
    )
    per_step = cfg.scheduler == "cosine"
    warmup = 0 if stage.frozen else min(cfg.warmup_epochs, stage.epochs - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm marks plateau deprecated; it is what people ask for
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=cfg.scheduler,
            num_epochs=stage.epochs - warmup,
            warmup_epochs=warmup,
            warmup_lr=stage.lr / 100,
            warmup_prefix=True,
            patience_epochs=max(1, cfg.patience // 2),
            plateau_mode="max",
            # Cosine moves every step: a warmup and a decay over a short run are smooth.
            step_on_epochs=not per_step,
            updates_per_epoch=len(f.batches),
        )
    features = None
    net = f.model
    if stage.frozen and cfg.cache_features:
        views = cfg.feature_views if f.transform.transforms else 1
        # A regression fits every view at once; epochs of SGD take one view each.
        features = embed_fold(
            f, views=views if cfg.stage1 == "logreg" else min(views, stage.epochs)
        )
    else:
        net = wrap(f.model, f.device, f.dist)
    if cfg.compile and f.device.type == "cuda":
        net = torch.compile(net)  # type: ignore[assignment]
    # The average follows the whole network, so it starts when the backbone trains.
    ema = (
        ModelEmaV3(f.model, decay=cfg.ema_decay, use_warmup=True)
        if cfg.ema and not stage.frozen
        else None
    )
    return StageRun(stage, optimizer, scheduler, net, features, ema, rng, per_step)


def embed_fold(f: Fold, *, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of the fold's training images (``views`` augmented views) and validation images."""
    args: dict[str, Any] = dict(
        batch_size=f.cfg.batch_size * 2,
        mean=f.mean,
        std=f.std,
        device=f.device,
        autocast=f.autocast,
        channels_last=True,
        dist_=f.dist,
        workers=f.workers,
    )
    augment = f.transform if f.transform.transforms else None
    # The first view is the images as validation and test see them; the others augmented.
    train = extract_features(
        f.model,
        f.images,
        f.train_idx,
        transform=None,
        views=1,
        desc=f"fold {f.number} features",
        **args,
    )
    if views > 1:
        more = extract_features(
            f.model,
            f.images,
            f.train_idx,
            transform=augment,
            views=views - 1,
            desc=f"fold {f.number} augmented features",
            **args,
        )
        train = torch.cat([train, more])
    valid = extract_features(
        f.model,
        f.images,
        f.valid_idx,
        transform=None,
        views=1,
        desc=f"fold {f.number} valid features",
        **args,
    )
    return train, valid[0]


def enter_stage(f: Fold, stage: Stage, *, last: dict[str, Any] | None, start: int) -> StageRun:
    """Begin ``stage``, or, resuming at epoch ``start`` inside it, rebuild it as it was then."""
    first = max(stage.start, start)
    if last is None or first != start:
        return begin_stage(f, stage)
    # Mid-stage, the stage is rebuilt from the random state it began with (its cached
    # features are drawn from it), then the epoch's own state is restored.
    set_rng_state(
        last["rng"] if first == stage.start else last["stage_rng"], f.generator, f.transform
    )
    run = begin_stage(f, stage)
    if first > stage.start:
        restore_stage(f, run, last)
    return run


def epoch_line(f: Fold, row: dict[str, Any], improved: bool) -> str:
    return (
        f"fold {f.number} epoch {row['epoch']:>2}/{f.cfg.epochs} stage {row['stage']} "
        f"| train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} "
        f"| valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.3f} "
        f"macro-F1 {row['valid_macro_f1']:.4f}{' *' if improved else ''} | {row['seconds']:.1f}s"
    )


def restore_stage(f: Fold, run: StageRun, last: dict[str, Any]) -> None:
    """Put a rebuilt stage back where an interrupted one left off."""
    run.optimizer.load_state_dict(last["optimizer"])
    if run.scheduler is not None:
        run.scheduler.load_state_dict(last["scheduler"])
    f.scaler.load_state_dict(last["scaler"])
    if run.ema is not None and last.get("ema") is not None:
        run.ema.load_state_dict(last["ema"])
    set_rng_state(last["rng"], f.generator, f.transform)


def train_epoch(f: Fold, run: StageRun, epoch: int) -> tuple[float, float]:
    """One pass over the fold's training part; its mean loss and accuracy over every process."""
    train_mode(f, run)
    if run.features is not None:
        return head_epoch(f, run, epoch)
    return image_epoch(f, run, epoch)


def train_mode(f: Fold, run: StageRun) -> None:
    """The model's modes while ``run``'s stage trains."""
    # Frozen BatchNorm keeps the statistics stage 1's head was fitted under: batch
    # statistics of images unlike ImageNet would shift every feature at the switch.
    set_train_mode(f.model, frozen=run.stage.frozen, frozen_bn=f.cfg.bn == "frozen")


def head_epoch(f: Fold, run: StageRun, epoch: int) -> tuple[float, float]:
    """Stage 1 from cached features: the head alone, on every process alike (the features
    are gathered), so no gradient needs synchronising."""
    assert run.features is not None
    if epoch == run.stage.start and f.cfg.stage1 == "logreg" and f.soft is None:
        fitted = fit_linear_head(
            f.model.get_classifier(),  # type: ignore[operator]
            run.features[0],
            f.targets[f.train_idx],
            balanced=f.cfg.class_weights == "balanced" or f.cfg.sampler == "balanced",
        )
        if fitted is not None:
            return fitted
    # Summed on the device: reading them every step would stall a GPU on each batch.
    sum_loss = torch.zeros((), dtype=torch.float64, device=f.device)
    sum_correct = torch.zeros((), dtype=torch.int64, device=f.device)
    seen = 0
    first_update = (epoch - run.stage.start) * len(f.batches)
    view = run.features[0][(epoch - run.stage.start) % len(run.features[0])]
    head = f.model.get_classifier()  # type: ignore[operator]
    drop = float(getattr(f.model, "drop_rate", 0.0) or 0.0)
    loader = DataLoader(
        Rows(len(f.train_idx)),
        batch_sampler=make_batches(
            len(f.train_idx),
            batch_size=f.cfg.batch_size,
            generator=f.generator,
            weights=f.weights,
            dist_=Dist(),
        ),
        generator=f.generator,
        collate_fn=torch.as_tensor,
    )
    for i, rows_b in enumerate(loader):
        x = view[rows_b].to(f.device)
        y = f.y_train[rows_b].to(f.device)
        target = y if f.soft is None else f.soft[f.train_idx[rows_b]].to(f.device)
        if drop:
            # The cached features skip timm's forward_head, which drops out in train mode.
            x = nn.functional.dropout(x, drop, training=True)
        loss, logits = step(f, run, head, x, target, f.loss_fn, update=first_update + i + 1)
        sum_loss += loss * len(y)
        sum_correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return sum_loss.item() / max(seen, 1), int(sum_correct) / max(seen, 1)


def image_epoch(f: Fold, run: StageRun, epoch: int) -> tuple[float, float]:
    """A pass of the model over the fold's training images (each process its slice of a batch)."""
    sum_loss = torch.zeros((), dtype=torch.float64, device=f.device)
    sum_correct = torch.zeros((), dtype=torch.int64, device=f.device)
    seen = 0
    for loss, logits, y in image_steps(f, run, epoch):
        sum_loss += loss * len(y)
        sum_correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    # Each process saw only its slice of every batch: the epoch's loss is over them all.
    totals = gather((sum_loss.item(), int(sum_correct), seen), f.dist)
    total_loss, correct, seen = (sum(v) for v in zip(*totals, strict=True))
    return total_loss / max(seen, 1), correct / max(seen, 1)


def image_steps(
    f: Fold, run: StageRun, epoch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each optimizer step of an epoch over the fold's training images, as it is taken: its
    loss, logits and labels. The epoch above sums them; comp.train.budget times the first few."""
    first_update = (epoch - run.stage.start) * len(f.batches)
    mixing = (
        f.mixing
        if f.mixing is not None and epoch < f.cfg.mixup_off_epoch and not run.stage.frozen
        else None
    )
    bar = tqdm(
        f.train_loader,
        desc=f"fold {f.number} epoch {epoch + 1}/{f.cfg.epochs} stage {run.stage.number}",
        leave=False,
        unit="batch",
        disable=console.no_bar(),
    )
    shown, seen = torch.zeros((), dtype=torch.float64, device=f.device), 0
    try:
        for i, (xb, yb) in enumerate(bar):
            x = to_input(
                xb, mean=f.mean, std=f.std, device=f.device, channels_last=True, augment=f.augment
            )
            if f.soft is None:
                y = yb.to(f.device, non_blocking=True)
                target: torch.Tensor = y
            else:
                # Row numbers, not labels: a row's soft targets are looked up by its number.
                assert f.labels is not None
                y, target = f.labels[yb].to(f.device), f.soft[yb].to(f.device)
            loss_fn = f.loss_fn
            if mixing is not None:
                x, target = mixing(x, target)
                # Hard labels become soft ones in mixing; packed soft targets stay packed.
                loss_fn = mixing.loss if f.soft is None else f.loss_fn
            # DDP averages gradients over processes; weighting each slice by its share of
            # the global batch makes that the global batch's mean.
            share = len(y) * f.dist.world / f.batches.global_size(i, len(f.train_idx))
            loss, logits = step(
                f, run, run.net, x, target, loss_fn, update=first_update + i + 1, share=share
            )
            # The postfix costs a device sync: only for a bar that is drawn.
            if not bar.disable:
                shown, seen = shown + loss * len(y), seen + len(y)
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{shown.item() / seen:.4f}")
            yield loss, logits, y
    finally:
        bar.close()


def step(
    f: Fold,
    run: StageRun,
    net: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    loss_fn: nn.Module,
    *,
    update: int,
    share: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch (AMP loss scaling where fp16 needs it); its loss and logits."""
    with f.autocast():
        logits = net(x)
        loss = loss_fn(logits, target)
    run.optimizer.zero_grad(set_to_none=True)
    f.scaler.scale(loss * share if share != 1.0 else loss).backward()
    f.scaler.step(run.optimizer)
    f.scaler.update()
    if run.per_step and run.scheduler is not None:
        run.scheduler.step_update(update)
    if run.ema is not None:
        run.ema.update(f.model, step=update)
    return loss.detach(), logits.detach()


def evaluate(f: Fold, run: StageRun, weights: nn.Module) -> tuple[np.ndarray, dict[str, float]]:
    """Validation probabilities of ``weights`` (every process's part, in order) and their scores."""
    if not len(f.valid_idx):
        # A model trained on every image: nothing to score it on.
        nan = float("nan")
        return np.zeros((0, 0), np.float32), dict.fromkeys(
            ("valid_loss", "valid_acc", "valid_macro_f1"), nan
        )
    probs, loss = validation_probs(f, run, weights)
    pred = probs.argmax(1)
    return probs, {
        "valid_loss": round(loss, 6),
        "valid_acc": round(float(accuracy_score(f.y_valid, pred)), 6),
        "valid_macro_f1": round(macro_f1(f.y_valid, pred), 6),
    }


def validation_probs(f: Fold, run: StageRun, weights: nn.Module) -> tuple[np.ndarray, float]:
    if run.features is not None:
        return head_probs(
            f.model.get_classifier(),  # type: ignore[operator]
            run.features[1],
            torch.as_tensor(f.y_valid),
            device=f.device,
            autocast=f.autocast,
        )
    local_probs, local_loss = predict_probs(
        weights,
        f.valid_loader,
        mean=f.mean,
        std=f.std,
        device=f.device,
        autocast=f.autocast,
        channels_last=True,
    )
    parts = gather((local_probs, local_loss * len(local_probs)), f.dist)
    probs = np.concatenate([p for p, _ in parts if len(p)])
    return probs, sum(s for _, s in parts) / max(len(f.valid_idx), 1)


def best_meta(f: Fold, classes: list[str], best: Best) -> dict[str, Any]:
    return {
        "model": f.cfg.model,
        "small_input": f.cfg.small_input,
        "classes": classes,
        "img_size": f.cfg.img_size,
        "fold": f.number,
        "epoch": best.epoch,
        "valid_macro_f1": best.f1,
        "pretrained": f.source,
        "ema": f.cfg.ema,
    }


def save_resume_state(
    f: Fold,
    run: StageRun,
    best: Best,
    rows: list[dict[str, Any]],
    *,
    epoch: int,
    out_dir: Path,
    classes: list[str],
) -> None:
    """Everything the next epoch depends on, so `comp train --resume` after a kill ends exactly
    where an uninterrupted run would; best.pt first, so the two agree."""
    if best.state is not None:
        save_checkpoint(out_dir / BEST_FILE, best.state, best_meta(f, classes, best))
        best.state = None
    save_last(
        out_dir / LAST_FILE,
        {
            "epoch": epoch,
            "model": f.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
            "scaler": f.scaler.state_dict(),
            "ema": run.ema.state_dict() if run.ema is not None else None,
            "rng": rng_state(f.generator, f.transform),
            "stage_rng": run.rng,
            "best_f1": best.f1,
            "best_epoch": best.epoch,
            "stale": best.stale,
            "best_probs": best.probs,
            "rows": rows,
        },
    )


class Rows(Dataset[int]):
    """Row numbers, served a batch at a time: the loader of the cached-feature stage."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, rows: list[int]) -> list[int]:
        return rows


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
    files.write_with(path, lambda tmp: torch.save(state, tmp))


def load_last(path: Path) -> dict[str, Any] | None:
    """The last-epoch state of an interrupted fold, if there is one."""
    if not path.exists():
        return None
    try:
        # Our own file, holding RNG states and numpy arrays besides tensors.
        return dict(torch.load(path, map_location="cpu", weights_only=False))
    except Exception as e:
        raise DataError(f"{path}: cannot resume from it ({type(e).__name__}: {e})") from None
