"""The ``comp`` command line: one click group, one command a stage.

Each command reads the workspace's comp.yaml, applies its flags and ``--set``
overrides, calls one or two library functions, and maps their errors: every
``comp.errors.CompError``, ``FileExistsError`` and ``OSError`` becomes one line
and a non-zero exit. Library modules (and through them torch, timm) are imported
inside the commands, so ``comp --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import re
import sys
import time
import typing
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from comp import __version__, console
from comp.config import (
    AUTO_KEYS,
    KEYS,
    PRUNERS,
    Config,
    find_workspace,
    load_config,
    parse_sets,
    read_config_file,
    validate,
)
from comp.errors import CompError

# The settings of a training run, as flags of every command that trains (here or on Kaggle).
TRAINING_FLAGS = (
    "model",
    "small_input",
    "pretrained",
    "recipe",
    "img_size",
    "centre",
    "aug",
    "epochs",
    "time_limit",
    "freeze_epochs",
    "lr1",
    "lr2",
    "warmup_epochs",
    "layer_decay",
    "weight_decay",
    "optimizer",
    "scheduler",
    "patience",
    "batch_size",
    "loss",
    "focal_gamma",
    "label_smoothing",
    "mixup",
    "cutmix",
    "ema",
    "drop_path_rate",
    "class_weights",
    "sampler",
    "amp",
    "n_splits",
    "seed",
    "tracker",
)
# Learning from an earlier run: `comp train` and `comp distill`.
TEACHING_FLAGS = (
    "pseudo",
    "pseudo_threshold",
    "pseudo_soft",
    "distill",
    "distill_weight",
    "distill_temperature",
)


def friendly_errors(f: Callable[..., Any]) -> Callable[..., Any]:
    """Re-raise library errors (CompError, FileExistsError, OSError with an errno) as
    one-line click errors with a non-zero exit; anything else is a bug and shows its traceback."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except (CompError, FileExistsError) as e:
            raise click.ClickException(_one_line(str(e))) from None
        except OSError as e:
            if e.errno is None:
                raise
            # A full disk, a read-only folder, a missing file: one line naming the file.
            raise click.ClickException(_os_error(e)) from None

    return wrapper


def _one_line(message: str, limit: int = 600) -> str:
    """An error as one line, however many a library below put in it (and no colour codes)."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", message).split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _os_error(e: OSError) -> str:
    what = e.strerror or (os.strerror(e.errno) if e.errno else str(e))
    hint = {
        errno.ENOSPC: "; free some space and run it again (nothing half-written was kept)",
        errno.EDQUOT: "; free some space and run it again (nothing half-written was kept)",
        errno.EACCES: "; check the folder's permissions",
        errno.EROFS: "; write the workspace somewhere writable",
    }.get(e.errno or 0, "")
    return f"{e.filename}: {what}{hint}" if e.filename else f"{what}{hint}"


@functools.cache
def _config_hints() -> dict[str, Any]:
    # Resolving the hints costs about 2 ms; once per flag it was a third of `comp --help`.
    return typing.get_type_hints(Config)


def _click_type(key: str) -> Any:
    if key in AUTO_KEYS:
        return click.STRING  # a number, or "auto"
    typ = _config_hints()[key]
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
        f = click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override any comp.yaml key, e.g. --set weight_decay=0.05 (repeatable).",
        )(f)
        return click.option(
            "--config",
            "config_file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="A config file over comp.yaml (e.g. tune/comp-best.yaml from `comp tune --show`).",
        )(f)

    return decorator


def workspace_config(ctx: click.Context, kwargs: dict[str, Any]) -> tuple[Path, Config]:
    """Find the workspace and resolve its config: comp.yaml < --config < --set < dedicated flags."""
    root = find_workspace(ctx.obj.get("workspace"))
    return root, load_config(root, _overrides(kwargs))


def _overrides(kwargs: dict[str, Any]) -> dict[str, Any]:
    """--config file < --set < dedicated flags; pops them from a command's kwargs."""
    overrides: dict[str, Any] = {}
    config_file = kwargs.pop("config_file", None)
    if config_file is not None:
        overrides.update(read_config_file(config_file))
    overrides.update(parse_sets(kwargs.pop("sets", ())))
    flags = {k: kwargs.pop(k) for k in list(kwargs) if k in KEYS}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return overrides


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    # -q is taken before or after the command's name; once given, it holds for the command.
    if value:
        ctx.meta["comp.quiet"] = True
        console.setup(quiet=True)


def quiet_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--quiet: no progress bars and no line per epoch, only what a stage ends with."""
    return click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_quiet,
        help="No progress bars and no line per epoch (bars are off anyway when output is not a terminal).",
    )(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="comp")
@quiet_option
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

    \b
    Then: comp tune (Optuna), comp kernel push/pull (Kaggle GPUs),
    comp submit FILE (Kaggle) and comp submissions --refresh --plot.
    """
    ctx.ensure_object(dict)
    ctx.obj["workspace"] = workspace
    console.setup(quiet=ctx.meta.get("comp.quiet", False))


