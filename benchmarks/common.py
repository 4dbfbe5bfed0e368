"""What the benchmarks share: the machine they ran on, running comp, timing and results.

Every figure a benchmark records names the machine (CPU model, cores, the native
bf16 feature comp's precision rule reads, GPU) and the precision it ran in, as
comp.hardware.precision chooses it; nothing here re-decides what comp decides.
Benchmarks print figures and may write them to a results file; they judge nothing
(no pass/fail, no exit status from a threshold). Reads /proc/cpuinfo and
/proc/meminfo; writes only the results file a benchmark names.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
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
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
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


def command_line() -> str:
    """The command this process was started with, for the record beside its figures."""
    return shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))


def machine_lines(m: dict[str, Any]) -> list[str]:
    """Markdown bullets naming the machine and software of ``machine_info``."""
    gpu = f", GPU {m['gpu']}" if m["gpu"] else ", no GPU"
    return [
        f"- machine: {m['cpu']}, {m['cores']} cores (of {m['cpu_count']}), "
        f"{m['ram_gb']} GB RAM{gpu}; host {m['host']}",
        f"- software: python {m['python']}, torch {m['torch']}, timm {m['timm']}, "
        f"torchvision {m['torchvision']}, albumentations {m['albumentations']}; "
        f"device {m['device']}, native bf16 {m['native_bf16'] or 'none'}, "
        f"{m['torch_threads']} torch threads",
    ]


def attempt(errors: dict[str, str], what: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; a failure is recorded under ``what`` and printed, and the
    benchmark goes on with the others."""
    try:
        return fn()
    except Exception as e:
        traceback.print_exc()
        errors[what] = f"{type(e).__name__}: {e}"
        return {}


def write_results(result: dict[str, Any], text: str, out: Path) -> None:
    """Print the Markdown ``text`` (with any errors), and write it with ``result`` to ``out``."""
    errors = result.get("errors") or {}
    if errors:
        text += "\n\nErrors:\n\n" + "\n".join(f"- {k}: {v}" for k, v in errors.items())
    result["markdown"] = text
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\n(results in {out}; {result.get('seconds', 0):.0f} s in all)")
