"""Hyperparameter tuning with Optuna: a resumable, prunable, shareable study.

Reads the workspace config (its ``tune_*`` keys are the search space: a range or
choices you set, or ``auto``, where the training recipe chooses), the folds and
the training images. Writes the study to its storage (by default
``tune/<study>.db``, SQLite), each trial's run under ``runs/.tune/`` (removed
once the trial ends), and with ``--show``: ``tune/<study>-best.yaml`` (a
complete config for ``comp train --config``) and the study's plots as PNGs.

The recipe is resolved once, as ``comp train`` resolves it, and chooses the space
(``recipe_space``): from scratch no frozen stage, lr2, weight decay, label
smoothing and the net's width; to fine-tune the frozen stage, lr1, lr2 and layer
decay. The space, the recipe and trial 0 (the recipe's own values) are recorded in
the study's user attributes, so a resumed study, or another worker, searches the
same one. A study's ``tune_time_limit`` starts no trial that its measured length
would carry past the limit.

Every epoch reports validation macro-F1 to the trial, so the pruner stops weak
trials early; without a progress bar, each trial ends with a ``progress:`` line
(which ``comp kernel status`` reads from a tuning kernel's log). A heartbeat marks trials whose process died (a kill, a crash) as
failed, and they are tried again, so a study run again after Ctrl-C or SIGKILL
picks up where it stopped without losing a finished trial.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna

from comp import console, files
from comp.config import TUNE_AUTO, Config, coerce, parse_duration, to_dict
from comp.errors import ConfigError
from comp.teach.lineage import gain_over_parent
from comp.track.trackers import TuneTracking, experiment_name
from comp.train.recipe import Recipe
from comp.train.run import train

log = logging.getLogger(__name__)

LOG_SCALE = ("lr1", "lr2", "weight_decay")
SPACE_KEYS = (
    "lr1",
    "lr2",
    "batch_size",
    "freeze_epochs",
    "weight_decay",
    "aug",
    "model",
    "img_size",
    "label_smoothing",
    "mixup",
    "cutmix",
    "ema",
    "ema_decay",
    "drop_path_rate",
    "layer_decay",
)
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

# comp prints its own lines; Optuna's per-trial INFO logs and its "experimental"
# notes (heartbeats, journal storage) would bury them.
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclasses.dataclass(frozen=True)
class Dimension:
    key: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    def suggest(self, trial: optuna.Trial, *, cfg: Config) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.is_int:
            high = int(self.high)
            if self.key == "freeze_epochs" and cfg.epochs > 0:
                high = min(high, cfg.epochs)  # stage 1 cannot outlast the whole run
            return trial.suggest_int(self.key, min(int(self.low), high), high)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this dimension can propose (trial 0 must be)."""
        if self.choices:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return self.low <= value <= self.high and (not self.is_int or float(value).is_integer())

    def describe(self) -> str:
        if self.choices:
            return ", ".join(_fmt(c) for c in self.choices)
        return f"{_fmt(self.low)}..{_fmt(self.high)}" + (" (log scale)" if self.log else "")

    def to_attr(self) -> dict[str, Any]:
        """As a study's user attribute stores it (JSON: the choices become a list)."""
        return {**dataclasses.asdict(self), "choices": list(self.choices)}

    @classmethod
    def from_attr(cls, attr: Mapping[str, Any]) -> Dimension:
        return cls(**{**attr, "choices": tuple(attr["choices"])})


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"  # as the recipe's line writes them: 0.002
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_dimension(key: str, spec: str) -> Dimension:
    """``"1e-5..1e-2"`` is a range, ``"16,32,64"`` a choice, typed as config key ``key``."""
    spec = spec.strip()
    if ".." in spec:
        lo_text, _, hi_text = spec.partition("..")
        try:
            lo, hi = coerce(key, lo_text.strip()), coerce(key, hi_text.strip())
        except ConfigError:
            raise ConfigError(
                f"tune_{key} '{spec}': a range is low..high, e.g. 1e-5..1e-2"
            ) from None
        if not isinstance(lo, int | float) or isinstance(lo, bool) or lo > hi:
            raise ConfigError(f"tune_{key} '{spec}': a range needs numbers, low before high")
        log = key in LOG_SCALE
        if log and lo <= 0:
            raise ConfigError(f"tune_{key} '{spec}': a log-scale range must be positive")
        return Dimension(key, low=lo, high=hi, log=log)
    choices = tuple(coerce(key, c.strip()) for c in spec.split(",") if c.strip())
    if not choices:
        raise ConfigError(f"tune_{key} is empty")
    return Dimension(key, choices=choices)


