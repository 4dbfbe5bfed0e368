"""Throughput of comp's training data path against the compute ceiling and a naive pipeline.

Run from the repository root, on a quiet machine (nothing else using the cores):

    .venv/bin/python benchmarks/bench_throughput.py                 # CPU or GPU, whatever is here
    .venv/bin/python benchmarks/bench_throughput.py --device cuda --label h100
    .venv/bin/python benchmarks/bench_throughput.py --quick --out /tmp/quick.json   # a smoke test

It builds once (into a temporary folder, or ``--data DIR`` to keep and reuse it) a
Kaggle-layout competition of real photographs: random square crops, at varying
position and scale, of scikit-learn's two sample photos (china.jpg, flower.jpg),
resized to ``--photo-size`` squares (256) and saved as JPEG quality 90, with 8 labels
assigned round-robin, plus a test set of a quarter as many images. Around it goes a comp
workspace (``comp.workspace.init.init_workspace``) with 4 stratified folds; fold 0 is
validated, so 3/4 of the images train.

For every model (timm, random init) and image size it measures:

(a) the compute ceiling: model-only training throughput (images/s) on synthetic
    batches already on the device, batch 32, AdamW, cross-entropy, channels_last,
    in the precision comp train chose for (b); a few warm-up steps, then
    ``--steps`` timed in 5 windows, of which the fastest counts (measured again
    in NCHW layout, for the JSON and a note: the naive pipeline's layout);
(b) ``comp.train.train`` end-to-end on the images on disk, 3 epochs, no frozen
    stage, light augmentation, ``amp: auto`` (comp times a few steps in both precisions
    and keeps the faster, as a user's run does; measured before (a)): b = train images /
    ``train_seconds`` of the fastest warm epoch (2 or 3) in metrics.csv (data loading,
    augmentation, forward, backward), and b_wall = train images x epochs / wall time of
    the whole train() call. The decoded-image cache is built beforehand and timed on its
    own, cold and warm;
(c) a naive seed-style pipeline with the same model and batch: PIL decode and
    torchvision transforms per image per epoch, a plain NCHW fp32 model, one
    timed epoch after a few warm-up batches;
(d) a stage-1 (frozen backbone) epoch with and without cached features: two
    runs of 3 frozen epochs with 2 feature views; uncached = mean ``seconds`` of
    its 3 epochs, cached = mean of epochs 2-3; epoch 1 of the cached run also
    extracts the features, and "extraction s" is its excess over a cached epoch;
(e) ``comp.predict.predict`` throughput of the run of (b), without TTA and with
    hflip TTA: test images x checkpoints / wall seconds, after a warm-up call
    (which builds the test cache).

Peak memory over many small images is ``bench_memory.py``'s job.

It prints the machine, the command line, a Markdown table and the cache lines, and
writes the same as JSON to ``--out`` (default
``benchmarks/results-throughput-<label or host>.json``). It judges nothing: the
figures are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext, redirect_stderr
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from common import (  # benchmarks/common.py
    IMAGENET_MEAN,
    IMAGENET_STD,
    attempt,
    command_line,
    machine_info,
    machine_lines,
    precision,
    timer,
    write_results,
)
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

# comp, all in one place.
from comp.config import load_config
from comp.data.cache import cache_key, cached_images
from comp.data.competition import load_competition
from comp.folds.split import folds_path, make_folds, write_folds
from comp.hardware.distributed import pick_device
from comp.hardware.precision import make_autocast
from comp.predict.predict import predict
from comp.runs import read_config
from comp.train.run import train
from comp.workspace.init import init_workspace

N_CLASSES = 8
PHOTO_SIZE = 256
N_SPLITS = 4


# --- data -----------------------------------------------------------------------


def build_competition(
    data: Path, *, n_train: int, n_test: int, photo_size: int = PHOTO_SIZE, seed: int = 0
) -> dict[str, Any]:
    """A Kaggle-layout competition of random crops of real photos, reused when it already fits."""
    manifest = data / "bench-manifest.json"
    want = {"n_train": n_train, "n_test": n_test, "seed": seed, "size": photo_size, "version": 1}
    if manifest.exists() and json.loads(manifest.read_text()) == want:
        return want
    if data.exists() and any(data.iterdir()):
        if not manifest.exists():
            sys.exit(
                f"--data {data}: not empty and not made by this benchmark; pick another folder"
            )
        shutil.rmtree(data)
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]  # china.jpg, flower.jpg
    rng = np.random.default_rng(seed)
    (data / "train").mkdir(parents=True)
    (data / "test").mkdir()

    def crop(i: int) -> Image.Image:
        photo = photos[i % len(photos)]
        w, h = photo.size
        side = int(rng.uniform(0.2, 1.0) * min(w, h))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        box = (x0, y0, x0 + side, y0 + side)
        return photo.crop(box).resize((photo_size, photo_size), Image.Resampling.BICUBIC)

    train_ids = [f"img_{i:05d}" for i in range(n_train)]
    test_ids = [f"test_{i:05d}" for i in range(n_test)]
    for i, ident in enumerate(train_ids):
        crop(i).save(data / "train" / f"{ident}.jpg", quality=90)
    for i, ident in enumerate(test_ids):
        crop(n_train + i).save(data / "test" / f"{ident}.jpg", quality=90)
    labels = [f"class{i % N_CLASSES}" for i in range(n_train)]
    pd.DataFrame({"Id": train_ids, "label": labels}).to_csv(data / "train_labels.csv", index=False)
    pd.DataFrame({"Id": test_ids, "label": labels[0]}).to_csv(
        data / "sample_submission.csv", index=False
    )
    manifest.write_text(json.dumps(want))
    return want


def make_workspace(root: Path, data: Path, base: dict[str, Any]) -> dict[str, Any]:
    """A comp workspace around ``data`` with its folds file; returns fold 0's facts."""
    init_workspace(root, data, overrides=base, force=True)
    cfg = load_config(root, base)
    comp = load_competition(root, cfg)
    folds = make_folds(comp.train, n_splits=cfg.n_splits, seed=cfg.seed)
    write_folds(folds_path(root, cfg), folds)
    train = folds[folds["fold"] != 0]
    return {
        "paths": comp.train_paths(list(folds["Id"])),
        "train_paths": comp.train_paths(list(train["Id"])),
        "train_targets": train["label"].map({c: i for i, c in enumerate(comp.classes)}).to_numpy(),
        "n_train": len(train),
        "n_valid": int((folds["fold"] == 0).sum()),
        "n_test": len(comp.test_ids()),
        "n_classes": len(comp.classes),
    }


