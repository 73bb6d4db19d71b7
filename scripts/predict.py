"""Classify images with a fine-tuned checkpoint: top-k classes with probabilities, and the arena's inference peak."""

from __future__ import annotations

import argparse
import json
import sys

from tinytrain.checkpoint import load_trained_model
from tinytrain.cli import add_debug_flag, run_script
from tinytrain.predict import Predictor

DEFAULT_TOP_K = 5


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Classify image files with the model a fine-tuning run saved (scripts/finetune_cifar.py writes "
                    "checkpoint.h5 to its --output-dir). The checkpoint alone describes the model: its layers, "
                    "resolution and class names. Each image (.jpg/.jpeg/.png, any size) is centre-cropped to a "
                    "square and resized to the model's resolution, as training images are, and run by the training "
                    "engine inside the run's own arena, in its memory schedule; the arena's measured inference peak "
                    "is printed after the predictions. Every image is read before the first is classified.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to classify")
    parser.add_argument("--checkpoint", required=True, help="checkpoint.h5 of a fine-tuning run")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                        help=f"classes to print per image, the most probable first (default {DEFAULT_TOP_K}, or "
                             "all the model's classes if it has fewer)")
    parser.add_argument("--arena-bytes", type=int,
                        help="arena capacity in bytes (default: the arena the run trained in)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k {args.top_k}: must be at least 1")
    if args.arena_bytes is not None and args.arena_bytes < 4096:
        parser.error(f"--arena-bytes {args.arena_bytes}: must be at least 4,096 bytes")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_script(lambda: predict(args), args.debug)


def predict(args) -> int:
    model = load_trained_model(args.checkpoint)
    predictor = Predictor(model, args.arena_bytes)
    images = predictor.read_images(args.images)
    top_k = min(args.top_k, len(model.class_names))
    predictions = predictor.predict(args.images, images, top_k)
    schedule = model.memory_schedule.describe(model.graph)
    if args.json:
        print(json.dumps({
            "checkpoint": args.checkpoint,
            "resolution": predictor.resolution,
            "class_names": list(model.class_names),
            "predictions": [{"image": prediction.image,
                             "top": [{"class": name, "probability": probability}
                                     for name, probability in prediction.top]} for prediction in predictions],
            "arena_bytes": predictor.arena.capacity,
            "memory_schedule": schedule,
            "inference_peak_bytes": predictor.peak_bytes,
        }, indent=2))
        return 0
    print(f"{args.checkpoint}: {len(model.class_names)} classes at {predictor.resolution}x{predictor.resolution}, "
          f"step {model.step:,}")
    width = max(len(name) for name in model.class_names)
    for prediction in predictions:
        print(prediction.image)
        for name, probability in prediction.top:
            print(f"  {name:<{width}}  {probability:.4f}")
    print(f"inference peak {predictor.peak_bytes:,} B in the {predictor.arena.capacity:,} B arena ({schedule})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
