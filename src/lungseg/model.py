"""The U-Net on torchvision's ResNet encoders: the only place the architecture lives.

Following "Deep Learning-Based Lung Segmentation using U-Net": a ResNet without its classifier as encoder
(first convolution replaced to take the input's channel count), a middle block of two conv + ReLU, a decoder
of up-convolutions each followed by conv + ReLU with skip connections, and a 1x1 convolution giving one
logit per pixel. Batch norm after each decoder conv is a param (on by default: it lets a from-scratch
encoder train in a few CPU epochs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision
from torch import nn

from lungseg.config import ModelConfig
from lungseg.encoders import ENCODER_CHANNELS
from lungseg.errors import UserError


class WeightsNotFoundError(UserError, FileNotFoundError):
    """Pretrained encoder weights were asked for but are not on disk; nothing is ever downloaded."""


class WeightsUnusableError(UserError, ValueError):
    """The encoder weights file is not a torchvision ResNet state_dict that fits the encoder."""


def imagenet_weights(encoder: str) -> torchvision.models.WeightsEnum:
    """torchvision's ImageNet weights entry for an encoder (its URL names the cached file)."""
    return torchvision.models.get_model_weights(encoder).IMAGENET1K_V1


def imagenet_weights_path(encoder: str) -> Path:
    """Where torchvision would cache the ImageNet weights file for this encoder."""
    filename = imagenet_weights(encoder).url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def resolve_encoder_weights(encoder: str, weights: str | None) -> Path | None:
    """None -> None; 'imagenet' -> torchvision's cache path; otherwise a local file path. Fails if missing."""
    if weights is None:
        return None
    if weights == "imagenet":
        path = imagenet_weights_path(encoder)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"ImageNet weights for {encoder} are not on disk: expected {path}. Nothing is downloaded at run "
                f"time: on a machine with internet fetch {imagenet_weights(encoder).url} and copy it to that path, or set "
                f"model.encoder_weights to the file's path, or to null to train from scratch."
            )
        return path
    path = Path(weights)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: encoder weights file not found (model.encoder_weights)")
    return path


def _conv_relu(in_channels: int, out_channels: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return layers


class DecoderBlock(nn.Module):
    """Up-convolution x2, concatenation with the skip features, then two conv + ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, batch_norm: bool):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.convs = nn.Sequential(
            *_conv_relu(out_channels + skip_channels, out_channels, batch_norm),
            *_conv_relu(out_channels, out_channels, batch_norm),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)  # (B, C_out, 2H, 2W)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class UNet(nn.Module):
    """ResNet U-Net: (B, C, S, S) float in 0..1 -> (B, 1, S, S) logits, S a multiple of 32.

    Input normalisation ((x - mean) / std) is part of the model, so the exported ONNX graph takes raw 0..1
    pixels and no consumer re-implements it.
    """

    def __init__(self, config: ModelConfig, in_channels: int):
        super().__init__()
        resnet = getattr(torchvision.models, config.encoder)(weights=None)
        self.register_buffer("input_mean", torch.tensor(config.input_mean))
        self.register_buffer("input_std", torch.tensor(config.input_std))
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False), resnet.bn1, resnet.relu
        )
        self.pool = resnet.maxpool
        self.layers = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
        skip_channels = ENCODER_CHANNELS[config.encoder]
        widths = config.decoder_channels
        self.middle = nn.Sequential(
            *_conv_relu(skip_channels[4], widths[0], config.batch_norm),
            *_conv_relu(widths[0], widths[0], config.batch_norm),
        )
        # Skips, deepest first: stride 16, 8, 4, 2, then full resolution without a skip.
        skips = (skip_channels[3], skip_channels[2], skip_channels[1], skip_channels[0], 0)
        block_inputs = (widths[0], widths[0], widths[1], widths[2], widths[3])
        self.decoder = nn.ModuleList(
            DecoderBlock(block_inputs[i], skips[i], widths[i], config.batch_norm) for i in range(5)
        )
        self.head = nn.Conv2d(widths[4], 1, kernel_size=1)

    def encoder_state_names(self) -> dict[str, str]:
        """Map torchvision ResNet state_dict prefixes to this module's, for loading pretrained weights."""
        return {"conv1.": "stem.0.", "bn1.": "stem.1.", **{f"layer{i + 1}.": f"layers.{i}." for i in range(4)}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.input_mean) / self.input_std
        features = [self.stem(x)]  # (B, 64, S/2, S/2)
        x = self.pool(features[0])
        for layer in self.layers:
            x = layer(x)
            features.append(x)  # strides 4, 8, 16, 32
        x = self.middle(features[4])  # (B, d0, S/32, S/32)
        skips = [features[3], features[2], features[1], features[0], None]
        for block, skip in zip(self.decoder, skips):
            x = block(x, skip)
        return self.head(x)  # (B, 1, S, S)


def load_encoder_weights(model: UNet, path: Path, in_channels: int) -> None:
    """Load a torchvision ResNet state_dict into the encoder; the 3-channel first conv is summed to fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a file torch saved, or one holding objects weights_only refuses
        raise WeightsUnusableError(f"model.encoder_weights {path}: not a PyTorch state_dict file "
                                   f"({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise WeightsUnusableError(f"model.encoder_weights {path}: holds a {type(state).__name__}, not a state_dict")
    renamed = {}
    for key, value in state.items():
        for prefix, target in model.encoder_state_names().items():
            if key.startswith(prefix):
                renamed[target + key[len(prefix):]] = value
    conv = renamed.get("stem.0.weight")
    if conv is None:
        raise WeightsUnusableError(f"model.encoder_weights {path}: not a torchvision ResNet state_dict (no "
                                   f"conv1.weight)")
    if conv.shape[1] != in_channels:
        # Keep the filters' response to a gray image: sum over RGB, spread evenly over the new channels.
        renamed["stem.0.weight"] = conv.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    encoder_missing = [k for k in missing if k.startswith(("stem.", "layers."))]
    if encoder_missing or unexpected:
        raise WeightsUnusableError(f"model.encoder_weights {path}: weights do not fit the encoder (missing "
                                   f"{encoder_missing[:3]}, unexpected {unexpected[:3]})")


def build_model(config: ModelConfig, in_channels: int) -> UNet:
    """The U-Net for this config; encoder weights from a local file when asked for (never downloaded)."""
    weights_path = resolve_encoder_weights(config.encoder, config.encoder_weights)
    model = UNet(config, in_channels)
    if weights_path is not None:
        load_encoder_weights(model, weights_path, in_channels)
    return model


def torch_runner(model: nn.Module, device: torch.device | str = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a PyTorch model as run_model for imaging.segment: (N, C, S, S) float32 -> (N, S, S) logits."""
    model = model.eval().to(device)

    @torch.no_grad()
    def run(inputs: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(inputs).to(device)).float()[:, 0].cpu().numpy()

    return run
