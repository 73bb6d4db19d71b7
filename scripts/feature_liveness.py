"""How many pretrained MobileNetV2 features are alive on CIFAR-10 images at each input resolution."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from tinytrain.data import EXACT_SUBSET_FILE, load_exact_subset
from tinytrain.feature_liveness import live_feature_counts
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.paths import data_dir as resolve_data_dir
from tinytrain.weights import load_pretrained


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Run the frozen ImageNet MobileNetV2-1.0 backbone on the first pixel-exact CIFAR-10 test images "
                    f"({EXACT_SUBSET_FILE}), resized (bilinear) to each resolution, and report how many of the "
                    "1,280 pooled features are non-zero after the head conv's ReLU6, with the largest folded bias "
                    "of that conv. It shows why fine-tuning at CIFAR's native 32x32 starts from dead features.")
    parser.add_argument("--resolution", type=int, nargs="+", default=[32, 64, 128], help="input side(s) in pixels")
    parser.add_argument("--images", type=int, default=200, help="how many test images (default 200)")
    parser.add_argument("--data-dir", help="folder holding the weights and cifar10/ (default: $TINYTRAIN_DATA)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    folder = resolve_data_dir(args.data_dir)
    subset = load_exact_subset(folder)
    if subset is None:
        print(f"error: {folder / EXACT_SUBSET_FILE} is missing; put it there or pass --data-dir", file=sys.stderr)
        return 1
    images = subset.images[:args.images]
    weights = load_pretrained(data_dir=folder)
    print("| resolution | images with any live feature | mean live features (of 1,280) | largest head bias |")
    print("|---|---:|---:|---:|")
    for resolution in args.resolution:
        graph = build_mobilenetv2(resolution=resolution, weights=weights)
        live = live_feature_counts(graph, images)
        print(f"| {resolution} | {np.mean(live > 0):.1%} | {live.mean():.1f} | "
              f"{graph.layer('features.18').bias.max():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
