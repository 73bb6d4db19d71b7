"""Prune channels of ImageNet MobileNetV2 (new 10-class head) by dependency group, ranked on CIFAR-10 calibration
images; save the smaller dense model and print its size, MACs and measured inference peak before and after."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinytrain.cli import DefaultsHelpFormatter
from tinytrain.data import DataError, load_cifar10
from tinytrain.graph import Graph
from tinytrain.memory import MEASURING_ARENA_BYTES, measure_inference
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.prune import (DEFAULT_GROUP_KINDS, GROUP_KINDS, calibration_set, channels_to_keep, find_channel_groups,
                             fit_probe_head, l2_importance, prune_graph, stage_count, taylor_importance)
from tinytrain.pruned_model import PrunedModelError, load_pruned, save_pruned
from tinytrain.weights import WeightsError, load_pretrained

CRITERIA = ("taylor", "l2")
HEADS = ("probe", "current")
NUM_CLASSES = 10  # CIFAR-10
STAGE_NAMES = ("16", "24", "32", "64", "96", "160", "320", "head")  # MobileNetV2's stages by output channels


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Structured channel pruning of ImageNet-pretrained MobileNetV2-1.0 with a new 10-class head. "
                    "Channels are removed by dependency group, found from the layer graph: a block's expanded "
                    "channels (expand-conv output, depthwise, project-conv input) go together; block outputs "
                    "joined by residual adds form one group per stage; the stem and head follow their consumers. "
                    "The result is a smaller dense model, written atomically to --output, that "
                    "tinytrain.pruned_model.load_pruned rebuilds at any resolution. Parameters, MACs and the inference "
                    "peak of the arena (measured, not computed) are printed before and after.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.3,
                        help="fraction of the channels of every pruned group to remove, in [0, 1)")
    parser.add_argument("--stage-ratios", type=float, nargs=len(STAGE_NAMES), metavar="R",
                        help="instead of --ratio, one fraction per stage, in order: the seven stages by output "
                             f"channels ({', '.join(STAGE_NAMES[:-1])}; a block's expanded channels belong to the "
                             "stage it writes into, the stem's to the first) and then the head")
    parser.add_argument("--groups", choices=GROUP_KINDS, nargs="+", default=list(DEFAULT_GROUP_KINDS),
                        help="which kinds of channel group to prune: expanded (inside a block), block_output (tied "
                             "by the residual adds of a stage), head (the 1280 channels the classifier reads)")
    parser.add_argument("--criterion", choices=CRITERIA, default="taylor",
                        help="channel importance: taylor (|activation x loss gradient| summed over pixels, then "
                             "summed over calibration images) or l2 (norm of the group's weights; needs no images)")
    parser.add_argument("--head", choices=HEADS, default="probe",
                        help="taylor only: whose loss gradient ranks channels: probe (a ridge-regression head fitted "
                             "on the calibration images' features) or current (the model's new random head); the "
                             "saved model keeps its own head either way")
    parser.add_argument("--calibration-images", type=int, default=256,
                        help="taylor only: CIFAR-10 training images to rank channels on, drawn at random by --seed")
    parser.add_argument("--resolution", type=int, default=128,
                        help="input side in pixels: calibration images are resized to it, and the table is measured "
                             "at it (the saved model loads at any resolution)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new head and of the calibration draw")
    parser.add_argument("--model", type=Path,
                        help="prune a model saved by this script instead of the pretrained weights (prune further)")
    parser.add_argument("--output", type=Path, default=Path("runs/prune/mobilenetv2_pruned.h5"),
                        help="where the pruned model goes (HDF5; written to a temporary file, then renamed)")
    parser.add_argument("--data-dir", help="folder holding the weights and cifar10/; when unset, $TINYTRAIN_DATA, "
                                           "then the user cache")
    args = parser.parse_args(argv)
    for ratio in args.stage_ratios or [args.ratio]:
        if not 0.0 <= ratio < 1.0:
            parser.error(f"pruning ratios must be in [0, 1) (a group keeps at least one channel), got {ratio}")
    if args.calibration_images < 1:
        parser.error(f"--calibration-images must be at least 1, got {args.calibration_images}")
    if args.resolution < 32:
        parser.error(f"--resolution must be at least 32 (five stride-2 stages), got {args.resolution}")
    if args.model is not None and not args.model.is_file():
        parser.error(f"--model {args.model}: no such file")
    return args


def model_row(label: str, graph: Graph) -> dict:
    parameters = sum(layer.weight.size + layer.bias.size for layer in graph.weighted_layers)
    peak = measure_inference(graph, MEASURING_ARENA_BYTES).whole_step_peak_bytes
    return {"model": label, "parameters": parameters, "macs": graph.macs(), "inference_peak_bytes": peak}


def print_table(before: dict, after: dict, resolution: int) -> None:
    print(f"MobileNetV2-1.0 (ImageNet), 10-class head, {resolution}x{resolution}, batch 1, float32. "
          "Inference peak counted by the arena.")
    print()
    print("| model | parameters | MACs | inference peak (B) |")
    print("|---|---:|---:|---:|")
    for row in (before, after):
        print(f"| {row['model']} | {row['parameters']:,} | {row['macs']:,} | {row['inference_peak_bytes']:,} |")
    print(f"| after / before | {after['parameters'] / before['parameters']:.1%} | "
          f"{after['macs'] / before['macs']:.1%} | "
          f"{after['inference_peak_bytes'] / before['inference_peak_bytes']:.1%} |")


def print_channels(groups, kept) -> None:
    """Channels per stage and kind of group, before -> after."""
    print("| stage | group kind | groups | channels before | channels after |")
    print("|---|---|---:|---:|---:|")
    for stage in range(stage_count(groups)):
        for kind in GROUP_KINDS:
            chosen = [group for group in groups if group.stage == stage and group.kind == kind]
            if chosen:
                before = sum(group.channels for group in chosen)
                after = sum(len(kept[group.name]) if group.name in kept else group.channels for group in chosen)
                name = STAGE_NAMES[stage] if stage < len(STAGE_NAMES) else str(stage)
                print(f"| {name} | {kind} | {len(chosen)} | {before:,} | {after:,} |")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.model is not None:
            graph = load_pruned(args.model, args.resolution)
        else:
            weights = load_pretrained(data_dir=args.data_dir)
            graph = build_mobilenetv2(NUM_CLASSES, args.resolution, weights=weights, seed=args.seed)
        all_groups = find_channel_groups(graph)
        if args.stage_ratios is not None and len(args.stage_ratios) != stage_count(all_groups):
            raise ValueError(f"--stage-ratios needs {stage_count(all_groups)} values for this model")
        groups = [group for group in all_groups if group.kind in args.groups]
        if args.criterion == "l2":
            importance = {group.name: l2_importance(graph, group) for group in groups}
        else:
            train = load_cifar10("train", data_dir=args.data_dir)
            if args.calibration_images > len(train):
                raise ValueError(f"--calibration-images {args.calibration_images} is more than the {len(train)} "
                                 "training images")
            calibration = calibration_set(train.images, train.labels, args.calibration_images, args.resolution,
                                          args.seed)
            scoring = fit_probe_head(graph, calibration, progress=True) if args.head == "probe" else graph
            importance = taylor_importance(scoring, groups, calibration, progress=True)
        ratio = args.stage_ratios if args.stage_ratios is not None else args.ratio
        kept = channels_to_keep(groups, importance, ratio)
        description = {"criterion": args.criterion, "ratio": ratio, "groups": args.groups, "seed": args.seed,
                       "resolution": args.resolution, "source": str(args.model) if args.model else "pretrained"}
        if args.criterion == "taylor":
            description.update(head=args.head, calibration_images=args.calibration_images)
        save_pruned(args.output, prune_graph(graph, all_groups, kept), kept, description)
        reloaded = load_pruned(args.output, args.resolution)  # the table's "after" is the file as others will load it
    except (WeightsError, DataError, PrunedModelError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"pruned {args.criterion} {', '.join(args.groups)} -> {args.output}")
    print()
    print_channels(all_groups, kept)
    print()
    print_table(model_row("before", graph), model_row("after", reloaded), args.resolution)
    return 0


if __name__ == "__main__":
    sys.exit(main())