@cli.command()
@quiet_option
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
@config_flags("model", "img_size", "n_splits", "seed", "pretrained_file")
@friendly_errors
def init(directory: Path, data: Path, holdout: float, force: bool, **kwargs: Any) -> None:
    """Make a workspace in DIRECTORY around an existing competition folder.

    Detects the layout (Kaggle CSV + train/test folders, or one folder per class),
    the Id and label columns, and reports images, classes, sizes and modes.

    A --pretrained-file is checked against the model the recipe fine-tunes, and
    refused before anything is written where it does not fit.

    \b
    Examples:
        comp init pokemon-ws --data ~/data/pokemon-types
        comp init ws --data data --model tf_efficientnet_lite0 --pretrained-file lite0.pth
    """
    from comp.workspace.init import init_workspace

    overrides = _overrides(kwargs)
    seed = int(overrides.pop("seed", 42))
    _, text = init_workspace(
        directory, data, holdout=holdout, seed=seed, force=force, overrides=overrides
    )
    click.echo(text)
    click.echo(
        f"\nworkspace ready: {directory}/comp.yaml. Next: cd {directory} && comp folds && comp train"
    )


@cli.command()
@quiet_option
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
    from comp.data.demo import write_demo

    facts = write_demo(directory, size=size, force=force)
    click.echo(
        f"demo competition in {directory}: {facts['train']} train and {facts['test']} test images, {facts['classes']} classes, {size}x{size} RGB PNGs"
    )
    click.echo(
        f"solution.csv holds {facts['public']} public and {facts['test'] - facts['public']} private answers. Next: cd {directory} && comp folds"
    )


@cli.command()
@quiet_option
@config_flags("n_splits", "seed")
@click.option(
    "--groups",
    default="auto",
    show_default=True,
    help="auto: the grouping of similar images under which validation images sit as far "
    "from their training images as test images do from train; none: plain stratified "
    "folds; or a column of the labels CSV holding your own groups.",
)
@click.option(
    "--method",
    default="subject,colour",
    show_default=True,
    help="The features that similarity is measured on, one or more of: subject (the subject's "
    "shape and grey pattern, without its background; mirror images count as one), colour "
    "(the subject's palette), thumb (tiny whole image), phash (perceptual hash), embed (the "
    "model's backbone features; with no pretrained weights, a small net learned from the "
    "train and test images without labels, about 40 s). Images are as near as in the "
    "feature where they are nearest; where the groups on all of them fill up, they are also "
    "tried on the first feature with each other one left out, and the matching chooses.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 2),
    default=None,
    help="Group images within this cosine distance instead of matching the test set.",
)
@click.pass_context
@friendly_errors
def folds(
    ctx: click.Context,
    groups: str,
    method: str,
    threshold: float | None,
    **kwargs: Any,
) -> None:
    """Write stratified K-fold assignments to folds/ (Id,label,fold[,group]).

    CV tells the truth only when a validation image is as new to its fold's
    model as a test image is to the final one. So comp measures how far each
    test image sits from its nearest train image, on features that ignore the
    background, and tries plain folds and groups of similar images (frames,
    views, recolours of one subject) kept in one fold, at a ladder of
    distances. The split whose validation distances match the test distances
    wins: grouped folds when the test set holds unseen subjects, plain folds
    when the host split at random.

    Beside the folds CSV it writes a report (.json) and a picture (.png): the
    distances, every candidate, and an adversarial-validation AUC.

    \b
    Examples:
        comp folds
        comp folds --groups none                 # plain stratified folds
        comp folds --groups patient_id           # your own groups
        comp folds --method subject,embed        # add the backbone's view
        comp folds --threshold 0.05              # group within a fixed distance
    """
    from comp.folds.make import UnknownMethod, workspace_folds

    root, cfg = workspace_config(ctx, kwargs)
    try:
        facts = workspace_folds(
            root,
            cfg,
            groups=groups,
            methods=[m.strip() for m in method.split(",") if m.strip()],
            threshold=threshold,
        )
    except UnknownMethod as e:
        raise click.BadParameter(str(e), param_hint="--method") from None
    click.echo(facts["counts"].to_string())
    click.echo(
        f"\n{cfg.n_splits} folds ({facts['how']}) of {len(facts['folds'])} images -> {facts['path'].relative_to(root)}"
    )


