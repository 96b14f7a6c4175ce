"""The MRNet-style classifier: one 2D CNN applied to every slice, features pooled over slices, a linear head.

The per-slice network is a basic-block ResNet (2D) in plain torch, with the module names, weights and initialisation
of MONAI's ``ResNet(block="basic", spatial_dims=2, conv1_t_stride=2, bias_downsample=False, feed_forward=False)``
(a test checks the two agree) and laid out like torchvision's, so ImageNet weights in that layout can initialise it
when the user supplies the file (``load_backbone``). Plain torch because classifying a knee must not wait for MONAI's
import (about 2 s of every `mskai classify`).
"""

from __future__ import annotations

import torch
from torch import nn

from mskai import MskaiError


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut (1x1 convolution + batch norm when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = (nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                           if stride != 1 or in_planes != planes else None)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        return self.act(out + shortcut)


class ResNet2d(nn.Module):
    """(N, channels, H, W) -> (N, widths[-1]) features: a 7x7 stride-2 stem, max pooling, four stages of
    ``layers[i]`` blocks of ``widths[i]`` channels (stride 2 from the second), global average pooling."""

    def __init__(self, in_channels: int, layers, widths):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.in_planes = widths[0]
        stages = []
        for i, (blocks, planes) in enumerate(zip(layers, widths)):
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(self.in_planes, planes, 2 if i > 0 and b == 0 else 1))
                self.in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:  # nothing to draw on the meta device
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


class MRNetStyle(nn.Module):
    """(batch, channels, slices, H, W) -> class logits (batch, n_classes).

    pooling: "max" (MRNet: the strongest slice per feature) or "attention" (a learned weight per slice).
    layers / widths: ResNet blocks per stage and channels per stage ((2, 2, 2, 2), (64, 128, 256, 512) is ResNet-18).
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 4, layers=(1, 1, 1, 1), widths=(16, 32, 64, 128),
                 pooling: str = "max", dropout: float = 0.2):
        super().__init__()
        if pooling not in ("max", "attention"):
            raise MskaiError(f"pooling must be max or attention, not {pooling!r}")
        if len(layers) != 4 or len(widths) != 4 or min(layers) < 1 or min(widths) < 1:
            raise MskaiError(f"layers and widths need four positive entries (one per stage), not {layers} and {widths}")
        self.pooling = pooling
        self.backbone = ResNet2d(in_channels, list(layers), list(widths))
        features = self.backbone.in_planes  # channels after the last stage
        self.attention = (nn.Sequential(nn.Linear(features, 64), nn.Tanh(), nn.Linear(64, 1))
                          if pooling == "attention" else None)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, n_classes)

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, channels, slices, H, W) -> (batch, slices, features)."""
        b, c, k, h, w = x.shape
        return self.backbone(x.transpose(1, 2).reshape(b * k, c, h, w)).view(b, k, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.slice_features(x)
        if self.attention is None:
            pooled = features.max(dim=1).values
        else:
            weights = torch.softmax(self.attention(features), dim=1)  # (batch, slices, 1)
            pooled = (weights * features).sum(dim=1)
        return self.head(self.dropout(pooled))

    @property
    def cam_layer(self) -> nn.Module:
        """The layer whose activations Grad-CAM explains: the third stage (8x8 per 128-pixel slice); the last
        stage's 4x4 maps are too coarse to find a ligament (on held-out knees 15 of 16 key slices on the ACL, and
        2.6x the CAM near it, against 13 of 16 with the last stage)."""
        return self.backbone.layer3


def load_backbone(net: MRNetStyle, path) -> list[str]:
    """Initialise the per-slice CNN from a user-supplied safetensors file in torchvision's ResNet layout (e.g.
    ImageNet ResNet-18 weights); the RGB stem is averaged to the network's channels. Returns the keys loaded.

    Never unpickles: safetensors only. Shapes must match the network (same layers and widths).
    """
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path))
    except Exception as exc:
        raise MskaiError(f"Cannot read backbone weights {path}: {type(exc).__name__}: {exc}") from None
    own = net.backbone.state_dict()
    stem = weights.get("conv1.weight")
    if stem is not None and stem.shape[1] != own["conv1.weight"].shape[1]:
        weights["conv1.weight"] = stem.mean(dim=1, keepdim=True).repeat(1, own["conv1.weight"].shape[1], 1, 1)
    usable = {k: v for k, v in weights.items() if k in own}
    wrong = [k for k, v in usable.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong or not usable:
        raise MskaiError(f"Backbone weights {path} do not fit this network ({'first mismatch: ' + wrong[0] if wrong else 'no matching layer names'}); "
                         "use ResNet-18 weights with --layers 2,2,2,2 --widths 64,128,256,512")
    net.backbone.load_state_dict(usable, strict=False)
    return sorted(usable)
