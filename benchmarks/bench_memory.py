"""Peak memory of comp's training data path over many small images.

Run from the repository root, on a quiet machine:

    .venv/bin/python benchmarks/bench_memory.py --device cpu --label cpu-2core
    .venv/bin/python benchmarks/bench_memory.py --quick --out /tmp/memory.json   # a smoke test

``--images`` 64x64 PNGs (coloured, noisy, upscaled scikit-learn digits; generated once
into ``--dir`` and reused) go, in a clean child process of this script, through comp's
image cache (``comp.data.cache.cached_images``) and then one shuffled pass of the
training DataLoader with light augmentation (batch 256, no workers), whose last
``--steps`` batches train a resnet18 (channels_last, in the precision comp chooses at
64 px). A thread samples /proc/self/status every 20 ms: RssAnon (memory the process
holds itself), RssFile (mapped file pages: the memory-mapped cache, shared libraries)
and VmHWM (peak resident set), overall and per phase (start, i.e. after the imports;
cache build; augmented pass; train steps).

It prints the machine, the command line and the peaks, and writes the same as JSON to
``--out`` (default ``benchmarks/results-memory-<label or host>.json``). It judges
nothing: the figures are the result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (  # benchmarks/common.py
    GB,
    IMAGENET_MEAN,
    IMAGENET_STD,
    attempt,
    command_line,
    machine_info,
    machine_lines,
    precision,
    sync,
    timer,
    write_results,
)
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

# comp, all in one place.
from comp.data.cache import cached_images
from comp.data.transforms import ImageDataset, create_transform, to_input
from comp.hardware.distributed import pick_device
from comp.hardware.precision import make_autocast

# --- the images -------------------------------------------------------------------


def png_paths(folder: Path, n: int) -> list[Path]:
    return [folder / f"{i // 1000:03d}" / f"{i:06d}.png" for i in range(n)]


def make_images(folder: Path, n: int) -> float:
    """``n`` 64x64 PNGs (coloured, noisy, upscaled digits), made once; returns seconds spent."""
    done = folder / "count.txt"
    have = int(done.read_text()) if done.exists() else 0
    if have >= n:
        return 0.0
    from sklearn.datasets import load_digits

    digits = (load_digits().images * (255 / 16)).astype(np.uint8)
    paths = png_paths(folder, n)
    for sub in {p.parent for p in paths[have:]}:
        sub.mkdir(parents=True, exist_ok=True)

    def draw(i: int) -> None:
        rng = np.random.default_rng(i)
        mask = Image.fromarray(digits[i % len(digits)]).resize((64, 64), Image.Resampling.BILINEAR)
        m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
        fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        img = bg + (fg - bg) * m + rng.normal(0, 8, (64, 64, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(paths[i], compress_level=1)

    start = time.perf_counter()
    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        list(pool.map(draw, range(have, n), chunksize=256))
    done.write_text(str(n))
    return time.perf_counter() - start


# --- sampling /proc/self/status ----------------------------------------------------


class MemorySampler(threading.Thread):
    """Peaks of RssAnon, RssFile and VmHWM from /proc/self/status, sampled every ``interval`` s,
    overall and per phase of the work (``mark`` starts the next phase)."""

    FIELDS = ("RssAnon", "RssFile", "RssShmem", "VmHWM", "VmRSS")

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, dict[str, int]] = {}
        self.samples = 0
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    @classmethod
    def read(cls) -> dict[str, int]:
        """The current values, in bytes."""
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in cls.FIELDS:
                out[key] = int(value.split()[0]) * 1024
        return out

    def sample(self) -> None:
        values = self.read()
        with self._lock:
            peak = self.peaks.setdefault(self.phase, dict.fromkeys(self.FIELDS, 0))
            for key, value in values.items():
                peak[key] = max(peak[key], value)
            self.samples += 1

    def mark(self, phase: str) -> None:
        self.sample()  # the phase that ends gets at least one sample, however short
        with self._lock:
            self.phase = phase
        self.sample()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> dict[str, int]:
        """Stop sampling; the peaks over every phase."""
        self.sample()
        self._stop_event.set()
        self.join()
        return {k: max(p[k] for p in self.peaks.values()) for k in self.FIELDS}


# --- the measurement ---------------------------------------------------------------


def measure_here(folder: Path, n: int, *, steps: int, device: torch.device) -> dict[str, Any]:
    """In this (fresh) process: comp's image cache of ``n`` PNGs, then one augmented pass of
    the training DataLoader, whose last ``steps`` batches train a resnet18."""
    import timm

    sampler = MemorySampler()
    sampler.start()
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    model = model.to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mean = torch.tensor(IMAGENET_MEAN, device=device)
    std = torch.tensor(IMAGENET_STD, device=device)
    paths = png_paths(folder, n)
    autocast = make_autocast(device, True, img_size=64)
    with tempfile.TemporaryDirectory(dir=folder, prefix="cache-") as cache_dir:
        sampler.mark("cache build")
        with timer() as build:
            images = cached_images(paths, 64, cache_dir=Path(cache_dir))
        sampler.mark("augmented pass")
        dataset = ImageDataset(
            images, np.arange(n) % 10, create_transform("light", img_size=64), index=np.arange(n)
        )
        loader = DataLoader(dataset, batch_size=256, shuffle=True, num_workers=0)
        first_step = max(0, len(loader) - steps)
        seen, passed, t0, pass_s = 0, 0, time.perf_counter(), None
        for i, (xb, yb) in enumerate(loader):
            seen += len(yb)
            if i < first_step:
                passed += len(yb)
                continue
            if i == first_step:
                pass_s = time.perf_counter() - t0
                sampler.mark("train steps")
            x = to_input(xb, mean=mean, std=std, device=device, channels_last=True)
            with autocast():
                loss = nn.functional.cross_entropy(model(x), yb.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync(device)
        if pass_s is None:
            pass_s = time.perf_counter() - t0
        cache_bytes = sum(p.stat().st_size for p in Path(cache_dir).glob("*.npy"))
        peak = sampler.stop()
    assert seen == n
    return {
        "n_images": n,
        "cache_bytes": cache_bytes,
        "cache_build_s": build[0],
        "pass_img_s": passed / pass_s if passed and pass_s else None,
        "train_steps": min(steps, math.ceil(n / 256)),
        "device": str(device),
        "precision": precision(device, amp=True, img_size=64),
        "peak": peak,
        "phases": sampler.peaks,
        "samples": sampler.samples,
    }


def measure(folder: Path, n: int, *, steps: int, device: torch.device) -> dict[str, Any]:
    """The PNGs made (once), then :func:`measure_here` in a child process of this script, so
    that nothing this process did (making the PNGs) counts in the peaks."""
    folder.mkdir(parents=True, exist_ok=True)
    generated = make_images(folder, n)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--dir", str(folder)]
    cmd += ["--images", str(n), "--steps", str(steps), "--device", str(device)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["generate_s"] = generated
    return result


# --- report and main ----------------------------------------------------------------


def report(result: dict[str, Any]) -> str:
    lines = [
        "## comp memory benchmark",
        "",
        *machine_lines(result["machine"]),
        f"- command: `{result['command']}`",
        "",
    ]
    m = result.get("memory") or {}
    if "peak" not in m:
        return "\n".join([*lines, f"- memory: error {m.get('error')}"])
    p = m["peak"]
    passed = f"{m['pass_img_s']:.0f} img/s" if m["pass_img_s"] else "no batches left"
    lines.append(
        f"- {m['n_images']} 64x64 PNGs ({m['device']}, {m['precision']}): cache "
        f"{m['cache_bytes'] / GB:.2f} GB built in {m['cache_build_s']:.1f} s, "
        f"augmented pass {passed}, then {m['train_steps']} resnet18 training steps (batch 256); "
        f"peak RssAnon {p['RssAnon'] / GB:.2f} GB, peak RssFile {p['RssFile'] / GB:.2f} GB, "
        f"peak VmHWM {p['VmHWM'] / GB:.2f} GB"
    )
    for phase, q in m["phases"].items():
        lines.append(
            f"  - {phase}: peak RssAnon {q['RssAnon'] / GB:.2f} GB, "
            f"RssFile {q['RssFile'] / GB:.2f} GB, VmHWM {q['VmHWM'] / GB:.2f} GB"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("It prints")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--images", type=int, help="64x64 PNGs (default 100000, --quick 2000)")
    p.add_argument("--dir", type=Path, help="where the PNGs are made once and kept")
    p.add_argument("--steps", type=int, default=5, help="resnet18 training steps at the end")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--label", help="names the results file (default: the host name)")
    p.add_argument(
        "--out", type=Path, help="JSON results (default benchmarks/results-memory-<label>.json)"
    )
    p.add_argument("--quick", action="store_true", help="2000 images, a smoke test of the script")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.images = args.images or (2000 if args.quick else 100_000)
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    args.dir = args.dir or cache_home / "comp-bench" / "rss-png64"
    args.label = args.label or socket.gethostname()
    suffix = "-quick" if args.quick else ""
    args.out = args.out or Path(__file__).parent / f"results-memory-{args.label}{suffix}.json"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.child:
        print(json.dumps(measure_here(args.dir, args.images, steps=args.steps, device=device)))
        return

    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": machine_info(device),
        "command": command_line(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "errors": {},
    }
    print(f"memory, {args.images} images (PNGs in {args.dir})", file=sys.stderr)
    result["memory"] = attempt(
        result["errors"],
        "memory",
        lambda: measure(args.dir, args.images, steps=args.steps, device=device),
    ) or {"error": result["errors"].get("memory")}
    result["seconds"] = time.perf_counter() - started
    write_results(result, report(result), args.out)


if __name__ == "__main__":
    main()