@cli.command()
@quiet_option
@config_flags(
    *TRAINING_FLAGS,
    *TEACHING_FLAGS,
    "head",
    "features_from",
    "pretrained_file",
    "num_workers",
    "device",
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
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run --name after a kill or Ctrl-C, with its own config: finished folds "
    "are kept, an interrupted one goes on from its last epoch.",
)
@click.option(
    "--devices",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes on this machine, one per GPU (or CPU share): DistributedDataParallel through torchrun.",
)
@click.option(
    "--nnodes", type=click.IntRange(min=1), default=1, show_default=True, help="Machines in all."
)
@click.option(
    "--node-rank",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="This machine's rank.",
)
@click.option(
    "--master-addr",
    default="127.0.0.1",
    show_default=True,
    help="Address of the rank-0 machine (several machines).",
)
@click.option(
    "--master-port", type=int, default=29500, show_default=True, help="Port on the rank-0 machine."
)
@click.pass_context
@friendly_errors
def train(
    ctx: click.Context,
    fold_ids: tuple[int, ...],
    name: str | None,
    resume: bool,
    devices: int,
    nnodes: int,
    node_rank: int,
    master_addr: str,
    master_port: int,
    **kwargs: Any,
) -> None:
    """Train a timm model on every fold, with the recipe its starting point calls for.

    From random init: no frozen stage, warmup then cosine, label smoothing. From
    pretrained weights: a logistic-regression head on the frozen backbone's
    features, then all layers at a low rate with BatchNorm frozen. Where
    `recipe: auto` finds weights, the first fold trains both ways and the
    better recipe trains the rest (`--recipe finetune` skips that). Keys you
    set win over the recipe, which is printed. Early stopping
    and checkpoint choice follow validation macro-F1. Writes runs/<name>/ with
    the resolved config, per-fold checkpoints and metrics, out-of-fold
    probabilities and the CV macro-F1.

    \b
    Examples:
        comp train --time-limit 20m      # epochs sized so every fold ends in time
        comp train --mixup 0.2 --cutmix 1.0 --ema true --drop-path-rate 0.1
        comp train --model efficientnet_b0 --epochs 20 --freeze-epochs 5
        comp train --fold 0 --name effb0 --pretrained-file weights/effb0.pth
        comp train --devices 2          # both GPUs of a Kaggle 2xT4 notebook
        comp train --name effb0 --resume   # after a kill: on from the last epoch
        comp train --model simple_cnn --freeze-epochs 0 --centre true
        comp train --head extratrees --features-from effb0   # on effb0's fold backbones
    """
    from comp.train.probe import train as train_run

    if resume:
        from comp.runs import resume_config

        root = find_workspace(ctx.obj.get("workspace"))
        cfg = resume_config(root, name, overrides=_overrides(kwargs))
    else:
        root, cfg = workspace_config(ctx, kwargs)
    _check_pretrained_file(root, cfg)
    if (devices > 1 or nnodes > 1) and "LOCAL_RANK" not in os.environ:
        # This process only launches: torchrun starts one `comp train` per device, each
        # of which joins the process group from the environment torchrun sets.
        from comp.train.launch import launch_distributed

        ctx.exit(
            launch_distributed(
                sys.argv[1:],
                devices=devices,
                nnodes=nnodes,
                node_rank=node_rank,
                master_addr=master_addr,
                master_port=master_port,
                device=cfg.device,
            )
        )
    t0 = time.perf_counter()
    summary = train_run(root, cfg, name=name, folds=list(fold_ids) or None, resume=resume)
    if not summary:
        return  # a distributed process other than the first: that one reports
    _print_summary(summary, time.perf_counter() - t0)


def _check_pretrained_file(root: Path, cfg: Config) -> None:
    """Refuse a pretrained file that does not fit before a run folder is written (the folds
    load it only after), and say how it will load."""
    if cfg.pretrained_file is None or "LOCAL_RANK" in os.environ:
        return  # torchrun's processes: the launching one has checked
    if cfg.model == "auto" and cfg.recipe == "scratch":
        return  # the net is chosen by image size and device, later
    from comp.models.factory import describe_file

    # Like every path in comp.yaml, relative to the workspace.
    path = Path(cfg.pretrained_file).expanduser()
    click.echo(describe_file(cfg.model, path=path if path.is_absolute() else root / path))


def _print_summary(summary: dict[str, Any], seconds: float) -> None:
    """A run's CV, per fold, with priors, and against the run it was built from."""
    from comp.teach.lineage import describe, gain_over_parent

    adjusted = summary.get("adjusted_macro_f1")
    scope = (
        "CV"
        if summary["complete"]
        else f"CV over {summary['folds_trained']}/{summary['n_folds']} folds"
    )
    click.echo(
        f"\nrun {summary['run']}: {scope} macro-F1 {summary['cv_macro_f1']:.4f}, accuracy {summary['cv_accuracy']:.4f} ({seconds:.0f}s)"
    )
    click.echo(
        "per fold: " + ", ".join(f"{k}: {v:.4f}" for k, v in summary["fold_macro_f1"].items())
    )
    if adjusted is not None:
        click.echo(
            f"with OOF-fitted class priors (cross-fitted): macro-F1 {adjusted:.4f}; use them with `comp predict --adjust true`"
        )
    if summary.get("built_from"):
        click.echo(f"built from: {describe(summary['built_from'])}")
    gain = gain_over_parent(summary)
    if gain is not None:
        spread = f" ± {gain['spread']:.4f}" if gain["spread"] is not None else ""
        click.echo(
            f"against {gain['parent']}: mean gain per fold {gain['mean_gain']:+.4f}{spread}, "
            f"{gain['verdict']}"
        )


