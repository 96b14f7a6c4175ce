"""The MRNet-style classifier: one 2D CNN applied to every slice, features pooled over slices, a linear head.

The per-slice network is MONAI's ResNet (2D) laid out like torchvision's (stride-2 stem, downsampling without
bias), so ImageNet weights in that layout can initialise it when the user supplies the file (``load_backbone``).
"""

from __future__ import annotations

import torch
from torch import nn

from mskai import MskaiError


class MRNetStyle(nn.Module):
    """(batch, channels, slices, H, W) -> class logits (batch, n_classes).

    pooling: "max" (MRNet: the strongest slice per feature) or "attention" (a learned weight per slice).
    layers / widths: ResNet blocks per stage and channels per stage ((2, 2, 2, 2), (64, 128, 256, 512) is ResNet-18).
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 4, layers=(1, 1, 1, 1), widths=(16, 32, 64, 128),
                 pooling: str = "max", dropout: float = 0.2):
        from monai.networks.nets import ResNet

        super().__init__()
        if pooling not in ("max", "attention"):
            raise MskaiError(f"pooling must be max or attention, not {pooling!r}")
        self.pooling = pooling
        self.backbone = ResNet(block="basic", layers=list(layers), block_inplanes=list(widths), spatial_dims=2,
                               n_input_channels=in_channels, conv1_t_stride=2, bias_downsample=False,
                               feed_forward=False)
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
