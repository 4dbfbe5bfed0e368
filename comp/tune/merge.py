"""Studies that travel to Kaggle kernels and come home: a tuning kernel's seed, and its
trials merged back into the local study.

Reads the local study ``tune/<study>.db`` (when there is one) and, on pull, the study
file a tuning kernel left among its outputs. Writes each kernel's seed study (a SQLite
file in a folder the caller owns, packed into the bundle by ``comp kernel push
--tune``) and, on pull, the kernel's new trials into ``tune/<study>.db``, through
Optuna's own ``add_trial``: state, value, parameters, distributions, intermediate
values and attributes as the kernel recorded them.

A seed holds every trial of the local study, in its order, so that a trial number
below the seed's count (``seeded``) names the same trial in both studies; trials that
are waiting or running here go as failed placeholders, which no kernel runs. Then the
study's space, and, enqueued for this kernel alone, trial 0 (the recipe's values) when
the study never had it, and the retries of trials that a kernel's session cut: a trial
still running when a kernel stopped comes home failed (``comp:cut``), and the next
push tries its parameters again, as Optuna's RetryFailedTrialCallback does locally
(``failed_trial``, ``retry_history``). Each trial merged is marked with its push,
kernel and number there (``comp:kernel_trial``), so a second pull adds none.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from comp import console
from comp.config import Config
from comp.errors import ConfigError, DataError
from comp.tune import study as tuning

log = logging.getLogger(__name__)

# A study attribute of every seed: its push, its kernel, how many trials it was seeded
# with and how many finished ones the kernel aims at.
KERNEL_ATTR = "comp_kernel"
# On a merged trial: "<push>/<kernel>/<number in the kernel's study>", and the kernel's ref.
MARK = "comp:kernel_trial"
SOURCE = "comp:kernel"
# On a trial still running when its kernel stopped: failed, and retried by the next push.
CUT = "comp:cut"
# As open_storage's heartbeat retries: a trial is tried at most this many times again.
MAX_RETRY = 2


def local_path(root: Path, study: str) -> Path:
    return root / "tune" / f"{study}.db"


def open_local(root: Path, study: str) -> optuna.Study | None:
    """The local study ``tune/<study>.db``, or None when there is none (nothing is created)."""
    if not local_path(root, study).exists():
        return None
    return tuning.load_study(tuning.storage_url(root, study, None), study)


def cut_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials a kernel's session cut that no later trial retried (at most MAX_RETRY times)."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [
        t
        for t in trials
        if t.state == TrialState.FAIL
        and t.system_attrs.get(CUT)
        and t.number not in retried
        and len(t.system_attrs.get("retry_history", [])) < MAX_RETRY
    ]


@dataclasses.dataclass(frozen=True)
class Seed:
    """What one tuning kernel starts from."""

    kernel: int
    share: int  # new trials to finish there
    trials: int  # the finished trials its study should reach: the local ones plus its share
    baseline: bool  # trial 0 is enqueued there
    retries: tuple[int, ...]  # local trials whose parameters it tries again


def plan_seeds(local: optuna.Study | None, *, trials: int, kernels: int) -> list[Seed]:
    """Split what the study lacks of ``trials`` finished ones among at most ``kernels``
    kernels; trial 0 and the retries go first, one kernel each."""
    done = tuning.finished(local) if local is not None else 0
    left = trials - done
    if left <= 0:
        name = local.study_name if local is not None else "the study"
        raise ConfigError(
            f"study {name} already has {done} finished trials; ask for more with --trials"
        )
    n = min(kernels, left)
    if n < kernels:
        log.info(f"{left} trials left to run: {n} kernel(s), not {kernels}")
    shares = [left // n + (1 if i < left % n else 0) for i in range(n)]
    history = local.get_trials(deepcopy=False) if local is not None else []
    queue: list[int | None] = [] if any(t.user_attrs.get("baseline") for t in history) else [None]
    queue += [t.number for t in cut_trials(local)] if local is not None else []
    given: list[list[int | None]] = [[] for _ in range(n)]
    k = 0
    for item in queue:
        # Round robin, while a kernel's share holds it: the rest wait for a later push.
        for _ in range(n):
            if len(given[k]) < shares[k]:
                break
            k = (k + 1) % n
        else:
            break
        given[k].append(item)
        k = (k + 1) % n
    return [
        Seed(
            kernel=k,
            share=shares[k],
            trials=done + shares[k],
            baseline=None in given[k],
            retries=tuple(x for x in given[k] if x is not None),
        )
        for k in range(n)
    ]


def retry_of(trial: FrozenTrial) -> FrozenTrial:
    """A waiting trial with ``trial``'s parameters, linked to it as RetryFailedTrialCallback links."""
    system = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    for key in (MARK, SOURCE, CUT):
        system.pop(key, None)  # they describe the cut trial, not its retry
    system["retry_history"] = [*system["retry_history"], trial.number]
    return optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs=trial.user_attrs,
        system_attrs=system,
    )


def _seed_copy(trial: FrozenTrial) -> FrozenTrial:
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        return trial
    # Waiting or running here: a placeholder keeps the numbers in step, and no kernel runs it.
    return optuna.trial.create_trial(state=TrialState.FAIL, system_attrs={"comp:placeholder": True})


