"""Experiment trackers: MLflow, Weights & Biases and TensorBoard, each through its own client.

Reads the config's ``tracker`` key (``none``, or ``mlflow``, ``wandb``,
``tensorboard``, comma-separated). Writes, under the tracker folder (the
workspace, or ``COMP_TRACKER_DIR`` as a Kaggle kernel sets it):

- ``mlflow.db`` and ``mlruns/`` (artifacts): MLflow's local store, unless
  ``MLFLOW_TRACKING_URI`` names another (a server, or a file store);
- ``wandb/``: W&B's run folders, offline unless an API key is set or
  ``WANDB_MODE`` says otherwise (``wandb sync`` uploads them later);
- ``tensorboard/<run>/``: event files.

and ``runs/<run>/trackers.json``: each tracker's id for the run, so that later
commands (``comp submit``, ``comp submissions --refresh``) add to the same run.
Nothing here is hand-made: every value goes through the library's own client.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from comp import files
from comp.config import parse_trackers
from comp.errors import ConfigError
from comp.runs import CONFIG_FILE, CURVES_FILE, SUMMARY_FILE, TRACKERS_FILE

log = logging.getLogger(__name__)

# Keys whose values are never logged (the config holds none today; a --set might).
SECRET = re.compile(r"(token|secret|password|api_?key|credential)", re.IGNORECASE)


def require(spec: str | None) -> None:
    """Refuse, before anything is written, a tracker whose package is not installed."""
    for name in parse_trackers(spec):
        try:
            found = importlib.util.find_spec(name) is not None
        except ValueError:  # in sys.modules as None: taken away on purpose
            found = False
        if not found:
            _need(name, name)


def tracker_dir(root: Path) -> Path:
    return Path(os.environ.get("COMP_TRACKER_DIR") or root)


def _need(module: str, name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"tracker {name} needs the {module.replace('_', '-')} package: "
            f"pip install 'comp[{name}]'"
        ) from None


def clean(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as trackers take them: no secrets, no None, values as text or numbers."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if SECRET.search(key):
            continue
        if isinstance(value, dict | list | tuple):
            value = json.dumps(value)
        out[key] = "null" if value is None else value
    return out


def mlflow_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{tracker_dir(root) / 'mlflow.db'}"


class Mlflow:
    """One MLflow run, through MlflowClient (no global active run to leak between commands)."""

    def __init__(
        self,
        root: Path,
        *,
        run: str,
        experiment: str,
        run_id: str | None = None,
        parent: str | None = None,
    ):
        _need("mlflow", "mlflow")
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=mlflow_uri(root))
        if run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            exp_id = (
                found.experiment_id
                if found is not None
                else self.client.create_experiment(
                    experiment, artifact_location=(tracker_dir(root) / "mlruns").resolve().as_uri()
                )
            )
            tags = {"mlflow.parentRunId": parent} if parent else {}
            run_id = self.client.create_run(exp_id, run_name=run, tags=tags).info.run_id
        self.id = run_id

    def params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        have = self.client.get_run(self.id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in values.items() if k not in have]
        for start in range(0, len(new), 100):
            self.client.log_batch(self.id, params=new[start : start + 100])

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.id, metrics=[Metric(k, float(v), now, step or 0) for k, v in values.items()]
        )

    def tags(self, values: dict[str, str]) -> None:
        for k, v in values.items():
            self.client.set_tag(self.id, k, v)

    def artifact(self, path: Path) -> None:
        self.client.log_artifact(self.id, str(path))

    def close(self) -> None:
        self.client.set_terminated(self.id)


def wandb_mode() -> str:
    """Offline unless the user asked for the network: an API key, or WANDB_MODE."""
    return os.environ.get("WANDB_MODE") or (
        "online" if os.environ.get("WANDB_API_KEY") else "offline"
    )


def wandb_project(experiment: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", experiment)


class Wandb:
    """One W&B run; offline unless an API key is set, so nothing waits on the network."""

    def __init__(
        self,
        root: Path,
        *,
        run: str,
        experiment: str,
        run_id: str | None = None,
        parent: str | None = None,
    ):
        wandb = _need("wandb", "wandb")
        folder = tracker_dir(root)
        folder.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.run = wandb.init(
                project=wandb_project(experiment),
                name=run,
                id=run_id,
                resume="allow" if run_id else None,
                group=parent,
                dir=str(folder),
                mode=wandb_mode(),
                reinit="create_new",
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
            )
        self.id = self.run.id

    def params(self, values: dict[str, Any]) -> None:
        self.run.config.update(values, allow_val_change=True)

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        self.run.log({**values, **({"epoch": step} if step is not None else {})})

    def tags(self, values: dict[str, str]) -> None:
        self.run.summary.update({f"tag/{k}": v for k, v in values.items()})

    def artifact(self, path: Path) -> None:
        self.run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self) -> None:
        self.run.finish()


class Tensorboard:
    """Event files of one run: scalars, the config as text, pictures as images."""

    def __init__(
        self,
        root: Path,
        *,
        run: str,
        experiment: str,
        run_id: str | None = None,
        parent: str | None = None,
    ):
        _need("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.id = run
        self.writer = SummaryWriter(log_dir=str(tracker_dir(root) / "tensorboard" / run))

    def params(self, values: dict[str, Any]) -> None:
        text = "\n".join(f"    {k}: {v}" for k, v in values.items())
        self.writer.add_text("config", text)

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, float(v), step or 0)

    def tags(self, values: dict[str, str]) -> None:
        for k, v in values.items():
            self.writer.add_text(f"lineage/{k}", v)

    def artifact(self, path: Path) -> None:
        if path.suffix == ".png":
            import numpy as np
            from PIL import Image

            image = np.asarray(Image.open(path).convert("RGB"))
            self.writer.add_image(path.stem, image, dataformats="HWC")
        elif path.suffix in (".json", ".yaml", ".csv", ".md") and path.stat().st_size < 100_000:
            self.writer.add_text(path.name, "    " + path.read_text().replace("\n", "\n    "))

    def close(self) -> None:
        self.writer.close()


BACKENDS: dict[str, Any] = {"mlflow": Mlflow, "wandb": Wandb, "tensorboard": Tensorboard}


class Trackers:
    """Every tracker of one run, fed alike. A tracker that fails is said once and dropped:
    a lost chart must not end an hour of training."""

    def __init__(self, items: dict[str, Any]):
        self.items = items

    def __bool__(self) -> bool:
        return bool(self.items)

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for name in list(self.items):
            try:
                getattr(self.items[name], method)(*args, **kwargs)
            except Exception as e:  # any library error ends only that tracker
                log.warning(f"tracker {name} stopped ({type(e).__name__}: {e})")
                del self.items[name]

    def params(self, values: dict[str, Any]) -> None:
        self._each("params", clean(values))

    def metrics(self, values: dict[str, Any], step: int | None = None) -> None:
        numbers = {
            k: float(v)
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v
        }
        if numbers:
            self._each("metrics", numbers, step=step)

    def tags(self, values: dict[str, Any]) -> None:
        self._each("tags", {k: str(v) for k, v in values.items() if v is not None})

    def artifacts(self, paths: Iterable[Path]) -> None:
        for path in paths:
            if path.exists():
                self._each("artifact", path)

    def close(self) -> None:
        self._each("close")


def open_run(
    root: Path,
    spec: str | None,
    *,
    run: str,
    experiment: str,
    run_dir: Path | None = None,
    parent: str | None = None,
) -> Trackers:
    """The trackers ``spec`` names, on run ``run``: the same tracker run as before when
    ``run_dir`` has its ids (resumed, scored later), else a new one."""
    names = parse_trackers(spec)
    if not names:
        return Trackers({})
    known = _ids(run_dir)
    items = {
        name: BACKENDS[name](
            root, run=run, experiment=experiment, run_id=known.get(name), parent=parent
        )
        for name in names
    }
    if run_dir is not None:
        files.write_json(run_dir / TRACKERS_FILE, known | {n: t.id for n, t in items.items()})
    return Trackers(items)


def _ids(run_dir: Path | None) -> dict[str, str]:
    if run_dir is None or not (run_dir / TRACKERS_FILE).exists():
        return {}
    return dict(json.loads((run_dir / TRACKERS_FILE).read_text()))


def experiment_name(root: Path, competition: str | None) -> str:
    return competition or root.resolve().name


def log_scores(
    root: Path,
    spec: str | None,
    *,
    run_dir: Path,
    experiment: str,
    scores: dict[str, Any],
) -> None:
    """Public and private scores as they arrive, on the tracker runs of the run that made them."""
    if not parse_trackers(spec) or not run_dir.is_dir():
        return
    trackers = open_run(root, spec, run=run_dir.name, experiment=experiment, run_dir=run_dir)
    trackers.metrics({f"{k}_macro_f1": v for k, v in scores.items() if v is not None})
    trackers.close()


class TuneTracking:
    """A study's trials as nested runs: under one run per study, a run per finished trial
    (its parameters, state and macro-F1) in MLflow and TensorBoard; in W&B a run per trial
    grouped by study, through optuna-integration's callback. Close it when the study stops."""

    def __init__(self, root: Path, spec: str | None, *, study: str, experiment: str):
        self.callbacks: list[Any] = []
        self.root, self.study, self.experiment = root, study, experiment
        names = parse_trackers(spec)
        self.own = ",".join(n for n in names if n != "wandb")
        self.parent = open_run(root, self.own, run=f"tune {study}", experiment=experiment)
        mlflow_run = self.parent.items.get("mlflow")
        self.parent_id = mlflow_run.id if mlflow_run is not None else None
        if self.own:
            self.callbacks.append(self.log_trial)
        if "wandb" in names:
            _need("wandb", "wandb")
            oi = _need("optuna_integration", "wandb")
            self.callbacks.append(
                oi.WeightsAndBiasesCallback(
                    metric_name="cv_macro_f1",
                    wandb_kwargs={
                        "project": wandb_project(experiment),
                        "group": f"tune {study}",
                        "dir": str(tracker_dir(root)),
                        "mode": wandb_mode(),
                    },
                    as_multirun=True,
                )
            )

    def log_trial(self, study: Any, trial: Any) -> None:
        run = open_run(
            self.root,
            self.own,
            run=f"{self.study} trial {trial.number}",
            experiment=self.experiment,
            parent=self.parent_id,
        )
        run.params(dict(trial.params) | {"trial": trial.number})
        run.tags({"state": trial.state.name, "study": self.study})
        folds = trial.user_attrs.get("fold_macro_f1") or {}
        run.metrics(
            ({"cv_macro_f1": trial.value} if trial.value is not None else {})
            | {f"fold{k}/best_macro_f1": v for k, v in folds.items()}
        )
        run.close()
        if trial.value is not None:
            self.parent.metrics({"best_cv_macro_f1": study.best_value}, step=trial.number)

    def close(self) -> None:
        self.parent.close()


