"""comp.console: the one channel from comp to the user, as the CLI sets it up."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from comp import console

log = logging.getLogger("comp.test")


@pytest.fixture(autouse=True)
def restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # setup() changes the process's 'comp' logger and bars: leave them as found.
    root = logging.getLogger("comp")
    handlers, level = list(root.handlers), root.level
    monkeypatch.setattr(console, "_bars_off", 0)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_lines_go_to_stdout_and_warnings_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    console.setup()
    log.info("fold 0: best macro-F1 0.9")
    log.log(console.PROGRESS, "fold 0 epoch 1: loss 0.5")
    log.warning("the split leaks")
    out, err = capsys.readouterr()
    assert out.splitlines() == ["fold 0: best macro-F1 0.9", "fold 0 epoch 1: loss 0.5"]
    # Not a terminal here: the red is dropped, as click drops it.
    assert err.splitlines() == ["WARNING: the split leaks"]
    assert console.no_bar() is None  # tqdm decides by the terminal


def test_quiet_keeps_what_a_stage_ends_with_and_no_bar(capsys: pytest.CaptureFixture[str]) -> None:
    console.setup(quiet=True)
    log.log(console.PROGRESS, "fold 0 epoch 1: loss 0.5")
    log.info("run r: CV macro-F1 0.9")
    assert capsys.readouterr().out.splitlines() == ["run r: CV macro-F1 0.9"]
    assert console.no_bar() is True and not console.bars_on()


def test_setup_twice_speaks_once(capsys: pytest.CaptureFixture[str]) -> None:
    console.setup()
    console.setup()
    log.info("once")
    assert capsys.readouterr().out == "once\n"


def test_silenced_work_says_only_warnings_and_ends_as_it_began(
    capsys: pytest.CaptureFixture[str],
) -> None:
    console.setup()
    with console.silenced():
        log.info("a trial's own line")
        log.warning("a trial's warning")
        assert console.no_bar() is True
    log.info("after")
    out, err = capsys.readouterr()
    assert out == "after\n" and "a trial's warning" in err
    assert console.no_bar() is None


def test_no_bars_nests() -> None:
    with console.no_bars():
        with console.no_bars():
            assert console.no_bar() is True
        assert console.no_bar() is True
    assert console.no_bar() is None
