"""What the benchmarks share: the machine they ran on, running comp, and timing.

Every figure a benchmark records names the machine (CPU model, cores, the native
bf16 feature comp's precision rule reads, GPU) and the precision it ran in, as
comp.hardware.precision chooses it; nothing here re-decides what comp decides.
Reads /proc/cpuinfo and /proc/meminfo; writes nothing.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    # Run as a script from anywhere, against this checkout's comp (and tests.sprites).
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from comp.hardware.precision import amp_dtype, cpu_bf16, precision_name  # noqa: E402

GB = 1e9


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / GB, 1)
    except OSError:
        pass
    return None


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """The machine, for the JSON beside every figure."""
    import albumentations
    import timm
    import torchvision

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": cores(),
        "cpu_count": os.cpu_count(),
        "ram_gb": ram_gb(),
        "native_bf16": cpu_bf16(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "torchvision": torchvision.__version__,
        "albumentations": albumentations.__version__,
    }


def machine() -> str:
    """The machine in one line, for a results table's heading."""
    gpu = (
        f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    )
    return (
        f"{cpu_model()}, {cores()} cores, native bf16: {cpu_bf16() or 'none'}{gpu}, "
        f"torch {torch.__version__}"
    )


def precision(device: torch.device, *, amp: bool, img_size: int) -> str:
    """The precision ``comp train`` runs in here, at this image size: fp32, bf16 or fp16."""
    return precision_name(amp_dtype(device, amp, img_size=img_size))


def run_comp(ws: Path, *args: str, quiet: bool = True) -> str:
    """``comp -w WS ARGS`` in a child process; its stdout, or exit with its stderr's tail."""
    out = subprocess.run(
        [sys.executable, "-m", "comp", "-w", str(ws), *args], capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"comp {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    if not quiet:
        print(out.stdout, end="")
    return out.stdout


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timer(device: torch.device | None = None) -> Iterator[list[float]]:
    """``with timer(dev) as t: ...`` leaves the seconds in ``t[0]`` (CUDA work included)."""
    out = [0.0]
    if device is not None:
        sync(device)
    start = time.perf_counter()
    yield out
    if device is not None:
        sync(device)
    out[0] = time.perf_counter() - start