@cli.command()
@quiet_option
# --time-limit is the study's here; a trial's own is --trial-time-limit.
@config_flags(*(k for k in TRAINING_FLAGS if k != "time_limit"), "num_workers", "device")
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Finished trials the study should reach.",
)
@click.option(
    "--time-limit",
    "tune_time_limit",
    help="The study's budget, e.g. 2h: no trial starts that its measured length would carry "
    "past it [config: tune_time_limit].",
)
@click.option(
    "--trial-time-limit",
    "time_limit",
    help="Each trial's training fits into this time, e.g. 5m, as `comp train --time-limit` "
    "sizes a run [config: time_limit].",
)
@click.option("--study", "study_name", default="comp", show_default=True, help="Study name.")
@click.option(
    "--storage",
    help="Optuna storage: sqlite:///f.db, postgresql://user:pw@host/db, or a journal file (x.log); default tune/<study>.db.",
)
@click.option(
    "--folds",
    "tune_folds",
    help="Folds whose mean macro-F1 is the objective, e.g. 0,1,2 [config: tune_folds].",
)
@click.option(
    "--pruner",
    "tune_pruner",
    type=click.Choice(PRUNERS),
    help="Pruner [config: tune_pruner].",
)
@click.option(
    "--n-workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes sharing the study.",
)
@click.option(
    "--heartbeat",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="Seconds between a trial's heartbeats; a trial silent for twice this is failed and retried.",
)
@click.option(
    "--show",
    is_flag=True,
    help="Run nothing: print the recipe and space, the best trials against trial 0 (the "
    "recipe's values), write the best config and the plots.",
)
@click.option("--worker", type=int, default=0, hidden=True)
@click.pass_context
@friendly_errors
def tune(
    ctx: click.Context,
    trials: int,
    study_name: str,
    storage: str | None,
    n_workers: int,
    heartbeat: int,
    show: bool,
    worker: int,
    **kwargs: Any,
) -> None:
    """Tune the training recipe with Optuna, from its own values, pruning weak trials.

    The recipe comp train would use chooses the space of the tune_* keys left at
    auto (from scratch: lr2, weight decay, label smoothing, the net's width; to
    fine-tune: freeze epochs, lr1, lr2, layer decay); a tune_* key you set
    ("low..high" range, "a,b,c" choices) is searched as you set it. Trial 0 is
    the recipe's values. The study lives in tune/<study>.db, so running the same
    command again after a crash or Ctrl-C resumes it, in the same space; trials
    that died are retried. Machines can share one study with --storage
    postgresql://...

    \b
    Examples:
        comp tune --trials 50 --time-limit 2h
        comp tune --trials 50 --n-workers 2 --set tune_aug=light,medium,heavy
        comp tune --show && comp train --config tune/comp-best.yaml
    """
    from comp.tune.workers import run_study, show_study

    root, cfg = workspace_config(ctx, kwargs)
    if show:
        show_study(
            root,
            cfg,
            study_name=study_name,
            storage=storage,
            heartbeat=heartbeat,
        )
        return
    run_study(
        root,
        cfg,
        study_name=study_name,
        storage=storage,
        trials=trials,
        n_workers=n_workers,
        heartbeat=heartbeat,
        worker=worker,
    )


@cli.command()
@quiet_option
@click.argument("run")
@config_flags(
    *TRAINING_FLAGS,
    "pseudo_threshold",
    "distill_weight",
    "distill_temperature",
    "pretrained_file",
    "num_workers",
    "device",
)
@click.option("--name", help="Name of the student run (default: <model>-distilled-<date>-<time>).")
@click.pass_context
@friendly_errors
def distill(ctx: click.Context, run: str, name: str | None, **kwargs: Any) -> None:
    """Distil RUN (a run or a blend of many) into one model, --model, for fast inference.

    The student learns from the teacher's soft predictions: out-of-fold ones on the
    training images (from nested teachers that never saw the student's validation
    fold) and its test predictions on the test images (`comp predict RUN` first),
    mixed with the true labels by --distill-weight. Its folds give it a CV of its
    own; then one model trains on every image, and `comp predict` uses that one.

    \b
    Examples:
        comp blend effb0 resnet50 --name duo && comp predict duo
        comp distill duo --model resnet18 --name student && comp predict student
        comp distill duo --model mobilenetv3_small_100 --distill-weight 0.7
    """
    from comp.train.run import train as train_run

    # Every test image teaches, unless a threshold is asked for.
    threshold = kwargs.get("pseudo_threshold")
    root, cfg = workspace_config(ctx, kwargs)
    cfg = dataclasses.replace(
        cfg,
        distill=run,
        pseudo=run if cfg.test_dir is not None else None,
        pseudo_soft=True,
        pseudo_threshold=threshold if threshold is not None else 0.0,
    )
    _check_pretrained_file(root, cfg)
    name = name or f"{cfg.model.replace('/', '_')}-distilled-{datetime.now():%Y%m%d-%H%M%S}"
    t0 = time.perf_counter()
    summary = train_run(root, validate(cfg), name=name, full=True)
    if not summary:
        return
    _print_summary(summary, time.perf_counter() - t0)
    click.echo(f"next: comp predict {name}  (one model, trained on every image)")


