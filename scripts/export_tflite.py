"""Export a fine-tuned checkpoint as a TFLite flatbuffer: float32, or full-integer int8 as MCU deployments run it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinytrain.atomic import check_writable
from tinytrain.checkpoint import load_trained_model
from tinytrain.cli import add_debug_flag, run_script
from tinytrain.tflite.export import DEFAULT_CALIBRATION_IMAGES, describe_export, export_tflite
from tinytrain.tflite.packages import require
from tinytrain.tflite.run_data import calibration_images


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Write the model of a fine-tuning checkpoint (checkpoint.h5 of scripts/finetune_cifar.py) as a "
                    "TFLite flatbuffer that TFLite Micro and LiteRT run. float32 by default: the trained weights "
                    "with BatchNorm already folded, NHWC. With --int8: full-integer post-training quantization as "
                    "the TFLite int8 spec defines it (weights int8 per output channel, activations int8 per tensor, "
                    "biases int32), with activation ranges calibrated by running the float model in the arena on "
                    "--calibration-images training images of the run's own data (its --dataset folder, else "
                    "CIFAR-10); on the same images, the first layers' weights are fitted to the inputs the int8 "
                    "model gives them (more images fit more layers). The input is the preprocessed image, (pixel / "
                    "255 - mean) / std at the checkpoint's resolution, NHWC; an int8 model takes it as round(x / "
                    "scale) + zero_point, with the input scale and zero point the script prints. The output is the "
                    "logits. The file is written atomically. Needs the optional packages: pip install -e "
                    "\".[tflite]\".")
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.h5 of a fine-tuning run")
    parser.add_argument("--output", type=Path, required=True, help="the .tflite file to write")
    parser.add_argument("--int8", action="store_true", help="full-integer int8 instead of float32")
    parser.add_argument("--calibration-images", type=int, default=None,
                        help=f"--int8: training images (a seeded random subset) whose activation ranges set the "
                             f"quantization and on which the first layers are fitted (default "
                             f"{DEFAULT_CALIBRATION_IMAGES})")
    parser.add_argument("--seed", type=int, default=None, help="--int8: seed of the calibration subset (default 0)")
    parser.add_argument("--data-dir", help="--int8: folder holding CIFAR-10, for a CIFAR-10 run (default: "
                                           "$TINYTRAIN_DATA, then the user cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    for flag, value in (("--calibration-images", args.calibration_images), ("--seed", args.seed),
                        ("--data-dir", args.data_dir)):
        if value is not None and not args.int8:
            parser.error(f"{flag} is for calibrating the int8 model: add --int8, or leave it out")
    if args.calibration_images is None:
        args.calibration_images = DEFAULT_CALIBRATION_IMAGES
    if args.seed is None:
        args.seed = 0
    if args.calibration_images < 1:
        parser.error(f"--calibration-images must be at least 1, got {args.calibration_images}")
    if args.seed < 0:
        parser.error(f"--seed must be 0 or more, got {args.seed}")
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file; pass the checkpoint.h5 of a fine-tuning run")
    if args.output.is_dir():
        parser.error(f"--output {args.output} is a folder; give the path of the .tflite file to write")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> int:
        require("flatbuffers")
        require("tflite")
        check_writable(args.output)  # a bad --output is refused before minutes of calibration, not after
        model = load_trained_model(args.checkpoint)
        calibration = None
        if args.int8:
            calibration = calibration_images(model.config, model.graph.input_shape[1], args.calibration_images,
                                             args.seed, args.data_dir, progress=not args.no_progress)
        summary = export_tflite(model.graph, args.output, calibration, progress=not args.no_progress)
        print(describe_export(summary, model.class_names))
        return 0

    return run_script(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