def write_seed(
    path: Path,
    *,
    study_name: str,
    local: optuna.Study | None,
    space: tuning.Space,
    seed: Seed,
    push: str,
) -> None:
    """Kernel ``seed.kernel``'s study at ``path``: the local trials, the space, its own queue."""
    study = optuna.create_study(
        storage=f"sqlite:///{path}", study_name=study_name, direction="maximize"
    )
    attrs: dict[str, Any] = dict(local.user_attrs) if local is not None else {}
    attrs.pop(KERNEL_ATTR, None)
    for key, value in {**attrs, **space.to_attrs()}.items():
        study.set_user_attr(key, value)
    history = local.get_trials(deepcopy=False) if local is not None else []
    study.add_trials([_seed_copy(t) for t in history])
    if seed.baseline:
        study.enqueue_trial(space.baseline, user_attrs={"baseline": True})
    for number in seed.retries:
        study.add_trial(retry_of(history[number]))
    study.set_user_attr(
        KERNEL_ATTR,
        {"push": push, "kernel": seed.kernel, "seeded": len(history), "trials": seed.trials},
    )


def study_space(
    root: Path, cfg: Config, local: optuna.Study | None, *, device: str
) -> tuple[tuning.Space, bool]:
    """The space the kernels search: the local study's, or one the recipe chooses now for
    ``device`` (the kernel's). Returns it and whether it is new."""
    if local is not None:
        stored = tuning.Space.from_attrs(local.user_attrs)
        if stored is not None:
            changed = [d.key for d in tuning.search_space(cfg) if d not in stored.dimensions]
            if changed:
                log.info(
                    f"study {local.study_name} searches the space it began with, not your "
                    f"tune_{', tune_'.join(changed)}; use a new --study to search another"
                )
            return stored, False
    with console.silenced():
        return tuning.resolve_space(root, cfg, device=device), True


# --- home again ----------------------------------------------------------------------------


def _open_kernel_study(path: Path, study_name: str, source: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=study_name, storage=f"sqlite:///{path.resolve()}")
    except KeyError:
        raise DataError(f"kernel {source} left no study '{study_name}' in its outputs") from None


def _remap(system: dict[str, Any], numbers: dict[int, int]) -> dict[str, Any]:
    """Retry links in the kernel's trial numbers, rewritten in the local study's."""
    out = dict(system)
    if "failed_trial" in out:
        if out["failed_trial"] in numbers:
            out["failed_trial"] = numbers[out["failed_trial"]]
        else:
            del out["failed_trial"]
    if "retry_history" in out:
        out["retry_history"] = [numbers[n] for n in out["retry_history"] if n in numbers]
    return out


def merge_kernel_study(root: Path, study_name: str, path: Path, *, source: str) -> dict[str, Any]:
    """Add the trials kernel ``source`` ran (its study file at ``path``) to the local study
    ``tune/<study>.db``, creating it with the kernel's space if there is none. A trial
    still running when the kernel stopped comes home failed, to be retried by the next
    push; trials already merged, and retries the kernel had no time for, are skipped.
    Returns ``added`` (trials per state), ``already`` and ``unrun`` counts."""
    theirs = _open_kernel_study(path, study_name, source)
    meta = theirs.user_attrs.get(KERNEL_ATTR)
    if not isinstance(meta, dict):
        raise DataError(f"{source}: study '{study_name}' was not written by a comp tuning kernel")
    their_space = tuning.Space.from_attrs(theirs.user_attrs)
    existing = open_local(root, study_name)
    if existing is not None:
        mine = tuning.Space.from_attrs(existing.user_attrs)
        if (
            mine is not None
            and their_space is not None
            and mine.to_attrs() != their_space.to_attrs()
        ):
            raise DataError(
                f"kernel {source} searched another space than tune/{study_name}.db; "
                "its trials were not merged"
            )
    local = existing or tuning.load_study(tuning.storage_url(root, study_name, None), study_name)
    if tuning.Space.from_attrs(local.user_attrs) is None:
        for key, value in theirs.user_attrs.items():
            if key != KERNEL_ATTR:
                local.set_user_attr(key, value)
    ours = local.get_trials(deepcopy=False)
    merged = {t.system_attrs[MARK]: t.number for t in ours if MARK in t.system_attrs}
    seeded = int(meta.get("seeded", 0))
    numbers = {n: n for n in range(seeded)}  # the seed's trials are the local ones
    next_number = len(ours)
    added: Counter[str] = Counter()
    already = unrun = 0
    for trial in theirs.get_trials(deepcopy=False):
        if trial.number < seeded:
            continue
        mark = f"{meta.get('push')}/{meta.get('kernel')}/{trial.number}"
        if mark in merged:
            numbers[trial.number] = merged[mark]
            already += 1
            continue
        if trial.state == TrialState.WAITING:
            unrun += 1  # its retry stays due: the next push queues it again
            continue
        home = copy.deepcopy(trial)
        system = _remap(trial.system_attrs, numbers) | {MARK: mark, SOURCE: source}
        if trial.state == TrialState.RUNNING:
            # The session ended during the trial: failed, not lost; the next push retries it.
            home.state = TrialState.FAIL
            home.datetime_complete = datetime.now()
            system[CUT] = True
        home.system_attrs = system
        local.add_trial(home)
        numbers[trial.number] = next_number
        next_number += 1
        added[home.state.name.lower()] += 1
    return {"added": dict(added), "already": already, "unrun": unrun, "study": local}
