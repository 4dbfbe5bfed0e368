"""Watching pushed kernels and pulling their outputs back as a local run or study.

Reads the bundles under ``kernels/<name>/`` (their ``comp-kernel.json``) and asks Kaggle for
each kernel's status and output (and, for a tuning kernel, its log, to tell how far its
study got). Writes ``runs/<run>/`` (folds, OOF, ``cv.json``, the kernels' test
probabilities), ``submissions/<run>.csv`` when the kernels made one, or, for tuning
kernels, their trials into ``tune/<study>.db``; the kernel's tracker runs into the local
trackers, and, for a kernel that failed, its log beside its bundle. Downloads go to a
``runs/.pull-*`` folder that is always removed.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from comp.config import load_config
from comp.errors import ConfigError, DataError, KaggleError
from comp.kaggle.client import Kaggle
from comp.kernels.bundle import bundles_of, read_info
from comp.kernels.output import combine_fan_out, import_output
from comp.runs import CLASSES_FILE, read_classes
from comp.track.scores import merge_kernel_tracker

log = logging.getLogger(__name__)

# Kaggle's states after which a kernel changes no more.
FINAL = ("complete", "error", "cancel_acknowledged")
State = tuple[str, str | None]
# Puts one bundle's kernel outputs into a folder: from Kaggle, or from a hand run's folder.
Fetch = Callable[[Path, Path], Any]
# The line comp.tune.study.progress_line writes after each trial, as a kernel's log holds it
# (plain, or inside Kaggle's JSON lines); matched here, where torch is never imported.
PROGRESS = re.compile(
    r"progress: (\d+)/(\d+) trials finished(?:, best macro-F1 ([0-9.]+) \(trial (\d+)\))?"
)


def tune_progress(log: str | None) -> str | None:
    """The last progress line of a tuning kernel's log, in words; None before any trial ended."""
    found = PROGRESS.findall(log or "")
    if not found:
        return None
    done, target, best, number = found[-1]
    tail = f", best macro-F1 {best} (trial {number})" if best else ", none complete yet"
    return f"{done}/{target} trials finished{tail}"


def wait_for(
    kaggle: Kaggle,
    bundles: list[Path],
    *,
    wait: bool = False,
    interval: float = 30.0,
    timeout: float = 12 * 3600.0,
) -> dict[Path, State]:
    """Each bundle's kernel state (and message), echoed when it changes; with ``wait``,
    polled every ``interval`` seconds until every kernel has finished."""
    start = time.monotonic()
    seen: dict[Path, State] = {}
    while True:
        for bundle in bundles:
            ref = read_info(bundle)["ref"]
            state = kaggle.kernel_status(ref)
            if seen.get(bundle) != state:
                msg = f": {state[1]}" if state[1] else ""
                log.info(f"{ref}: {state[0]}{msg}")
            seen[bundle] = state
        done = all(s[0] in FINAL for s in seen.values())
        if done or not wait:
            return seen
        if time.monotonic() - start > timeout:
            raise KaggleError(f"kernels still running after {timeout:.0f}s; check again later")
        time.sleep(interval)


def kernel_status(
    root: Path,
    name: str,
    *,
    kaggle: Kaggle,
    wait: bool = False,
    interval: float = 30.0,
    timeout: float = 12 * 3600.0,
) -> dict[Path, State]:
    """The states of kernel ``name``'s kernels; refuses when one of them failed."""
    states = wait_for(kaggle, bundles_of(root, name), wait=wait, interval=interval, timeout=timeout)
    for bundle, state in states.items():
        info = read_info(bundle)
        if info.get("tune") and state[0] not in ("queued", "new_script"):
            try:
                text = kaggle.kernel_log(info["ref"])
            except KaggleError:
                # The state is what was asked; a log Kaggle will not give yet is no error.
                text = None
            said = tune_progress(text) or "no trial finished yet"
            log.info(f"{info['ref']}: study {info['tune']['study']}, {said}")
    if any(s[0] == "error" for s in states.values()):
        raise KaggleError(
            f"a kernel of {name} failed; `comp kernel pull {name} --force` fetches its log"
        )
    return states


