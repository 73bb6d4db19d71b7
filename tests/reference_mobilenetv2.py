"""Independent PyTorch MobileNetV2-1.0 from torch.nn primitives, loaded with canonical (unfolded-BN) weights; test-only.

The module tree mirrors torchvision's mobilenet_v2, so state_dict() keys are torchvision's (features.*, classifier.1.*).
Padding is applied explicitly with F.pad from the actual input size, so the same model serves TF "SAME" weights
(TF-slim, Keras: pad bottom/right first) and symmetric ones (torchvision: k // 2 each side) at any resolution.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinytrain.weights import PretrainedWeights

# (expansion t, out channels c, repeats n, first stride s), as in torchvision and the MobileNetV2 paper (Table 2).
INVERTED_RESIDUAL_SETTINGS = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def pad_amounts(size: int, kernel_size: int, stride: int, padding: str) -> tuple[int, int]:
    """(before, after) padding of one spatial dimension.

    tf_same: TensorFlow's SAME rule, total = max((ceil(size / stride) - 1) * stride + k - size, 0), the odd pixel
    going after (bottom/right). symmetric: k // 2 on each side, as torchvision's Conv2d(padding=k // 2).
    """
    if padding == "symmetric":
        return kernel_size // 2, kernel_size // 2
    if padding != "tf_same":
        raise ValueError(f"unknown padding {padding!r}")
    total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation (keys .0 conv, .1 bn), with the padding done by F.pad before the conv."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int, eps: float, padding: str
    ):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=eps),
            nn.ReLU6(),
        )
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, K, H', W')
        top, bottom = pad_amounts(x.shape[2], self.kernel_size, self.stride, self.padding)
        left, right = pad_amounts(x.shape[3], self.kernel_size, self.stride, self.padding)
        return super().forward(F.pad(x, (left, right, top, bottom)))


class InvertedResidual(nn.Module):
    """Expand 1x1 (absent when t = 1), depthwise 3x3, linear project 1x1; identity shortcut when stride 1 and C = K."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int, eps: float, padding: str):
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, 1, 1, 1, eps, padding))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride, hidden, eps, padding),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels, eps=eps),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class PooledFeatures(nn.Sequential):
    """torchvision's `features` Sequential followed by global average pooling, so model.features(x) is (N, 1280)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) preprocessed -> (N, 1280)
        feature_map = super().forward(x)  # (N, 1280, ceil(H / 32), ceil(W / 32))
        return torch.flatten(F.adaptive_avg_pool2d(feature_map, 1), 1)


class ReferenceMobileNetV2(nn.Module):
    def __init__(self, num_classes: int, eps: float, padding: str):
        super().__init__()
        features: list[nn.Module] = [ConvBNReLU6(3, STEM_CHANNELS, 3, 2, 1, eps, padding)]
        in_channels = STEM_CHANNELS
        for expansion, out_channels, repeats, first_stride in INVERTED_RESIDUAL_SETTINGS:
            for repeat in range(repeats):
                stride = first_stride if repeat == 0 else 1
                features.append(InvertedResidual(in_channels, out_channels, stride, expansion, eps, padding))
                in_channels = out_channels
        features.append(ConvBNReLU6(in_channels, HEAD_CHANNELS, 1, 1, 1, eps, padding))
        self.features = PooledFeatures(*features)
        # Dropout (identity in eval) is kept only so the head's keys are torchvision's classifier.1.*.
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(HEAD_CHANNELS, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) preprocessed -> (N, K) logits
        return self.classifier(self.features(x))


def build_reference(weights: PretrainedWeights, head_weight: np.ndarray, head_bias: np.ndarray) -> ReferenceMobileNetV2:
    """The reference network in eval mode, loaded with `weights` (BN eps and padding from its preprocessing) and a head.

    head_weight (K, 1280), head_bias (K,). model(x) gives logits and model.features(x) the pooled 1280-d features.
    """
    num_classes = head_weight.shape[0]
    if head_weight.shape != (num_classes, HEAD_CHANNELS) or head_bias.shape != (num_classes,):
        raise ValueError(f"head shapes {head_weight.shape}, {head_bias.shape}; expected (K, {HEAD_CHANNELS}), (K,)")
    model = ReferenceMobileNetV2(num_classes, weights.preprocessing.bn_eps, weights.preprocessing.padding)
    state = {key: torch.from_numpy(np.array(value, dtype=np.float32)) for key, value in weights.tensors.items()}
    state["classifier.1.weight"] = torch.from_numpy(np.array(head_weight, dtype=np.float32))
    state["classifier.1.bias"] = torch.from_numpy(np.array(head_bias, dtype=np.float32))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # num_batches_tracked is BatchNorm's training step counter; the canonical form leaves it out on purpose.
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise KeyError(f"weights do not fit the reference: missing {missing}, unexpected {unexpected}")
    return model.eval()
