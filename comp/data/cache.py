"""The decoded-image cache: every image decoded and resized once, then memory-mapped.

Reads image files (through ``comp.data.images.read_image``). Writes
``cache/images/<key>.npy`` in the workspace (or under ``$COMP_CACHE``): an (N, size, size, 3) uint8 array
in numpy's own format. The key hashes the file list, each file's size and
mtime, the size and the preprocessing, so a changed, added or removed image, or
another size, builds a new cache and an unchanged one is reused as it is.

The array is opened with ``mmap_mode="r"``: pages come from the OS page cache
as they are touched, so the process's own memory does not grow with the dataset.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from comp import console, files
from comp.data.images import read_image

# Bumped whenever decoding changes, so old caches are never read as new ones.
CACHE_VERSION = 1
# Images are written in chunks: big enough to keep every thread busy, small enough that
# a chunk's arrays are a few MB whatever the dataset's size.
CHUNK = 512


def cache_dir(root: Path, *, enabled: bool = True) -> Path | None:
    """Where a workspace's image cache lives: ``COMP_CACHE`` if set (e.g. a scratch disk, or
    /kaggle/temp so the cache never becomes a kernel output), else ``<root>/cache/images``."""
    if not enabled:
        return None
    override = os.environ.get("COMP_CACHE")
    return Path(override) if override else root / "cache" / "images"


def cache_key(paths: Sequence[Path], size: int, *, centre: bool = False) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION} size={size} centre={centre}\n".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.fspath(p)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def decode_into(
    out: np.ndarray,
    paths: Sequence[Path],
    size: int,
    *,
    centre: bool = False,
    desc: str = "decode",
) -> None:
    """Decode ``paths`` into ``out`` (an array or a memmap), chunk by chunk."""
    # PIL releases the GIL while decoding and resizing, so threads use every core.
    workers = min(8, os.cpu_count() or 1)
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(total=len(paths), desc=desc, unit="img", leave=False, disable=console.no_bar()) as bar,
    ):
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start : start + CHUNK]
            for i, arr in enumerate(pool.map(lambda p: read_image(p, size, centre=centre), chunk)):
                out[start + i] = arr
            bar.update(len(chunk))


def cached_images(
    paths: Sequence[Path],
    size: int,
    *,
    cache_dir: Path | None,
    centre: bool = False,
    desc: str = "decode",
) -> np.ndarray:
    """The images of ``paths`` as (N, size, size, 3) uint8, memory-mapped from the cache.

    With ``cache_dir=None`` they are decoded into memory instead.
    """
    if cache_dir is None:
        out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
        decode_into(out, paths, size, centre=centre, desc=desc)
        return out
    path = cache_dir / f"{cache_key(paths, size, centre=centre)}.npy"
    if not path.exists():

        def build(tmp: Path) -> None:
            arr = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)
            )
            decode_into(arr, paths, size, centre=centre, desc=desc)
            arr.flush()
            del arr

        # Built aside and renamed into place: a killed build never leaves a cache that
        # a later run would trust.
        files.write_with(path, build)
    return np.load(path, mmap_mode="r")
