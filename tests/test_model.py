import pytest
import torch
import torchvision

from lungseg.config import ModelConfig
from lungseg.model import WeightsNotFoundError, WeightsUnusableError, build_model, imagenet_weights_path


def config(encoder: str = "resnet18", weights: str | None = None) -> ModelConfig:
    return ModelConfig(encoder=encoder, encoder_weights=weights, decoder_channels=(32, 16, 16, 8, 8),
                       batch_norm=True, input_mean=0.5, input_std=0.25)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, tmp_path):
    """Any attempt to download weights fails the test; the hub cache is an empty temporary folder."""
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_output_shape_equals_input_shape_and_backward_runs(encoder):
    torch.manual_seed(0)
    model = build_model(config(encoder), in_channels=1)
    images = torch.rand(2, 1, 64, 64)  # (B, C, S, S)
    logits = model(images)
    assert logits.shape == (2, 1, 64, 64)
    logits.mean().backward()
    assert model.stem[0].weight.grad is not None and model.head.weight.grad is not None


def test_first_convolution_takes_the_input_channels():
    model = build_model(config(), in_channels=3).eval()
    assert model.stem[0].in_channels == 3
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_missing_imagenet_weights_fail_with_the_place_to_put_them():
    with pytest.raises(WeightsNotFoundError) as err:
        build_model(config(weights="imagenet"), in_channels=1)
    assert str(imagenet_weights_path("resnet18")) in str(err.value)
    assert "resnet18-f37072fd.pth" in str(err.value)


def test_missing_local_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        build_model(config(weights=str(tmp_path / "nope.pth")), in_channels=1)


def test_a_weights_file_that_is_not_a_resnet_state_dict_is_one_line_naming_the_param(tmp_path):
    (tmp_path / "README.md").write_text("# not weights")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    for name, problem in (("README.md", "not a PyTorch state_dict file"),
                          ("other.pth", r"not a torchvision ResNet state_dict \(no conv1.weight\)"),
                          ("list.pth", "holds a list, not a state_dict")):
        with pytest.raises(WeightsUnusableError, match=f"model.encoder_weights .*{name}: {problem}"):
            build_model(config(weights=str(tmp_path / name)), in_channels=1)


def test_local_weights_file_is_loaded_and_first_conv_adapted(tmp_path):
    torch.manual_seed(1)
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    model = build_model(config(weights=str(path)), in_channels=1)
    expected = resnet.conv1.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(model.stem[0].weight, expected)
    assert torch.equal(model.layers[3][1].conv2.weight, resnet.layer4[1].conv2.weight)


def test_imagenet_weights_from_the_hub_cache_are_used(tmp_path):
    resnet = torchvision.models.resnet18(weights=None)
    path = imagenet_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(resnet.state_dict(), path)
    model = build_model(config(weights="imagenet"), in_channels=1)
    assert torch.equal(model.layers[0][0].conv1.weight, resnet.layer1[0].conv1.weight)
