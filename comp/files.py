"""Atomic file writes shared by every stage.

Reads nothing. Writes any artifact through a temporary file in the target's own
folder, renamed into place only once it is complete, so a crash or Ctrl-C never
leaves a half-written file that a later stage would trust. A failed write (a
full disk) leaves the target as it was, removes the temporary, and raises an
OSError that names the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    # Only for the annotation: pandas costs a third of a second, and `comp --help` must start fast.
    import pandas as pd


def relative(path: Path, root: Path) -> str:
    """How messages and the ledger name a file: relative to the workspace when inside it."""
    path = path.resolve()
    return str(path.relative_to(root) if path.is_relative_to(root) else path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise _about(e, target) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as e:
        # A full disk or a read-only folder: the error names the file meant, not the temporary.
        if e.filename is not None and str(e.filename) not in (str(tmp_path), str(target)):
            raise  # about some other file the writer read
        raise _about(e, target) from None
    finally:
        tmp_path.unlink(missing_ok=True)


def _about(e: OSError, target: Path) -> OSError:
    """The same error (errno, subclass), about ``target``."""
    if e.errno is None:
        return e
    return OSError(e.errno, e.strerror or os.strerror(e.errno), str(target))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_yaml(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_csv(path: str | os.PathLike[str], df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` (e.g. ``df.to_csv``, ``torch.save``) and publish the result atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def swap_dir(staging: Path, target: Path) -> None:
    """Put a folder built to one side in place of ``target`` whole: never a half-old, half-new mix."""
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
