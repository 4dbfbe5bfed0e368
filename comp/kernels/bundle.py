"""A kernel bundle on disk: ``kernels/<name>/[<kernel>/]comp-kernel.json``, what comp needs
to find a pushed kernel again (its ref, run, folds, tuning study). Reads those files; writes
nothing (``comp.kernels.push`` writes them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from comp.errors import DataError

INFO = "comp-kernel.json"
# The config keys that name where a machine keeps the competition's data.
PATH_KEYS = ("train_csv", "train_dir", "test_dir", "sample_submission")


def bundles_of(root: Path, name: str) -> list[Path]:
    group_dir = root / "kernels" / name
    found = sorted(p.parent for p in group_dir.rglob(INFO))
    if not found:
        known = sorted(p.parent.name for p in (root / "kernels").glob(f"*/{INFO}"))
        known += sorted(p.parent.parent.name for p in (root / "kernels").glob(f"*/*/{INFO}"))
        raise DataError(
            f"no kernel bundle '{name}' in {root / 'kernels'}; bundles are: {', '.join(sorted(set(known))) or 'none yet'}"
        )
    return found


def read_info(bundle: Path) -> dict[str, Any]:
    return dict(json.loads((bundle / INFO).read_text()))
