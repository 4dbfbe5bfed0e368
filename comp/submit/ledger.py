"""The submissions ledger: every submission with its CV, public and private score, side by side.

Reads and writes ``submissions/ledger.sqlite``. SQLite gives transactions, so a
kill or two concurrent ``comp`` processes never leave a half-written row. Rows
come from ``comp submit --local`` (scored at once) and ``comp submit`` to Kaggle
(``target='kaggle'``, a ``kaggle_ref``, and a ``status`` and scores that
``comp submissions --refresh`` fills in).
"""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS submissions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at  TEXT NOT NULL,
    file        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    run         TEXT,
    cv          REAL,
    public      REAL,
    private     REAL,
    message     TEXT NOT NULL DEFAULT '',
    target      TEXT NOT NULL CHECK (target IN ('local', 'kaggle')),
    status      TEXT NOT NULL,
    competition TEXT,
    kaggle_ref  TEXT,
    error       TEXT,
    lineage     TEXT
);
"""
# Columns added since version 1, for ledgers made before them.
ADDED = {"lineage": "TEXT"}
COLUMNS = (
    "id",
    "created_at",
    "file",
    "sha256",
    "run",
    "cv",
    "public",
    "private",
    "message",
    "target",
    "status",
    "competition",
    "kaggle_ref",
    "error",
    "lineage",
)
# What `comp submit` knows about its submission and Kaggle's list does not.
OWN_FIELDS = ("file", "sha256", "run", "cv", "message", "lineage")


class Ledger:
    def __init__(self, path: Path):
        # Nothing is written until the first row: reading an absent ledger finds no rows.
        self.path = Path(path)

    @contextmanager
    def _connect(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection; with ``write``, inside one BEGIN IMMEDIATE transaction.

        IMMEDIATE takes the write lock before the first read, so a read-then-write (a
        refresh matching Kaggle's list to its rows, a submit finding the row a refresh
        made) never interleaves with another process's write, and a second writer
        waits (the busy timeout) instead of failing with "database is locked", as
        it can when it would have to upgrade a read lock.
        """
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # A generous busy timeout lets a concurrent writer wait instead of failing.
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            if not write:
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(SCHEMA)
                have = {r["name"] for r in conn.execute("PRAGMA table_info(submissions)")}
                for column, kind in ADDED.items():
                    if column not in have:
                        conn.execute(f"ALTER TABLE submissions ADD COLUMN {column} {kind}")
                if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def add(self, **fields: Any) -> int:
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown ledger fields: {', '.join(sorted(unknown))}")
        fields.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        keys = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        with self._connect(write=True) as conn:
            ref = fields.get("kaggle_ref")
            if fields.get("target") == "kaggle" and ref is not None:
                # A refresh that ran between Kaggle taking the submission and this row may
                # have added it as made elsewhere: complete that row rather than add a twin.
                twin = conn.execute(
                    "SELECT id FROM submissions WHERE target = 'kaggle' AND kaggle_ref = ? "
                    "AND competition IS ? ORDER BY id LIMIT 1",
                    (ref, fields.get("competition")),
                ).fetchone()
                if twin is not None:
                    own = {k: v for k, v in fields.items() if k in OWN_FIELDS}
                    sets = ", ".join(f"{k} = ?" for k in own)
                    conn.execute(
                        f"UPDATE submissions SET {sets} WHERE id = ?", (*own.values(), twin["id"])
                    )
                    return int(twin["id"])
            cur = conn.execute(
                f"INSERT INTO submissions ({keys}) VALUES ({marks})", tuple(fields.values())
            )
            return int(cur.lastrowid or 0)

    def update(self, row_id: int, **fields: Any) -> None:
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown ledger fields: {', '.join(sorted(unknown))}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._connect(write=True) as conn:
            conn.execute(f"UPDATE submissions SET {sets} WHERE id = ?", (*fields.values(), row_id))

    def kaggle_twins(self, sha256: str) -> list[dict[str, Any]]:
        """Earlier Kaggle submissions of the same file (by content), oldest first. Those
        that ended in error are left out: sending such a file again repeats nothing."""
        return [
            r
            for r in self.rows()
            if r["target"] == "kaggle" and r["sha256"] == sha256 and r["status"] != "error"
        ]

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self._connect() as conn:
            made = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'submissions'"
            if conn.execute(made).fetchone() is None:
                return []
            rows = [dict(r) for r in conn.execute("SELECT * FROM submissions ORDER BY id")]
        # A ledger from before a column was added reads as if the column were empty.
        return [dict.fromkeys(COLUMNS) | r for r in rows]

    def merge_kaggle(self, competition: str, remote: list[dict[str, Any]]) -> tuple[int, int]:
        """Fill status and scores of Kaggle rows from Kaggle's list; add submissions made elsewhere.

        Returns (rows updated, rows added). One transaction: a concurrent reader
        sees the ledger before or after the refresh, never half of it.
        """
        updated = added = 0
        with self._connect(write=True) as conn:
            known = {
                r["kaggle_ref"]: r["id"]
                for r in conn.execute(
                    "SELECT id, kaggle_ref FROM submissions WHERE target = 'kaggle' AND kaggle_ref IS NOT NULL"
                )
            }
            # Oldest first, so rows lost in the same way are matched in the order they were made.
            for s in reversed(remote):
                facts: dict[str, Any] = {
                    "status": s["status"],
                    "public": s["public"],
                    "private": s["private"],
                    "error": s["error"],
                }
                if s["ref"] not in known:
                    # A submit whose answer was lost left a row without a ref: this is it.
                    lost = conn.execute(
                        "SELECT id FROM submissions WHERE target = 'kaggle' AND status = 'unknown' "
                        "AND kaggle_ref IS NULL AND competition = ? AND message = ? ORDER BY id LIMIT 1",
                        (competition, s["description"]),
                    ).fetchone()
                    if lost is not None:
                        known[s["ref"]] = lost["id"]
                        facts["kaggle_ref"] = s["ref"]
                if s["ref"] in known:
                    sets = ", ".join(f"{k} = ?" for k in facts)
                    conn.execute(
                        f"UPDATE submissions SET {sets} WHERE id = ?",
                        (*facts.values(), known[s["ref"]]),
                    )
                    updated += 1
                else:
                    row = {
                        "created_at": s["date"] or datetime.now(timezone.utc).isoformat(),
                        "file": s["file_name"] or "",
                        "sha256": "",
                        "message": s["description"],
                        "target": "kaggle",
                        "competition": competition,
                        "kaggle_ref": s["ref"],
                        **facts,
                    }
                    conn.execute(
                        f"INSERT INTO submissions ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                        tuple(row.values()),
                    )
                    added += 1
        return updated, added


def compare(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How well CV predicted the leaderboard, and which submission would have won on private."""
    scored = [r for r in rows if r["status"] not in ("error",)]
    facts: dict[str, Any] = {}
    for board in ("public", "private"):
        pairs = [
            (r["cv"], r[board]) for r in scored if r["cv"] is not None and r[board] is not None
        ]
        if len(pairs) >= 2:
            cv, lb = zip(*pairs, strict=True)
            with warnings.catch_warnings():
                # Constant scores: the correlation is undefined, and said so below.
                warnings.simplefilter("ignore")
                rho = pd.Series(cv).corr(pd.Series(lb), method="spearman")
            facts[f"rank_corr_{board}"] = None if pd.isna(rho) else round(float(rho), 4)
            facts[f"n_{board}"] = len(pairs)
    for key in ("cv", "public", "private"):
        have = [r for r in scored if r[key] is not None]
        if have:
            facts[f"best_{key}"] = max(have, key=lambda r: (r[key], -r["id"]))
    return facts


def ledger_path(root: Path) -> Path:
    return root / "submissions" / "ledger.sqlite"
