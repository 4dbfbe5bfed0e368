"""How comp speaks to the user: one logging channel and its progress bars, set up once.

Every module says what it has to say through ``logging.getLogger(__name__)``, a child of
the ``comp`` logger: ``log.info`` for the lines a stage ends with, ``log.log(PROGRESS, ...)``
for a line per epoch or per trial, ``log.warning`` for what the user should act on. A
function's signature says what it computes, never how it talks.

``setup`` (called once per command by the CLI) sends the lines to the terminal: information
to stdout, warnings in red to stderr, a bar in flight set aside while a line is written.
Progress bars ask ``no_bar()`` for tqdm's ``disable=``: off under ``--quiet`` or inside
``no_bars()``, and off whenever their output is not a terminal. Used as a library (tests,
notebooks, benchmarks), comp prints nothing but warnings until the caller attaches a handler
(or pytest's ``caplog``). Reads and writes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

# A line per epoch: shown by default, hidden by --quiet (which keeps INFO and above).
PROGRESS = 15
logging.addLevelName(PROGRESS, "PROGRESS")

_bars_off = 0


class _Terminal(logging.Handler):
    """Each record as its own line: information on stdout, warnings in red on stderr (plain
    where the stream is not a terminal, as click does), any bar in flight set aside."""

    def emit(self, record: logging.LogRecord) -> None:
        import click
        from tqdm import tqdm

        try:
            message = record.getMessage()
            warning = record.levelno >= logging.WARNING
            with tqdm.external_write_mode(file=sys.stderr if warning else sys.stdout):
                if warning:
                    click.secho(f"WARNING: {message}", fg="red", bold=True, err=True)
                else:
                    click.echo(message)
        except Exception:
            self.handleError(record)


def setup(*, quiet: bool = False) -> None:
    """Send comp's lines to the terminal; with ``quiet``, no bars and no line per epoch."""
    global _bars_off
    log = logging.getLogger("comp")
    for handler in [h for h in log.handlers if isinstance(h, _Terminal)]:
        log.removeHandler(handler)
    log.addHandler(_Terminal())
    log.setLevel(logging.INFO if quiet else PROGRESS)
    _bars_off = 1 if quiet else 0


def no_bar() -> bool | None:
    """tqdm's ``disable=`` for a progress bar: off under ``--quiet`` or inside ``no_bars()``,
    and (tqdm's own None) whenever its output is not a terminal: a kernel's log, `make demo >
    log` or CI would otherwise keep every refresh of the bar."""
    return True if _bars_off else None


def bars_on() -> bool:
    """Whether a bar of comp's own would be drawn on this terminal."""
    return not _bars_off and sys.stderr.isatty()


@contextlib.contextmanager
def no_bars() -> Iterator[None]:
    """No progress bars inside: work nested in a bar of its own (a study's trials)."""
    global _bars_off
    _bars_off += 1
    try:
        yield
    finally:
        _bars_off -= 1


def mute() -> None:
    """Nothing but warnings and no bars from here on: a run's processes other than the
    first, which would repeat its every line."""
    global _bars_off
    logging.getLogger("comp").setLevel(logging.WARNING)
    _bars_off += 1


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Nothing but warnings and no bars inside: work whose caller says what it did (a
    study's trials, a space resolved before it is shown)."""
    log = logging.getLogger("comp")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with no_bars():
            yield
    finally:
        log.setLevel(level)
