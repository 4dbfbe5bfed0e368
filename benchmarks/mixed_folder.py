"""A small ImageFolder of mixed images, as people scrape them: sizes, shapes, modes and formats vary.

Built from scikit-learn's real handwritten digits (no download): each digit is
drawn at a random size and aspect, in a random dark ink on a random light paper, slightly
rotated, and saved as png, jpeg or webp in RGB, RGBA, L or P mode, one folder per
class and no test set (``comp init`` holds part of it back).

    python benchmarks/mixed_folder.py /tmp/mixed --per-class 65
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_mixed_folder(root: Path, *, per_class: int = 65, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    digits = load_digits()
    written = 0
    for label in range(10):
        rows = rng.permutation(np.flatnonzero(digits.target == label))[:per_class]
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, row in enumerate(rows):
            ink = digits.images[row] / 16.0
            # Ink darker than paper, as on a scan or a drawing; hues vary freely.
            paper_c, ink_c = rng.integers(150, 256, 3), rng.integers(0, 110, 3)
            rgb = paper_c * (1 - ink[..., None]) + ink_c * ink[..., None]
            img = Image.fromarray(rgb.astype(np.uint8)).resize((64, 64), Image.BICUBIC)
            img = img.rotate(float(rng.uniform(-15, 15)), fillcolor=tuple(int(v) for v in paper_c))
            w = int(rng.integers(28, 257))
            h = int(w * rng.uniform(0.75, 1.33))
            img = img.resize((w, h), Image.BICUBIC)
            mode = rng.choice(["RGB", "RGBA", "L", "P"])
            fmt = rng.choice(["png", "jpg", "webp"]) if mode in ("RGB", "L") else "png"
            img = img.convert(str(mode))
            img.save(folder / f"{label}_{i:03d}.{fmt}")
            written += 1
    return written


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--per-class", type=int, default=65)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write_mixed_folder(a.root, per_class=a.per_class, seed=a.seed), "images in", a.root)
