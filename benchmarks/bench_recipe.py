"""Training recipes under equal time budgets, with no pretrained weights: held-out macro-F1 against minutes.

Run from the repository root, on a quiet machine:

    .venv/bin/python benchmarks/bench_recipe.py --keep /tmp/bench-recipe
    .venv/bin/python benchmarks/bench_recipe.py --budgets 2 --configs new --train-subjects 60   # smoke test

It draws a sprite competition (tests/sprites.py: 9 types, creatures with frames,
back views and palette swaps on varied backdrops, 64 px; the test set holds
unseen creatures, so a score there is a private leaderboard), makes a workspace
with ``comp init`` and ``comp folds`` at their defaults, then for every config
and budget runs ``comp train --time-limit B`` (5 folds), ``comp predict`` and
scores the submission against the held-back solution (public and private
halves). Configs:

- ``old``: the defaults before recipes, as keys: a frozen stage (3 of 15 epochs,
  scaled to the budget), lr1 1e-3, lr2 1e-4 for all layers, no label smoothing,
  no warmup, fp32 on the CPU;
- ``new``: the defaults (with no weights: the scratch recipe);
- ``new+mix+ema``: the defaults with mixup 0.2, cutmix 1.0 and an EMA of the weights;
- ``new-fp32``: the defaults with ``--amp false`` (the bf16 check at equal time).

It prints a Markdown table, and writes ``results-recipe.json`` and
``recipe.png`` (private macro-F1 against minutes) beside itself.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, run_comp

from tests.sprites import write_sprites

CONFIGS = {
    "old": [
        "--recipe",
        "finetune",
        "--lr2",
        "1e-4",
        "--label-smoothing",
        "0",
        "--layer-decay",
        "0",
        "--warmup-epochs",
        "0",
        "--amp",
        "false",
    ],
    "new": [],
    "new+mix+ema": ["--mixup", "0.2", "--cutmix", "1.0", "--ema", "true"],
    "new-fp32": ["--amp", "false"],
}
HERE = Path(__file__).resolve().parent


def comp(ws: Path, *args: str) -> str:
    return run_comp(ws, *args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--keep", type=Path, default=None, help="write the data and runs here, and keep them"
    )
    p.add_argument("--train-subjects", type=int, default=300, help="6 images each")
    p.add_argument("--test-subjects", type=int, default=100)
    p.add_argument("--budgets", default="3,6", help="minutes of comp train, comma-separated")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--out", type=Path, default=HERE / "results-recipe.json")
    a = p.parse_args()
    root = a.keep or Path(tempfile.mkdtemp(prefix="bench-recipe-"))
    data, ws = root / "data", root / "ws"
    if not (data / "train_labels.csv").exists():
        write_sprites(
            data,
            train_subjects=a.train_subjects,
            test_subjects=a.test_subjects,
            n_labels=9,
            size=64,
            jitter=0.01,
            seed=3,
        )
    if not (ws / "comp.yaml").exists():
        comp(Path("."), "init", str(ws), "--data", str(data))
        comp(ws, "folds")
    results = json.loads(a.out.read_text())["rows"] if a.out.exists() and a.keep else []
    done = {(r["config"], r["budget_min"]) for r in results}
    for budget in (float(b) for b in a.budgets.split(",")):
        for name in a.configs.split(","):
            if (name, budget) in done:
                continue
            run = f"{name}-{budget:g}m".replace("+", "_")
            t0 = time.time()
            said = comp(ws, "train", "--name", run, "--time-limit", f"{budget:g}m", *CONFIGS[name])
            train_s = time.time() - t0
            comp(ws, "predict", run)
            total_s = time.time() - t0
            scored = comp(
                ws, "submit", str(ws / "submissions" / f"{run}.csv"), "--local", "-m", run
            )
            cv = json.loads((ws / "runs" / run / "cv.json").read_text())["cv_macro_f1"]
            epochs = re.search(r"so (\d+) epochs per fold", said)
            row = {
                "config": name,
                "budget_min": budget,
                "epochs": int(epochs.group(1)) if epochs else None,
                "train_min": round(train_s / 60, 2),
                "total_min": round(total_s / 60, 2),
                "cv": cv,
                "public": float(re.search(r"public ([0-9.]+)", scored).group(1)),  # type: ignore[union-attr]
                "private": float(re.search(r"private ([0-9.]+)", scored).group(1)),  # type: ignore[union-attr]
            }
            print(json.dumps(row), flush=True)
            results.append(row)
            a.out.write_text(
                json.dumps({"machine": machine(), "data": data_note(a), "rows": results}, indent=1)
            )
    print(table(results))
    plot(results, HERE / "recipe.png")


def data_note(a: argparse.Namespace) -> str:
    return (
        f"tests/sprites.py: {a.train_subjects * 6} train images ({a.train_subjects} creatures), "
        f"{a.test_subjects * 6} test images of unseen creatures, 9 types, 64 px, seed 3"
    )


def table(rows: list[dict]) -> str:
    lines = [
        "| config | budget (min) | epochs/fold | train (min) | train+predict (min) | CV | public | private |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["budget_min"], r["config"])):
        lines.append(
            f"| {r['config']} | {r['budget_min']:g} | {r['epochs']} | {r['train_min']:.1f} | "
            f"{r['total_min']:.1f} | {r['cv']:.3f} | {r['public']:.3f} | {r['private']:.3f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["config"] for r in rows):
        mine = sorted((r for r in rows if r["config"] == name), key=lambda r: r["total_min"])
        ax.plot(
            [r["total_min"] for r in mine], [r["private"] for r in mine], marker="o", label=name
        )
    ax.set_xlabel("minutes (5 folds: train + predict, 2 CPU cores)")
    ax.set_ylabel("held-out (private) macro-F1")
    ax.set_title("Recipes at equal time, no pretrained weights")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
