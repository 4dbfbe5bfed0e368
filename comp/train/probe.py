"""The recipe by measurement: with pretrained weights, one fold trained both ways.

Pretrained weights do not always win. On small images unlike ImageNet's (sprites,
icons, upscaled scans) a small net from scratch can beat a fine-tuned ImageNet net on
a CPU's budget (benchmarks/README.md, "Fine-tuning"). So where ``recipe: auto`` finds
weights, ``comp train`` trains its first fold under both recipes, keeps the one with
the better validation macro-F1 and trains the other folds under it alone.

Reads what comp.train.run reads. Writes the run folder as comp.train.run does (the
winning fold is the run's own, not trained again), plus ``probe.json`` (both scores
and seconds, and the choice) and ``probe/<recipe>/``, the losing fold as a run of its own.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from comp import console, files
from comp.config import PRETRAINED_MODEL, Config
from comp.data.competition import load_competition
from comp.errors import ConfigError
from comp.folds.split import folds_path, read_folds
from comp.runs import CONFIG_FILE, PROBE_FILE, runs_dir
from comp.train import run

log = logging.getLogger(__name__)

RECIPES = ("finetune", "scratch")


def may_probe(cfg: Config, *, resume: bool, full: bool) -> bool:
    """Whether a run chooses its recipe by training a fold both ways, should weights be found.

    Only where the choice is comp's (``recipe: auto``); never in a run whose schedule is
    otherwise fixed (resumed, sized to a time limit, taught by another run, several
    processes) or that fits a scikit-learn head.
    """
    return (
        cfg.recipe == "auto"
        and not resume
        and not full
        and cfg.time_limit is None
        and cfg.head == "linear"
        and not (cfg.pseudo or cfg.distill)
        and "LOCAL_RANK" not in os.environ
    )


def arm(cfg: Config, recipe: str) -> Config:
    """``cfg`` forced to ``recipe``; from scratch with comp's own net for small images,
    not the pretrained model's architecture from random init."""
    if recipe == "finetune":
        return dataclasses.replace(cfg, recipe="finetune")
    return dataclasses.replace(
        cfg, recipe="scratch", model="auto", pretrained="false", pretrained_file=None
    )


def train(
    root: Path,
    cfg: Config,
    *,
    name: str | None = None,
    folds: list[int] | None = None,
    resume: bool = False,
    full: bool = False,
) -> dict[str, Any]:
    """comp.train.run.train, with the recipe chosen by a probe where ``may_probe`` and
    weights are found."""
    # The cheap tests first: a run that cannot probe looks for weights once, in run.train.
    comp = load_competition(root, cfg) if may_probe(cfg, resume=resume, full=full) else None
    weights = "random"
    if comp is not None:
        # Said once, by the run that follows.
        with console.silenced():
            cfg, weights = run.find_weights(root, cfg, n_classes=len(comp.classes))
    if comp is None or weights == "random":
        return run.train(
            root,
            cfg,
            name=name,
            folds=folds,
            resume=resume,
            full=full,
        )
    name = name or run.run_name(
        dataclasses.replace(cfg, model=PRETRAINED_MODEL if cfg.model == "auto" else cfg.model)
    )
    run_dir = runs_dir(root) / name
    if (run_dir / CONFIG_FILE).exists():
        # More folds of a run begun earlier: they train under the recipe it chose.
        chosen = yaml.safe_load((run_dir / CONFIG_FILE).read_text()).get("recipe")
        if chosen not in RECIPES:
            raise ConfigError(f"{run_dir}: no recipe in its config.yaml; pick a new --name")
        return run.train(root, arm(cfg, chosen), name=name, folds=folds)
    table = read_folds(folds_path(root, cfg), labels=comp.train)
    first = run.checked_folds(folds, sorted(int(k) for k in table["fold"].unique()))[0]
    log.info(
        f"recipe: auto found pretrained weights ({weights.split(':')[0]}); fold {first} is "
        "trained both ways, fine-tuned and from scratch, and the better recipe trains the rest"
    )
    scores: dict[str, dict[str, float]] = {}
    for recipe in RECIPES:
        t0 = time.perf_counter()
        summary = run.train(
            root,
            arm(cfg, recipe),
            name=f"{name}/probe/{recipe}",
            folds=[first],
        )
        scores[recipe] = {
            "macro_f1": float(summary["cv_macro_f1"]),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    chosen = max(RECIPES, key=lambda r: scores[r]["macro_f1"])  # a tie keeps the pretrained
    other = next(r for r in RECIPES if r != chosen)
    # The winner's fold is the run's own: its files move up, and the others train beside it.
    winner = run_dir / "probe" / chosen
    for item in winner.iterdir():
        shutil.move(str(item), run_dir / item.name)
    winner.rmdir()
    files.write_json(
        run_dir / PROBE_FILE, {"fold": first, "weights": weights, "chosen": chosen, **scores}
    )
    log.info(
        f"recipe probe on fold {first}: {chosen} {scores[chosen]['macro_f1']:.4f} against "
        f"{other} {scores[other]['macro_f1']:.4f} (validation macro-F1): {chosen} trains the "
        f"other folds; the {other} fold is kept in {(run_dir / 'probe' / other).relative_to(root)}"
    )
    return run.train(root, arm(cfg, chosen), name=name, folds=folds, resume=True)