def images_per_epoch(n: int, batch_size: int) -> int:
    """Images comp trains on per epoch: a last batch of one image is dropped (BatchNorm)."""
    remainder = n % batch_size
    return n - remainder if remainder == 1 else n


# --- (a) compute ceiling --------------------------------------------------------


def measure_ceiling(
    model_name: str,
    size: int,
    *,
    device: torch.device,
    batch_size: int,
    warmup: int,
    steps: int,
    amp: bool,
    channels_last: bool = True,
) -> dict[str, Any]:
    """Model-only training images/s on synthetic batches already on the device, in the
    precision ``amp`` gives here at this size (recorded as ``a_precision``)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=N_CLASSES)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=layout).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    chosen = precision(device, amp=amp, img_size=size)  # fp32, bf16 or fp16
    autocast = make_autocast(device, amp, img_size=size)
    scaler = torch.amp.GradScaler(device.type, enabled=chosen == "fp16")
    loss_fn = nn.CrossEntropyLoss()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    batches = []
    for _ in range(4):
        raw = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
        x = ((raw.to(device).float() / 255.0 - mean) / std).contiguous(memory_format=layout)
        batches.append((x, torch.randint(0, N_CLASSES, (batch_size,), device=device)))

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        with autocast():
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for i in range(warmup):
        step(i)
    # Timed in 5 windows: the fastest is the ceiling (b, too, takes its fastest warm
    # epoch), the least touched by the machine's other work; the mean is kept beside it.
    per_window = max(1, steps // 5)
    windows = []
    for w in range(max(1, steps // per_window)):
        with timer(device) as t:
            for i in range(per_window):
                step(w * per_window + i)
        windows.append(t[0])
    timed = per_window * len(windows)
    return {
        "a_img_s": per_window * batch_size / float(np.min(windows)),
        "a_mean_img_s": timed * batch_size / sum(windows),
        "a_steps": timed,
        "a_precision": chosen,
    }


# --- decoded-image cache ----------------------------------------------------------


def measure_cache(root: Path, paths: list[Path], size: int) -> dict[str, Any]:
    """First (cold: nothing cached yet) and second (warm) build of the train image cache."""
    cache_dir = root / "cache" / "images"
    (cache_dir / f"{cache_key(paths, size)}.npy").unlink(missing_ok=True)
    with timer() as cold:
        images = cached_images(paths, size, cache_dir=cache_dir)
    del images
    with timer() as warm:
        images = cached_images(paths, size, cache_dir=cache_dir)
        np.asarray(images[-1]).sum()  # touch it, as training will
    return {
        "size": size,
        "n_images": len(paths),
        "cold_s": cold[0],
        "cold_img_s": len(paths) / cold[0],
        "warm_s": warm[0],
        "bytes": images.nbytes,
    }


# --- (b) comp train end to end ----------------------------------------------------


def train_run(root: Path, overrides: dict[str, Any], name: str) -> tuple[pd.DataFrame, float]:
    """One fold of a ``comp.train.train`` run; its metrics.csv and the call's wall seconds."""
    cfg = load_config(root, overrides)
    shutil.rmtree(root / "runs" / name, ignore_errors=True)
    with timer() as t:
        train(root, cfg, name=name, folds=[0])
    return pd.read_csv(root / "runs" / name / "fold0" / "metrics.csv"), t[0]


