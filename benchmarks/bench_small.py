"""Small images from scratch: held-out macro-F1 against minutes, for comp's defaults and parts.

Writes a sprite competition of unseen creatures (tests/sprites.py: 9 types, test =
creatures train never shows), then for each variant runs ``comp train`` (5 folds)
and ``comp predict`` in a child process and scores the submission on every test
image. A colour histogram + ExtraTrees (the 10-second anchor) is scored beside
them. Prints a Markdown table and writes ``results-small-<label>.json`` beside itself.

    .venv/bin/python benchmarks/bench_small.py --label cpu-2core
    .venv/bin/python benchmarks/bench_small.py --train-subjects 60 --test-subjects 20 \
        --variants new --out /tmp/small.json        # smoke test, ~2 min

Variants are ``--set`` overrides on the workspace ``comp init`` writes (all auto):
``new`` is the default; ``old`` the default before it (resnet18, albumentations per
image); ``net`` and ``pipeline`` change one part against ``old``, ``tta`` (flips and
shifts at predict) and ``fp32`` (no bf16, whatever was measured) one against ``new``; ``cnn`` is
the three-layer CNN of the seed reports (simple_cnn); ``classical`` the fixed colour,
shape and texture features under ExtraTrees; ``blend`` is ``comp blend new classical``
(run it after both).

``--kind species`` writes the fine-grained kind instead: each class one creature,
24 images of it, and test = a view train never shows (tests/sprites.py ``split="view"``).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import machine, machine_info, run_comp
from PIL import Image
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.metrics import f1_score

from tests.sprites import write_species, write_sprites

VARIANTS: dict[str, list[str]] = {
    "new": [],
    "old": ["--set", "model=resnet18", "--set", "pipeline=image"],
    "net": ["--set", "pipeline=image"],
    "pipeline": ["--set", "model=resnet18"],
    "tta": [],  # the default, predicted with --tta hflip,shift
    "fp32": ["--set", "amp=false"],  # the default without the precision it measured
    "cnn": ["--set", "model=simple_cnn"],
    "classical": ["--set", "model=classical", "--set", "head=extratrees"],
}


def histogram_baseline(data: Path) -> tuple[float, float, float]:
    """Held-out macro-F1 (every test image, then private) and seconds of a 512-bin RGB
    histogram under ExtraTrees."""
    t0 = time.perf_counter()
    train = pd.read_csv(data / "train_labels.csv")
    solution = pd.read_csv(data / "solution.csv")

    def feats(folder: str, ids: pd.Series) -> np.ndarray:
        out = []
        for i in ids:
            a = np.asarray(Image.open(data / folder / f"{i}.png").convert("RGB")) // 32
            idx = a[..., 0] * 64 + a[..., 1] * 8 + a[..., 2]
            out.append(np.bincount(idx.ravel(), minlength=512) / idx.size)
        return np.stack(out)

    trees = ExtraTreesClassifier(500, n_jobs=-1, random_state=0)
    trees.fit(feats("train", train["Id"]), train["label"])
    pred = trees.predict(feats("test", solution["Id"]))
    private = (solution["Usage"] == "Private").to_numpy()
    return (
        float(f1_score(solution["label"], pred, average="macro")),
        float(f1_score(solution["label"][private], pred[private], average="macro")),
        time.perf_counter() - t0,
    )


def held_out(submission: Path, solution: Path, usage: str | None = None) -> float:
    """Macro-F1 on every test image, or on the ``usage`` part (Public, Private) only."""
    merged = pd.read_csv(solution).merge(pd.read_csv(submission), on="Id", suffixes=("", "_p"))
    if usage is not None:
        merged = merged[merged["Usage"] == usage]
    return float(f1_score(merged["label"], merged["label_p"], average="macro"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-subjects", type=int, default=734)  # 4,404 images
    p.add_argument("--test-subjects", type=int, default=244)  # 1,464 images
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--variants", default="new,old,net,pipeline,tta,fp32")
    p.add_argument("--kind", choices=["creatures", "species"], default="creatures")
    p.add_argument("--species", type=int, default=150)  # x 24 images: 3,600 train
    p.add_argument("--label", default="cpu-2core")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if a.kind == "species":
            data = write_species(Path(tmp) / "data", species=a.species, size=a.size, seed=7)
        else:
            data = write_sprites(
                Path(tmp) / "data",
                train_subjects=a.train_subjects,
                test_subjects=a.test_subjects,
                n_labels=9,
                size=a.size,
                seed=7,
            )
        f1, private, seconds = histogram_baseline(data)
        rows.append(
            {
                "variant": "colour histogram + ExtraTrees",
                "held_out": f1,
                "private": private,
                "minutes": seconds / 60,
            }
        )
        ws = Path(tmp) / "ws"
        run_comp(ws.parent, "init", str(ws), "--data", str(data))
        run_comp(ws, "folds")
        for name in a.variants.split(","):
            t0 = time.perf_counter()
            if name == "blend":
                out = run_comp(ws, "blend", "new", "classical", "--name", name)
                overrides = ["comp blend new classical"]
            else:
                out = run_comp(ws, "-q", "train", "--name", name, *VARIANTS[name])
                overrides = VARIANTS[name]
            trained = time.perf_counter() - t0
            tta = ["--tta", "hflip,shift"] if name == "tta" else []
            run_comp(ws, "-q", "predict", name, *tta)
            cv = next((ln for ln in out.splitlines() if "CV macro-F1" in ln), "")
            rows.append(
                {
                    "variant": name,
                    "overrides": " ".join(overrides + tta),
                    "cv": float(re.findall(r"CV macro-F1 ([0-9.]+)", cv)[0]) if cv else None,
                    "held_out": held_out(ws / "submissions" / f"{name}.csv", data / "solution.csv"),
                    "private": held_out(
                        ws / "submissions" / f"{name}.csv", data / "solution.csv", "Private"
                    ),
                    "train_minutes": trained / 60,
                    "minutes": (time.perf_counter() - t0) / 60,
                }
            )
            print(rows[-1], flush=True)
    print(f"\n{machine()}\n")
    print(
        "| variant | CV | held-out macro-F1 | private | minutes to train | minutes with predict |"
        "\n|---|---:|---:|---:|---:|---:|"
    )
    for r in rows:
        cv = f"{r['cv']:.3f}" if r.get("cv") is not None else ""
        private = f"{r['private']:.3f}" if "private" in r else ""
        trained = f"{r['train_minutes']:.1f}" if "train_minutes" in r else ""
        print(
            f"| {r['variant']} | {cv} | {r['held_out']:.3f} | {private} | {trained} "
            f"| {r['minutes']:.1f} |"
        )
    out = a.out or Path(__file__).with_name(f"results-small-{a.label}.json")
    out.write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