def search_space(cfg: Config) -> list[Dimension]:
    """The dimensions you set yourself: every ``tune_*`` key but those left null or auto."""
    return [
        parse_dimension(key, spec)
        for key in SPACE_KEYS
        if (spec := getattr(cfg, f"tune_{key}")) is not None and spec.strip() != "auto"
    ]


# --- the space the recipe chooses ----------------------------------------------------------

# What each recipe searches among the tune_* keys left at auto (docs/tuning.md).
RECIPE_SEARCH = {
    "scratch": ("lr2", "weight_decay", "label_smoothing", "model"),
    "finetune": ("freeze_epochs", "lr2", "layer_decay"),
}
# Why a recipe leaves an auto key out of its space.
LEFT_OUT = {
    (
        "scratch",
        "freeze_epochs",
    ): "no frozen stage from scratch: a head on a random backbone learns nothing",
    ("scratch", "lr1"): "no frozen stage from scratch, so no stage-1 rate",
    ("scratch", "layer_decay"): "off from scratch: no pretrained lower layers to protect",
    ("finetune", "weight_decay"): "the finetune space is freeze epochs, lr2 and layer decay",
    (
        "finetune",
        "label_smoothing",
    ): "the finetune space is freeze epochs, lr2 and layer decay",
    (
        "finetune",
        "lr1",
    ): "stage 1 is a regression fitted at once (stage1: logreg); lr1 moves only later frozen epochs",
    ("finetune", "model"): "the pretrained model stays",
}


