"""Visual backbones: PVT-v2 (through timm) and ResNet-50 (through torchvision).

Both return the four-level feature pyramid at strides 4/8/16/32 that every AVS decoder consumes.
Weights are never downloaded: `pretrained=False` always, and public weight files are converted by
`model.weight_import` and loaded from a local path by `model.build`.

PVT-v2: Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer" (2022).
ResNet: He et al., "Deep Residual Learning for Image Recognition" (2016).
"""

from __future__ import annotations

import timm
import torch
import torchvision
from torch import nn

from model.config import BACKBONE_CHANNELS


class PVTv2Encoder(nn.Module):
    """PVT-v2 b0/b1/b2/b5 without its classifier, keeping timm's parameter names."""

    def __init__(self, name: str, *, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        # num_classes=0 drops the classifier; the pooled head is never run (we take intermediates).
        self.body = timm.create_model(name, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate)
        self.channels = BACKBONE_CHANNELS[name]

    @property
    def weights_module(self) -> nn.Module:
        """The module whose state dict has timm's layout: what `avs weights import-pvt` writes."""
        return self.body

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [N, 3, H, W] normalised -> [F1 [N, c1, H/4, W/4], F2 (H/8), F3 (H/16), F4 (H/32)]."""
        x = self.body.patch_embed(x)  # [N, H/4, W/4, c1] (timm keeps NHWC until each stage ends)
        feats = []
        for stage in self.body.stages:
            x = stage(x)  # [N, c_i, H_i, W_i]: every stage returns NCHW
            feats.append(x)
        return feats


class ResNet50Encoder(nn.Module):
    """torchvision ResNet-50 trunk; its state dict keys match torchvision's file minus `fc`."""

    def __init__(self) -> None:
        super().__init__()
        net = torchvision.models.resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels = BACKBONE_CHANNELS["resnet50"]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [N, 3, H, W] normalised -> four maps of 256/512/1024/2048 channels at strides 4..32."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # [N, 64, H/4, W/4]
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f1, f2, f3, f4]


def build_visual_encoder(backbone: str, *, drop_path_rate: float) -> nn.Module:
    if backbone == "resnet50":
        return ResNet50Encoder()
    return PVTv2Encoder(backbone, drop_path_rate=drop_path_rate)
