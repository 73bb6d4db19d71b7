"""Run exported .tflite models in TFLite Micro and LiteRT beside tinytrain's own inference of their checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinytrain.checkpoint import load_trained_model
from tinytrain.cli import add_debug_flag, run_script
from tinytrain.tflite.agreement import (ModelMismatch, describe_agreement, load_runtimes, measure_agreement,
                                        measure_inference_arena)
from tinytrain.tflite.packages import require
from tinytrain.tflite.run_data import first_test_images
from tinytrain.tflite.runtimes import RuntimeLoadError


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Measure exported models (scripts/export_tflite.py) in the real runtimes, TFLite Micro and LiteRT, "
                    "against tinytrain's float32 inference of the checkpoint they came from, on the first --images "
                    "test images of the run's own data (its --dataset folder, else CIFAR-10) at the checkpoint's "
                    "resolution. Prints, per model and runtime, the largest "
                    "logit error relative to the largest |tinytrain logit|, the top-1 agreement with tinytrain, the "
                    "share of images lost to ties (the runtime's largest logit shared by tinytrain's top-1 class "
                    "and an earlier class, which argmax picks: an int8 model has few logit levels) and the "
                    "accuracy; and the bytes of TFLite Micro's arena for one inference beside tinytrain's measured "
                    "float32 inference peak, layer by layer and in the run's memory schedule. Needs the test extras: "
                    "pip install -e \".[test]\".")
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.h5 the models were exported from")
    parser.add_argument("--model", type=Path, nargs="+", required=True, help="one or more .tflite files")
    parser.add_argument("--images", type=int, default=500,
                        help="test images compared, from the first (default 500; all of them, if the split has "
                             "fewer)")
    parser.add_argument("--data-dir", help="folder holding CIFAR-10, for a CIFAR-10 run (default: $TINYTRAIN_DATA, "
                                           "then the user cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be at least 1, got {args.images}")
    for flag, path in [("--checkpoint", args.checkpoint)] + [("--model", path) for path in args.model]:
        if not path.is_file():
            parser.error(f"{flag} {path}: no such file")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> int:
        require("tflite_micro")
        require("ai_edge_litert")
        model = load_trained_model(args.checkpoint)
        flatbuffers = {path: path.read_bytes() for path in args.model}
        loaded = {}
        for path, flatbuffer in flatbuffers.items():  # every model refused or accepted before any is compared
            try:
                loaded[path] = load_runtimes(model.graph, flatbuffer)
            except (ModelMismatch, RuntimeLoadError) as error:
                raise type(error)(f"--model {path}: {error}") from error
        samples = first_test_images(model.config, model.graph.input_shape[1], args.images, args.data_dir,
                                    progress=not args.no_progress)
        for path, flatbuffer in flatbuffers.items():
            agreement = measure_agreement(model.graph, loaded[path], samples.epoch(0), len(samples),
                                          progress=not args.no_progress)
            arena = measure_inference_arena(model.graph, flatbuffer, model.memory_schedule)
            print(describe_agreement(str(path), agreement, arena))
        return 0

    return run_script(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
