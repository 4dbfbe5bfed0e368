"""Hyperparameter tuning with Optuna: a resumable, prunable, shareable study.

Reads the workspace config (its ``tune_*`` keys are the search space), the
folds and the training images. Writes the study to its storage (by default
``tune/<study>.db``, SQLite), each trial's run under ``runs/.tune/`` (removed
once the trial ends), and with ``--show``: ``tune/<study>-best.yaml`` (a
complete config for ``comp train --config``) and the study's plots as PNGs.

Every epoch reports validation macro-F1 to the trial, so the pruner stops weak
trials early. A heartbeat marks trials whose process died (a kill, a crash) as
failed, and they are tried again, so a study run again after Ctrl-C or SIGKILL
picks up where it stopped without losing a finished trial.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from comp import files
from comp.config import Config, coerce, to_dict
from comp.errors import ConfigError
from comp.files import Echo
from comp.track.trackers import TuneTracking, experiment_name
from comp.train.run import train

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
        if isinstance(self.low, int) and isinstance(self.high, int):
            high = self.high
            if self.key == "freeze_epochs" and cfg.epochs > 0:
                high = min(high, cfg.epochs)  # stage 1 cannot outlast the whole run
            return trial.suggest_int(self.key, min(self.low, high), high)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


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
    return [
        parse_dimension(key, spec)
        for key in SPACE_KEYS
        if (spec := getattr(cfg, f"tune_{key}")) is not None
    ]


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


def make_objective(
    root: Path, cfg: Config, *, study: str, echo: Echo
) -> Callable[[optuna.Trial], float]:
    space = search_space(cfg)
    folds = objective_folds(cfg)

    def objective(trial: optuna.Trial) -> float:
        params = {d.key: d.suggest(trial, cfg=cfg) for d in space}
        # The study's trackers log each trial (TuneTracking); its runs log nothing of their own.
        trial_cfg = dataclasses.replace(cfg, **params, tracker="none")
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
            # One progress bar for the study; the trials' own bars would bury it.
            summary = train(
                root,
                trial_cfg,
                name=run,
                folds=folds,
                echo=lambda _: None,
                on_epoch=report,
                progress=False,
            )
        except optuna.TrialPruned:
            raise
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
        echo(f"trial {trial.number}: macro-F1 {value:.4f} with {params}")
        return value

    return objective


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state, by lower-case state name (``complete``, ``pruned``, ``fail``...)."""
    return dict(Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False)))


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def optimize(
    root: Path,
    cfg: Config,
    *,
    study_name: str,
    storage: str,
    trials: int,
    heartbeat: int = 60,
    echo: Echo = print,
    progress: bool = True,
    stream: int = 0,
) -> optuna.Study:
    """Run trials until the study holds ``trials`` finished ones (complete or pruned)."""
    study = load_study(
        storage,
        study_name,
        pruner=cfg.tune_pruner,
        seed=cfg.seed,
        heartbeat=heartbeat,
        stream=stream,
    )
    # A trial whose worker died stays RUNNING until someone looks; look now.
    optuna.storages.fail_stale_trials(study)
    left = trials - finished(study)
    if left <= 0:
        echo(f"study {study_name} already has {finished(study)} finished trials")
        return study
    tracking = TuneTracking(
        root, cfg.tracker, study=study_name, experiment=experiment_name(root, cfg.competition)
    )
    try:
        study.optimize(
            make_objective(root, cfg, study=study_name, echo=echo),
            n_trials=left,
            callbacks=[
                optuna.study.MaxTrialsCallback(trials, states=FINISHED),
                *tracking.callbacks,
            ],
            catch=(),
            show_progress_bar=progress and not files.QUIET and sys.stderr.isatty(),
            gc_after_trial=True,
        )
    finally:
        tracking.close()
    return study


def best_config(cfg: Config, study: optuna.Study) -> dict[str, Any]:
    values = to_dict(cfg)
    values.update(study.best_trial.params)
    return values


def show(root: Path, cfg: Config, study: optuna.Study, *, top: int = 5) -> dict[str, Any]:
    """Write the best config and the study's plots; return what to print."""
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
    return {"best": best_path, "plots": plots, "top": ranked, "counts": counts(study)}


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