@dataclasses.dataclass(frozen=True)
class Space:
    """What a study searches, chosen once from the resolved recipe and kept in the study."""

    recipe: str  # scratch or finetune
    recipe_line: str  # Recipe.describe() of the config the study started from
    dimensions: tuple[Dimension, ...]
    sources: dict[str, str]  # key -> "recipe" or "yours"
    fixed: dict[str, str]  # auto keys left out of the space -> their value and why
    baseline: dict[str, Any]  # trial 0: the recipe's resolved value of every dimension
    filled: tuple[str, ...]  # keys the recipe filled: trial 0 leaves them auto
    pinned: dict[str, Any]  # set in every trial, so each trains the recipe the study chose

    def lines(self) -> list[str]:
        """One line per key: what is searched and where it came from, then what is not."""
        width = max([len(k) for k in (*self.sources, *self.fixed)] or [0])
        out = []
        for d in self.dimensions:
            start = (
                f"trial 0: {_fmt(self.baseline[d.key])}"
                if d.key in self.baseline
                else "trial 0: sampled, the recipe's value is outside it"
            )
            out.append(f"  {d.key:<{width}}  {d.describe()}  ({self.sources[d.key]}; {start})")
        out += [f"  {k:<{width}}  {why}" for k, why in self.fixed.items()]
        return out

    def to_attrs(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "recipe_line": self.recipe_line,
            "space": [d.to_attr() for d in self.dimensions],
            "space_sources": self.sources,
            "space_fixed": self.fixed,
            "baseline": self.baseline,
            "recipe_filled": list(self.filled),
            "recipe_pinned": self.pinned,
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Space | None:
        """The space a study recorded, or None for a study made before spaces were kept."""
        if "space" not in attrs:
            return None
        return cls(
            recipe=attrs["recipe"],
            recipe_line=attrs["recipe_line"],
            dimensions=tuple(Dimension.from_attr(d) for d in attrs["space"]),
            sources=dict(attrs["space_sources"]),
            fixed=dict(attrs["space_fixed"]),
            baseline=dict(attrs["baseline"]),
            filled=tuple(attrs["recipe_filled"]),
            pinned=dict(attrs["recipe_pinned"]),
        )


def _sig(x: float) -> float:
    return float(f"{x:.3g}")


def _decade(key: str, value: float) -> Dimension:
    """A decade each way of ``value``, on a log scale."""
    return Dimension(key, low=_sig(value / 10), high=_sig(value * 10), log=True)


def recipe_dimension(
    key: str, cfg: Config, recipe: Recipe, *, families: Mapping[str, tuple[str, ...]]
) -> Dimension | str:
    """The dimension the recipe searches for config key ``key`` (``cfg`` resolved), or why
    it searches none."""
    value = getattr(cfg, key)
    if key in recipe.kept or (key == "model" and "model" not in recipe.filled):
        return f"{_fmt(value)}, yours: not searched (set tune_{key} to search it)"
    if key not in RECIPE_SEARCH[recipe.name]:
        return f"{_fmt(value)}, not searched ({LEFT_OUT.get((recipe.name, key), recipe.name)})"
    if key in ("lr1", "lr2", "weight_decay"):
        if value <= 0:
            return f"{_fmt(value)}, not searched (a log-scale range needs a positive value)"
        return _decade(key, value)
    if key == "label_smoothing":
        return Dimension(key, low=0.0, high=_sig(min(0.5, max(0.2, 2 * value))))
    if key == "layer_decay":
        return Dimension(key, low=_sig(max(0.05, value - 0.15)), high=_sig(min(1.0, value + 0.15)))
    if key == "freeze_epochs":
        # At most a third of the run frozen (the recipe's own share), never the whole run.
        high = min(max(value, cfg.epochs // 3, 1), cfg.epochs - 1)
        if high < 1:
            return f"{value}, not searched ({cfg.epochs} epochs leave no room for a frozen stage)"
        return Dimension(key, low=0, high=high)
    if key == "model":
        family = tuple(families.get(value, ()))
        if len(family) < 2 or value not in family:
            return f"{value}, not searched (the model factory offers no family of {value})"
        # One step narrower and one wider than the recipe's net, which is the widest the
        # device trains in minutes: airnet_l on 2 CPU cores costs a trial 10x airnet_s's.
        at = family.index(value)
        return Dimension(key, choices=family[max(0, at - 1) : at + 2])
    raise ConfigError(f"tune_{key}: auto is for tune_{', tune_'.join(TUNE_AUTO)}")


def recipe_space(
    cfg: Config,
    resolved: Config,
    recipe: Recipe,
    *,
    families: Mapping[str, tuple[str, ...]] | None = None,
) -> Space:
    """The space for the recipe ``cfg`` resolved to (``resolved``, ``recipe``).

    A ``tune_*`` key you set (a range or choices) is searched as you set it; one left
    auto is searched where the recipe says, around the value ``comp train`` would use
    (``recipe_dimension``); a training key you set yourself stays as you set it.
    ``families``: sibling nets by model name (default: comp.models.nets.FAMILIES).
    """
    if families is None:
        from comp.models import nets

        families = getattr(nets, "FAMILIES", {})
    dims, sources, fixed = [], {}, {}
    for key in SPACE_KEYS:
        spec = getattr(cfg, f"tune_{key}")
        if spec is None:
            continue
        if spec.strip() != "auto":
            dims.append(parse_dimension(key, spec))
            sources[key] = "yours"
            continue
        found = recipe_dimension(key, resolved, recipe, families=families)
        if isinstance(found, str):
            fixed[key] = found
        else:
            dims.append(found)
            sources[key] = "recipe"
    baseline = {
        d.key: getattr(resolved, d.key) for d in dims if d.contains(getattr(resolved, d.key))
    }
    pinned: dict[str, Any] = {"recipe": recipe.name}
    if resolved.pretrained == "false" and cfg.pretrained_file is None:
        # The study found no weights once; its trials need not ask the hub again.
        pinned["pretrained"] = "false"
    return Space(
        recipe=recipe.name,
        recipe_line=recipe.describe(),
        dimensions=tuple(dims),
        sources=sources,
        fixed=fixed,
        baseline=baseline,
        filled=tuple(recipe.filled),
        pinned=pinned,
    )


def resolve_space(root: Path, cfg: Config, *, device: str | None = None) -> Space:
    """Resolve the recipe once, as ``comp train`` does, and choose the space from it;
    ``device`` (a device type such as ``cuda``): resolve it for that device rather than
    this machine's, as for a Kaggle kernel's GPU."""
    import torch

    from comp.data.competition import load_competition
    from comp.hardware.distributed import pick_device
    from comp.train.run import resolve_run_config

    resolved, recipe = resolve_run_config(
        root,
        cfg,
        comp=load_competition(root, cfg),
        device=torch.device(device) if device else pick_device(cfg.device),
    )
    return recipe_space(cfg, resolved, recipe)


def prepare(
    study: optuna.Study,
    root: Path,
    cfg: Config,
    *,
    device: str | None = None,
    baseline: bool = True,
) -> Space:
    """The study's space: the one it recorded, or one chosen now (for ``device``, see
    ``resolve_space``), recorded with trial 0 (the recipe's values) enqueued, so the study
    starts from the default and never ends below it; ``baseline=False`` leaves trial 0 to
    the caller (a tuning kernel's seed enqueues it in one kernel only)."""
    stored = Space.from_attrs(study.user_attrs)
    if stored is not None:
        changed = [d.key for d in search_space(cfg) if d not in stored.dimensions]
        if changed:
            log.info(
                f"study {study.study_name} searches the space it began with, not your "
                f"tune_{', tune_'.join(changed)}; use a new --study to search another"
            )
        return stored
    # Only the space is printed (by the caller), from the recipe line it records.
    with console.silenced():
        space = resolve_space(root, cfg, device=device)
    for key, value in space.to_attrs().items():
        study.set_user_attr(key, value)
    if baseline and not study.get_trials(deepcopy=False):
        study.enqueue_trial(space.baseline, user_attrs={"baseline": True}, skip_if_exists=True)
    return space


def objective_folds(cfg: Config) -> list[int]:
    try:
        folds = [int(k) for k in cfg.tune_folds.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(
            f"tune_folds '{cfg.tune_folds}': fold numbers such as 0 or 0,1,2"
        ) from None
    bad = [k for k in folds if not 0 <= k < cfg.n_splits]
    if not folds or bad:
        raise ConfigError(f"tune_folds '{cfg.tune_folds}': folds are 0..{cfg.n_splits - 1}")
    return folds


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        # Judge nobody before a few trials and epochs have been seen.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"tune_pruner '{name}': median, hyperband or none")


def storage_url(root: Path, study: str, storage: str | None) -> str:
    if storage:
        return storage
    (root / "tune").mkdir(exist_ok=True)
    return f"sqlite:///{(root / 'tune' / f'{study}.db').resolve()}"


def open_storage(url: str, *, heartbeat: int = 60, retries: int = 2) -> optuna.storages.BaseStorage:
    """An RDB storage (SQLite, PostgreSQL, MySQL) with a heartbeat, or a journal file."""
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Workers on one machine share the file; let a writer wait rather than fail.
        engine = {"connect_args": {"timeout": 60}}
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine,
        heartbeat_interval=heartbeat,
        grace_period=2 * heartbeat,
        # A trial whose process died is marked failed and queued again with its parameters.
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=retries
        ),
    )


def load_study(
    url: str,
    study: str,
    *,
    pruner: str = "median",
    seed: int = 42,
    heartbeat: int = 60,
    stream: int = 0,
) -> optuna.Study:
    """Create or reopen a study.

    The sampler's seed moves on with the trials already in the study (and with
    ``stream``, one per worker), so a resumed study or a second worker never
    replays the parameters that an earlier start drew.
    """
    opened = optuna.create_study(
        storage=open_storage(url, heartbeat=heartbeat),
        study_name=study,
        direction="maximize",
        load_if_exists=True,
        pruner=make_pruner(pruner),
    )
    offset = len(opened.get_trials(deepcopy=False)) + 100_003 * stream
    opened.sampler = optuna.samplers.TPESampler(seed=seed + offset)
    return opened


def is_out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower()
    )


def trial_config(
    cfg: Config,
    space: Space,
    trial: optuna.Trial | optuna.trial.FrozenTrial,
    params: dict[str, Any],
) -> Config:
    """What a trial trains: ``cfg`` with the study's recipe and the trial's parameters.

    Trial 0 leaves the keys the recipe filled at auto, so it trains exactly what
    ``comp train`` would (a time limit rescales them as it does there).
    """
    if trial.user_attrs.get("baseline"):
        params = {k: v for k, v in params.items() if k not in space.filled}
    pinned = {k: v for k, v in space.pinned.items() if getattr(cfg, k) == "auto"}
    # The study's trackers log each trial (TuneTracking); its runs log nothing of their own.
    return dataclasses.replace(cfg, **pinned, **params, tracker="none")


def make_objective(
    root: Path, cfg: Config, *, study: str, space: Space
) -> Callable[[optuna.Trial], float]:
    folds = objective_folds(cfg)

    def objective(trial: optuna.Trial) -> float:
        params = {d.key: d.suggest(trial, cfg=cfg) for d in space.dimensions}
        trial_cfg = trial_config(cfg, space, trial, params)
        run = f".tune/{study}/trial-{trial.number:04d}"
        best: dict[int, float] = {}

        def report(fold: int, epoch: int, f1: float) -> None:
            best[fold] = max(best.get(fold, -1.0), f1)
            # One step per epoch across the objective's folds, so trials compare like for like.
            stride = trial_cfg.epochs if trial_cfg.epochs > 0 else 1000  # auto: the recipe's
            step = folds.index(fold) * stride + epoch
            trial.report(sum(best.values()) / len(folds), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"macro-F1 {f1:.4f} at fold {fold} epoch {epoch}")

        try:
            # One progress bar for the study; the trials' own bars and lines would bury it.
            with console.silenced():
                summary = train(root, trial_cfg, name=run, folds=folds, on_epoch=report)
        except optuna.TrialPruned:
            raise
        except ConfigError as e:
            if not (trial_cfg.time_limit and str(e).startswith("time_limit")):
                raise
            # Too slow for a trial's time limit, like too big for the GPU below, is an
            # answer about these parameters, not a broken study.
            trial.set_user_attr("reason", str(e).split(";")[0])
            raise optuna.TrialPruned("does not fit the trial time limit") from None
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            # Too big for this GPU is an answer about these parameters, not a broken study.
            trial.set_user_attr("reason", f"out of memory at batch_size {trial_cfg.batch_size}")
            raise optuna.TrialPruned("out of memory") from None
        finally:
            shutil.rmtree(root / "runs" / run, ignore_errors=True)
        value = float(summary["cv_macro_f1"])
        if not math.isfinite(value):
            raise optuna.TrialPruned("non-finite macro-F1")
        trial.set_user_attr("fold_macro_f1", summary["fold_macro_f1"])
        what = " (the recipe's values)" if trial.user_attrs.get("baseline") else ""
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in params.items())
        log.info(f"trial {trial.number}: macro-F1 {value:.4f} with {shown}{what}")
        return value

    return objective


