"""``comp submit`` and ``comp submissions``: a submission checked, scored or sent, and ledgered.

Reads the submission file and its ``.json`` sidecar (the run and CV ``comp predict``
wrote), the sample submission, the run's lineage, and ``solution.csv`` for local scores
or Kaggle's quota and submission list. Writes rows of ``submissions/ledger.sqlite``,
scores on the run's tracker runs, and ``submissions/leaderboard.png`` when asked.
A file is checked against the sample before anything is uploaded, and a Kaggle upload
whose answer was lost still leaves a row, so a retry is caught as a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from comp.config import Config
from comp.data.competition import load_competition, resolve
from comp.errors import ConfigError, KaggleError, KaggleUncertain, SubmissionError
from comp.files import relative
from comp.kaggle.client import Kaggle
from comp.plots import plot_leaderboard
from comp.submit.ledger import Ledger, compare, ledger_path
from comp.submit.submission import read_submission, score_local, validate_submission
from comp.teach.lineage import lineage_text
from comp.track.scores import track_scores

log = logging.getLogger(__name__)

# The ledger's columns as `comp submissions` shows them (lineage too when a row has one).
SHOWN = ["id", "created_at", "run", "cv", "public", "private", "target", "status", "message"]


def competition_slug(cfg: Config, given: str | None = None) -> str:
    """The Kaggle competition: the one given, else comp.yaml's."""
    slug = given or cfg.competition
    if not slug:
        raise ConfigError(
            "which Kaggle competition? pass --competition SLUG or set `competition:` in comp.yaml"
        )
    return slug


