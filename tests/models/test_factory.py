from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import timm
import torch

from comp.errors import ModelError
from comp.models.factory import (
    create_model,
    load_checkpoint,
    normalisation,
    save_checkpoint,
    set_backbone_frozen,
    set_train_mode,
)
from comp.models.nets import AirNet
from tests.conftest import TimmNet


def test_random_init_and_unknown_name() -> None:
    model, source = create_model("resnet10t", num_classes=4, pretrained="false")
    assert isinstance(model, TimmNet)
    assert source == "random" and model.get_classifier().out_features == 4
    with pytest.raises(ModelError, match="unknown timm model 'resnet10x'"):
        create_model("resnet10x", num_classes=4)


def test_weights_from_a_local_file_like_a_kaggle_dataset(tmp_path: Path) -> None:
    # An "ImageNet" checkpoint with a 1000-class head, saved as a Kaggle dataset would hold it.
    torch.manual_seed(0)
    donor = timm.create_model("resnet10t", pretrained=False)
    torch.save(donor.state_dict(), tmp_path / "resnet10t.pth")
    model, source = create_model(
        "resnet10t", num_classes=3, pretrained="true", pretrained_file=tmp_path / "resnet10t.pth"
    )
    assert source.startswith("file:") and isinstance(model, TimmNet)
    assert torch.equal(model.get_parameter("conv1.0.weight"), donor.get_parameter("conv1.0.weight"))
    assert model.get_classifier().out_features == 3  # a fresh head for the competition's classes


def test_bad_weights_file_is_named(tmp_path: Path) -> None:
    torch.save(timm.create_model("test_efficientnet").state_dict(), tmp_path / "other.pth")
    with pytest.raises(ModelError, match=r"other\.pth: weights do not fit resnet10t"):
        create_model("resnet10t", num_classes=3, pretrained_file=tmp_path / "other.pth")
    with pytest.raises(ModelError, match="pretrained_file not found"):
        create_model("resnet10t", num_classes=3, pretrained_file=tmp_path / "missing.pth")


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Hugging Face's and torch's hub caches, empty: no weights of an earlier online run."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub"


