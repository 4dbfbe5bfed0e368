"""What this machine can do: data-loader workers, and which mixed precision pays off.

Reads the CPU's feature flags (``/proc/cpuinfo``) and CUDA's capabilities. Writes
the precision cache, ``$XDG_CACHE_HOME/comp/precision.json`` (``~/.cache``): which
precision was faster for a kind of work on this machine, measured once.

One rule for training, inference and the similarity search (``choose``): fp32 on a
CPU without native bf16 (emulated bf16 is always slower); elsewhere the faster of
fp32 and mixed precision, timed on the work itself. The same CPU flag was 1.43x
faster in bf16 on one machine and 0.90x on another (benchmarks/README.md,
"Precision"), so a flag alone cannot decide.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from comp import files

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


def mixed_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed precision a device has: bf16 (or fp16, which needs loss scaling, on an
    older GPU such as a Kaggle T4), bf16 on a CPU; None on devices without autocast."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16
    return None


def amp_dtype(device: torch.device, amp: str | bool, *, img_size: int = 0) -> torch.dtype | None:
    """The autocast dtype for ``amp`` ("true", "false" or "auto"), or None for fp32.

    "auto" here is the rule without a measurement (a run measures, see ``choose``, and
    records "true" or "false"): mixed precision on CUDA, and on a CPU with native bf16
    for images large enough that it can pay.
    """
    # A bool is the older "mixed precision allowed": the rule without a measurement.
    amp = ("auto" if amp else "false") if isinstance(amp, bool) else amp
    if amp == "false":
        return None
    if amp == "true":
        return mixed_dtype(device)
    if device.type == "cuda":
        return mixed_dtype(device)
    if device.type == "cpu" and cpu_bf16() and img_size >= CPU_BF16_MIN_SIZE:
        return torch.bfloat16
    return None


def machine_key(device: torch.device) -> str:
    """What a precision measurement holds for: the processor and torch's version."""
    if device.type == "cuda":
        chip = torch.cuda.get_device_name(device)
    else:
        chip = _cpu_model() or platform.processor() or platform.machine()
    return f"{chip}|{device.type}|torch {torch.__version__}"


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None
            )
    except OSError:
        return None


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "comp" / "precision.json"


def choose(
    device: torch.device,
    amp: str,
    *,
    work: str,
    measure: Callable[[torch.dtype | None], float],
    margin: float = 0.95,
) -> tuple[torch.dtype | None, str]:
    """The precision for ``work`` (a key naming the model, size and batch) and why.

    ``amp`` "true" or "false" forces it. "auto" takes fp32 on a CPU without native bf16;
    elsewhere it times ``measure(dtype)`` (seconds for a fixed amount of work) in fp32 and
    mixed precision and keeps mixed only when it is faster by ``margin``, once per machine
    and ``work``: the answer is cached."""
    mixed = mixed_dtype(device)
    if amp == "false" or mixed is None:
        return None, "amp false" if amp == "false" else f"no mixed precision on {device.type}"
    if amp == "true":
        return mixed, "amp true"
    if device.type == "cpu" and not cpu_bf16():
        return None, "this CPU has no native bf16, and emulated bf16 is slower"
    key = f"{machine_key(device)}|{work}"
    path = cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    if key not in cached:
        fp32, low = measure(None), measure(mixed)
        cached[key] = {"fp32": round(fp32, 6), precision_name(mixed): round(low, 6)}
        with contextlib.suppress(OSError):  # a read-only home: measure again next time
            files.write_text(path, json.dumps(cached, indent=1, sort_keys=True))
    times = cached[key]
    fp32, low = float(times["fp32"]), float(times.get(precision_name(mixed), float("inf")))
    ratio = fp32 / low if low > 0 else 0.0
    name = precision_name(mixed)
    if low < margin * fp32:
        return mixed, f"measured {ratio:.2f}x fp32's speed"
    return None, f"{name} measured {ratio:.2f}x fp32's speed"


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")  # type: ignore[arg-type]


def make_autocast(
    device: torch.device, enabled: str | bool, *, img_size: int = 0
) -> Callable[[], Any]:
    """A context factory for mixed precision where ``amp_dtype`` chooses it, a no-op elsewhere."""
    dtype = amp_dtype(device, enabled, img_size=img_size)
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)
