from pathlib import Path

import numpy as np
import pytest

from comp.data import cache
from comp.data.cache import cached_images
from tests.conftest import draw


def images(folder: Path, n: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i}.png"
        draw(["circle", "square", "triangle"][i % 3], size=20, rng=np.random.default_rng(i)).save(p)
        paths.append(p)
    return paths


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    seen: list[Path] = []
    real = cache.read_image

    def counting(path: Path, size: int | None = None, **kwargs: object) -> np.ndarray:
        seen.append(path)
        return real(path, size, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cache, "read_image", counting)
    return seen


def test_images_are_decoded_once_then_memory_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = images(tmp_path / "img")
    seen = count_decodes(monkeypatch)
    first = cached_images(paths, 16, cache_dir=tmp_path / "cache")
    again = cached_images(paths, 16, cache_dir=tmp_path / "cache")
    assert len(seen) == len(paths)
    assert isinstance(again, np.memmap) and again.shape == (5, 16, 16, 3)
    assert np.array_equal(first, again)
    in_memory = cached_images(paths, 16, cache_dir=None)
    assert np.array_equal(in_memory, again) and not isinstance(in_memory, np.memmap)


def test_a_changed_file_or_size_builds_a_new_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = images(tmp_path / "img")
    cached_images(paths, 16, cache_dir=tmp_path / "cache")
    seen = count_decodes(monkeypatch)
    draw("circle", size=24, rng=np.random.default_rng(99)).save(paths[0])
    changed = cached_images(paths, 16, cache_dir=tmp_path / "cache")
    assert len(seen) == 5
    assert np.array_equal(changed[0], cache.read_image(paths[0], 16))
    cached_images(paths, 12, cache_dir=tmp_path / "cache")
    cached_images(paths[:3], 12, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4


def test_a_failed_build_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = images(tmp_path / "img")
    (tmp_path / "img" / "2.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"2\.png"):
        cached_images(paths, 16, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