def measure_comp_train(
    root: Path,
    base: dict[str, Any],
    *,
    name: str,
    n_train: int,
    device: torch.device,
    epochs: int = 3,
) -> dict[str, Any]:
    metrics, wall = train_run(root, {**base, "epochs": epochs, "freeze_epochs": 0}, name)
    # What `amp: auto` resolved to, from the run's own resolved config.
    amp = read_config(root / "runs" / name).amp == "true"
    n = images_per_epoch(n_train, base["batch_size"])
    # The fastest warm epoch, as (a) takes its steadiest window: both the least disturbed
    # by whatever else the machine does.
    warm = metrics["train_seconds"].iloc[min(1, len(metrics) - 1) :].min()
    return {
        "b_img_s": n / float(warm),
        "b_train_seconds": [float(s) for s in metrics["train_seconds"]],
        "b_epoch_seconds": [float(s) for s in metrics["seconds"]],
        "b_wall_img_s": n * len(metrics) / wall,
        "b_wall_s": wall,
        "b_run": name,
        "b_amp": amp,
        "b_precision": precision(device, amp=amp, img_size=int(base["img_size"])),
    }


# --- (c) naive seed-style pipeline ------------------------------------------------


class NaiveDataset(Dataset[tuple[torch.Tensor, int]]):
    """What the seed teams did: open, decode and transform every image in every epoch."""

    def __init__(self, paths: list[Path], targets: np.ndarray, transform: Callable[..., Any]):
        self.paths, self.targets, self.transform = paths, targets, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as img:
            rgb = img.convert("RGB")
        return self.transform(rgb), int(self.targets[i])


