"""``comp tune``: a study run in this process or in worker processes that share it, and shown.

Reads the study's storage (``tune/<study>.db`` unless another is given) and the resolved
config. Writes the trials to the storage (and, on a study's first start, its space and
trial 0); with several workers, the config they all use as ``tune/tmp*.yaml``, removed
when they end; with ``show_study``, ``tune/<study>-best.yaml`` and the plots under
``tune/<study>/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from comp import console
from comp.config import Config, to_dict
from comp.errors import CompError
from comp.files import relative
from comp.tune import study as tuning

log = logging.getLogger(__name__)


def shown_url(url: str) -> str:
    """A storage URL fit to print: a password in it stays out of the output."""
    return url.split("@")[-1] if "://" in url and "@" in url else url


def spawn_workers(
    root: Path,
    cfg: Config,
    *,
    study_name: str,
    storage: str,
    trials: int,
    heartbeat: int = 60,
    n_workers: int = 2,
    left: float | None = None,
) -> None:
    """Run ``n_workers`` ``comp tune`` processes on one study and wait for them all;
    ``left``: the seconds of the study's time limit still to spend."""
    if left is not None:
        # The workers start later than the study did: they get what is left of its budget.
        cfg = dataclasses.replace(cfg, tune_time_limit=f"{max(left, 1.0):.0f}s")
    # The resolved config, so every worker tunes the same one whatever flags made it.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=root / "tune", delete=False) as f:
        yaml.safe_dump(to_dict(cfg), f)
    base = [sys.executable, "-m", "comp", "-w", str(root), "tune", "--config", f.name]
    base += ["--trials", str(trials), "--study", study_name, "--storage", storage]
    base += ["--heartbeat", str(heartbeat)]
    try:
        # Worker i draws from its own seed stream: no two workers replay one another.
        procs = [subprocess.Popen([*base, "--worker", str(i + 1)]) for i in range(n_workers)]
        codes = [p.wait() for p in procs]
    finally:
        Path(f.name).unlink(missing_ok=True)
    if any(codes):
        raise CompError(f"a worker failed (exit codes {codes})")


def run_study(
    root: Path,
    cfg: Config,
    *,
    study_name: str = "comp",
    storage: str | None = None,
    trials: int = 20,
    n_workers: int = 1,
    heartbeat: int = 60,
    worker: int = 0,
) -> dict[str, int] | None:
    """Run trials until the study holds ``trials`` finished ones, here or in ``n_workers``
    processes. ``worker`` is set in those processes: it picks the seed stream, and such a
    process leaves the closing report to the one that started it (and returns None).
    Returns the study's trial counts by state.

    On the study's first start the recipe is resolved and chooses the space, printed
    one key a line; a resumed study (or a worker) searches the space it recorded.
    ``cfg.tune_time_limit`` counts from this call."""
    start = time.time()
    tuning.search_space(cfg)
    tuning.objective_folds(cfg)
    url = tuning.storage_url(root, study_name, storage)
    t0 = time.perf_counter()
    study = tuning.load_study(
        url, study_name, pruner=cfg.tune_pruner, seed=cfg.seed, heartbeat=heartbeat
    )
    before = tuning.finished(study)
    log.info(f"study {study_name} ({shown_url(url)}): {before} of {trials} trials finished")
    # Before any worker starts: they all read the space this records.
    with console.silenced() if worker else contextlib.nullcontext():
        space = tuning.prepare(study, root, cfg)
    if not worker:
        log.info(space.recipe_line)
        log.info(f"space ({space.recipe} recipe):")
        for line in space.lines():
            log.info(line)
    if n_workers > 1 and not worker:
        deadline = tuning.study_deadline(cfg, start=start)
        spawn_workers(
            root,
            cfg,
            study_name=study_name,
            storage=url,
            trials=trials,
            heartbeat=heartbeat,
            n_workers=n_workers,
            left=None if deadline is None else deadline.left(),
        )
    else:
        # A worker's bar would fight the others' on one terminal.
        with console.no_bars() if worker else contextlib.nullcontext():
            tuning.optimize(
                root,
                cfg,
                study_name=study_name,
                storage=url,
                trials=trials,
                heartbeat=heartbeat,
                stream=worker,
                start=start,
            )
    if worker:
        return None
    study = tuning.load_study(
        url, study_name, pruner=cfg.tune_pruner, seed=cfg.seed, heartbeat=heartbeat
    )
    c = tuning.counts(study)
    log.info(
        f"\nstudy {study_name}: "
        + ", ".join(f"{v} {k}" for k, v in sorted(c.items()))
        + f" ({time.perf_counter() - t0:.0f}s)"
    )
    if c.get("complete"):
        best = study.best_trial
        log.info(f"best: trial {best.number}, macro-F1 {best.value:.4f}, {best.params}")
        baseline = tuning.baseline_trial(study)
        if baseline is not None and baseline.number != best.number:
            log.info(
                f"trial {baseline.number} (the recipe's values): macro-F1 {baseline.value:.4f}"
            )
        log.info("next: comp tune --show, then comp train --config tune/<study>-best.yaml")
    return c


