"""What this machine can do: data-loader workers, and which mixed precision pays off.

Reads the CPU's feature flags (``/proc/cpuinfo``) and CUDA's capabilities; writes
nothing. The CPU rule comes from ``benchmarks/bench_precision.py``, whose figures
are in benchmarks/README.md.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

# Below this image size a CPU step is dominated by overheads bf16 does not shrink
# (benchmarks/README.md, "Precision"), so fp32 is kept there.
CPU_BF16_MIN_SIZE = 48
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def auto_workers(requested: int, device: torch.device) -> int:
    if requested >= 0:
        return requested
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    # On CPU the model needs every core and augmenting in-memory arrays is cheap, so
    # workers would only compete with it; on a GPU they keep the device fed.
    return min(8, cores - 1) if device.type == "cuda" else 0


@functools.cache
def cpu_bf16() -> str | None:
    """The CPU feature that runs bfloat16 matrix maths natively (AMX or AVX512-BF16), if any."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    return next((flag for flag in BF16_FLAGS if flag in flags), None)


def amp_dtype(device: torch.device, enabled: bool, *, img_size: int = 0) -> torch.dtype | None:
    """The autocast dtype for this device, or None for fp32.

    CUDA: bf16 where supported, else fp16 (which needs loss scaling). CPU: bf16 where
    the cores have it natively and images are large enough for it to be faster.
    """
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16() and img_size >= CPU_BF16_MIN_SIZE:
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")  # type: ignore[arg-type]


def make_autocast(device: torch.device, enabled: bool, *, img_size: int = 0) -> Callable[[], Any]:
    """A context factory for mixed precision where ``amp_dtype`` chooses it, a no-op elsewhere."""
    dtype = amp_dtype(device, enabled, img_size=img_size)
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)
