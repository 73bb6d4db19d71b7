"""How many pretrained MobileNetV2 features are alive on CIFAR-10 images at each input resolution."""

from __future__ import annotations

import argparse
import sys

import numpy as np
from tqdm import tqdm

from tinytrain.arena import Arena
from tinytrain.data import Augmenter
from tinytrain.engine import Engine
from tinytrain.memory import MEASURING_ARENA_BYTES
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.paths import data_dir as resolve_data_dir
from tinytrain.weights import load_pretrained

EXACT_SUBSET_FILE = "cifar10/cifar10_exact_subset.npz"


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
    arrays = np.load(folder / EXACT_SUBSET_FILE)
    rows = arrays["test_subset_data"][:args.images]
    images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()  # (N, 32, 32, 3)
    labels = arrays["test_labels"][arrays["test_subset_index"][:args.images]]
    weights = load_pretrained(data_dir=folder)
    print("| resolution | images with any live feature | mean live features (of 1,280) | largest head bias |")
    print("|---|---:|---:|---:|")
    for resolution in args.resolution:
        graph = build_mobilenetv2(resolution=resolution, weights=weights)
        engine = Engine(graph, Arena(MEASURING_ARENA_BYTES, tracing=False))
        batches = Augmenter(images, labels, resolution, augment=False, shuffle=False)
        live = np.array([np.count_nonzero(engine.infer(image, read=("pool",))["pool"])
                         for image, _ in tqdm(batches.epoch(0), total=len(batches), desc=f"{resolution}px")])
        print(f"| {resolution} | {np.mean(live > 0):.1%} | {live.mean():.1f} | "
              f"{graph.layer('features.18').bias.max():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