@cli.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--name", required=True, help="Name of the blend, a run like any other.")
@click.option(
    "--weights",
    type=click.Choice(["fit", "equal"]),
    default="fit",
    show_default=True,
    help="fit: weights that minimise the OOF log-loss; equal: a plain average.",
)
@config_flags("tracker")
@click.pass_context
@friendly_errors
def blend(
    ctx: click.Context, runs: tuple[str, ...], name: str, weights: str, **kwargs: Any
) -> None:
    """Blend RUNS on their out-of-fold predictions into a new run, and report its CV.

    `comp predict NAME` then applies the same weights to the runs' test
    predictions. The runs must share one split (the same folds file).

    \b
    Example:
        comp blend effb0 resnet50 vit --name trio && comp predict trio
    """
    from comp.predict.ensemble import blend as blend_runs
    from comp.runs import find_run
    from comp.track.scores import track_blend
    from comp.track.trackers import require

    root, cfg = workspace_config(ctx, kwargs)
    require(cfg.tracker)
    summary = blend_runs(root, [find_run(root, r) for r in runs], name=name, weights=weights)
    track_blend(root, cfg, summary=summary)
    for member, facts in summary["members"].items():
        cv = facts["cv_macro_f1"]
        click.echo(
            f"  {member}: weight {facts['weight']:.3f}, CV {cv:.4f}"
            if cv is not None
            else f"  {member}: weight {facts['weight']:.3f}"
        )
    click.echo(f"blend {name}: CV macro-F1 {summary['cv_macro_f1']:.4f}; next: comp predict {name}")


@cli.command()
@quiet_option
@click.argument("run", required=False)
@click.pass_context
@friendly_errors
def report(ctx: click.Context, run: str | None) -> None:
    """Write pictures of RUN (default: the latest run) to runs/<run>/report/.

    Training curves, the out-of-fold confusion matrix (normalised and counts),
    precision, recall and F1 per class (also as CSV), the most confident
    mistakes as an image grid, and a README.md that links them.

    \b
    Example:
        comp report effb0 && open runs/effb0/report/README.md
    """
    from comp.data.competition import load_competition
    from comp.files import relative
    from comp.report.report import write_report
    from comp.runs import find_run

    root, cfg = workspace_config(ctx, {})
    run_dir = find_run(root, run)
    facts = write_report(run_dir, load_competition(root, cfg))
    weakest = facts["classes"].sort_values("f1").head(3)
    click.echo(
        "weakest classes: "
        + ", ".join(f"{r['class']} (F1 {r['f1']:.3f})" for _, r in weakest.iterrows())
    )
    click.echo(f"report: {relative(facts['folder'] / 'README.md', root)}")


@cli.command()
@quiet_option
@click.argument("run", required=False)
@config_flags("tta", "adjust", "device")
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
    from comp.predict.predict import predict as predict_run
    from comp.submit.submission import publish

    root, cfg = workspace_config(ctx, kwargs)
    prediction = predict_run(root, cfg, run=run, batch_size=batch_size)
    facts = publish(root, prediction, out=out)
    cv = f" (CV macro-F1 {facts['cv_macro_f1']:.4f})" if facts["cv_macro_f1"] is not None else ""
    click.echo(f"submission: {facts['file']}{cv}")


def _kaggle() -> Any:
    # One place that makes the client: its retry notices go to stderr, and tests swap it.
    from comp.kaggle.client import Kaggle

    return Kaggle()


