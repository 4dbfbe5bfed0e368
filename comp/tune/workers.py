"""``comp tune``: a study run in this process or in worker processes that share it, and shown.

Reads the study's storage (``tune/<study>.db`` unless another is given) and the resolved
config. Writes the trials to the storage; with several workers, the config they all use
as ``tune/tmp*.yaml``, removed when they end; with ``show_study``,
``tune/<study>-best.yaml`` and the plots under ``tune/<study>/``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from comp.config import Config, to_dict
from comp.errors import CompError
from comp.files import Echo
from comp.tune import study as tuning


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
) -> None:
    """Run ``n_workers`` ``comp tune`` processes on one study and wait for them all."""
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
    echo: Echo = print,
) -> dict[str, int] | None:
    """Run trials until the study holds ``trials`` finished ones, here or in ``n_workers``
    processes. ``worker`` is set in those processes: it picks the seed stream, and such a
    process leaves the closing report to the one that started it (and returns None).
    Returns the study's trial counts by state."""
    tuning.search_space(cfg)
    tuning.objective_folds(cfg)
    url = tuning.storage_url(root, study_name, storage)
    t0 = time.perf_counter()
    study = tuning.load_study(
        url, study_name, pruner=cfg.tune_pruner, seed=cfg.seed, heartbeat=heartbeat
    )
    before = tuning.finished(study)
    echo(f"study {study_name} ({shown_url(url)}): {before} of {trials} trials finished")
    if n_workers > 1 and not worker:
        spawn_workers(
            root,
            cfg,
            study_name=study_name,
            storage=url,
            trials=trials,
            heartbeat=heartbeat,
            n_workers=n_workers,
        )
    else:
        tuning.optimize(
            root,
            cfg,
            study_name=study_name,
            storage=url,
            trials=trials,
            heartbeat=heartbeat,
            echo=echo,
            progress=not worker,
            stream=worker,
        )
    if worker:
        return None
    study = tuning.load_study(
        url, study_name, pruner=cfg.tune_pruner, seed=cfg.seed, heartbeat=heartbeat
    )
    c = tuning.counts(study)
    echo(
        f"\nstudy {study_name}: "
        + ", ".join(f"{v} {k}" for k, v in sorted(c.items()))
        + f" ({time.perf_counter() - t0:.0f}s)"
    )
    if c.get("complete"):
        best = study.best_trial
        echo(f"best: trial {best.number}, macro-F1 {best.value:.4f}, {best.params}")
        echo("next: comp tune --show, then comp train --config tune/<study>-best.yaml")
    return c


def show_study(
    root: Path,
    cfg: Config,
    *,
    study_name: str = "comp",
    storage: str | None = None,
    heartbeat: int = 60,
    echo: Echo = print,
) -> dict[str, Any]:
    """Print the best trials; write the best config and the plots. Returns what
    ``comp.tune.study.show`` found (``best``, ``plots``, ``top``, ``counts``)."""
    tuning.search_space(cfg)
    tuning.objective_folds(cfg)
    url = tuning.storage_url(root, study_name, storage)
    study = tuning.load_study(
        url, study_name, pruner=cfg.tune_pruner, seed=cfg.seed, heartbeat=heartbeat
    )
    facts = tuning.show(root, cfg, study)
    echo(
        f"study {study_name} ({shown_url(url)}): "
        + ", ".join(f"{v} {k}" for k, v in sorted(facts["counts"].items()))
    )
    rows = [
        {
            "trial": t.number,
            "macro_f1": _score(t.value),
            **{k: _param(v) for k, v in t.params.items()},
        }
        for t in facts["top"]
    ]
    echo(pd.DataFrame(rows).to_string(index=False))
    best = _relative(facts["best"], root)
    echo(f"best config: {best}  (comp train --config {best})")
    for plot in facts["plots"]:
        echo(f"plot: {_relative(plot, root)}")
    return dict(facts)


def _score(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _param(v: Any) -> str:
    """A parameter as the table shows it: small floats (learning rates) in scientific notation."""
    if isinstance(v, float):
        return f"{v:.2e}" if abs(v) < 0.01 else f"{v:.4f}"
    return "-" if v is None else str(v)


def _relative(path: Path, root: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(root) if path.is_relative_to(root) else path)