def checked_submission(
    root: Path, cfg: Config, *, file: Path, run: str | None = None, message: str = ""
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """FILE, validated against the sample submission, and the ledger row it will make:
    its content hash, the run that made it (``run``, else its sidecar's), its CV and
    what that run was built from, as it is now."""
    comp = load_competition(root, cfg)
    df = read_submission(file)
    validate_submission(
        df, sample=comp.sample, classes=comp.classes, ids=comp.test_ids(), name=str(file)
    )
    sidecar = file.with_suffix(".json")
    facts = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    record = {
        "file": relative(file, root),
        "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
        "run": run or facts.get("run"),
        "cv": facts.get("cv_macro_f1"),
        "message": message,
    }
    if record["run"] and (root / "runs" / str(record["run"])).is_dir():
        # What the run learnt from (pseudo-labels, a teacher, blend members), as it was then.
        record["lineage"] = lineage_text(root / "runs" / str(record["run"])) or None
    return df, record


def submit_local(
    root: Path,
    cfg: Config,
    *,
    file: Path,
    message: str = "",
    run: str | None = None,
) -> int:
    """Score FILE against the workspace's solution file and ledger it; return its row id."""
    df, record = checked_submission(root, cfg, file=file, run=run, message=message)
    solution = resolve(root, cfg.solution)
    if solution is None or not solution.exists():
        raise ConfigError(
            f"no solution file for local scoring (config key solution: {cfg.solution or 'not set'})"
        )
    scores = score_local(df, solution)
    row = Ledger(ledger_path(root)).add(
        **record,
        public=scores.get("public"),
        private=scores.get("private"),
        target="local",
        status="scored",
    )
    log.info(
        f"submission #{row}: {_cv_text(record['cv'])} | public {scores.get('public', float('nan')):.4f} | private {scores.get('private', float('nan')):.4f}"
    )
    track_scores(root, cfg, run=record["run"], scores=scores)
    return row


def submit_kaggle(
    root: Path,
    cfg: Config,
    *,
    file: Path,
    kaggle: Kaggle,
    message: str = "",
    competition: str | None = None,
    run: str | None = None,
    force: bool = False,
) -> int:
    """Submit FILE to Kaggle and ledger it as pending; return its row id.

    Refuses a file already submitted (unless ``force``) and one that today's quota has
    no room for, before anything is uploaded.
    """
    _, record = checked_submission(root, cfg, file=file, run=run, message=message)
    slug = competition_slug(cfg, competition)
    ledger = Ledger(ledger_path(root))
    earlier = ledger.kaggle_twins(record["sha256"])
    if earlier and not force:
        last = earlier[-1]
        maybe = " (maybe: its upload failed midway)" if last["status"] == "unknown" else ""
        raise SubmissionError(
            f"{file} was already submitted as #{last['id']}{maybe}; check with `comp submissions --refresh`, or use --force to spend a submission on it again"
        )
    limits = kaggle.submission_limits(slug)
    if limits is not None:
        log.info(f"{slug}: {limits['today']} submission(s) made today, {limits['left_today']} left")
        if limits["left_today"] <= 0:
            raise KaggleError(
                f"no submissions left for {slug} {'in total' if limits['limited_by_total'] else 'today (the quota resets at 00:00 UTC)'}; nothing was submitted"
            )
    try:
        ref = kaggle.submit(file, competition=slug, message=message)
    except KaggleUncertain as e:
        # Keep a trace, so a retry is caught as a duplicate and a refresh can settle it.
        row = ledger.add(
            **record, target="kaggle", status="unknown", competition=slug, error=str(e)
        )
        raise KaggleUncertain(f"{e} (ledger row #{row}, status unknown)") from None
    row = ledger.add(
        **record, target="kaggle", status="pending", competition=slug, kaggle_ref=str(ref)
    )
    log.info(
        f"submission #{row} (Kaggle ref {ref}) to {slug}: {_cv_text(record['cv'])}; scores follow with `comp submissions --refresh`"
    )
    return row


def refresh_scores(
    root: Path,
    cfg: Config,
    *,
    kaggle: Kaggle,
    competition: str | None = None,
) -> dict[str, Any]:
    """Fill the ledger's Kaggle rows from Kaggle's list (status, public and private
    score) and add submissions made elsewhere; new scores go to their runs' trackers.
    Returns the ``competition``, the number of ``remote`` submissions, rows ``updated``
    and ``added``."""
    slug = competition_slug(cfg, competition)
    ledger = Ledger(ledger_path(root))
    remote = kaggle.submissions(slug)
    before = {r["id"]: (r["public"], r["private"]) for r in ledger.rows()}
    updated, added = ledger.merge_kaggle(slug, remote)
    for r in ledger.rows():
        scores = (r["public"], r["private"])
        if r["run"] and r["public"] is not None and before.get(r["id"]) != scores:
            track_scores(
                root,
                cfg,
                run=r["run"],
                scores={"public": scores[0], "private": scores[1]},
            )
    log.info(
        f"{slug}: {len(remote)} submission(s) on Kaggle; {updated} updated, {added} new in the ledger"
    )
    return {"competition": slug, "remote": len(remote), "updated": updated, "added": added}


def show_ledger(root: Path, *, plot: bool = False) -> list[dict[str, Any]]:
    """Show the ledger with how CV predicted the leaderboard; with ``plot``, save
    ``submissions/leaderboard.png``. Returns the ledger's rows."""
    rows = Ledger(ledger_path(root)).rows()
    if not rows:
        log.info("no submissions yet; make one with `comp submit FILE` (or --local)")
        return rows
    log.info(ledger_text(rows))
    if plot:
        out = plot_leaderboard(rows, root / "submissions" / "leaderboard.png")
        log.info(
            f"plot: {out.relative_to(root)}"
            if out
            else "nothing to plot: no submission has both CV and a score"
        )
    return rows


def ledger_text(rows: list[dict[str, Any]]) -> str:
    """The ledger as a table, the rank correlations of CV with the leaderboard, and the
    submission that scored best on private (the one that would have won)."""
    columns = SHOWN + (["lineage"] if any(r.get("lineage") for r in rows) else [])
    # Cells formatted here, not by pandas: a column that is all None would print "None".
    cells = [[_cell(r[c]) for c in columns] for r in rows]
    lines = [pd.DataFrame(cells, columns=columns).to_string(index=False)]
    facts = compare(rows)
    for board in ("public", "private"):
        rho = facts.get(f"rank_corr_{board}")
        if f"n_{board}" in facts:
            shown = "undefined (constant scores)" if rho is None else f"{rho:+.3f}"
            lines.append(
                f"rank correlation CV vs {board}: {shown} over {facts[f'n_{board}']} submissions"
            )
    best = {k: facts.get(f"best_{k}") for k in ("cv", "public", "private")}
    if best["private"]:
        won = best["private"]
        lines.append(
            f"best on private: #{won['id']} ({won['private']:.4f}, public {_fmt(won['public'])}, CV {_fmt(won['cv'])})"
        )
        if best["public"] and best["public"]["id"] != won["id"]:
            lines.append(
                f"  the best public, #{best['public']['id']}, scored {_fmt(best['public']['private'])} on private: a shake-up"
            )
    elif best["public"]:
        lines.append("private scores appear when the competition ends; refresh then")
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _cell(v: Any) -> str:
    return _fmt(v) if v is None or isinstance(v, float) else str(v)


def _cv_text(cv: float | None) -> str:
    return f"CV macro-F1 {cv:.4f}" if cv is not None else "CV unknown"