def _owner(owner: str | None, *, dry_run: bool, what: str) -> tuple[str, Any]:
    """The Kaggle user to own a kernel or dataset: --owner, else the credentials' user.

    Returns the client too when finding the user needed one, so it signs in once.
    """
    from comp.kaggle.client import find_credentials

    if owner:
        return owner, None
    owner = next((c.username for c in find_credentials() if c.username), None)
    if owner:
        return owner, None
    if dry_run:
        raise click.ClickException(f"whose {what}? pass --owner YOUR_KAGGLE_USERNAME")
    kaggle = _kaggle()
    return kaggle.username, kaggle


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-m", "--message", default="", help="Submission description, kept in the ledger too.")
@click.option(
    "--local",
    is_flag=True,
    help="Score against the workspace's solution.csv instead of submitting to Kaggle.",
)
@click.option("--competition", help="Kaggle competition slug (default: comp.yaml's competition).")
@click.option("--run", help="Run that made FILE (default: read from FILE's .json sidecar).")
@click.option("--force", is_flag=True, help="Submit even a file already submitted to Kaggle.")
@click.pass_context
@friendly_errors
def submit(
    ctx: click.Context,
    file: Path,
    message: str,
    local: bool,
    competition: str | None,
    run: str | None,
    force: bool,
) -> None:
    """Validate FILE, submit it to Kaggle (or score it locally), and record it in the ledger.

    FILE is checked against sample_submission.csv (header, row count, Ids, labels)
    before anything is uploaded, so a malformed file never costs a submission.

    \b
    Examples:
        comp submit submissions/effb0.csv -m "effb0, 5 folds, hflip TTA"
        comp submit submissions/demo.csv --local -m "first try"
    """
    from comp.submit.submit import submit_kaggle, submit_local

    root, cfg = workspace_config(ctx, {})
    if local:
        submit_local(root, cfg, file=file, message=message, run=run)
        return
    submit_kaggle(
        root,
        cfg,
        file=file,
        kaggle=_kaggle(),
        message=message,
        competition=competition,
        run=run,
        force=force,
    )


@cli.command()
@click.option("--refresh", is_flag=True, help="Fetch status and public/private scores from Kaggle.")
@click.option(
    "--plot",
    is_flag=True,
    help="Save submissions/leaderboard.png: CV against public and private score.",
)
@click.option("--competition", help="Kaggle competition slug (default: comp.yaml's competition).")
@click.pass_context
@friendly_errors
def submissions(ctx: click.Context, refresh: bool, plot: bool, competition: str | None) -> None:
    """Print the ledger: CV, public and private macro-F1 of every submission, side by side.

    Below the table: the rank correlation between CV and the leaderboard, and the
    submission that scored best on private (the one that would have won).

    \b
    Examples:
        comp submissions --refresh
        comp submissions --plot
    """
    from comp.submit.submit import refresh_scores, show_ledger

    root, cfg = workspace_config(ctx, {})
    if refresh:
        refresh_scores(root, cfg, kaggle=_kaggle(), competition=competition)
    show_ledger(root, plot=plot)


@cli.group()
def kernel() -> None:
    """Train on Kaggle's GPUs: push a kernel, watch it, pull its outputs back as a run.

    \b
    The round trip:
        comp kernel push --name effb0 --model efficientnet_b0
        comp kernel status effb0 --wait
        comp kernel pull effb0
        comp predict effb0
    """


