from pathlib import Path

import pytest
import timm
import torch

from comp.models import (
    ModelError,
    create_model,
    load_checkpoint,
    save_checkpoint,
    set_backbone_frozen,
    set_train_mode,
)


def test_random_init_and_unknown_name() -> None:
    model, source = create_model("resnet10t", num_classes=4, pretrained="false")
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
    assert source.startswith("file:")
    assert torch.equal(model.conv1[0].weight, donor.conv1[0].weight)
    assert model.get_classifier().out_features == 3  # a fresh head for the competition's classes


def test_bad_weights_file_is_named(tmp_path: Path) -> None:
    torch.save(timm.create_model("test_efficientnet").state_dict(), tmp_path / "other.pth")
    with pytest.raises(ModelError, match=r"other\.pth: weights do not fit resnet10t"):
        create_model("resnet10t", num_classes=3, pretrained_file=tmp_path / "other.pth")
    with pytest.raises(ModelError, match="pretrained_file not found"):
        create_model("resnet10t", num_classes=3, pretrained_file=tmp_path / "missing.pth")


def test_required_pretrained_weights_fail_clearly_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network")

    monkeypatch.setattr(
        timm, "create_model", lambda *a, pretrained=False, **k: offline() if pretrained else None
    )
    with pytest.raises(ModelError, match="--pretrained-file"):
        create_model("resnet10t", num_classes=3, pretrained="true")


def test_stage_one_freezes_all_but_the_head() -> None:
    model, _ = create_model("resnet10t", num_classes=3, pretrained="false")
    set_backbone_frozen(model, True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    set_train_mode(model, frozen=True)
    assert not model.bn1.training if hasattr(model, "bn1") else not model.conv1[1].training
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import comp.models as models

    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.warns(UserWarning, match="training from random init"):
        _, source = create_model("resnet10t", num_classes=3, pretrained="auto")
    assert source == "random"
    # The file name timm's pretrained_cfg url points at, as a previous online run would have cached it.
    url = timm.models.get_pretrained_cfg("resnet10t").url  # type: ignore[union-attr]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    donor = timm.create_model("resnet10t")
    torch.save(donor.state_dict(), tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1])
    model, source = create_model("resnet10t", num_classes=3, pretrained="auto")
    assert source.startswith("cache:")
    assert torch.equal(model.conv1[0].weight, donor.conv1[0].weight)
