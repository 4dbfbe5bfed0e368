from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from comp.data.cache import cached_images
from comp.data.competition import (
    encode_labels,
    image_paths,
    index_images,
    read_labels,
    sorted_classes,
)
from comp.data.images import read_image, to_rgb
from comp.errors import DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_read_labels_renames_and_keeps_text(tmp_path: Path) -> None:
    df = read_labels(
        write(tmp_path / "l.csv", "image_id,type\na,03\nb,Fire\n"),
        id_column="image_id",
        label_column="type",
    )
    assert list(df.columns) == ["Id", "label"] and list(df["label"]) == ["03", "Fire"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Id,label\n", "no rows"),
        ("", "file is empty"),
        ("Id,kind\na,b\n", "no column 'label'"),
        ("Id,label\na,x\na,y\n", "duplicate Id 'a' at row 3"),
        ("Id,label\na,x\nb,\n", "row 3 .*empty label"),
    ],
)
def test_read_labels_refuses_bad_tables(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        read_labels(write(tmp_path / "l.csv", text))


def test_natural_class_order() -> None:
    assert sorted_classes(["10", "2", "1", "2"]) == ["1", "2", "10"]


def test_encode_labels_indexes_classes_and_names_a_stranger() -> None:
    y = encode_labels(pd.Series(["10", "03", "10"]), ["03", "10"])
    assert y.dtype == np.int64 and list(y) == [1, 0, 1]
    with pytest.raises(DataError, match=r"label '3' \(2 rows\) is not one of the 2 classes"):
        encode_labels(["03", "3", "3"], ["03", "10"])


def test_index_finds_ids_with_and_without_extension(tmp_path: Path) -> None:
    for name in ("a.png", "b.JPG", "sub/c.webp", "notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    index = index_images(tmp_path)
    assert (
        index["a"].name == "a.png"
        and index["a.png"].name == "a.png"
        and index["sub/c"].name == "c.webp"
    )
    assert "notes" not in index
    with pytest.raises(DataError, match=r"no image for Id 'zz' \(1 of 2\)"):
        image_paths(["a", "zz"], tmp_path)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16"])
def test_every_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    arr = np.full((6, 9), 200, dtype=np.uint16 if mode == "I;16" else np.uint8)
    base = Image.fromarray(arr * 257) if mode == "I;16" else Image.fromarray(arr, "L")
    img = base if mode in ("L", "I;16") else base.convert(mode)
    ext = ".jpg" if mode == "CMYK" else ".png"
    img.save(tmp_path / f"x{ext}")
    out = read_image(tmp_path / f"x{ext}", 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert abs(int(out.mean()) - 200) <= 3


def test_transparency_is_composited_on_white() -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(to_rgb(img))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (10, 4), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert read_image(tmp_path / "r.jpg").shape == (10, 4, 3)


def test_unreadable_images_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("RGB", (32, 32)).save(tmp_path / "t.png")
    (tmp_path / "trunc.png").write_bytes((tmp_path / "t.png").read_bytes()[:40])
    for name in ("empty.png", "trunc.png"):
        with pytest.raises(DataError, match=f"{name}: cannot read image"):
            read_image(tmp_path / name, 8)


def test_cached_images_without_cache_keeps_order(tmp_path: Path) -> None:
    paths = []
    for k in range(5):
        Image.new("RGB", (12 + k, 9), (k * 40, 0, 0)).save(tmp_path / f"{k}.png")
        paths.append(tmp_path / f"{k}.png")
    arr = cached_images(paths, 8, cache_dir=None)
    assert arr.shape == (5, 8, 8, 3)
    assert [int(a[..., 0].mean()) for a in arr] == [0, 40, 80, 120, 160]
