"""The ``comp`` command line: one click group, one command a stage.

Each command reads the workspace's comp.yaml, applies its flags and ``--set``
overrides, and calls one library function. Heavy libraries (torch, timm) are
imported inside the commands, so ``comp --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from comp import __version__
from comp.config import KEYS, Config, ConfigError, find_workspace, load_config, parse_sets

ERRORS: tuple[type[Exception], ...] = (ConfigError, FileExistsError)


def _library_errors() -> tuple[type[Exception], ...]:
    # Imported lazily: these modules pull in pandas and torch.
    from comp.data import DataError
    from comp.models import ModelError
    from comp.submission import SubmissionError

    return (*ERRORS, DataError, ModelError, SubmissionError)


def friendly_errors(f: Callable[..., Any]) -> Callable[..., Any]:
    """Re-raise library errors as one-line click errors with a non-zero exit."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except ERRORS as e:
            raise click.ClickException(str(e)) from None
        except Exception as e:
            if isinstance(e, _library_errors()):
                raise click.ClickException(str(e)) from None
            raise

    return wrapper


def _click_type(key: str) -> Any:
    typ = typing.get_type_hints(Config)[key]
    base = next((t for t in typing.get_args(typ) if t is not type(None)), typ)
    return {bool: click.BOOL, int: click.INT, float: click.FLOAT}.get(base, click.STRING)


