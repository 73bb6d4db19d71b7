"""Where a checkpoint's int8 export loses agreement with float: its weights, its activations, tensor by tensor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinytrain.checkpoint import load_trained_model
from tinytrain.cli import add_debug_flag, run_script
from tinytrain.tflite.error_budget import describe_error_budget, measure_error_budget
from tinytrain.tflite.export import DEFAULT_CALIBRATION_IMAGES, prepare_int8
from tinytrain.tflite.run_data import calibration_images, first_test_images


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Measure what int8 quantization does to a fine-tuning checkpoint's logits, emulated in float on "
                    "the graph scripts/export_tflite.py --int8 quantizes, calibrated the same way: the int8 weights "
                    "alone, every activation on its int8 grid alone, both, and each activation rounded on its own, "
                    "largest first. Each figure is the RMS change of the logits relative to the float logits' RMS, "
                    "and the top-1 agreement with float, on the first --images test images of the run's own data. "
                    "It says which tensors an int8 model's disagreement comes from; the real runtimes' figures are "
                    "scripts/verify_tflite.py's.")
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.h5 of a fine-tuning run")
    parser.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                        help="training images (a seeded random subset) that calibrate the quantization, as the "
                             "export's --calibration-images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration subset, as the export's --seed")
    parser.add_argument("--images", type=int, default=200,
                        help="test images measured, from the first; each costs about as many forward passes as the "
                             "model has activations")
    parser.add_argument("--rows", type=int, default=15, help="activations listed, largest error first")
    parser.add_argument("--data-dir", help="folder holding CIFAR-10, for a CIFAR-10 run (default: $TINYTRAIN_DATA, "
                                           "then the user cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    for flag in ("calibration_images", "images", "rows"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.seed < 0:
        parser.error(f"--seed must be 0 or more, got {args.seed}")
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file; pass the checkpoint.h5 of a fine-tuning run")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> int:
        model = load_trained_model(args.checkpoint)
        resolution = model.graph.input_shape[1]
        progress = not args.no_progress
        calibration = calibration_images(model.config, resolution, args.calibration_images, args.seed,
                                         args.data_dir, progress)
        samples = first_test_images(model.config, resolution, args.images, args.data_dir, progress)
        graph, quantization = prepare_int8(model.graph, calibration, progress)
        inputs = (graph.preprocessing.normalize(image) for image, _ in samples.epoch(0))
        budget = measure_error_budget(graph, quantization, inputs, len(samples), progress)
        print(describe_error_budget(budget, args.rows))
        return 0

    return run_script(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
