"""Per-image input pipeline on uint8 HWC images: random crop + flip, bilinear resize, and a seeded epoch stream.

Each function writes into an `out` its caller owns, as a device would with its one input buffer; nothing here
allocates per image beyond NumPy's view objects.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tinytrain.kernels.resize import PRECISION_BITS, resample_columns, resample_rows

# Pillow's resampling arithmetic (libImaging/Resample.c): coefficients are fixed-point with 22 fractional bits
# (PRECISION_BITS = 32 - 8 - 2) and every pass rounds half up to uint8 (kernels/resize.py).
SUBSET_STREAM, ORDER_STREAM, AUGMENT_STREAM = 0, 1, 2  # independent random streams of one seed


def random_crop_flip(out: np.ndarray, image: np.ndarray, rng: np.random.Generator, padding: int = 4) -> None:
    """out (h, w, C) = a random h x w window of `image` (H, W, C) zero-padded by `padding`, mirrored left-right with
    probability 1/2: the standard CIFAR augmentation (He et al. 2016, sec. 4.2) for h, w = H, W = 32, padding 4.

    Three draws from `rng` per call, always in this order: top offset, left offset, flip.
    """
    height, width, _ = image.shape
    out_height, out_width, _ = out.shape
    top = int(rng.integers(height + 2 * padding - out_height + 1)) - padding  # window origin in image coordinates
    left = int(rng.integers(width + 2 * padding - out_width + 1)) - padding
    flip = bool(rng.random() < 0.5)
    # out[y, x] = image[top + y, left + x] where that is inside the image, else 0
    y0, y1 = max(0, -top), min(out_height, height - top)
    x0, x1 = max(0, -left), min(out_width, width - left)
    out.fill(0)
    window = image[top + y0 : top + y1, left + x0 : left + x1]  # a view
    if flip:  # mirrored, column x of the unflipped window lands at out_width - 1 - x
        out[y0:y1, out_width - x1 : out_width - x0] = window[:, ::-1]
    else:
        out[y0:y1, x0:x1] = window


# ---------------------------------------------------------------- bilinear resize ----------------------------------


def bilinear_coefficients(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) int64 matrix of Pillow's BILINEAR weights in fixed point (a row sums to about 2**22).

    Half-pixel centres: output pixel i samples input position (i + 0.5) * in_size / out_size - 0.5 (torch's
    align_corners=False). Upsampling weighs the two nearest pixels linearly; downsampling widens the triangle by the
    scale (Pillow antialiases; torch's antialias=False would not). Weights are renormalised where the window leaves
    the image. This follows precompute_coeffs and normalize_coeffs_8bpc in Pillow's src/libImaging/Resample.c step
    for step, in the same double arithmetic, so the integers are Pillow's.
    """
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = 1.0 * filter_scale  # the triangle's support is 1 input pixel, widened when downsampling
    inverse = 1.0 / filter_scale
    matrix = np.zeros((out_size, in_size), dtype=np.int64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        first = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C's (int) does
        stop = min(int(center + support + 0.5), in_size)
        weights = [max(0.0, 1.0 - abs((x - center + 0.5) * inverse)) for x in range(first, stop)]
        total = 0.0
        for weight in weights:  # in order, as Pillow does (Python >= 3.12's sum() would compensate the rounding)
            total += weight
        for x, weight in zip(range(first, stop), weights):
            matrix[i, x] = int((weight / total if total else weight) * (1 << PRECISION_BITS) + 0.5)
    return matrix


@dataclass(frozen=True, eq=False)
class AxisTaps:
    """One axis of a resize as T taps: output pixel i = sum_t coefficients[t, i] * input pixel indices[t, i]."""

    indices: np.ndarray  # (T, out) intp; a padding tap reads pixel 0 with coefficient 0
    coefficients: np.ndarray  # (T, out) int32, Pillow's fixed-point weights


def bilinear_taps(in_size: int, out_size: int) -> AxisTaps:
    """The non-zero entries of bilinear_coefficients, row by row: 2 taps when upsampling, more when downsampling."""
    matrix = bilinear_coefficients(in_size, out_size)
    taps = max(1, int((matrix != 0).sum(axis=1).max()))
    indices = np.zeros((taps, out_size), dtype=np.intp)
    coefficients = np.zeros((taps, out_size), dtype=np.int32)
    for i, row in enumerate(matrix):
        (columns,) = np.nonzero(row)
        indices[: len(columns), i] = columns
        coefficients[: len(columns), i] = row[columns]
    return AxisTaps(indices, coefficients)


@dataclass(frozen=True, eq=False)
class ResizeTable:
    """The taps of a resize between one (H, W, C) shape pair, and the buffers its two passes use."""

    columns: AxisTaps  # along W: the first pass
    rows: AxisTaps  # along H: the second pass
    between: np.ndarray  # (H, w, C) uint8: the first pass's result, rounded as Pillow rounds it
    column_sums: np.ndarray  # (w, C) int32 scratch of the first pass
    row_sums: np.ndarray  # (w * C,) int32 scratch of the second pass


@functools.lru_cache(maxsize=16)
def resize_table(in_shape: tuple[int, int, int], out_shape: tuple[int, int, int]) -> ResizeTable:
    (in_height, in_width, channels), (out_height, out_width, _) = in_shape, out_shape
    return ResizeTable(
        columns=bilinear_taps(in_width, out_width),
        rows=bilinear_taps(in_height, out_height),
        between=np.empty((in_height, out_width, channels), dtype=np.uint8),
        column_sums=np.empty((out_width, channels), dtype=np.int32),
        row_sums=np.empty(out_width * channels, dtype=np.int32),
    )


def resize_bilinear(out: np.ndarray, image: np.ndarray) -> None:
    """out (h, w, C) uint8 = `image` (H, W, C) uint8 resized bilinearly, as PIL's Image.resize(BILINEAR) does.

    Two separable passes in Pillow's fixed-point arithmetic, along W first and rounded to uint8 in between, as
    Pillow < 13 always does and Pillow 13 does unless it shrinks the height much more than the width: so the result
    is bit-identical to Pillow whenever the height is not reduced (every upsampling to the model's resolution), and
    within 1 grey level otherwise. Taps and buffers are cached per shape pair (resize_table): not thread-safe.
    `out` is C-contiguous: the second pass writes it as (h, w * C) rows.
    """
    if not out.flags.c_contiguous:
        raise ValueError("resize_bilinear writes a C-contiguous out only")
    table = resize_table(image.shape, out.shape)
    resample_columns(table.between, image, table.columns.indices, table.columns.coefficients, table.column_sums)
    height, width, channels = out.shape
    resample_rows(out.reshape(height, width * channels), table.between.reshape(-1, width * channels),
                  table.rows.indices, table.rows.coefficients, table.row_sums)


# ---------------------------------------------------------------- epoch stream -------------------------------------


class Augmenter:
    """Yields (image (R, R, C) uint8, label) for an epoch: a seeded order, optional crop + flip, resized to R.

    Reproducible: the subset comes from `seed` alone; epoch e's order and augmentation from (seed, e), on separate
    streams, so switching augmentation on or off leaves the order unchanged. The image yielded is one buffer reused
    for every sample, as on a device: use or copy it before taking the next.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        resolution: int,
        augment: bool = False,
        shuffle: bool = True,
        subset: int | None = None,
        seed: int = 0,
        padding: int = 4,
    ):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if subset is not None and not 0 < subset <= len(images):
            raise ValueError(f"subset must be in 1..{len(images)}, got {subset}")
        self.images = images  # (N, H, W, C) uint8
        self.labels = labels  # (N,)
        self.augment = augment
        self.shuffle = shuffle
        self.seed = seed
        self.padding = padding
        if subset is None:
            self.indices = np.arange(len(images))
        else:  # one fixed random subset for every epoch, kept in dataset order
            rng = np.random.default_rng([seed, SUBSET_STREAM])
            self.indices = np.sort(rng.choice(len(images), size=subset, replace=False))
        self._cropped = np.empty(images.shape[1:], dtype=np.uint8)  # (H, W, C)
        self._out = np.empty((resolution, resolution, images.shape[3]), dtype=np.uint8)  # (R, R, C)

    def __len__(self) -> int:
        return len(self.indices)

    def order(self, epoch: int) -> np.ndarray:
        """Dataset indices in the order epoch `epoch` visits them."""
        if not self.shuffle:
            return self.indices
        return np.random.default_rng([self.seed, ORDER_STREAM, epoch]).permutation(self.indices)

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, int]]:
        rng = np.random.default_rng([self.seed, AUGMENT_STREAM, epoch])
        for index in self.order(epoch):
            image = self.images[index]
            if self.augment:
                random_crop_flip(self._cropped, image, rng, self.padding)
                image = self._cropped
            resize_bilinear(self._out, image)
            yield self._out, int(self.labels[index])
