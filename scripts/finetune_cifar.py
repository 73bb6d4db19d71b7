"""Fine-tune pretrained MobileNetV2 on CIFAR-10 at batch 1 inside a byte arena (demo on the pixel-exact subset)."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from tqdm import tqdm

from tinytrain.arena import DEFAULT_CAPACITY, Arena
from tinytrain.engine import SGD, Engine
from tinytrain.memory import measure_training_step
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.paths import data_dir as resolve_data_dir
from tinytrain.plan import UpdatePlan, full_update
from tinytrain.weights import load_pretrained

SUBSET_FILE = "cifar10/cifar10_exact_subset.npz"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Fine-tune ImageNet MobileNetV2-1.0 with a new 10-class head on CIFAR-10, one image per step "
                    "(batch 1, as on a microcontroller), with every tensor of a step inside one byte arena. This "
                    f"demo trains the layers you name, fully, on the pixel-exact CIFAR-10 images in {SUBSET_FILE} "
                    "(5,170 train, 1,017 test) at 32x32. The full pipeline (whole dataset, sparse update "
                    "policies) is the next step of the project.")
    parser.add_argument("--data-dir", help="folder holding the weights and cifar10/ (default: $TINYTRAIN_DATA, "
                                           "then the user cache)")
    parser.add_argument("--train-images", type=int, default=2000, help="training images per epoch (default 2000)")
    parser.add_argument("--test-images", type=int, default=1017, help="test images to evaluate (default 1017, all)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the training images (default 1)")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    parser.add_argument("--train-layers", nargs="+", default=["classifier"],
                        help="layers whose weights and biases train, e.g. classifier features.17.project "
                             "(default: classifier)")
    parser.add_argument("--arena-bytes", type=int, default=DEFAULT_CAPACITY,
                        help=f"arena capacity in bytes (default {DEFAULT_CAPACITY:,}, 256 KiB)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the head initialisation and the shuffle")
    return parser.parse_args(argv)


def load_subset(folder):
    path = folder / SUBSET_FILE
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; put {SUBSET_FILE} under the data directory (--data-dir or "
                         "$TINYTRAIN_DATA)")
    arrays = np.load(path)

    def images(rows):  # CIFAR rows (N, 3072) = 1024 R, 1024 G, 1024 B -> (N, 32, 32, 3)
        return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()

    train = images(arrays["train_subset_data"]), arrays["train_labels"][arrays["train_subset_index"]]
    test = images(arrays["test_subset_data"]), arrays["test_labels"][arrays["test_subset_index"]]
    return train, test


def main(argv=None) -> int:
    args = parse_args(argv)
    folder = resolve_data_dir(args.data_dir)
    (train_images, train_labels), (test_images, test_labels) = load_subset(folder)
    graph = build_mobilenetv2(num_classes=10, resolution=32, weights=load_pretrained(data_dir=folder),
                              seed=args.seed)
    unknown = [name for name in args.train_layers if name not in {layer.name for layer in graph.weighted_layers}]
    if unknown:
        raise SystemExit(f"error: no trainable layer named {unknown}; choose from "
                         f"{', '.join(layer.name for layer in graph.weighted_layers)}")
    plan = UpdatePlan({name: full_update(graph.layer(name)) for name in args.train_layers})
    sgd = SGD(lr=args.lr)
    dry_run = measure_training_step(graph, plan, args.arena_bytes, sgd)  # fails here, not mid-run, if too big
    print(f"arena {args.arena_bytes:,} B: whole-step peak {dry_run.whole_step_peak_bytes:,} B, "
          f"feature memory {dry_run.feature_bytes:,} B")

    engine = Engine(graph, Arena(args.arena_bytes, tracing=False))
    rng = np.random.default_rng(args.seed)
    count = min(args.train_images, len(train_labels))
    started = time.perf_counter()
    for epoch in range(args.epochs):
        order = rng.permutation(len(train_labels))[:count]
        losses, correct = [], 0
        progress = tqdm(order, desc=f"epoch {epoch + 1}/{args.epochs}", unit="img")
        for index in progress:
            result = engine.train_step(train_images[index], int(train_labels[index]), plan, sgd)
            losses.append(result.loss)
            correct += result.prediction == train_labels[index]
            progress.set_postfix(loss=f"{np.mean(losses[-100:]):.3f}", acc=f"{correct / len(losses):.3f}")
    seconds_per_step = (time.perf_counter() - started) / max(1, count * args.epochs)

    count = min(args.test_images, len(test_labels))
    hits = sum(int(np.argmax(engine.infer(test_images[i])["classifier"])) == test_labels[i]
               for i in tqdm(range(count), desc="test", unit="img"))
    print(f"test accuracy {hits / count:.4f} on {count} pixel-exact CIFAR-10 test images; "
          f"{seconds_per_step * 1000:.1f} ms per training step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
