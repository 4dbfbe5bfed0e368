"""The real kaggle client against the loopback stand-in: submit, refresh, download, retries, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from comp.cli import cli
from comp.errors import KaggleError
from comp.kaggle.client import Kaggle, find_credentials
from comp.submit.ledger import Ledger, ledger_path
from comp.workspace.init import init_workspace, unpack
from tests.conftest import TINY, Said, make_kaggle
from tests.kaggle_standin import GOOD_TOKEN, KaggleStandIn

SLUG = "shapes"


@pytest.fixture
def standin(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KaggleStandIn]:
    with KaggleStandIn() as server:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("KAGGLE_API_TOKEN", GOOD_TOKEN)
        server.add_competition(SLUG, make_kaggle(tmp_path / "kaggle-side"))
        yield server


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A workspace around the same competition the stand-in serves."""
    root = tmp_path / "ws"
    init_workspace(root, tmp_path / "kaggle-side", overrides={**TINY, "competition": SLUG})
    return root


def submission(ws: Path, name: str, *, correct: int, cv: float | None) -> Path:
    """A submission with the first ``correct`` solution rows right, the rest wrong."""
    sol = pd.read_csv(ws.parent / "kaggle-side" / "solution.csv", dtype=str)
    labels = sorted(set(sol["label"]))
    wrong = [labels[(labels.index(v) + 1) % len(labels)] for v in sol["label"]]
    sol["label"] = [
        v if i < correct else w for i, (v, w) in enumerate(zip(sol["label"], wrong, strict=True))
    ]
    path = ws / "submissions" / f"{name}.csv"
    sol[["Id", "label"]].to_csv(path, index=False)
    if cv is not None:
        path.with_suffix(".json").write_text(json.dumps({"run": name, "cv_macro_f1": cv}))
    return path


def comp(ws: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["-w", str(ws), *args])
    return result.exit_code, result.output


def test_submit_then_refresh_shows_cv_public_and_private(standin: KaggleStandIn, ws: Path) -> None:
    for name, correct, cv in (("good", 9, 0.95), ("half", 5, 0.70), ("bad", 1, 0.40)):
        code, out = comp(
            ws, "submit", str(submission(ws, name, correct=correct, cv=cv)), "-m", name
        )
        assert code == 0, out
        assert "left" in out and "Kaggle ref" in out
    rows = Ledger(ledger_path(ws)).rows()
    assert [r["status"] for r in rows] == ["pending"] * 3 and all(r["kaggle_ref"] for r in rows)

    code, out = comp(ws, "submissions", "--refresh")  # Kaggle is still scoring
    assert code == 0, out
    code, out = comp(ws, "submissions", "--refresh")
    assert code == 0, out
    assert "private scores appear when the competition ends" in out
    standin.competitions[SLUG].ended = True
    code, out = comp(ws, "submissions", "--refresh", "--plot")
    assert code == 0, out
    rows = Ledger(ledger_path(ws)).rows()
    assert all(r["status"] == "complete" for r in rows)
    assert all(r["public"] is not None and r["private"] is not None for r in rows)
    assert rows[0]["public"] > rows[2]["public"]
    assert "rank correlation CV vs public: +1.000 over 3 submissions" in out
    assert "best on private: #1" in out
    assert (ws / "submissions" / "leaderboard.png").stat().st_size > 1000
    # The listing was paged through, with the ledger's own rows matched, not duplicated.
    assert len(rows) == 3


def test_submissions_made_on_the_website_join_the_ledger(standin: KaggleStandIn, ws: Path) -> None:
    k = Kaggle(backoff=0)
    k.submit(submission(ws, "web", correct=9, cv=None), competition=SLUG, message="from the web")
    code, out = comp(ws, "submissions", "--refresh")
    assert code == 0, out
    (row,) = Ledger(ledger_path(ws)).rows()
    assert row["message"] == "from the web" and row["target"] == "kaggle" and row["cv"] is None


def test_listing_pages_through_every_submission(standin: KaggleStandIn, ws: Path) -> None:
    standin.competitions[SLUG].daily_limit = 30
    path = submission(ws, "x", correct=9, cv=None)
    k = Kaggle(backoff=0)
    for i in range(25):
        k.submit(path, competition=SLUG, message=f"s{i}")
    rows = k.submissions(SLUG, page_size=10)
    assert len(rows) == 25 and len({r["ref"] for r in rows}) == 25
    assert standin.calls.count("ListSubmissions") == 3


