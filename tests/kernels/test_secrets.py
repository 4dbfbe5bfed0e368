"""No secret leaks: a planted Kaggle token and key appear in no output and no file of a full run.

The whole loop runs against the Kaggle stand-in with recognisable credentials in
the environment (KAGGLE_API_TOKEN) and in ~/.kaggle/kaggle.json: folds, a
one-epoch training run, predict, a Kaggle and a local submission, refreshes,
kernel pushes (dry runs, a tuning one too, and a real one), a code dataset, and failing calls
whose error messages mention the credentials' source. Then every byte the
commands printed, every file under the workspace and the competition folder
(runs, submissions, the ledger, kernel bundles, caches) and everything the
stand-in was sent in a kernel is searched for the secrets.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from comp.cli import cli
from comp.workspace.init import init_workspace
from tests.conftest import TINY, make_kaggle
from tests.kaggle_standin import USERNAME, KaggleStandIn

SLUG = "shapes"
TOKEN = "KGAT_planted_secret_0123456789abcdef"
KEY = "planted_legacy_key_5eb63bbbe01eeed0"
BAD_TOKEN = "KGAT_planted_revoked_fedcba9876543210"
SECRETS = [
    TOKEN,
    KEY,
    BAD_TOKEN,
    base64.b64encode(f"{USERNAME}:{KEY}".encode()).decode(),  # as HTTP Basic auth sends it
]


@pytest.fixture
def planted(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[KaggleStandIn, Path]]:
    """The stand-in accepting the planted token and key, both of them where the client looks."""
    data = make_kaggle(tmp_path / "data", n_per_class=6, n_test=6)
    ws = tmp_path / "ws"
    # Every tracker too: their stores lie under the workspace, and are searched with it.
    init_workspace(
        ws, data, overrides={**TINY, "competition": SLUG, "tracker": "mlflow,wandb,tensorboard"}
    )
    config = isolated / ".kaggle" / "kaggle.json"
    config.write_text(json.dumps({"username": USERNAME, "key": KEY}))
    config.chmod(0o600)
    with KaggleStandIn() as server:
        server.tokens = {TOKEN: USERNAME}
        server.keys = {USERNAME: KEY}
        server.add_competition(SLUG, data)
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
        yield server, ws


def leaks(blob: bytes | str) -> list[str]:
    data = blob.encode() if isinstance(blob, str) else blob
    return [s for s in SECRETS if s.encode() in data]


def test_no_secret_in_any_output_or_file_of_a_full_run(
    planted: tuple[KaggleStandIn, Path], isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ws = planted
    said: list[str] = []

    def comp(*args: str, ok: bool = True) -> str:
        result = CliRunner().invoke(cli, ["-w", str(ws), *args])
        said.append(result.stdout + result.stderr)
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    comp("folds")
    comp("train", "--epochs", "1", "--freeze-epochs", "0", "--name", "r")
    comp("predict", "r")
    sub = str(ws / "submissions" / "r.csv")
    comp("submit", sub, "-m", "planted run")
    comp("submit", sub, "--local", "-m", "planted run, local")
    comp("submissions", "--refresh")
    comp("submissions", "--refresh", "--plot")
    comp("kernel", "push", "--name", "dry", "--dry-run", "--epochs", "1")
    comp("kernel", "push", "--name", "tuned", "--tune", "--trials", "2", "--dry-run")
    comp("kernel", "push", "--name", "pushed", "--epochs", "1")
    comp("kernel", "status", "pushed")
    comp("kernel", "dataset", "--slug", "comp-code", "--dry-run")
    # The legacy key alone (kaggle.json), then failures that name where credentials came from.
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    comp("submissions", "--refresh")
    server.fail("ListSubmissions", 500, times=5)  # every one of the client's tries
    out = comp("submissions", "--refresh", ok=False)
    assert "HTTP 500" in out
    monkeypatch.setenv("KAGGLE_API_TOKEN", BAD_TOKEN)
    out = comp("submissions", "--refresh", ok=False)
    # A stale token beside a good kaggle.json: the client may send either; both are named.
    assert "Kaggle rejected the credentials from" in out and "KAGGLE_API_TOKEN (HTTP 401)" in out
    (isolated / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": USERNAME}))
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    monkeypatch.setenv("KAGGLE_KEY", KEY + "-wrong")
    out = comp("submit", sub, "--force", ok=False)
    assert "rejected the credentials" in out

    # What was said.
    for text in said:
        assert leaks(text) == [], text
    # What was written: the workspace (runs, submissions, ledger, kernels, caches) and the
    # competition folder, as bytes.
    scanned = 0
    for root in (ws, ws.parent / "data"):
        for path in root.rglob("*"):
            if path.is_file():
                assert leaks(path.read_bytes()) == [], path
                scanned += 1
    assert (ws / "submissions" / "ledger.sqlite").is_file()
    # The trackers' stores were among the files searched.
    assert (ws / "mlflow.db").is_file() and any((ws / "tensorboard" / "r").iterdir())
    assert any((ws / "wandb").glob("offline-run-*/run-*.wandb"))
    assert (ws / "kernels" / "dry").is_dir() and (ws / "kernels" / "pushed").is_dir()
    assert (ws / "kernels" / "tuned" / "comp-tuned.py").is_file()
    assert any((ws / "runs" / "r").rglob("best.pt"))
    assert scanned > 30
    # The home folder holds them only where the user put them.
    for path in isolated.rglob("*"):
        if path.is_file() and path.name not in ("kaggle.json", "access_token"):
            assert leaks(path.read_bytes()) == [], path
    # What reached Kaggle in the kernel: its script and metadata.
    (kernel,) = server.kernels.values()
    assert leaks(json.dumps(kernel.request)) == []


def test_loose_credentials_are_reported(
    planted: tuple[KaggleStandIn, Path], isolated: Path
) -> None:
    """A kaggle.json that others can read is named, with the fix, as the kaggle client does."""
    _, ws = planted
    config = isolated / ".kaggle" / "kaggle.json"

    def refresh() -> str:
        result = CliRunner().invoke(cli, ["-w", str(ws), "submissions", "--refresh"])
        assert result.exit_code == 0, result.output
        assert leaks(result.output) == []
        return result.stderr

    assert "readable by other users" not in refresh()
    for mode in (0o644, 0o640, 0o604):
        config.chmod(mode)
        err = refresh()
        assert f"WARNING: {config} is readable by other users on this machine" in err
        assert f"chmod 600 {config}" in err
    token_file = isolated / ".kaggle" / "access_token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    config.chmod(0o600)
    assert f"WARNING: {token_file} is readable by other users" in refresh()


def test_credentials_never_reach_the_environment_of_the_kernel_script(
    planted: tuple[KaggleStandIn, Path],
) -> None:
    """The bundle carries config, folds and code, but no variable of this machine's."""
    _, ws = planted
    result = CliRunner().invoke(cli, ["-w", str(ws), "folds"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        cli, ["-w", str(ws), "kernel", "push", "--name", "k", "--dry-run", "--owner", USERNAME]
    )
    assert result.exit_code == 0, result.output
    for path in (ws / "kernels" / "k").rglob("*"):
        if path.is_file():
            assert leaks(path.read_bytes()) == [], path
    assert os.environ["KAGGLE_API_TOKEN"] == TOKEN  # the test did plant it
