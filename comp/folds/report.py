"""The folds report in words, as ``comp folds`` prints it: twins, distances, every candidate.

Reads the report ``comp.folds.split.fold_report`` made (the dict written to
``folds_k{n}_seed{s}.json``); writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from comp.folds.split import NOISE_DRAWS, QUANTILES


def fold_report_text(report: dict[str, Any], distances: dict[str, Any], path: Path) -> str:
    """The report as ``comp folds`` prints it: twins, distance quantiles, every candidate."""
    lines = [
        f"similarity on {'+'.join(report['features'])} features: {report['train_images']} train, "
        f"{report['test_images']} test images",
        f"train images with a twin in train (distance <= {report['twin_distance']:g}): "
        f"{report['train_with_twin']} of {report['train_images']}",
    ]
    if report["test_images"]:
        lines.append(
            f"test images with a twin in train: {report['test_with_twin']} of {report['test_images']}"
        )
    head = " ".join(f"{round(q * 100):>5}%" for q in QUANTILES)
    lines.append(f"\ndistance to the nearest training image   {head}")
    for name, d in distances.items():
        if d is not None:
            row = " ".join(f"{np.quantile(d, q):6.3f}" for q in QUANTILES)
            lines.append(f"  {name:<38} {row}")
    lines.append("\ncandidate                              groups  largest   shift  match")
    for c in report["candidates"]:
        mark = "*" if c["name"] == report["used"] else " "
        groups = "-" if c["groups"] is None else str(c["groups"])
        shift = "-" if c["shift"] is None else f"{c['shift']:.3f}"
        match = "-" if c["match"] is None else f"{c['match']:.3f}"
        note = f"  ({c['problem']})" if c["problem"] else ""
        lines.append(
            f"{mark} {c['name']:<36} {groups:>6} {c['largest_group']:>8} {shift:>7} {match:>6}{note}"
        )
    lines.append(
        "  (shift: gap to the test distances, lower is better; plain folds' is the best of "
        f"{1 + NOISE_DRAWS} draws when matched; match: 1 - Jensen-Shannon)"
    )
    if report.get("adversarial_auc") is not None:
        lines.append(
            f"\nadversarial validation AUC {report['adversarial_auc']:.2f}: {report['adversarial_meaning']}"
        )
    if report.get("classes"):
        lines.append(f"classes: {report['classes']}")
    if report.get("kind"):
        lines.append(f"this looks like {report['kind']}: {report['kind_why']}")
    lines.append(f"report: {path.with_suffix('.json').name}, {path.with_suffix('.png').name}\n")
    return "\n".join(lines)
