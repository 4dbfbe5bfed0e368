"""fp32 against bf16 autocast for CPU training steps: where does bf16 pay off?

Run from the repository root, on a quiet machine:

    .venv/bin/python benchmarks/bench_precision.py
    .venv/bin/python benchmarks/bench_precision.py --models resnet18 --sizes 32,64 --batch 64

For every timm model (random init) and image size it times training steps
(forward, cross-entropy, backward, AdamW; channels_last, as comp.train runs them)
and inference batches, once in fp32 and once under ``torch.autocast("cpu",
dtype=torch.bfloat16)``: 3 warm-up steps, then the fastest of 3 windows of
``--steps`` steps. It prints a Markdown table of images/s and the bf16/fp32
ratio, and the CPU flag that comp.hardware.precision.cpu_bf16 reads. Accuracy at equal
time is measured by bench_recipe.py (``--configs new,new-fp32``).
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
from common import machine  # benchmarks/common.py


def throughput(
    model_name: str, size: int, batch: int, steps: int, bf16: bool
) -> tuple[float, float]:
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=10, pretrained=False)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def train_step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def best(fn: object) -> float:
        for _ in range(3):
            fn()  # type: ignore[operator]
        windows = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()  # type: ignore[operator]
            windows.append(time.perf_counter() - t0)
        return batch * steps / min(windows)

    model.train()
    train = best(train_step)
    model.eval()

    @torch.inference_mode()
    def infer() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)

    return train, best(infer)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,resnet10t")
    p.add_argument("--sizes", default="16,32,48,64,96")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=4)
    a = p.parse_args()
    print(f"{machine()}, {torch.get_num_threads()} threads\n")
    print("| model | px | train fp32 | train bf16 | ratio | infer fp32 | infer bf16 | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in a.models.split(","):
        for size in (int(s) for s in a.sizes.split(",")):
            t32, i32 = throughput(name, size, a.batch, a.steps, bf16=False)
            t16, i16 = throughput(name, size, a.batch, a.steps, bf16=True)
            print(
                f"| {name} | {size} | {t32:.0f} | {t16:.0f} | {t16 / t32:.2f} | {i32:.0f} | {i16:.0f} | {i16 / i32:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