@kernel.command("push")
@config_flags(*TRAINING_FLAGS, "tta")
@click.option("--name", help="Kernel and run name (default: <model>-<month><day>-<time>).")
@click.option(
    "--fold", "fold_ids", type=int, multiple=True, help="Train only this fold (repeatable)."
)
@click.option(
    "--folds-per-kernel",
    type=click.IntRange(min=1),
    help="Fan the folds out over parallel kernels, this many each (default: all in one kernel).",
)
@click.option("--competition", help="Kaggle competition slug (default: comp.yaml's competition).")
@click.option(
    "--data-dataset",
    metavar="OWNER/SLUG",
    help="Read the images from this Kaggle dataset instead of a competition (e.g. Animals-10).",
)
@click.option("--owner", help="Kaggle user owning the kernel (default: the credentials' user).")
@click.option(
    "--code-dataset",
    metavar="OWNER/SLUG",
    help="Install comp (and weights) from this dataset instead of the script's embedded copy.",
)
@click.option("--gpu/--no-gpu", default=True, show_default=True, help="Ask for a GPU.")
@click.option(
    "--internet/--no-internet",
    default=True,
    show_default=True,
    help="Internet in the kernel (pretrained weights from the hub, missing packages).",
)
@click.option(
    "--accelerator", help="Kaggle machine shape, e.g. NvidiaTeslaT4 (default: Kaggle's choice)."
)
@click.option("--public", is_flag=True, help="Make the kernel public (default: private).")
@click.option(
    "--dry-run", is_flag=True, help="Write the bundle(s) under kernels/ and push nothing."
)
@click.option(
    "--tune",
    is_flag=True,
    help="Run `comp tune` in the kernels instead of training: --time-limit is then each "
    "kernel's study budget (default 11h, inside Kaggle's 12h session).",
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    help="With --tune: finished trials the study should reach, split among the kernels [default: 20].",
)
@click.option(
    "--kernels",
    type=click.IntRange(min=1),
    help="With --tune: kernels sharing the trials [default: 1].",
)
@click.option("--study", "study_name", help="With --tune: the study [default: comp].")
@click.option(
    "--storage",
    help="With --tune: a shared study on postgresql://user:pw@host/db instead of tune/<study>.db; "
    "the password reaches the kernels only as the Kaggle secret COMP_STORAGE_PASSWORD.",
)
@click.option(
    "--trial-time-limit",
    help="With --tune: each trial's training fits into this time, e.g. 20m [config: time_limit].",
)
@click.pass_context
@friendly_errors
def kernel_push(
    ctx: click.Context,
    name: str | None,
    fold_ids: tuple[int, ...],
    folds_per_kernel: int | None,
    competition: str | None,
    data_dataset: str | None,
    owner: str | None,
    code_dataset: str | None,
    gpu: bool,
    internet: bool,
    accelerator: str | None,
    public: bool,
    dry_run: bool,
    tune: bool,
    trials: int | None,
    kernels: int | None,
    study_name: str | None,
    storage: str | None,
    trial_time_limit: str | None,
    **kwargs: Any,
) -> None:
    """Build a Kaggle kernel that trains and predicts with this workspace's config, and push it.

    The bundle in kernels/<name>/ holds kernel-metadata.json and a script that
    carries the resolved config, the folds and comp itself; it trains on
    /kaggle/input and writes checkpoints, OOF and test probabilities to
    /kaggle/working. No credentials go into it. With --tune the kernels run
    `comp tune` from the local study tune/<study>.db (or a new one) and `comp
    kernel pull` merges their trials into it.

    \b
    Examples:
        comp kernel push --name effb0 --model efficientnet_b0 --epochs 20
        comp kernel push --name effb0 --folds-per-kernel 1      # 5 kernels in parallel
        comp kernel push --name try --dry-run                   # write, don't push
        comp kernel push --tune --trials 20 --kernels 2         # then pull, comp tune --show
    """
    from comp.kernels.push import Tuning, build_group, push_bundles

    flags = {"--trials": trials, "--kernels": kernels, "--study": study_name}
    flags |= {"--storage": storage, "--trial-time-limit": trial_time_limit}
    _tune_flags(kwargs, flags, tune=tune, folds=bool(fold_ids or folds_per_kernel))
    root, cfg = workspace_config(ctx, kwargs)
    owner, kaggle = _owner(owner, dry_run=dry_run, what="kernel")
    tuning = Tuning(study_name or "comp", trials or 20, kernels or 1, storage) if tune else None
    name, bundles = build_group(
        root,
        cfg,
        name=name,
        owner=owner,
        competition=competition,
        tuning=tuning,
        folds=list(fold_ids) or None,
        folds_per_kernel=folds_per_kernel,
        data_dataset=data_dataset,
        code_dataset=code_dataset,
        gpu=gpu,
        internet=internet,
        private=not public,
        accelerator=accelerator,
    )
    if dry_run:
        click.echo(
            "dry run: nothing pushed. Run a script by hand with COMP_KAGGLE_INPUT=<folder> "
            f"COMP_KAGGLE_WORKING=<out> python <script>, then comp kernel pull {name} --from <out>"
        )
        return
    push_bundles(kaggle or _kaggle(), bundles)
    click.echo(f"next: comp kernel status {name} --wait && comp kernel pull {name}")
    if tuning is not None:
        click.echo(f"then: comp tune --show --study {tuning.study}")


def _tune_flags(kwargs: dict[str, Any], flags: dict[str, Any], *, tune: bool, folds: bool) -> None:
    """Refuse `kernel push` flags that contradict --tune (``folds``: a fold flag was given) or
    need it (``flags``: the tuning flags' values, --trial-time-limit among them); with
    --tune, point the config flags in ``kwargs`` where `comp tune` does."""
    if tune and folds:
        raise click.ClickException(
            "--tune splits trials, not folds: use --kernels (the folds tuned are tune_folds)"
        )
    given = [flag for flag, value in flags.items() if value is not None]
    if given and not tune:
        raise click.ClickException(f"{given[0]} is for tuning kernels: add --tune")
    if tune:
        # As in `comp tune`: --time-limit is the study's, --trial-time-limit a trial's.
        kwargs["tune_time_limit"] = kwargs.pop("time_limit")
        kwargs["time_limit"] = flags["--trial-time-limit"]


def _wait_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--timeout",
        default=12 * 3600.0,
        show_default=True,
        help="Give up waiting after this many seconds.",
    )(f)
    f = click.option(
        "--interval", default=30.0, show_default=True, help="Seconds between status checks."
    )(f)
    return click.option("--wait", is_flag=True, help="Poll until every kernel has finished.")(f)


@kernel.command("status")
@click.argument("name")
@_wait_options
@click.pass_context
@friendly_errors
def kernel_status(
    ctx: click.Context, name: str, wait: bool, interval: float, timeout: float
) -> None:
    """Show the status of kernel NAME (queued, running, complete, error), optionally waiting.

    A tuning kernel's line adds its study's progress from its log: trials
    finished and the best macro-F1 so far.

    \b
    Example:
        comp kernel status effb0 --wait --interval 60
    """
    from comp.kernels.pull import kernel_status as status

    root = find_workspace(ctx.obj.get("workspace"))
    status(
        root,
        name,
        kaggle=_kaggle(),
        wait=wait,
        interval=interval,
        timeout=timeout,
    )


