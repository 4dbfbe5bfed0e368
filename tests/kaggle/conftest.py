"""The Kaggle stand-in on loopback, for the tests of this package: ``standin`` answers the
API, ``kaggle_machines`` also runs the kernels pushed to it. Each test module gives the
``ws`` workspace they serve, on the competition ``SLUG``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kaggle_standin import GOOD_TOKEN, KaggleStandIn, script_runner

SLUG = "shapes"


def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, run: bool) -> KaggleStandIn:
    server = KaggleStandIn()
    if run:
        server.runner = script_runner(server, tmp_path / "kaggle-machines")
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("KAGGLE_API_TOKEN", GOOD_TOKEN)
    assert (tmp_path / "kaggle-side" / "train").is_dir()
    server.add_competition(SLUG, tmp_path / "kaggle-side")
    return server


@pytest.fixture
def standin(
    isolated: Path, ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KaggleStandIn]:
    with serve(tmp_path, monkeypatch, run=False) as server:
        yield server


@pytest.fixture
def kaggle_machines(
    isolated: Path, ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KaggleStandIn]:
    with serve(tmp_path, monkeypatch, run=True) as server:
        yield server