def measure_naive(
    model_name: str,
    size: int,
    *,
    paths: list[Path],
    targets: np.ndarray,
    device: torch.device,
    batch_size: int,
    warmup_batches: int = 3,
) -> dict[str, Any]:
    """Images/s of one epoch of PIL decode + torchvision transforms + an NCHW fp32 model."""
    import timm
    from torchvision import transforms as T

    transform = T.Compose(
        [
            T.Resize((size, size)),
            T.RandomHorizontalFlip(),
            T.RandomAffine(15, translate=(0.06, 0.06), scale=(0.9, 1.1)),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    loader = DataLoader(
        NaiveDataset(paths, targets, transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=2 if device.type == "cuda" else 0,
    )
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=N_CLASSES).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()

    def epoch(limit: int | None = None) -> int:
        seen = 0
        for i, (x, y) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        return seen

    epoch(limit=warmup_batches)
    with timer(device) as t:
        seen = epoch()
    return {"c_img_s": seen / t[0], "c_seconds": t[0], "c_precision": "fp32"}


# --- (d) stage 1 with and without cached features ---------------------------------


def measure_stage1(root: Path, base: dict[str, Any], *, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    stage1 = {**base, "epochs": 3, "freeze_epochs": 3, "feature_views": 2}
    uncached, _ = train_run(root, {**stage1, "cache_features": False}, f"{name}-uncached")
    cached, _ = train_run(root, {**stage1, "cache_features": True}, f"{name}-cached")
    out["d_uncached_s"] = float(uncached["seconds"].mean())
    out["d_cached_s"] = float(cached["seconds"].iloc[1:].mean())
    out["d_extraction_s"] = float(cached["seconds"].iloc[0]) - out["d_cached_s"]
    out["d_speedup"] = out["d_uncached_s"] / out["d_cached_s"]
    # The head's own training, without validation and checkpoint writing.
    out["d_cached_train_s"] = float(cached["train_seconds"].iloc[1:].mean())
    out["d_uncached_train_s"] = float(uncached["train_seconds"].mean())
    out["d_uncached_epochs_s"] = [float(s) for s in uncached["seconds"]]
    out["d_cached_epochs_s"] = [float(s) for s in cached["seconds"]]
    return out


# --- (e) predict ------------------------------------------------------------------


def measure_predict(root: Path, base: dict[str, Any], *, run: str, n_test: int) -> dict[str, Any]:
    cfg = load_config(root, base)
    n_ckpt = len(list((root / "runs" / run).glob("fold*/best.pt")))
    # predict() draws progress bars; they go nowhere here. What is timed is the prediction,
    # not the writing of its files.
    with open(os.devnull, "w") as devnull, redirect_stderr(devnull):
        predict(root, cfg, run=run, tta="none")  # warm-up; builds the test cache
        out: dict[str, Any] = {"e_checkpoints": n_ckpt}
        for tta in ("none", "hflip"):
            with timer() as t:
                predict(root, cfg, run=run, tta=tta)
            out[f"e_{tta}_img_s"] = n_test * n_ckpt / t[0]
    return out


# --- report -----------------------------------------------------------------------


COLUMNS = [
    ("model", "model", None),
    ("size", "size", None),
    ("a img/s", "a_img_s", 1),
    ("b img/s", "b_img_s", 1),
    ("b/a", "b_over_a", 2),
    ("precision a/b/c", "precisions", None),
    ("c img/s", "c_img_s", 1),
    ("b/c", "b_over_c", 2),
    ("b_wall img/s", "b_wall_img_s", 1),
    ("stage-1 uncached s/epoch", "d_uncached_s", 3),
    ("cached s/epoch", "d_cached_s", 4),
    ("speed-up", "d_speedup", 1),
    ("extraction s", "d_extraction_s", 2),
    ("predict img/s (no TTA)", "e_none_img_s", 1),
    ("predict img/s (hflip TTA)", "e_hflip_img_s", 1),
]


def cell(value: Any, digits: int | None) -> str:
    if value is None:
        return "error"
    if digits is None or not isinstance(value, float):
        return str(value)
    return f"{value:.{digits}f}"


def ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x is not None and y else None


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(title for title, _, _ in COLUMNS) + " |",
        "|" + "|".join("---" if key in ("model",) else "---:" for _, key, _ in COLUMNS) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(k), d) for _, k, d in COLUMNS) + " |")
    return "\n".join(lines)


