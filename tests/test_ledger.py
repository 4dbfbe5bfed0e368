from pathlib import Path

import pytest

from comp.ledger import Ledger


def test_ledger_rows_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "submissions" / "ledger.sqlite"
    led = Ledger(path)
    first = led.add(
        file="a.csv",
        sha256="0" * 64,
        run="r1",
        cv=0.9,
        public=0.8,
        private=0.85,
        message="m",
        target="local",
        status="scored",
    )
    second = led.add(file="b.csv", sha256="1" * 64, target="kaggle", status="pending")
    Ledger(path).update(second, status="complete", public=0.7)
    rows = Ledger(path).rows()
    assert [r["id"] for r in rows] == [first, second]
    assert rows[0]["cv"] == 0.9 and rows[1]["status"] == "complete" and rows[1]["public"] == 0.7
    assert rows[1]["private"] is None


def test_ledger_refuses_unknown_fields_and_targets(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.sqlite")
    with pytest.raises(ValueError, match="unknown ledger fields: bogus"):
        led.add(file="a", sha256="x", target="local", status="s", bogus=1)
    import sqlite3

    with pytest.raises(sqlite3.IntegrityError):
        led.add(file="a", sha256="x", target="elsewhere", status="s")
    assert led.rows() == []