def trial_seconds(study: optuna.Study) -> float | None:
    """How long a trial takes: the mean of the study's completed trials (a pruned one
    stops early, so it would promise too short a trial)."""
    lengths = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.datetime_start is not None and t.datetime_complete is not None
    ]
    return sum(lengths) / len(lengths) if lengths else None


@dataclasses.dataclass
class Deadline:
    """A study's budget: Optuna's ``timeout`` starts no trial after the deadline, and this
    callback starts none that its measured length (before any: the trial time limit)
    would carry past it."""

    at: float  # time.time() of the deadline
    limit: str  # as given, e.g. 2h
    trial_limit: float | None  # seconds of a trial's own time limit
    trials: int = 0  # the finished trials the study aims at: once there, nothing to say

    def left(self) -> float:
        return self.at - time.time()

    def expected(self, study: optuna.Study) -> float:
        return trial_seconds(study) or self.trial_limit or 0.0

    def fits(self, study: optuna.Study) -> bool:
        expected, left = self.expected(study), self.left()
        if left > 0 and expected <= left:
            return True
        log.info(
            f"time limit {self.limit}: {max(left, 0):.0f}s left, a trial takes about "
            f"{expected:.0f}s; no more trials start"
        )
        return False

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if (not self.trials or finished(study) < self.trials) and not self.fits(study):
            study.stop()