def report(result: dict[str, Any]) -> str:
    d = result["data"]
    photo = result["args"]["photo_size"]
    lines = [
        "## comp training throughput",
        "",
        *machine_lines(result["machine"]),
        "- precision per row (a/b/c): what comp train's amp: auto timed faster for (b), "
        "the same for (a), fp32 for the naive pipeline (c)",
        f"- command: `{result['command']}`",
        f"- data: {d['n_images']} photo crops ({photo}x{photo} JPEG q90, {N_CLASSES} classes); "
        f"fold 0: {d['n_train']} train, {d['n_valid']} valid; {d['n_test']} test; "
        f"batch {result['args']['batch_size']}",
        "",
        markdown_table(result["rows"]),
        "",
    ]
    for c in result["cache"]:
        if "error" in c:
            lines.append(f"- image cache at {c['size']}: error {c['error']}")
            continue
        lines.append(
            f"- image cache at {c['size']}: first build {c['cold_s']:.2f} s for {c['n_images']} "
            f"images ({c['cold_img_s']:.0f} img/s, {c['bytes'] / 1e6:.1f} MB), "
            f"warm {c['warm_s'] * 1000:.1f} ms"
        )
    for r in result["rows"]:
        if r.get("a_img_s") and r.get("a_nchw_img_s"):
            lines.append(
                f"- ceiling (a), {r['model']} at {r['size']}: {r['a_img_s']:.1f} img/s channels_last, "
                f"{r['a_nchw_img_s']:.1f} img/s NCHW (the layout of the naive pipeline)"
            )
    for r in result["rows"]:
        if "d_speedup" in r:
            lines.append(
                f"- stage 1, {r['model']} at {r['size']}: training pass alone (train_seconds) "
                f"{r['d_uncached_train_s']:.3f} s uncached, {r['d_cached_train_s']:.4f} s cached "
                f"({r['d_uncached_train_s'] / r['d_cached_train_s']:.0f}x); the rest of a cached "
                "epoch is validation and checkpointing"
            )
    return "\n".join(lines)