def pull(
    root: Path,
    name: str,
    *,
    kaggle: Kaggle | None,
    outputs: list[Path] | None = None,
    wait: bool = False,
    interval: float = 30.0,
    timeout: float = 12 * 3600.0,
    force: bool = False,
) -> dict[str, Any]:
    """Download the outputs of kernel ``name`` into ``runs/<run>/`` and summarise the run.

    Folds from several kernels (``--folds-per-kernel``) merge into one run; once they
    cover every fold, their test probabilities become the run's submission. With
    ``force``, failed kernels are fetched too, for their logs. ``outputs``: instead of
    Kaggle, the folders where the bundles' scripts were run by hand (their
    ``COMP_KAGGLE_WORKING``), one per kernel in the bundles' order. Returns the run's
    summary with ``run_dir`` and ``submission`` (the kernels' submission file, or None);
    for tuning kernels (``comp kernel push --tune``), ``_pull_study``'s facts.
    """
    # torch only here: comp.train.run imports it, and `comp kernel status` needs none.
    from comp.train.run import summarise

    bundles = bundles_of(root, name)
    fetch: Fetch
    if outputs:
        if len(outputs) != len(bundles):
            where = ", ".join(str(b.relative_to(root)) for b in bundles)
            raise ConfigError(
                f"{name} has {len(bundles)} kernel(s): give --from once for each, in order ({where})"
            )
        source = dict(zip(bundles, outputs, strict=True))
        states: dict[Path, State] = {b: ("complete", None) for b in bundles}

        def fetch(bundle: Path, dest: Path) -> Any:
            return shutil.copytree(source[bundle], dest, dirs_exist_ok=True)

    else:
        if kaggle is None:
            raise ConfigError("pulling from Kaggle needs the client; or give --from DIR")
        client = kaggle
        states = wait_for(client, bundles, wait=wait, interval=interval, timeout=timeout)

        def fetch(bundle: Path, dest: Path) -> Any:
            return client.kernel_output(read_info(bundle)["ref"], dest)

    unfinished = [read_info(b)["ref"] for b, s in states.items() if s[0] != "complete"]
    if unfinished and not force:
        raise KaggleError(
            f"not complete: {', '.join(unfinished)}; wait with --wait, or --force to fetch what is there"
        )
    (root / "runs").mkdir(exist_ok=True)
    if read_info(bundles[0]).get("tune"):
        return _pull_study(root, bundles, fetch=fetch, states=states)
    for bundle in bundles:
        _pull_one(root, bundle, fetch=fetch, complete=states[bundle][0] == "complete")
    info = read_info(bundles[0])
    run_dir = root / "runs" / info["run"]
    if not (run_dir / CLASSES_FILE).exists():
        raise DataError(f"no run was pulled for {name}")
    summary = summarise(run_dir, classes=read_classes(run_dir), n_folds=int(info["n_splits"]))
    scope = (
        "CV"
        if summary["complete"]
        else f"CV over {summary['folds_trained']}/{summary['n_folds']} folds"
    )
    log.info(f"run {run_dir.name}: {scope} macro-F1 {summary['cv_macro_f1']:.4f}")
    if summary["complete"] and len(bundles) > 1:
        combine_fan_out(root, load_config(root), run_dir, n_splits=summary["n_folds"])
    made = root / "submissions" / f"{run_dir.name}.csv"
    return {**summary, "run_dir": run_dir, "submission": made if made.exists() else None}