def config_flags(*keys: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Dedicated flags for config keys, with the help text of comp.yaml."""
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(Config)}

    def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
        for key in reversed(keys):
            f = click.option(
                f"--{key.replace('_', '-')}",
                key,
                type=_click_type(key),
                default=None,
                help=f"{helps[key]} [config: {key}]",
            )(f)
        return click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override any comp.yaml key, e.g. --set weight_decay=0.05 (repeatable).",
        )(f)

    return decorator


def workspace_config(ctx: click.Context, kwargs: dict[str, Any]) -> tuple[Path, Config]:
    """Find the workspace and resolve its config: comp.yaml < --set < dedicated flags."""
    root = find_workspace(ctx.obj.get("workspace"))
    overrides: dict[str, Any] = dict(parse_sets(kwargs.pop("sets", ())))
    flags = {k: kwargs.pop(k) for k in list(kwargs) if k in KEYS}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return root, load_config(root, overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="comp")
@click.option(
    "-w",
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="COMP_WORKSPACE",
    help="Workspace folder (default: the nearest folder upwards holding comp.yaml).",
)
@click.pass_context
def cli(ctx: click.Context, workspace: Path | None) -> None:
    """Win Kaggle image-classification competitions from the command line.

    \b
    A whole loop, from a fresh workspace:
        comp demo digits && cd digits
        comp folds
        comp train
        comp predict
        comp submit submissions/<run>.csv --local -m "first try"
        comp submissions
    """
    ctx.ensure_object(dict)
    ctx.obj["workspace"] = workspace


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The competition folder, as downloaded from Kaggle.",
)
@click.option(
    "--holdout",
    default=0.2,
    show_default=True,
    help="Share of labelled images held back as a local test set when the data has no test set.",
)
@click.option("--force", is_flag=True, help="Replace an existing comp.yaml.")
@config_flags("model", "img_size", "n_splits", "seed")
@friendly_errors
def init(directory: Path, data: Path, holdout: float, force: bool, **kwargs: Any) -> None:
    """Make a workspace in DIRECTORY around an existing competition folder.

    Detects the layout (Kaggle CSV + train/test folders, or one folder per class),
    the Id and label columns, and reports images, classes, sizes and modes.

    \b
    Example:
        comp init pokemon-ws --data ~/data/pokemon-types
    """
    from comp.workspace import init_workspace

    overrides = dict(parse_sets(kwargs.pop("sets", ())))
    overrides.update({k: v for k, v in kwargs.items() if v is not None})
    seed = int(overrides.pop("seed", 42))
    _, text = init_workspace(
        directory, data, holdout=holdout, seed=seed, force=force, overrides=overrides
    )
    click.echo(text)
    click.echo(
        f"\nworkspace ready: {directory}/comp.yaml. Next: cd {directory} && comp folds && comp train"
    )


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", default=32, show_default=True, help="Side of the upscaled RGB images.")
@click.option("--force", is_flag=True, help="Replace DIRECTORY if it is not empty.")
@friendly_errors
def demo(directory: Path, size: int, force: bool) -> None:
    """Write a ready demo competition workspace in DIRECTORY.

    The data are scikit-learn's real handwritten digits (1,797 scans), shipped as
    Kaggle ships a competition: random-UUID Ids, train/ and test/ PNGs,
    train_labels.csv and sample_submission.csv, plus a held-back solution.csv so
    that `comp submit --local` scores public and private macro-F1.

    \b
    Example:
        comp demo digits && cd digits && comp folds && comp train
    """
    from comp.demo import write_demo

    facts = write_demo(directory, size=size, force=force)
    click.echo(
        f"demo competition in {directory}: {facts['train']} train and {facts['test']} test images, {facts['classes']} classes, {size}x{size} RGB PNGs"
    )
    click.echo(
        f"solution.csv holds {facts['public']} public and {facts['test'] - facts['public']} private answers. Next: cd {directory} && comp folds"
    )


@cli.command()
@config_flags("n_splits", "seed")
@click.pass_context
@friendly_errors
def folds(ctx: click.Context, **kwargs: Any) -> None:
    """Write stratified K-fold assignments to folds/ (Id,label,fold).

    \b
    Example:
        comp folds --n-splits 5 --seed 42
    """
    from comp.data import load_competition
    from comp.folds import fold_counts, folds_path, make_folds, write_folds

    root, cfg = workspace_config(ctx, kwargs)
    comp = load_competition(root, cfg)
    table = make_folds(comp.train, n_splits=cfg.n_splits, seed=cfg.seed)
    path = folds_path(root, cfg)
    write_folds(path, table)
    click.echo(fold_counts(table).to_string())
    click.echo(
        f"\n{cfg.n_splits} stratified folds of {len(table)} images -> {path.relative_to(root)}"
    )


@cli.command()
@config_flags(
    "model",
    "pretrained",
    "pretrained_file",
    "img_size",
    "aug",
    "epochs",
    "freeze_epochs",
    "lr1",
    "lr2",
    "weight_decay",
    "optimizer",
    "scheduler",
    "patience",
    "batch_size",
    "num_workers",
    "device",
    "amp",
    "n_splits",
    "seed",
)
@click.option(
    "--fold",
    "fold_ids",
    type=int,
    multiple=True,
    help="Train only this fold (repeatable); default: all folds.",
)
@click.option(
    "--name",
    help="Run name (default: <model>-<date>-<time>). Folds trained under one name form one run.",
)
@click.pass_context
@friendly_errors
def train(ctx: click.Context, fold_ids: tuple[int, ...], name: str | None, **kwargs: Any) -> None:
    """Train a timm model on every fold: frozen-backbone stage, then all layers.

    Early stopping and checkpoint choice follow validation macro-F1. Writes
    runs/<name>/ with the resolved config, per-fold checkpoints and metrics,
    out-of-fold probabilities and the CV macro-F1.

    \b
    Examples:
        comp train --model efficientnet_b0 --epochs 20 --freeze-epochs 5
        comp train --fold 0 --name effb0 --pretrained-file weights/effb0.pth
    """
    from comp.train import train as train_run

    root, cfg = workspace_config(ctx, kwargs)
    t0 = time.perf_counter()
    summary = train_run(root, cfg, name=name, folds=list(fold_ids) or None, echo=click.echo)
    scope = (
        "CV"
        if summary["complete"]
        else f"CV over {summary['folds_trained']}/{summary['n_folds']} folds"
    )
    click.echo(
        f"\nrun {summary['run']}: {scope} macro-F1 {summary['cv_macro_f1']:.4f}, accuracy {summary['cv_accuracy']:.4f} ({time.perf_counter() - t0:.0f}s)"
    )
    click.echo(
        "per fold: " + ", ".join(f"{k}: {v:.4f}" for k, v in summary["fold_macro_f1"].items())
    )


@cli.command()
@click.argument("run", required=False)
@config_flags("tta", "device")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Inference batch size.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Submission path (default: submissions/<run>.csv).",
)
@click.pass_context
@friendly_errors
def predict(
    ctx: click.Context, run: str | None, batch_size: int, out: Path | None, **kwargs: Any
) -> None:
    """Predict the test set with every fold of RUN (default: the latest run).

    Averages class probabilities over folds and test-time views, and writes a
    submission in exactly the shape of sample_submission.csv.

    \b
    Examples:
        comp predict
        comp predict resnet18-20261122-101500 --tta hflip,vflip
    """
    from comp.predict import predict as predict_run

    root, cfg = workspace_config(ctx, kwargs)
    facts = predict_run(root, cfg, run=run, batch_size=batch_size, out=out, echo=click.echo)
    cv = f" (CV macro-F1 {facts['cv_macro_f1']:.4f})" if facts["cv_macro_f1"] is not None else ""
    click.echo(f"submission: {facts['file']}{cv}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-m", "--message", default="", help="A note to keep with the submission.")
@click.option(
    "--local",
    is_flag=True,
    help="Score against the workspace's solution.csv instead of submitting to Kaggle.",
)
@click.option("--run", help="Run that made FILE (default: read from FILE's .json sidecar).")
@click.pass_context
@friendly_errors
def submit(ctx: click.Context, file: Path, message: str, local: bool, run: str | None) -> None:
    """Validate FILE, score or submit it, and record it in the ledger.

    \b
    Example:
        comp submit submissions/resnet18-20261122-101500.csv --local -m "5 folds, hflip TTA"
    """
    from comp.data import load_competition, resolve
    from comp.ledger import Ledger, ledger_path
    from comp.submission import read_submission, score_local, validate_submission

    root, cfg = workspace_config(ctx, {})
    if not local:
        raise click.ClickException(
            "submitting to Kaggle is not available yet; use --local to score against solution.csv"
        )
    comp = load_competition(root, cfg)
    df = read_submission(file)
    validate_submission(
        df, sample=comp.sample, classes=comp.classes, ids=comp.test_ids(), name=str(file)
    )
    solution = resolve(root, cfg.solution)
    if solution is None or not solution.exists():
        raise click.ClickException(
            f"no solution file for local scoring (config key solution: {cfg.solution})"
        )
    scores = score_local(df, solution)
    sidecar = file.with_suffix(".json")
    facts = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    row = Ledger(ledger_path(root)).add(
        file=str(
            file.resolve().relative_to(root)
            if file.resolve().is_relative_to(root)
            else file.resolve()
        ),
        sha256=_sha256(file),
        run=run or facts.get("run"),
        cv=facts.get("cv_macro_f1"),
        public=scores.get("public"),
        private=scores.get("private"),
        message=message,
        target="local",
        status="scored",
    )
    cv = facts.get("cv_macro_f1")
    click.echo(
        f"submission #{row}: CV macro-F1 {cv:.4f} | public {scores.get('public', float('nan')):.4f} | private {scores.get('private', float('nan')):.4f}"
        if cv is not None
        else f"submission #{row}: public {scores.get('public', float('nan')):.4f} | private {scores.get('private', float('nan')):.4f}"
    )


@cli.command()
@click.pass_context
@friendly_errors
def submissions(ctx: click.Context) -> None:
    """Print the submissions ledger: CV, public and private macro-F1 side by side.

    \b
    Example:
        comp submissions
    """
    from comp.ledger import Ledger, ledger_path

    root = find_workspace(ctx.obj.get("workspace"))
    rows = Ledger(ledger_path(root)).rows()
    if not rows:
        click.echo("no submissions yet; make one with `comp submit FILE --local`")
        return
    click.echo(
        format_table(
            rows,
            ["id", "created_at", "run", "cv", "public", "private", "target", "status", "message"],
        )
    )


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    cells = [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _one_line_warning(
    message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any
) -> str:
    return f"warning: {message}\n"


def main() -> None:
    import warnings

    # Warnings are for the person at the terminal: one line, no source excerpt.
    warnings.formatwarning = _one_line_warning
    cli(prog_name="comp")
