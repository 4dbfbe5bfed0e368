import numpy as np
import pytest
import torch

from comp.data.transforms import PRESETS, ImageDataset, create_transform, to_input, tta_views
from comp.errors import ConfigError


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_keep_shape_and_dtype(preset: str) -> None:
    t = create_transform(preset, img_size=16)
    t.set_random_seed(0)
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = t(image=img)["image"]
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_unknown_preset_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'light'"):
        create_transform("lite", img_size=16)


def test_tta_views() -> None:
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    views = tta_views("none")
    assert views == [None]
    views = tta_views("hflip,VerticalFlip")
    assert len(views) == 3
    assert np.array_equal(views[1](image=img)["image"], img[:, ::-1])  # type: ignore[misc]
    assert np.array_equal(views[2](image=img)["image"], img[::-1])  # type: ignore[misc]
    with pytest.raises(ConfigError, match="unknown TTA view 'hflp'; did you mean 'hflip'"):
        tta_views("hflp")
    with pytest.raises(ConfigError, match="'RandomResizedCrop' cannot run without arguments"):
        tta_views("RandomResizedCrop")


def test_dataset_and_batch_normalisation() -> None:
    images = np.full((3, 4, 4, 3), 255, dtype=np.uint8)
    ds = ImageDataset(images, np.array([0, 1, 2]))
    x, y = ds[1]
    assert x.dtype == torch.uint8 and y == 1
    batch = torch.stack([ds[i][0] for i in range(3)])
    out = to_input(
        batch,
        mean=torch.tensor([0.5, 0.5, 0.5]),
        std=torch.tensor([0.5, 0.5, 0.5]),
        device=torch.device("cpu"),
    )
    assert out.shape == (3, 3, 4, 4) and torch.allclose(out, torch.ones_like(out))