def _pull_study(
    root: Path, bundles: list[Path], *, fetch: Fetch, states: dict[Path, State]
) -> dict[str, Any]:
    """Merge each tuning kernel's study into ``tune/<study>.db``; a kernel that stopped
    early (fetched with ``--force``) brings what it finished, and its cut trial failed."""
    # Imported here: comp.tune imports torch, which `comp kernel status` never needs.
    from comp.tune import merge
    from comp.tune import study as tuning

    tune = read_info(bundles[0])["tune"]
    name = tune["study"]
    if tune.get("shared"):
        log.info(f"study {name} is on the shared storage the kernels used: nothing to merge")
        return {"study": name, "added": 0, "shared": True}
    added = 0
    for bundle in bundles:
        info = read_info(bundle)
        ref = info["ref"]
        pulled = Path(tempfile.mkdtemp(prefix=".pull-", dir=root / "runs"))
        try:
            fetch(bundle, pulled)
            if states[bundle][0] != "complete":
                for kept in pulled.glob("*.log"):
                    shutil.copy2(kept, bundle / kept.name)
                    log.info(f"{ref}: log saved to {(bundle / kept.name).relative_to(root)}")
            found = pulled / "tune" / f"{name}.db"
            if not found.exists():
                logs = sorted(pulled.glob("*.log"))
                hint = f"; its log is {(bundle / logs[0].name).relative_to(root)}" if logs else ""
                if states[bundle][0] == "complete":
                    raise DataError(f"kernel {ref} left no study file tune/{name}.db{hint}")
                log.info(f"{ref}: no study file among its outputs{hint}")
                continue
            facts = merge.merge_kernel_study(root, name, found, source=ref)
            new = sum(facts["added"].values())
            parts = [f"{v} {k}" for k, v in sorted(facts["added"].items())]
            parts += [f"{facts['already']} already there"] if facts["already"] else []
            parts += [f"{facts['unrun']} queued but not run"] if facts["unrun"] else []
            said = f" ({', '.join(parts)})" if parts else ""
            log.info(f"{ref}: {new} trial(s) into tune/{name}.db{said}")
            added += new
            if new:
                # Only with new trials: a second pull must not log the same trials twice.
                merge_kernel_tracker(root, pulled=pulled / "tune" / "tracker", run=info["run"])
        finally:
            shutil.rmtree(pulled, ignore_errors=True)
    local = merge.open_local(root, name)
    if local is None:
        raise DataError(f"no trials were pulled for study {name}")
    log.info(
        f"study {name}: " + ", ".join(f"{v} {k}" for k, v in sorted(tuning.counts(local).items()))
    )
    done = [
        t
        for t in local.get_trials(deepcopy=False)
        if t.value is not None and t.state.name == "COMPLETE"
    ]
    if done:
        best = max(done, key=lambda t: t.value or 0.0)
        log.info(f"best: trial {best.number}, macro-F1 {best.value:.4f}, {best.params}")
    cut = merge.cut_trials(local)
    if cut:
        log.info(f"{len(cut)} trial(s) cut by a session's end: the next push retries them")
    return {"study": name, "added": added, "shared": False}


def _pull_one(root: Path, bundle: Path, *, fetch: Fetch, complete: bool) -> None:
    """One kernel's output: its folds into the run, or, for a kernel that failed, its logs."""
    ref = read_info(bundle)["ref"]
    pulled = Path(tempfile.mkdtemp(prefix=".pull-", dir=root / "runs"))
    try:
        fetch(bundle, pulled)
        if not complete:
            for kept in pulled.glob("*.log"):
                target = bundle / kept.name
                shutil.copy2(kept, target)
                log.info(f"{ref}: log saved to {target.relative_to(root)}")
            return
        facts = import_output(root, bundle, pulled)
        log.info(f"{ref}: {', '.join(facts['folds']) or 'no folds'} -> runs/{facts['run']}")
        if facts["measured"]:
            own = ", ".join(
                f"{k} {theirs} (run: {mine})" for k, (mine, theirs) in facts["measured"].items()
            )
            log.info(f"{ref}: its machine measured {own}; its folds keep their own config.yaml")
        merge_kernel_tracker(
            root, pulled=pulled / "runs" / facts["run"] / "tracker", run=facts["run"]
        )
    finally:
        shutil.rmtree(pulled, ignore_errors=True)