def show_study(
    root: Path,
    cfg: Config,
    *,
    study_name: str = "comp",
    storage: str | None = None,
    heartbeat: int = 60,
) -> dict[str, Any]:
    """Print the study's recipe and space, the best trials, and the best against trial 0
    (the recipe's values) fold by fold; write the best config and the plots. Returns what
    ``comp.tune.study.show`` found (``best``, ``plots``, ``top``, ``counts``, ``space``,
    ``best_trial``, ``baseline``, ``gain``)."""
    tuning.objective_folds(cfg)
    url = tuning.storage_url(root, study_name, storage)
    study = tuning.load_study(
        url, study_name, pruner=cfg.tune_pruner, seed=cfg.seed, heartbeat=heartbeat
    )
    facts = tuning.show(root, cfg, study)
    log.info(
        f"study {study_name} ({shown_url(url)}): "
        + ", ".join(f"{v} {k}" for k, v in sorted(facts["counts"].items()))
    )
    space: tuning.Space | None = facts["space"]
    if space is not None:
        log.info(space.recipe_line)
        log.info(f"space ({space.recipe} recipe):")
        for line in space.lines():
            log.info(line)
    rows = [
        {
            "trial": t.number,
            "macro_f1": _score(t.value),
            **{k: _param(v) for k, v in t.params.items()},
        }
        for t in facts["top"]
    ]
    log.info(pd.DataFrame(rows).to_string(index=False))
    say_against_baseline(facts)
    best = relative(facts["best"], root)
    log.info(f"best config: {best}  (comp train --config {best})")
    for plot in facts["plots"]:
        log.info(f"plot: {relative(plot, root)}")
    return dict(facts)


def say_against_baseline(facts: dict[str, Any]) -> None:
    """Trial 0 and the best trial, fold by fold, and whether the gain is more than noise."""
    baseline, best, gain = facts["baseline"], facts["best_trial"], facts["gain"]
    if baseline is None:
        log.info("trial 0 (the recipe's values): not completed, nothing to compare the best with")
        return
    for label, t in (("default", baseline), ("best", best)):
        per_fold = t.user_attrs.get("fold_macro_f1") or {}
        folds = ", ".join(f"{k}: {v:.4f}" for k, v in per_fold.items())
        log.info(f"{label}: trial {t.number}, macro-F1 {t.value:.4f} (per fold {folds})")
    if best.number == baseline.number:
        log.info("the recipe's values are the best trial")
    elif gain is not None:
        spread = f" ± {gain['spread']:.4f}" if gain["spread"] is not None else ""
        log.info(
            f"best against trial {baseline.number}: mean gain per fold "
            f"{gain['mean_gain']:+.4f}{spread}, {gain['verdict']} (the best of "
            f"{facts['counts'].get('complete', 0)} trials on the folds it was chosen on "
            "flatters it: comp train --config on every fold tells)"
        )


def _score(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _param(v: Any) -> str:
    """A parameter as the table shows it: small floats (learning rates) in scientific notation."""
    if isinstance(v, float):
        return f"{v:.2e}" if abs(v) < 0.01 else f"{v:.4f}"
    return "-" if v is None else str(v)
