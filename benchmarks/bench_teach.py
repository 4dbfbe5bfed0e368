"""Plain, pseudo-labelled, self-distilled and ensemble-distilled runs on one workspace, each
scored on CV and on the workspace's held-out answers (comp submit --local).

    python benchmarks/bench_teach.py WORKSPACE --out benchmarks/results-teach-demo.json [TRAIN_ARGS]

Every run trains with TRAIN_ARGS (e.g. --time-limit 3m). The gap is CV minus the
held-out private score; the table also gives each run's gap against its parent's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import machine, run_comp  # benchmarks/common.py

from comp.submit.ledger import Ledger, ledger_path


def comp(ws: Path, *args: str) -> float:
    t0 = time.perf_counter()
    run_comp(ws, *args)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--student", default="resnet10t", help="model of comp distill")
    # Everything else goes to every comp train / comp distill.
    a, extra = parser.parse_known_args()
    ws = a.workspace
    steps = [
        ("plain", None, ["train", "--name", "plain", *extra]),
        ("pseudo", "plain", ["train", "--name", "pseudo", "--pseudo", "plain", *extra]),
        (
            "self-distilled",
            "plain",
            ["train", "--name", "selfdistill", "--distill", "plain", *extra],
        ),
        (
            "ensemble-distilled",
            "plain",
            ["distill", "plain", "--model", a.student, "--name", "student", *extra],
        ),
    ]
    # Rows already measured (a run that stopped midway) are kept, not measured again.
    rows = json.loads(a.out.read_text())["rows"] if a.out.exists() else []
    for label, parent, args in steps:
        if any(r["run"] == label for r in rows):
            continue
        name = args[args.index("--name") + 1]
        seconds = comp(ws, *args)
        seconds += comp(ws, "predict", name)
        comp(ws, "submit", str(ws / "submissions" / f"{name}.csv"), "--local", "-m", label)
        scored = Ledger(ledger_path(ws)).rows()[-1]
        cv = json.loads((ws / "runs" / name / "cv.json").read_text())["cv_macro_f1"]
        row = {
            "run": label,
            "name": name,
            "parent": parent,
            "cv": cv,
            "public": scored["public"],
            "private": scored["private"],
            "gap": round(cv - scored["private"], 4),
            "seconds": round(seconds, 1),
        }
        if parent is not None:
            base = next(r for r in rows if r["run"] == parent)
            row["gap_change"] = round(row["gap"] - base["gap"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
        result = {"workspace": str(ws), "train_args": extra, "machine": machine(), "rows": rows}
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| run | CV | public | private | CV - private | change vs parent | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['run']} | {r['cv']:.4f} | {r['public']:.4f} | {r['private']:.4f} | "
            f"{r['gap']:+.4f} | {r.get('gap_change', float('nan')):+.4f} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