def test_rate_limit_and_server_errors_are_retried(
    standin: KaggleStandIn, ws: Path, said: Said
) -> None:
    k = Kaggle(backoff=0)
    standin.fail("ListSubmissions", 429, times=2)
    standin.fail("GetSubmissionLimits", 503, retry_after=None)
    assert k.submissions(SLUG) == []
    assert k.submission_limits(SLUG) == {
        "today": 0,
        "total": 0,
        "left_today": 5,
        "limited_by_total": False,
    }
    assert standin.calls.count("ListSubmissions") == 3
    assert any("HTTP 429" in m and "retry 1/4" in m for m in said)

    standin.fail("ListSubmissions", 429, times=5)
    with pytest.raises(KaggleError, match=r"rate-limiting .* after 5 tries"):
        k.submissions(SLUG)


def test_a_submission_is_not_repeated_after_a_500(standin: KaggleStandIn, ws: Path) -> None:
    """The server may have recorded it; trying again could spend a second submission."""
    standin.fail("CreateSubmission", 500)
    with pytest.raises(KaggleError, match=r"HTTP 500"):
        Kaggle(backoff=0).submit(
            submission(ws, "x", correct=9, cv=None), competition=SLUG, message=""
        )
    assert standin.calls.count("CreateSubmission") == 1


def test_a_rate_limited_submission_is_retried(standin: KaggleStandIn, ws: Path) -> None:
    standin.fail("CreateSubmission", 429, times=2)
    code, out = comp(ws, "submit", str(submission(ws, "x", correct=9, cv=0.9)), "-m", "x")
    assert code == 0, out
    assert "HTTP 429" in out
    assert len(standin.competitions[SLUG].submissions) == 1


def test_timeouts_are_retried_then_explained(standin: KaggleStandIn) -> None:
    k = Kaggle(backoff=0, timeout=1.0, tries=2)
    standin.slow("ListSubmissions", 3.0)
    assert k.submissions(SLUG) == []
    standin.slow("ListSubmissions", 3.0, times=2)
    with pytest.raises(KaggleError, match=r"did not answer .* within 1s after 2 tries"):
        k.submissions(SLUG)


