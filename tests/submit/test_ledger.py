import time
from pathlib import Path

import pytest

from comp.submit.ledger import Ledger


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


# --- two processes on one ledger: `comp submit` and `comp submissions --refresh` at once ---

N_SUBMITS = 60


def _remote(refs: int) -> list[dict[str, object]]:
    """Kaggle's list of the first ``refs`` submissions, newest first, all scored."""
    return [
        {
            "ref": f"ref{i}",
            "date": None,
            "file_name": f"k{i}.csv",
            "description": f"kaggle {i}",
            "status": "complete",
            "public": 0.5,
            "private": None,
            "error": None,
        }
        for i in reversed(range(refs))
    ]


def _submitter(path: str, start: object, submitted: object, errors: object) -> None:
    """What `comp submit` does: a local row, then a Kaggle submission and its row."""
    try:
        start.wait()  # type: ignore[attr-defined]
        for i in range(N_SUBMITS):
            Ledger(Path(path)).add(
                file=f"local{i}.csv", sha256=f"{i:064x}", target="local", status="scored", cv=0.5
            )
            # Kaggle has the submission a moment before its answer arrives and the row is written.
            submitted.value = i + 1  # type: ignore[attr-defined]
            time.sleep(0.01)
            Ledger(Path(path)).add(
                file=f"k{i}.csv",
                sha256=f"{i:064x}",
                run=f"run{i}",
                cv=0.5,
                message=f"kaggle {i}",
                target="kaggle",
                status="pending",
                competition="c",
                kaggle_ref=f"ref{i}",
            )
    except BaseException as e:
        errors.put(f"submitter: {type(e).__name__}: {e}")  # type: ignore[attr-defined]


def _refresher(path: str, start: object, submitted: object, errors: object) -> None:
    """What `comp submissions --refresh` does, over and over."""
    try:
        start.wait()  # type: ignore[attr-defined]
        done = 0
        while done < N_SUBMITS:
            done = submitted.value  # type: ignore[attr-defined]
            ledger = Ledger(Path(path))
            ledger.merge_kaggle("c", _remote(done))
            rows = ledger.rows()
            if rows:
                ledger.update(rows[-1]["id"], error=None)
            time.sleep(0.002)
    except BaseException as e:
        errors.put(f"refresher: {type(e).__name__}: {e}")  # type: ignore[attr-defined]


def test_concurrent_submit_and_refresh_lose_nothing(tmp_path: Path) -> None:
    import multiprocessing
    import sqlite3

    ctx = multiprocessing.get_context("spawn")
    path = str(tmp_path / "submissions" / "ledger.sqlite")
    start, submitted, errors = ctx.Event(), ctx.Value("i", 0), ctx.Queue()
    procs = [
        ctx.Process(target=f, args=(path, start, submitted, errors))
        for f in (_submitter, _refresher)
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == []  # no "database is locked", nothing else

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = Ledger(Path(path)).rows()
    local = [r for r in rows if r["target"] == "local"]
    assert sorted(r["file"] for r in local) == sorted(f"local{i}.csv" for i in range(N_SUBMITS))
    kaggle = [r for r in rows if r["target"] == "kaggle"]
    # Every Kaggle submission once: the refresh that saw it first and the submit share one row.
    assert sorted(r["kaggle_ref"] for r in kaggle) == sorted(f"ref{i}" for i in range(N_SUBMITS))
    assert all(r["run"] == f"run{r['kaggle_ref'][3:]}" for r in kaggle)
    assert len({r["id"] for r in rows}) == len(rows) == 2 * N_SUBMITS


def test_a_submit_after_a_refresh_that_saw_it_completes_that_row(tmp_path: Path) -> None:
    """Kaggle took the submission, a refresh added it as made elsewhere, then its row came."""
    led = Ledger(tmp_path / "ledger.sqlite")
    assert led.merge_kaggle("c", _remote(1)) == (0, 1)
    row = led.add(
        file="k0.csv",
        sha256="f" * 64,
        run="r",
        cv=0.7,
        message="kaggle 0",
        target="kaggle",
        status="pending",
        competition="c",
        kaggle_ref="ref0",
    )
    (only,) = led.rows()
    assert only["id"] == row and only["run"] == "r" and only["cv"] == 0.7
    assert only["sha256"] == "f" * 64 and only["file"] == "k0.csv"
    # What the refresh learnt stays: the score, the status.
    assert only["status"] == "complete" and only["public"] == 0.5
    # Another competition's ref of the same number is another submission.
    led.add(
        file="x", sha256="", target="kaggle", status="pending", competition="d", kaggle_ref="ref0"
    )
    assert len(led.rows()) == 2


def test_reading_an_absent_ledger_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "submissions" / "ledger.sqlite"
    assert Ledger(path).rows() == []
    assert not path.parent.exists()
    Ledger(path).add(file="a", sha256="x", target="local", status="scored")
    assert len(Ledger(path).rows()) == 1
