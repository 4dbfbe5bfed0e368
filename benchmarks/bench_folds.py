"""Benchmark of `comp folds` at scale: time and peak memory of the distance-matched folds.

Writes a sprite competition of N train images (and N/3 test images) at 64 px
(tests/sprites.py: frames, back views and palette swaps of unseen subjects), then
runs `comp init` and `comp folds` on it in a child process and prints the wall
time and the child's peak resident memory. Results go to benchmarks/README.md.

usage: python benchmarks/bench_folds.py --train 10000 [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine

from tests.sprites import write_sprites


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=10_000, help="train images (about)")
    p.add_argument("--keep", type=Path, default=None, help="write the data here and keep it")
    a = p.parse_args()
    root = a.keep or Path(tempfile.mkdtemp(prefix="bench-folds-"))
    data = root / "data"
    if not (data / "train_labels.csv").exists():
        start = time.time()
        write_sprites(
            data,
            train_subjects=a.train // 6,
            test_subjects=a.train // 18,
            n_labels=9,
            size=64,
            jitter=0.01,
        )
        print(f"wrote the data in {time.time() - start:.0f}s", flush=True)
    comp = Path(sys.executable).parent / "comp"
    subprocess.run(
        [comp, "init", root / "ws", "--data", data, "--force"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    start = time.time()
    subprocess.run(
        [comp, "-w", root / "ws", "folds"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seconds = time.time() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    report = json.loads((root / "ws" / "folds" / "folds_k5_seed42.json").read_text())
    print(
        json.dumps(
            {
                "train": report["train_images"],
                "test": report["test_images"],
                "seconds": round(seconds, 1),
                "peak_rss_gb": round(peak_gb, 2),
                "chosen": report["chosen"]["name"],
                "machine": machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