def stub_timm(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """timm.create_model without the network: pretrained weights fail as offline; the
    ``pretrained`` flag of every call is recorded."""
    real = timm.create_model
    asked: list[bool] = []

    def create(name: str, *, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
        asked.append(pretrained)
        if pretrained:
            raise OSError("no network")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", create)
    return asked


@pytest.mark.parametrize("reachable", [False, True], ids=["hub-unreachable", "hub-reachable"])
def test_required_pretrained_weights_fail_clearly_offline(
    reachable: bool, empty_caches: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import comp.models.factory as models

    monkeypatch.setattr(models, "_hub_reachable", lambda: reachable)
    asked = stub_timm(monkeypatch)
    # Unreachable: the empty caches are the answer, without a try through the hub client;
    # reachable: the hub's own failure is named.
    reason = "no network" if reachable else "the model hub cannot be reached"
    with pytest.raises(ModelError, match=rf"\({reason}.*--pretrained-file"):
        create_model("resnet10t", num_classes=3, pretrained="true")
    assert asked == ([True] if reachable else [])


@pytest.mark.parametrize("reachable", [False, True], ids=["hub-unreachable", "hub-reachable"])
def test_auto_takes_hub_weights_only_when_the_hub_answers(
    reachable: bool, empty_caches: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import comp.models.factory as models
    from comp.models.factory import weights_source

    monkeypatch.setattr(models, "_hub_reachable", lambda: reachable)
    # What `comp init` prints as the recipe's starting point, before any download.
    expected = "timm" if reachable else "random"
    assert weights_source("resnet10t", pretrained="auto", pretrained_file=None) == expected
    real = timm.create_model
    asked: list[bool] = []

    def create(name: str, *, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
        asked.append(pretrained)
        return real(name, pretrained=False, **kwargs)  # the hub's weights, stood in for

    monkeypatch.setattr(timm, "create_model", create)
    if reachable:
        model, source = create_model("resnet10t", num_classes=3, pretrained="auto")
        assert source == "timm" and asked == [True]
    else:
        with pytest.warns(UserWarning, match="cannot be reached.*training from random init"):
            model, source = create_model("resnet10t", num_classes=3, pretrained="auto")
        assert source == "random" and asked == [False]
    assert isinstance(model, TimmNet)
    assert model.get_classifier().out_features == 3


def test_stage_one_freezes_all_but_the_head() -> None:
    model, _ = create_model("resnet10t", num_classes=3, pretrained="false")
    set_backbone_frozen(model, True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    set_train_mode(model, frozen=True)
    bn = model.get_submodule("bn1" if hasattr(model, "bn1") else "conv1.1")
    assert not bn.training
    set_backbone_frozen(model, False)
    assert all(p.requires_grad for p in model.parameters())


def test_checkpoint_round_trip_and_refusals(tmp_path: Path) -> None:
    model, _ = create_model("test_efficientnet", num_classes=2, pretrained="false")
    save_checkpoint(
        tmp_path / "best.pt", model, {"model": "test_efficientnet", "classes": ["a", "b"]}
    )
    again, meta = load_checkpoint(tmp_path / "best.pt", classes=["a", "b"])
    assert meta["classes"] == ["a", "b"]
    for (k, v), w in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    with pytest.raises(ModelError, match="other classes"):
        load_checkpoint(tmp_path / "best.pt", classes=["a", "c"])
    with pytest.raises(ModelError, match="is a test_efficientnet, expected resnet10t"):
        load_checkpoint(tmp_path / "best.pt", model_name="resnet10t")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ModelError, match="not a comp checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_offline_auto_uses_cached_hub_weights(
    tmp_path: Path, empty_caches: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import comp.models.factory as models
    from comp.models.factory import weights_source

    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    with pytest.warns(UserWarning, match="training from random init"):
        _, source = create_model("resnet10t", num_classes=3, pretrained="auto")
    assert source == "random"
    # The file name timm's pretrained_cfg url points at, as a previous online run would have cached it.
    cfg = timm.models.get_pretrained_cfg("resnet10t")
    assert cfg is not None and isinstance(cfg.url, str)
    url = cfg.url
    (empty_caches / "checkpoints").mkdir(parents=True)
    donor = timm.create_model("resnet10t")
    cached = empty_caches / "checkpoints" / url.rsplit("/", 1)[1]
    torch.save(donor.state_dict(), cached)
    assert weights_source("resnet10t", pretrained="auto", pretrained_file=None) == f"cache:{cached}"
    model, source = create_model("resnet10t", num_classes=3, pretrained="auto")
    assert source.startswith("cache:")
    assert torch.equal(model.get_parameter("conv1.0.weight"), donor.get_parameter("conv1.0.weight"))


# --- the baseline nets: mlp and simple_cnn, built by name beside timm's ---------------


@pytest.mark.parametrize("name", ["mlp", "simple_cnn", "airnet_xs", "classical"])
def test_baseline_nets_follow_timms_interface(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, source = create_model(name, num_classes=3, pretrained="auto")
    assert source == "random" and isinstance(model, TimmNet)
    model.eval()
    for side in (32, 64):
        x = torch.randn(2, 3, side, side)
        assert model(x).shape == (2, 3)
        feats = model.forward_features(x)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        assert torch.equal(model.forward_head(feats), model(x))
    assert model.get_classifier().out_features == 3
    assert model.get_classifier().in_features == model.num_features
    mean, std = normalisation(model)
    assert mean.shape == std.shape == (3,)
    assert timm.data.resolve_data_config({}, model=model)["input_size"][0] == 3

    set_backbone_frozen(model, True)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "head.weight",
        "head.bias",
    }
    set_train_mode(model, frozen=True)
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    set_backbone_frozen(model, False)
    model.eval()

    save_checkpoint(tmp_path / "best.pt", model, {"model": name, "classes": ["a", "b", "c"]})
    again, meta = load_checkpoint(tmp_path / "best.pt", classes=["a", "b", "c"], model_name=name)
    again.eval()
    x = torch.randn(2, 3, 48, 48)
    assert meta["model"] == name and torch.equal(again(x), model(x))

    # A comp checkpoint of the same net starts a new run, with a fresh head for other classes.
    warm, source = create_model(name, num_classes=5, pretrained_file=tmp_path / "best.pt")
    assert source.startswith("file:") and isinstance(warm, TimmNet)
    assert warm.get_classifier().out_features == 5
    body = [k for k in model.state_dict() if not k.startswith("head.")]
    assert all(torch.equal(model.state_dict()[k], warm.state_dict()[k]) for k in body)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)


def test_baseline_nets_have_no_pretrained_weights(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no pretrained weights"):
        create_model("simple_cnn", num_classes=3, pretrained="true")
    _, source = create_model("mlp", num_classes=3, pretrained="false")
    assert source == "random"
    other, _ = create_model("simple_cnn", num_classes=3, pretrained="false")
    torch.save(other.state_dict(), tmp_path / "cnn.pth")
    with pytest.raises(ModelError, match=r"cnn\.pth: weights do not fit mlp"):
        create_model("mlp", num_classes=3, pretrained_file=tmp_path / "cnn.pth")


def test_simple_cnn_trains_end_to_end(workspace: Callable[..., Path]) -> None:
    from comp.config import load_config
    from comp.data.competition import load_competition
    from comp.folds.split import folds_path, make_folds, write_folds
    from comp.train.run import train

    root = workspace(model="simple_cnn", epochs=1, freeze_epochs=0, aug="none")
    cfg = load_config(root)
    comp = load_competition(root, cfg)
    write_folds(folds_path(root, cfg), make_folds(comp.train, n_splits=cfg.n_splits, seed=cfg.seed))
    summary = train(root, cfg, name="cnn", folds=[0])
    assert summary["folds_trained"] == 1
    model, meta = load_checkpoint(
        root / "runs" / "cnn" / "fold0" / "best.pt", model_name="simple_cnn"
    )
    assert meta["pretrained"] == "random" and isinstance(model, TimmNet)
    assert model.get_classifier().out_features == 3


def test_airnet_whitens_the_patches_of_the_images_it_is_shown() -> None:
    torch.manual_seed(0)
    model, _ = create_model("airnet_xs", num_classes=3, pretrained="false")
    assert isinstance(model, AirNet)
    # Correlated channels, as in real images: the whitened patches must not be.
    base = torch.randn(64, 1, 16, 16)
    x = torch.cat([base, base * 0.9 + 0.1 * torch.randn_like(base), torch.randn_like(base)], 1)
    model.init_whitening(x)
    out = torch.nn.functional.conv2d(x, model.whiten_weight[:12])
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(flat.T)
    assert torch.allclose(cov, torch.diag(torch.diagonal(cov)), atol=0.05)
    assert "whiten_weight" not in dict(model.named_parameters())
    # Above 48 px the stem steps 2 pixels: a 64 px image is a 32x32 map after it.
    assert model.forward_features(torch.randn(1, 3, 64, 64)).shape[-1] == 4
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape[-1] == 4


def test_classical_features_describe_the_subject_not_the_ground() -> None:
    from comp.models.nets import ClassicalFeatures

    model = ClassicalFeatures(num_classes=2)
    assert normalisation(model)[0].tolist() == [0, 0, 0]  # it reads RGB in [0, 1]
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    disk = ((yy - 16) ** 2 + (xx - 16) ** 2 < 64).float()
    red = torch.tensor([0.9, 0.1, 0.1])[:, None, None]

    def on(ground: float) -> torch.Tensor:
        return disk * red + (1 - disk) * ground

    feats = model.forward_features(torch.stack([on(1.0), on(0.0), torch.rand(3, 32, 32)]))
    colours = feats[:, : model.BINS**3]
    # On white or on black, the same red disk: the same colours and the same silhouette.
    assert torch.allclose(colours[0], colours[1])
    assert colours[0].max() == 1  # every subject pixel in one bin, no ground in it
    silhouette = slice(model.BINS**3 + 10, model.BINS**3 + 10 + model.SILHOUETTE**2)
    assert torch.allclose(feats[0, silhouette], feats[1, silhouette])
    # Noise has no plain ground: every pixel counts, spread over many colours.
    assert torch.isclose(colours[2].sum(), torch.tensor(1.0)) and colours[2].max() < 0.05


def test_a_small_stem_keeps_the_resolution_and_the_weights(tmp_path: Path) -> None:
    plain, _ = create_model("resnet10t", num_classes=3, pretrained="false")
    torch.save(plain.state_dict(), tmp_path / "w.pth")
    small, source = create_model(
        "resnet10t", num_classes=3, pretrained_file=tmp_path / "w.pth", small_input=True
    )
    assert source.startswith("file:")
    assert isinstance(plain, TimmNet) and isinstance(small, TimmNet)
    body = {k: v for k, v in plain.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(v, small.state_dict()[k]) for k, v in body.items())
    x = torch.randn(2, 3, 32, 32)
    # timm's stem quarters a 32 px image before the first block; the small stem does not.
    assert plain.forward_features(x).shape[-1] == 1 and small.forward_features(x).shape[-1] == 4
    small.eval()
    meta = {"model": "resnet10t", "small_input": True, "classes": ["a", "b", "c"]}
    save_checkpoint(tmp_path / "best.pt", small, meta)
    again, _ = load_checkpoint(tmp_path / "best.pt", classes=["a", "b", "c"])
    assert torch.equal(again.eval()(x), small(x))
    # comp's own nets are made for small images already; a ViT has no conv stem to change.
    assert create_model("airnet_xs", num_classes=3, small_input=True)[1] == "random"
    with pytest.raises(ModelError, match="no convolutional stem"):
        create_model("vit_tiny_patch16_224", num_classes=3, pretrained="false", small_input=True)
