"""What reaches the trackers after training: a blend, leaderboard scores, a kernel's own runs.

Reads the workspace's ``comp.yaml`` (for a pulled kernel), a run's ``trackers.json`` and a
kernel's pulled ``tracker/`` folder; writes through the trackers the config's ``tracker`` key
names (their stores under the tracker folder, see ``comp.track.trackers``) and
``runs/<run>/trackers.json``, so that a later score lands on the same tracker run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from comp.config import Config, load_config
from comp.runs import BLEND_FILE, SUMMARY_FILE
from comp.track.trackers import experiment_name, log_scores, merge_pulled, open_run

log = logging.getLogger(__name__)


def track_blend(root: Path, cfg: Config, *, summary: dict[str, Any]) -> None:
    """A blend as a tracker run: its members and weights, CV, and the runs it came from."""
    run_dir = root / "runs" / summary["run"]
    trackers = open_run(
        root,
        cfg.tracker,
        run=summary["run"],
        experiment=experiment_name(root, cfg.competition),
        run_dir=run_dir,
    )
    if not trackers:
        return
    members = summary["members"]
    trackers.params({f"weight/{m}": f["weight"] for m, f in members.items()} | {"kind": "blend"})
    trackers.tags({"built_from": "blend of " + ", ".join(members), "parents": ",".join(members)})
    trackers.metrics(
        {"cv_macro_f1": summary["cv_macro_f1"], "cv_accuracy": summary["cv_accuracy"]}
        | {f"fold{k}/best_macro_f1": v for k, v in summary["fold_macro_f1"].items()}
    )
    trackers.artifacts([run_dir / SUMMARY_FILE, run_dir / BLEND_FILE])
    trackers.close()


def track_scores(root: Path, cfg: Config, *, run: str | None, scores: dict[str, Any]) -> None:
    """Leaderboard scores, as they arrive, on the tracker run of the run that made them."""
    if run:
        log_scores(
            root,
            cfg.tracker,
            run_dir=root / "runs" / str(run),
            experiment=experiment_name(root, cfg.competition),
            scores=scores,
        )


def merge_kernel_tracker(root: Path, *, pulled: Path, run: str) -> list[str]:
    """A kernel's tracker folder into the local trackers, so its run sits beside local ones.

    Returns the trackers merged (none when the kernel left no tracker folder).
    """
    if not pulled.is_dir():
        return []
    # The workspace's own trackers, not the kernel's: the pulled run joins the local ones.
    cfg = load_config(root)
    merged = merge_pulled(
        root,
        cfg.tracker,
        pulled,
        run_dir=root / "runs" / run,
        experiment=experiment_name(root, cfg.competition),
    )
    if merged:
        log.info(f"tracker: {', '.join(merged)} of the kernel merged into the local ones")
    return merged
