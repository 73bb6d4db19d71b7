"""Camera frame to network input: uint8 (H, W, 3) pixels, normalised per channel into a float32 (3, H, W) view."""

from numba import njit


def _normalize_image_forward(out, image, scale, shift):
    """out (3, H, W) = image (H, W, 3) * scale[c] + shift[c]; scale = 1 / (255 std), shift = -mean / std."""
    height, width, channels = image.shape
    for c in range(channels):
        for y in range(height):
            for x in range(width):
                out[c, y, x] = image[y, x, c] * scale[c] + shift[c]


normalize_image_forward = njit(cache=True)(_normalize_image_forward)