@kernel.command("pull")
@click.argument("name")
@_wait_options
@click.option("--force", is_flag=True, help="Fetch outputs of failed kernels too (for their logs).")
@click.option(
    "--from",
    "outputs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Read a kernel's outputs from this folder (a bundle run by hand: its "
    "COMP_KAGGLE_WORKING) instead of Kaggle; once per kernel, in the bundles' order.",
)
@click.pass_context
@friendly_errors
def kernel_pull(
    ctx: click.Context,
    name: str,
    wait: bool,
    interval: float,
    timeout: float,
    force: bool,
    outputs: tuple[Path, ...],
) -> None:
    """Download the outputs of kernel NAME into runs/NAME, a run like any local one.

    Folds from several kernels (--folds-per-kernel) are merged into one run, and
    its OOF predictions and CV are recomputed, so `comp predict NAME` and
    ensembles use it as they use a local run. Tuning kernels (--tune) bring their
    trials into tune/<study>.db instead; pulling again adds none twice.

    \b
    Examples:
        comp kernel pull effb0 --wait && comp predict effb0
        comp kernel pull tune-comp-1201-0930 && comp tune --show
        comp kernel pull try --from /tmp/working   # a bundle run by hand
    """
    from comp.kernels.pull import pull

    root = find_workspace(ctx.obj.get("workspace"))
    facts = pull(
        root,
        name,
        kaggle=None if outputs else _kaggle(),
        outputs=list(outputs),
        wait=wait,
        interval=interval,
        timeout=timeout,
        force=force,
    )
    if "study" in facts:
        storage = " --storage URL" if facts["shared"] else ""
        click.echo(f"next: comp tune --show --study {facts['study']}{storage}")
    elif facts["submission"] is not None:
        click.echo(f"the kernels' submission: submissions/{facts['run']}.csv")
    else:
        click.echo(f"next: comp predict {facts['run']}")


@kernel.command("dataset")
@click.option("--slug", default="comp-code", show_default=True, help="Dataset slug.")
@click.option("--owner", help="Kaggle user owning the dataset (default: the credentials' user).")
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="Weights file to ship with the code (repeatable), for pretrained_file in kernels.",
)
@click.option("-m", "--message", default="comp update", show_default=True, help="Version notes.")
@click.option("--public", is_flag=True, help="Make a new dataset public (default: private).")
@click.option("--dry-run", is_flag=True, help="Write the dataset folder and upload nothing.")
@click.pass_context
@friendly_errors
def kernel_dataset(
    ctx: click.Context,
    slug: str,
    owner: str | None,
    weights: tuple[Path, ...],
    message: str,
    public: bool,
    dry_run: bool,
) -> None:
    """Create or version the Kaggle dataset that carries comp's code (and weights) to kernels.

    \b
    Example:
        comp kernel dataset --weights weights/effb0.pth
        comp kernel push --code-dataset me/comp-code --pretrained-file weights/effb0.pth
    """
    from comp.kernels.push import build_code_dataset

    root = find_workspace(ctx.obj.get("workspace"))
    owner, kaggle = _owner(owner, dry_run=dry_run, what="dataset")
    folder = build_code_dataset(root, owner=owner, slug=slug, weights=list(weights))
    click.echo(f"dataset folder: {folder.relative_to(root)}")
    if dry_run:
        return
    kaggle = kaggle or _kaggle()
    ref = f"{owner}/{slug}"
    if kaggle.dataset_exists(ref):
        url = kaggle.version_dataset(folder, notes=message)
        click.echo(f"new version of {ref}: {url}")
    else:
        url = kaggle.create_dataset(folder, public=public)
        click.echo(f"created {ref}: {url}")
    click.echo(f"use it: comp kernel push --code-dataset {ref}")


@cli.command()
@click.argument("competition")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace DIRECTORY/data and comp.yaml if they exist.")
@config_flags("model", "img_size", "n_splits", "seed")
@friendly_errors
def download(competition: str, directory: Path, force: bool, **kwargs: Any) -> None:
    """Download COMPETITION's files from Kaggle into a new workspace in DIRECTORY.

    The archive is unpacked (nested zips too) into DIRECTORY/data, and the
    workspace is set up as `comp init` would, with `competition:` filled in.

    \b
    Example:
        comp download pokemon-primary-type pokemon && cd pokemon && comp folds
    """
    from comp.workspace.download import download_workspace

    overrides = _overrides(kwargs)
    text = download_workspace(
        competition,
        directory,
        kaggle=_kaggle(),
        force=force,
        overrides=overrides,
    )
    click.echo(text)
    click.echo(
        f"\nworkspace ready: {directory}/comp.yaml. Next: cd {directory} && comp folds && comp train"
    )


def _one_line_warning(
    message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any
) -> str:
    return f"WARNING: {message}\n"


def main() -> None:
    # Warnings are for the person at the terminal: one line, no source excerpt.
    warnings.formatwarning = _one_line_warning
    cli(prog_name="comp")