def test_bad_token_gives_a_clear_error(
    standin: KaggleStandIn, ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_not-a-real-token-9f8e7d")
    code, out = comp(ws, "submissions", "--refresh")
    assert code == 1
    assert "Kaggle rejected the credentials from KAGGLE_API_TOKEN" in out
    assert "KGAT_not-a-real-token-9f8e7d" not in out
    assert len(out.strip().splitlines()) == 1, out


def test_bad_legacy_key_gives_a_clear_error(
    standin: KaggleStandIn, ws: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    config = isolated / ".kaggle" / "kaggle.json"
    config.write_text(json.dumps({"username": "tester", "key": "wrong-key-123"}))
    config.chmod(0o600)
    code, out = comp(ws, "submit", str(submission(ws, "x", correct=9, cv=None)))
    assert code == 1
    assert "rejected the credentials from" in out and "kaggle.json (HTTP 401)" in out
    assert "wrong-key-123" not in out
    config.write_text(json.dumps({"username": "tester", "key": "standin-legacy-key"}))
    code, out = comp(ws, "submit", str(submission(ws, "x", correct=9, cv=None)))
    assert code == 0, out


def test_no_credentials_and_loose_permissions_are_reported(isolated: Path) -> None:
    assert find_credentials() == []
    with pytest.raises(KaggleError, match="no Kaggle credentials found"):
        Kaggle().sign_in()
    config = isolated / ".kaggle" / "kaggle.json"
    config.write_text(json.dumps({"username": "someone", "key": "k"}))
    config.chmod(0o644)
    from comp.kaggle.client import loose_permissions

    assert [c.username for c in find_credentials()] == ["someone"]
    assert loose_permissions() == [config]


def test_credentials_are_found_as_the_client_finds_them(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A username in kaggle.json with KAGGLE_KEY in the environment is one set, as for the client."""
    (isolated / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "someone"}))
    monkeypatch.setenv("KAGGLE_KEY", "k")
    (found,) = find_credentials()
    assert found.kind == "key" and found.username == "someone" and "KAGGLE_KEY" in found.source
    (isolated / ".kaggle" / "credentials.json").write_text("{}")
    assert [c.kind for c in find_credentials()] == ["key", "oauth"]


def test_a_lost_reply_to_a_submission_is_recorded_not_repeated(
    standin: KaggleStandIn, ws: Path
) -> None:
    """Kaggle took the submission but the answer never came: no second try, a row to settle."""
    path = str(submission(ws, "x", correct=9, cv=0.9))
    standin.drop("CreateSubmission")
    code, out = comp(ws, "submit", path, "-m", "lost reply")
    assert code == 1
    assert "may have acted on it anyway" in out and "status unknown" in out
    assert len(standin.competitions[SLUG].submissions) == 1
    code, out = comp(ws, "submit", path, "-m", "lost reply")
    assert code == 1 and "already submitted as #1 (maybe" in out
    comp(ws, "submissions", "--refresh")
    code, out = comp(ws, "submissions", "--refresh")
    (row,) = Ledger(ledger_path(ws)).rows()
    assert row["status"] == "complete" and row["kaggle_ref"] and row["public"] == 1.0


def test_a_pushed_kernel_is_not_pushed_twice_after_a_500(standin: KaggleStandIn, ws: Path) -> None:
    assert comp(ws, "folds")[0] == 0
    standin.fail("SaveKernel", 500)
    code, out = comp(ws, "kernel", "push", "--name", "once")
    assert code == 1 and "HTTP 500" in out and "comp kernel status" in out
    assert standin.calls.count("SaveKernel") == 1


def test_submission_with_other_ids_is_refused_before_any_upload(
    standin: KaggleStandIn, ws: Path
) -> None:
    path = submission(ws, "x", correct=9, cv=None)
    df = pd.read_csv(path, dtype=str)
    df.loc[0, "Id"] = "not-a-test-id"
    df.to_csv(path, index=False)
    code, out = comp(ws, "submit", str(path), "-m", "oops")
    assert code == 1
    assert "not in the sample submission" in out
    assert standin.calls == []
    assert Ledger(ledger_path(ws)).rows() == []


def test_no_quota_left_submits_nothing(standin: KaggleStandIn, ws: Path) -> None:
    standin.competitions[SLUG].daily_limit = 0
    code, out = comp(ws, "submit", str(submission(ws, "x", correct=9, cv=None)))
    assert code == 1
    assert "no submissions left" in out
    assert "StartSubmissionUpload" not in standin.calls


def test_the_same_file_twice_needs_force(standin: KaggleStandIn, ws: Path) -> None:
    path = str(submission(ws, "x", correct=9, cv=None))
    assert comp(ws, "submit", path)[0] == 0
    code, out = comp(ws, "submit", path)
    assert code == 1 and "already submitted as #1" in out
    assert comp(ws, "submit", path, "--force")[0] == 0


def test_unknown_competition_is_explained(standin: KaggleStandIn, ws: Path) -> None:
    code, out = comp(ws, "submissions", "--refresh", "--competition", "no-such-comp")
    assert code == 1
    assert "not found on Kaggle (HTTP 404)" in out


def test_download_makes_a_workspace(standin: KaggleStandIn, tmp_path: Path) -> None:
    target = tmp_path / "fresh"
    result = CliRunner().invoke(cli, ["download", SLUG, str(target), "--img-size", "16"])
    assert result.exit_code == 0, result.output
    assert (target / "data" / "train_labels.csv").exists()
    assert "competition: shapes" in (target / "comp.yaml").read_text()
    assert not list(target.glob(".download-*"))
    code, out = comp(target, "folds")
    assert code == 0, out
    again = CliRunner().invoke(cli, ["download", SLUG, str(target)])
    assert again.exit_code == 1 and "exists" in again.output


def test_unpack_refuses_paths_outside_the_folder(tmp_path: Path) -> None:
    import zipfile

    from comp.errors import DataError

    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../escape.txt", "x")
    with pytest.raises(DataError, match="outside the folder"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_nested_archives_are_unpacked(tmp_path: Path) -> None:
    import io
    import zipfile

    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("train/a.png", "png")
    archive = tmp_path / "comp.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("train.zip", inner.getvalue())
        z.writestr("train_labels.csv", "Id,label\na,x\n")
    unpack(archive, tmp_path / "out")
    assert (tmp_path / "out" / "train" / "a.png").exists()
    assert not (tmp_path / "out" / "train.zip").exists()