def study_deadline(cfg: Config, *, start: float, trials: int = 0) -> Deadline | None:
    """The deadline of ``cfg.tune_time_limit`` counted from ``start`` (a ``time.time()``)."""
    if cfg.tune_time_limit is None:
        return None
    trial_limit = parse_duration(cfg.time_limit) if cfg.time_limit else None
    return Deadline(
        at=start + parse_duration(cfg.tune_time_limit),
        limit=cfg.tune_time_limit,
        trial_limit=trial_limit,
        trials=trials,
    )


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state, by lower-case state name (``complete``, ``pruned``, ``fail``...)."""
    return dict(Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False)))


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def progress_line(study: optuna.Study, *, trials: int) -> str:
    """One line on where the study stands: ``comp kernel status`` reads it from a tuning
    kernel's log (comp.kernels.pull.PROGRESS), so keep the two in step."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = max(done, key=lambda t: t.value or 0.0, default=None)
    tail = (
        f", best macro-F1 {best.value:.4f} (trial {best.number})"
        if best is not None and best.value is not None
        else ", none complete yet"
    )
    return f"progress: {finished(study)}/{trials} trials finished{tail}"


def optimize(
    root: Path,
    cfg: Config,
    *,
    study_name: str,
    storage: str,
    trials: int,
    heartbeat: int = 60,
    stream: int = 0,
    start: float | None = None,
) -> optuna.Study:
    """Run trials until the study holds ``trials`` finished ones (complete or pruned), or
    until ``cfg.tune_time_limit`` (counted from ``start``, a ``time.time()``; default now)
    leaves too little time for another."""
    deadline = study_deadline(cfg, start=time.time() if start is None else start, trials=trials)
    study = load_study(
        storage,
        study_name,
        pruner=cfg.tune_pruner,
        seed=cfg.seed,
        heartbeat=heartbeat,
        stream=stream,
    )
    with console.silenced():
        space = prepare(study, root, cfg)
    # A trial whose worker died stays RUNNING until someone looks; look now.
    optuna.storages.fail_stale_trials(study)
    left = trials - finished(study)
    if left <= 0:
        log.info(f"study {study_name} already has {finished(study)} finished trials")
        return study
    if deadline is not None and not deadline.fits(study):
        return study
    tracking = TuneTracking(
        root, cfg.tracker, study=study_name, experiment=experiment_name(root, cfg.competition)
    )
    bar = console.bars_on()
    # Without a bar (a log file, a Kaggle kernel), a line per trial tells how far it got.
    lines: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (
        [] if bar else [lambda s, _: log.info(progress_line(s, trials=trials))]
    )
    try:
        study.optimize(
            make_objective(root, cfg, study=study_name, space=space),
            n_trials=left,
            timeout=None if deadline is None else max(deadline.left(), 0.0),
            callbacks=[
                optuna.study.MaxTrialsCallback(trials, states=FINISHED),
                *([deadline] if deadline is not None else []),
                *tracking.callbacks,
                *lines,
            ],
            catch=(),
            show_progress_bar=bar,
            gc_after_trial=True,
        )
    finally:
        tracking.close()
    return study


