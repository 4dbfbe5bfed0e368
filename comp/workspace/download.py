"""``comp download``: a competition's files from Kaggle, unpacked into a new workspace.

Reads the competition's archive from Kaggle. Writes ``DIR/data/`` (the archive unpacked,
nested zips too) and the workspace ``comp init`` makes around it, with ``competition:`` set.
The archive is fetched and unpacked in a ``DIR/.download-*`` folder that is always removed,
so a failed download or unpack leaves no half-filled ``DIR/data``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from comp.config import CONFIG_FILE
from comp.kaggle.client import Kaggle
from comp.workspace.init import init_workspace, unpack

log = logging.getLogger(__name__)


def download_workspace(
    competition: str,
    directory: Path,
    *,
    kaggle: Kaggle,
    force: bool = False,
    overrides: dict[str, Any] | None = None,
) -> str:
    """Download ``competition`` into ``directory/data`` and set up the workspace around it.

    ``overrides`` are config values for the new ``comp.yaml``, as for ``comp init``.
    Returns ``comp init``'s report of what was found.
    """
    data = directory / "data"
    for existing in (data, directory / CONFIG_FILE):
        if existing.exists() and not force:
            raise FileExistsError(f"{existing} exists (use --force to replace it)")
    kaggle.sign_in()  # before anything is created
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=directory))
    try:
        archive = kaggle.download(competition, staging / "archive")
        unpacked = staging / "data"
        unpack(archive, unpacked)
        if data.exists():
            shutil.rmtree(data)
        unpacked.rename(data)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(f"{competition} -> {data}")
    values = {**(overrides or {}), "competition": competition}
    seed = int(values.pop("seed", 42))
    _, text = init_workspace(directory, data, seed=seed, force=force, overrides=values)
    return text