def merge_pulled(
    root: Path, spec: str | None, pulled: Path, *, run_dir: Path, experiment: str
) -> list[str]:
    """Bring the tracker folder a Kaggle kernel wrote (``runs/<run>/tracker/``) into the
    local trackers: MLflow runs copied through the client into the local store, event
    files and W&B offline runs copied beside the local ones. Returns what was merged."""
    import shutil

    merged = []
    names = parse_trackers(spec)
    db = pulled / "mlflow.db"
    if db.exists() and "mlflow" in names:
        _need("mlflow", "mlflow")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        source = MlflowClient(tracking_uri=f"sqlite:///{db}")
        for exp in source.search_experiments():
            for theirs in source.search_runs([exp.experiment_id]):
                ours = Mlflow(root, run=theirs.info.run_name or run_dir.name, experiment=experiment)
                params = [Param(k, v) for k, v in theirs.data.params.items()]
                metrics = [
                    Metric(m.key, m.value, m.timestamp, m.step)
                    for key in theirs.data.metrics
                    for m in source.get_metric_history(theirs.info.run_id, key)
                ]
                for start in range(0, max(len(params), len(metrics)), 500):
                    ours.client.log_batch(
                        ours.id,
                        params=params[start : start + 500],
                        metrics=metrics[start : start + 500],
                    )
                tags = {k: v for k, v in theirs.data.tags.items() if not k.startswith("mlflow.")}
                ours.tags(tags | {"pulled_from": "kaggle kernel"})
                for name in (SUMMARY_FILE, CONFIG_FILE, CURVES_FILE):
                    if (run_dir / name).exists():
                        ours.artifact(run_dir / name)
                ours.close()
                if theirs.info.run_name == run_dir.name:
                    ids = _ids(run_dir) | {"mlflow": ours.id}
                    files.write_json(run_dir / TRACKERS_FILE, ids)
        merged.append("mlflow")
    if (pulled / "tensorboard").is_dir() and "tensorboard" in names:
        shutil.copytree(
            pulled / "tensorboard", tracker_dir(root) / "tensorboard", dirs_exist_ok=True
        )
        merged.append("tensorboard")
    if (pulled / "wandb").is_dir() and "wandb" in names:
        offline = sorted((pulled / "wandb").glob("offline-run-*"))
        for folder in offline:
            shutil.copytree(folder, tracker_dir(root) / "wandb" / folder.name, dirs_exist_ok=True)
        if offline:
            log.info(
                f"wandb: {len(offline)} offline run(s) from the kernel; upload with `wandb sync {tracker_dir(root) / 'wandb'}/offline-run-*`"
            )
        merged.append("wandb")
    return merged