def best_config(cfg: Config, study: optuna.Study) -> dict[str, Any]:
    values = to_dict(cfg)
    values.update(study.best_trial.params)
    return values


def baseline_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """Trial 0, the recipe's values (or its retry, after a kill), once it has completed."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return next((t for t in done if t.user_attrs.get("baseline")), None)


def against_baseline(
    best: optuna.trial.FrozenTrial, baseline: optuna.trial.FrozenTrial
) -> dict[str, Any] | None:
    """The best trial against trial 0, fold by fold: the mean gain, its spread and whether
    it stands out of it, judged as ``comp train`` judges a run against its parent."""
    return gain_over_parent(
        {
            "fold_macro_f1": best.user_attrs.get("fold_macro_f1") or {},
            "built_from": {
                "parent": f"trial {baseline.number}",
                "parent_fold_macro_f1": baseline.user_attrs.get("fold_macro_f1") or {},
            },
        }
    )


def show(root: Path, cfg: Config, study: optuna.Study, *, top: int = 5) -> dict[str, Any]:
    """Write the best config and the study's plots; return what to print: also the study's
    space (None for a study that recorded none), trial 0 and the best trial against it."""
    done = [
        t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
    ]
    if not done:
        raise ConfigError(f"study {study.study_name} has no completed trial yet")
    out_dir = root / "tune"
    best_path = out_dir / f"{study.study_name}-best.yaml"
    files.write_yaml(best_path, best_config(cfg, study))
    plots = save_plots(study, out_dir / study.study_name)
    ranked = sorted(done, key=lambda t: t.value or 0.0, reverse=True)[:top]
    baseline = baseline_trial(study)
    best = study.best_trial
    return {
        "best": best_path,
        "plots": plots,
        "top": ranked,
        "counts": counts(study),
        "space": Space.from_attrs(study.user_attrs),
        "best_trial": best,
        "baseline": baseline,
        "gain": None if baseline is None else against_baseline(best, baseline),
    }


def _savefig(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=100, format="png", bbox_inches="tight")


def save_plots(study: optuna.Study, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    makers: dict[str, Callable[[optuna.Study], Any]] = {
        "history": ovm.plot_optimization_history,
        "importances": ovm.plot_param_importances,
        "slice": ovm.plot_slice,
    }
    written = []
    for name, make in makers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = make(study)
            except (ValueError, RuntimeError):
                continue  # e.g. importances need two completed trials with different values
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
        path = folder / f"{name}.png"
        files.write_with(path, functools.partial(_savefig, fig))
        plt.close(fig)
        written.append(path)
    return written
