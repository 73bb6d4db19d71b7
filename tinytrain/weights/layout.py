"""MobileNetV2-1.0 backbone as a table of conv+BatchNorm units: torchvision, TF-slim and Keras names, and shapes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# torchvision's inverted residual settings (expansion t, out channels c, repeats n, first stride s); width 1.0.
INVERTED_RESIDUAL_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280

# BatchNorm tensors: torchvision name -> TF-slim / Keras variable name.
BN_STATS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


@dataclass(frozen=True)
class ConvUnit:
    """One bias-free convolution followed by BatchNorm, named in each of the three formats.

    torch_conv / torch_bn: torchvision module paths (add ".weight" or a BN_STATS key).
    tfslim_scope: TF-slim scope with "/" written "_"; files are <scope>_weights.npy (depthwise:
        <scope>_depthwise_weights.npy) and <scope>_BatchNorm_<stat>.npy.
    keras_conv / keras_bn: Keras layer names, first as in keras.applications today, then as in the 2018 release
        of the .h5 files (JonathanCMitchell's converter, which the published file still uses).
    """

    torch_conv: str
    torch_bn: str
    tfslim_scope: str
    keras_conv: tuple[str, ...]
    keras_bn: tuple[str, ...]
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    depthwise: bool

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """Torch layout (K, C/groups, kh, kw)."""
        k = self.kernel_size
        return (self.out_channels, 1 if self.depthwise else self.in_channels, k, k)

    @property
    def tf_weight_shape(self) -> tuple[int, int, int, int]:
        """TF layout: HWIO for convolutions, (kh, kw, C, multiplier 1) for depthwise."""
        k = self.kernel_size
        return (k, k, self.in_channels, 1) if self.depthwise else (k, k, self.in_channels, self.out_channels)

    @property
    def tfslim_weight_file(self) -> str:
        return f"{self.tfslim_scope}_{'depthwise_weights' if self.depthwise else 'weights'}.npy"


def _block_unit(
    torch_names: tuple[str, str],
    names: tuple[str, str, str],
    kind: str,
    in_channels: int,
    out_channels: int,
    stride: int,
) -> ConvUnit:
    """One unit of an inverted residual block; names = (TF-slim scope, current Keras prefix, 2018 Keras infix)."""
    scope, keras_prefix, keras_2018 = names
    return ConvUnit(
        *torch_names,
        tfslim_scope=f"{scope}_{kind}",
        keras_conv=(f"{keras_prefix}{kind}", f"mobl{keras_2018}_{kind}"),
        keras_bn=(f"{keras_prefix}{kind}_BN", f"bn{keras_2018}_bn_{kind}"),
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=3 if kind == "depthwise" else 1,
        stride=stride,
        depthwise=kind == "depthwise",
    )


def _build_units() -> tuple[ConvUnit, ...]:
    units = [ConvUnit("features.0.0", "features.0.1", "Conv", ("Conv1",), ("bn_Conv1",), 3, STEM_CHANNELS, 3, 2, False)]
    in_channels = STEM_CHANNELS
    block = 0  # TF-slim / Keras block number; torchvision's features index is block + 1
    for expansion, out_channels, repeats, first_stride in INVERTED_RESIDUAL_SETTINGS:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            hidden = in_channels * expansion
            prefix = f"features.{block + 1}.conv"
            if block == 0:  # t = 1: no expand conv, so torchvision numbers the block's sub-modules from 0
                names = ("expanded_conv", "expanded_conv_", "0_conv_0")
                depthwise_torch, project_torch = (f"{prefix}.0.0", f"{prefix}.0.1"), (f"{prefix}.1", f"{prefix}.2")
            else:
                names = (f"expanded_conv_{block}", f"block_{block}_", f"{block}_conv_{block}")
                depthwise_torch, project_torch = (f"{prefix}.1.0", f"{prefix}.1.1"), (f"{prefix}.2", f"{prefix}.3")
                expand_torch = (f"{prefix}.0.0", f"{prefix}.0.1")
                units.append(_block_unit(expand_torch, names, "expand", in_channels, hidden, 1))
            units.append(_block_unit(depthwise_torch, names, "depthwise", hidden, hidden, stride))
            units.append(_block_unit(project_torch, names, "project", hidden, out_channels, 1))
            in_channels = out_channels
            block += 1
    head = (f"features.{block + 1}.0", f"features.{block + 1}.1")
    units.append(ConvUnit(*head, "Conv_1", ("Conv_1",), ("Conv_1_bn",), in_channels, HEAD_CHANNELS, 1, 1, False))
    return tuple(units)


UNITS = _build_units()  # 52 units in forward order: stem, 17 inverted residual blocks, the 1x1 head conv


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every canonical tensor key -> its shape (260 tensors, 2,223,872 weights + 34,112 running statistics)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for unit in UNITS:
        shapes[f"{unit.torch_conv}.weight"] = unit.weight_shape
        for stat in BN_STATS:
            shapes[f"{unit.torch_bn}.{stat}"] = (unit.out_channels,)
    return shapes


def torch_weight_from_tf(kernel: np.ndarray, depthwise: bool) -> np.ndarray:
    """TF kernel -> torch: HWIO (kh, kw, C, K) -> OIHW (K, C, kh, kw); depthwise (kh, kw, C, 1) -> (C, 1, kh, kw)."""
    return np.ascontiguousarray(kernel.transpose((2, 3, 0, 1) if depthwise else (3, 2, 0, 1)))
