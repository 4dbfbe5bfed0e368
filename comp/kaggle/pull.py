"""Watching pushed kernels and pulling their outputs back as a local run.

Reads the bundles under ``kernels/<name>/`` (their ``comp-kernel.json``) and asks Kaggle for
each kernel's status and output. Writes ``runs/<run>/`` (folds, OOF, ``cv.json``, the
kernels' test probabilities), ``submissions/<run>.csv`` when the kernels made one, the
kernel's tracker runs into the local trackers, and, for a kernel that failed, its log
beside its bundle. Downloads go to a ``runs/.pull-*`` folder that is always removed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from comp.config import load_config
from comp.errors import DataError, KaggleError
from comp.files import Echo
from comp.kaggle.client import Kaggle
from comp.kaggle.kernels import bundles_of, combine_fan_out, import_output, read_info
from comp.runs import CLASSES_FILE, read_classes
from comp.track.scores import merge_kernel_tracker

# Kaggle's states after which a kernel changes no more.
FINAL = ("complete", "error", "cancel_acknowledged")
State = tuple[str, str | None]


def wait_for(
    kaggle: Kaggle,
    bundles: list[Path],
    *,
    wait: bool = False,
    interval: float = 30.0,
    timeout: float = 12 * 3600.0,
    echo: Echo = print,
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
                echo(f"{ref}: {state[0]}{msg}")
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
    echo: Echo = print,
) -> dict[Path, State]:
    """The states of kernel ``name``'s kernels; refuses when one of them failed."""
    states = wait_for(
        kaggle, bundles_of(root, name), wait=wait, interval=interval, timeout=timeout, echo=echo
    )
    if any(s[0] == "error" for s in states.values()):
        raise KaggleError(
            f"a kernel of {name} failed; `comp kernel pull {name} --force` fetches its log"
        )
    return states


def pull(
    root: Path,
    name: str,
    *,
    kaggle: Kaggle,
    wait: bool = False,
    interval: float = 30.0,
    timeout: float = 12 * 3600.0,
    force: bool = False,
    echo: Echo = print,
) -> dict[str, Any]:
    """Download the outputs of kernel ``name`` into ``runs/<run>/`` and summarise the run.

    Folds from several kernels (``--folds-per-kernel``) merge into one run; once they
    cover every fold, their test probabilities become the run's submission. With
    ``force``, failed kernels are fetched too, for their logs. Returns the run's summary
    with ``run_dir`` and ``submission`` (the kernels' submission file, or None).
    """
    # torch only here: comp.train.run imports it, and `comp kernel status` needs none.
    from comp.train.run import summarise

    bundles = bundles_of(root, name)
    states = wait_for(kaggle, bundles, wait=wait, interval=interval, timeout=timeout, echo=echo)
    unfinished = [read_info(b)["ref"] for b, s in states.items() if s[0] != "complete"]
    if unfinished and not force:
        raise KaggleError(
            f"not complete: {', '.join(unfinished)}; wait with --wait, or --force to fetch what is there"
        )
    (root / "runs").mkdir(exist_ok=True)
    for bundle in bundles:
        _pull_one(root, bundle, kaggle=kaggle, complete=states[bundle][0] == "complete", echo=echo)
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
    echo(f"run {run_dir.name}: {scope} macro-F1 {summary['cv_macro_f1']:.4f}")
    if summary["complete"] and len(bundles) > 1:
        combine_fan_out(root, load_config(root), run_dir, n_splits=summary["n_folds"])
    made = root / "submissions" / f"{run_dir.name}.csv"
    return {**summary, "run_dir": run_dir, "submission": made if made.exists() else None}


def _pull_one(root: Path, bundle: Path, *, kaggle: Kaggle, complete: bool, echo: Echo) -> None:
    """One kernel's output: its folds into the run, or, for a kernel that failed, its logs."""
    ref = read_info(bundle)["ref"]
    pulled = Path(tempfile.mkdtemp(prefix=".pull-", dir=root / "runs"))
    try:
        kaggle.kernel_output(ref, pulled)
        if not complete:
            for log in pulled.glob("*.log"):
                target = bundle / log.name
                shutil.copy2(log, target)
                echo(f"{ref}: log saved to {target.relative_to(root)}")
            return
        facts = import_output(root, bundle, pulled)
        echo(f"{ref}: {', '.join(facts['folds']) or 'no folds'} -> runs/{facts['run']}")
        merge_kernel_tracker(
            root, pulled=pulled / "runs" / facts["run"] / "tracker", run=facts["run"], echo=echo
        )
    finally:
        shutil.rmtree(pulled, ignore_errors=True)