def measure_row(
    root: Path,
    ws: dict[str, Any],
    cfg: dict[str, Any],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """Measurements (a) to (e) of one model at one size."""
    model, size = cfg["model"], cfg["img_size"]
    tag = f"{model}-{size}"
    errors: dict[str, str] = {}
    row: dict[str, Any] = {"model": model, "size": size}
    row |= attempt(
        errors,
        f"b {tag}",
        lambda: measure_comp_train(
            root, cfg, name=f"b-{tag}", n_train=ws["n_train"], device=device
        ),
    )
    # (a) in the precision that (b)'s `amp: auto` chose, so b/a compares like with like.
    amp = bool(row.get("b_amp", True))
    row |= attempt(
        errors,
        f"a {tag}",
        lambda: measure_ceiling(
            model,
            size,
            device=device,
            batch_size=args.batch_size,
            warmup=args.warmup,
            steps=args.steps,
            amp=amp,
        ),
    )
    # The same without channels_last, as the naive pipeline (c) runs: is NHWC faster here?
    nchw = attempt(
        errors,
        f"a-nchw {tag}",
        lambda: measure_ceiling(
            model,
            size,
            device=device,
            batch_size=args.batch_size,
            warmup=args.warmup,
            steps=args.steps,
            amp=amp,
            channels_last=False,
        ),
    )
    row["a_nchw_img_s"] = nchw.get("a_img_s")
    row |= attempt(
        errors,
        f"c {tag}",
        lambda: measure_naive(
            model,
            size,
            paths=ws["train_paths"],
            targets=ws["train_targets"],
            device=device,
            batch_size=args.batch_size,
        ),
    )
    row |= attempt(errors, f"d {tag}", lambda: measure_stage1(root, cfg, name=f"d-{tag}"))
    if "b_run" in row:
        row |= attempt(
            errors,
            f"e {tag}",
            lambda: measure_predict(root, cfg, run=row["b_run"], n_test=ws["n_test"]),
        )
    row["b_over_a"] = ratio(row.get("b_img_s"), row.get("a_img_s"))
    row["b_over_c"] = ratio(row.get("b_img_s"), row.get("c_img_s"))
    # Ratios between measurements in different precisions say so in their row.
    row["precisions"] = "/".join(str(row.get(f"{k}_precision", "?")) for k in "abc")
    row["errors"] = errors
    return row


# --- main -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("It builds once")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", nargs="+", help="timm models (default resnet18 efficientnet_b0)")
    p.add_argument("--sizes", nargs="+", type=int, help="image sizes (default 64 128)")
    p.add_argument("--images", type=int, help="training images on disk (default 640)")
    p.add_argument("--test-images", type=int, help="test images (default images / 4)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--photo-size",
        type=int,
        default=PHOTO_SIZE,
        help="side of the JPEGs on disk (default 256; Kaggle photos are often 300-500)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, help="timed steps of (a) (default 20, --quick 5)")
    p.add_argument("--data", type=Path, help="keep the photo competition here, and reuse it")
    p.add_argument("--keep", action="store_true", help="keep the workspace (runs, caches)")
    p.add_argument("--label", help="names the results file (default: the host name)")
    p.add_argument(
        "--out",
        type=Path,
        help="JSON results (default benchmarks/results-throughput-<label>.json)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test of the script")
    args = p.parse_args(argv)
    quick = args.quick
    args.models = [m for spec in args.models or [] for m in spec.split(",") if m] or (
        ["resnet10t"] if quick else ["resnet18", "efficientnet_b0"]
    )
    args.sizes = args.sizes or ([32] if quick else [64, 128])
    args.images = args.images or (96 if quick else 640)
    args.test_images = args.test_images or max(8, args.images // 4)
    args.steps = args.steps or (5 if quick else 20)
    args.warmup = 2 if quick else 3
    args.label = args.label or socket.gethostname()
    suffix = "-quick" if quick else ""
    args.out = args.out or Path(__file__).parent / f"results-throughput-{args.label}{suffix}.json"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": machine_info(device),
        "command": command_line(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": [],
        "cache": [],
        "errors": {},
    }
    errors: dict[str, str] = result["errors"]
    with (
        nullcontext(tempfile.mkdtemp(prefix="comp-bench-"))
        if args.keep
        else tempfile.TemporaryDirectory(prefix="comp-bench-")
    ) as tmp:
        if args.keep:
            print(f"workspace kept in {tmp}/ws", file=sys.stderr)
        data = args.data or Path(tmp) / "data"
        build_competition(
            data, n_train=args.images, n_test=args.test_images, photo_size=args.photo_size
        )
        root = Path(tmp) / "ws"
        base = {
            "model": args.models[0],
            "pretrained": "false",
            "img_size": args.sizes[0],
            "aug": "light",
            "batch_size": args.batch_size,
            "n_splits": N_SPLITS,
            "seed": 42,
            "device": args.device,
            "cache_images": True,
            "amp": "auto",
        }
        ws = make_workspace(root, data, base)
        result["data"] = {
            "n_images": args.images,
            **{k: ws[k] for k in ("n_train", "n_valid", "n_test", "n_classes")},
        }
        for size in args.sizes:
            cache = attempt(
                errors, f"cache {size}", partial(measure_cache, root, ws["paths"], size)
            )
            result["cache"].append(cache or {"size": size, "error": errors.get(f"cache {size}")})
            for model in args.models:
                print(f"[{time.perf_counter() - started:6.0f}s] {model} at {size}", file=sys.stderr)
                row = measure_row(
                    root, ws, {**base, "model": model, "img_size": size}, args, device
                )
                errors.update(row.pop("errors"))
                result["rows"].append(row)

    result["seconds"] = time.perf_counter() - started
    write_results(result, report(result), args.out)


if __name__ == "__main__":
    main()
