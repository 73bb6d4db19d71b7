"""The pixel-exact CIFAR-10 test images: their pixels, labels and test positions agree with the test split."""

import numpy as np

from tinytrain.data import load_cifar10, load_exact_subset


def test_exact_images_are_the_test_images_at_their_positions(data_dir, cache_dir):
    subset = load_exact_subset(data_dir)
    test = load_cifar10("test", data_dir=data_dir, cache_dir=cache_dir, progress=False)
    assert subset.images.shape == (len(subset.index), 32, 32, 3) and subset.images.dtype == np.uint8
    assert np.all(np.diff(subset.index) > 0)
    np.testing.assert_array_equal(subset.labels, test.labels[subset.index])
    # the test split here is a JPEG copy: its pixels are near the exact ones, not equal
    difference = np.abs(subset.images.astype(np.int16) - test.images[subset.index].astype(np.int16))
    assert 0 < difference.mean() < 8
    first = subset.below(100)
    assert len(first.index) > 0 and first.index.max() < 100
    np.testing.assert_array_equal(first.images, subset.images[:len(first.index)])


def test_no_file_no_subset(tmp_path):
    assert load_exact_subset(tmp_path) is None
