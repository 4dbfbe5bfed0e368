"""The submissions ledger: every submission with its CV, public and private score, side by side.

Reads and writes ``submissions/ledger.sqlite``. SQLite gives transactions, so a
kill or two concurrent ``comp`` processes never leave a half-written row. Rows
come from ``comp submit --local`` today; Kaggle submissions use the same table,
with ``target='kaggle'``, a ``kaggle_ref`` and a ``status`` that refreshes fill in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
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
    error       TEXT
);
"""
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
)


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A generous busy timeout lets a concurrent writer wait instead of failing.
        conn = sqlite3.connect(self.path, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    def add(self, **fields: Any) -> int:
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown ledger fields: {', '.join(sorted(unknown))}")
        fields.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        keys = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        with self._connect() as conn:
            cur = conn.execute(
                f"INSERT INTO submissions ({keys}) VALUES ({marks})", tuple(fields.values())
            )
            return int(cur.lastrowid or 0)

    def update(self, row_id: int, **fields: Any) -> None:
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown ledger fields: {', '.join(sorted(unknown))}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as conn:
            conn.execute(f"UPDATE submissions SET {sets} WHERE id = ?", (*fields.values(), row_id))

    def rows(self) -> list[dict[str, Any]]:
        with self._connect() as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM submissions ORDER BY id")]


def ledger_path(root: Path) -> Path:
    return root / "submissions" / "ledger.sqlite"
