"""Fine-tune ImageNet MobileNetV2 on CIFAR-10, or on a folder of your own images, at batch 1 with a sparse update
policy inside a byte arena."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinytrain.cli import DefaultsHelpFormatter, add_debug_flag, run_script
from tinytrain.cpu import thread_contention_warning
from tinytrain.curves import INSTALL_HINT, plotting_available, write_curves
from tinytrain.data import DEFAULT_TEST_FRACTION
from tinytrain.sparse import POLICIES
from tinytrain.train import RunAlreadyFinished, TrainConfig, Trainer, block_or_none, validate_config

DEFAULTS = TrainConfig()


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Fine-tune ImageNet-pretrained MobileNetV2-1.0 (with a new head) on CIFAR-10, or with --dataset on "
                    "your own images, one image per "
                    "step (batch 1, as on a microcontroller). Every tensor a step writes lives in one byte arena, "
                    "so the whole-step peak and the feature memory (what forward saves for backward) are measured, "
                    "not estimated. The default policy is the dynamic gradient sparse update: front stages frozen, "
                    "and in the later layers a new random subset of input channels every step, with smaller ratios "
                    "in later layers, so that at most --ratio of all conv weights change per step. Images are "
                    "upscaled to --resolution: at CIFAR's native 32x32 the ImageNet features are nearly dead (the "
                    "pretrained head's folded biases are all below -3.6), at 128x128 they are alive. The defaults "
                    "are the best measured configuration (README, Results): 16 epochs at 128x128 (3, 5 and 8 "
                    "measured lower), lr 0.001 and the convs of blocks 12 on trained, each the best of a "
                    "two-seed sweep, and biases from block 7 (block 6, the earliest whose whole step fits the "
                    "262,144-byte arena there, measured no better). "
                    "The run writes checkpoint.h5 (every --checkpoint-every steps, at each epoch's end, and when "
                    "stopped by Ctrl-C or SIGTERM) and, at the end, results.json to --output-dir; --resume continues "
                    "a stopped run exactly where it stopped. Every value is checked, and the output folder tried, "
                    "before any data is loaded. A run that diverges (non-finite or exploding weights, or a loss far "
                    "above its running level) stops with an error naming the last good checkpoint.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--model", help="a pruned model file written by scripts/prune_model.py (default: the "
                                        "pretrained MobileNetV2-1.0); --ratio is then a fraction of its conv weights")
    parser.add_argument("--weights", metavar="PATH.tflite",
                        help="start from the MobileNetV2-1.0 in this .tflite (int8 dequantized, or float32), the "
                             "model a device already runs, instead of the TF-slim ImageNet weights")
    parser.add_argument("--dataset", metavar="PATH",
                        help="train on your own images instead of CIFAR-10: a folder or .tar/.tar.gz archive of "
                             "<class>/<image> folders (split at random, see --test-fraction) or of "
                             "train/<class>/<image> and test/<class>/<image>. Class names are the folder names; "
                             "images are .jpg/.jpeg/.png of any size, centre-cropped to a square and resized to "
                             "--resolution. The decoded images are cached, and an empty class, an unreadable image or "
                             "a class missing from a split is refused before training starts")
    parser.add_argument("--test-fraction", type=float,
                        help="--dataset of <class>/ folders: the fraction of each class's images held out for testing, "
                             f"drawn from --seed; {DEFAULT_TEST_FRACTION} when left out")
    parser.add_argument("--policy", choices=POLICIES, default=DEFAULTS.policy,
                        help="which layers/channels train each step")
    parser.add_argument("--ratio", type=float, default=DEFAULTS.ratio,
                        help="target fraction of all conv weights updated per step (static, dynamic)")
    parser.add_argument("--last-k", type=int, default=DEFAULTS.last_k, help="layers trained by last-k")
    parser.add_argument("--first-block", type=int, default=DEFAULTS.first_block,
                        help="earliest block whose convs train under static/dynamic; earlier stages stay frozen")
    parser.add_argument("--ratio-decay", type=float, default=DEFAULTS.ratio_decay,
                        help="channel ratio of the first trained layer over that of the last (static, dynamic)")
    parser.add_argument("--bias-from-block", type=block_or_none, default=DEFAULTS.bias_from_block,
                        help="static, dynamic: also train every bias from this block on, or 'none'. Biases are not "
                             "conv weights; they need backward through those blocks (1-bit ReLU6 masks) but no "
                             "saved inputs. On 5,000 images (2 epochs, two seeds, README): from block 7 76.85%%, 6 "
                             "76.50%%, 4 76.97%%, 2 77.90%%, 0 77.10%%. Block 6 is the earliest whose whole step fits "
                             "256 KiB at 128x128")
    parser.add_argument("--resolution", type=int, default=DEFAULTS.resolution,
                        help="input side in pixels; images are resized (bilinear) to it")
    parser.add_argument("--arena-bytes", type=int, default=DEFAULTS.arena_bytes,
                        help="arena capacity in bytes (default 262,144: 256 KiB). The trainer picks the fastest "
                             "memory schedule whose dry-run step fits it (layer by layer, depthwise in place, or the "
                             "frozen front in patches); if none fits, it fails before training starts")
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="passes over the training set")
    parser.add_argument("--micro-batch", type=int, default=DEFAULTS.micro_batch,
                        help="samples per SGD step: their gradients are summed in the arena (counted as wgrad) and "
                             "applied averaged; must divide the training images per epoch and --checkpoint-every")
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak SGD learning rate")
    parser.add_argument("--momentum", type=float, default=DEFAULTS.momentum,
                        help="SGD momentum (its buffers live in the arena)")
    parser.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay, help="SGD weight decay")
    parser.add_argument("--warmup-steps", type=int, default=DEFAULTS.warmup_steps,
                        help="steps of linear learning-rate warm-up before the cosine decay")
    parser.add_argument("--label-smoothing", type=float, default=DEFAULTS.label_smoothing,
                        help="the loss's target puts 1 - this on the image's class and this / classes on every class "
                             "(Szegedy et al. 2016); 0: plain cross-entropy")
    parser.add_argument("--no-augment", action="store_true", help="no random crop (4-pixel padding) and flip")
    parser.add_argument("--train-subset", type=int, help="train on this many images (a fixed random subset)")
    parser.add_argument("--test-subset", type=int, help="evaluate on the first this many test images")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the head, shuffling and draws")
    parser.add_argument("--checkpoint-every", type=int, default=DEFAULTS.checkpoint_every,
                        help="steps between checkpoints (one is also written at the end of every epoch)")
    parser.add_argument("--output-dir", default="runs/finetune", help="where results.json and checkpoint.h5 go")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --output-dir from its checkpoint.h5, with the same flags; a "
                             "finished run is left as it is")
    parser.add_argument("--data-dir", help="folder holding the weights and cifar10/ (default: $TINYTRAIN_DATA, "
                                           "then the user cache)")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = TrainConfig(
        model=args.model, weights=args.weights, dataset=args.dataset, test_fraction=args.test_fraction,
        policy=args.policy, ratio=args.ratio,
        last_k=args.last_k, first_block=args.first_block,
        ratio_decay=args.ratio_decay, bias_from_block=args.bias_from_block,
        resolution=args.resolution, arena_bytes=args.arena_bytes, epochs=args.epochs, micro_batch=args.micro_batch,
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        label_smoothing=args.label_smoothing, augment=not args.no_augment, train_subset=args.train_subset,
        test_subset=args.test_subset, seed=args.seed, checkpoint_every=args.checkpoint_every)
    return run_script(lambda: train(config, args), args.debug)


def train(config: TrainConfig, args) -> int:
    validate_config(config)
    warning = thread_contention_warning()
    if warning:
        print(warning, file=sys.stderr)
    try:
        trainer = Trainer(config, Path(args.output_dir), data_dir=args.data_dir, resume=args.resume)
    except RunAlreadyFinished as finished:
        print(finished)
        return 0
    if config.dataset is not None:
        print(f"dataset {trainer.folder.path}: {trainer.folder.split_description}; {trainer.split_sizes['train']:,} "
              f"training and {trainer.split_sizes['test']:,} test images; classes: {', '.join(trainer.class_names)}")
    print(f"dry run in {config.arena_bytes:,} B ({trainer.memory_schedule.describe(trainer.graph)}): whole-step "
          f"peak {trainer.dry_run.whole_step_peak_bytes:,} B, high water {trainer.dry_run.high_water_bytes:,} B, "
          f"feature memory {trainer.dry_run.feature_bytes:,} B (dense {trainer.dense_feature_bytes:,} B)")
    results = trainer.run()
    print(f"test accuracy {results.test_accuracy:.4f} on {results.test_images:,} images ({results.data}); with "
          f"each image's mirror image too: {results.mirrored_test_accuracy:.4f}")
    if results.exact_subset is not None:
        exact = results.exact_subset
        print(f"pixel-exact test images: {exact.accuracy:.4f} on {exact.images} (their copies in the training "
              f"source: {exact.source_accuracy:.4f})")
    print(f"whole-step arena peak {results.whole_step_peak_bytes:,} B, high water {results.high_water_bytes:,} B in "
          f"{results.arena_bytes:,} B; feature memory {results.feature_bytes:,} B, {results.feature_reduction:.2%} "
          f"below dense; {results.conv_weight_fraction_per_step:.2%} of conv weights per step; coverage "
          f"{results.coverage:.1%}; {results.seconds_per_step * 1000:.1f} ms per step")
    if results.per_class_accuracy and len(results.class_names) <= 20:
        print("per class: " + ", ".join(f"{name} {'-' if accuracy is None else f'{accuracy:.1%}'}"
                                        for name, accuracy in zip(results.class_names, results.per_class_accuracy)))
    print(f"results: {Path(args.output_dir) / 'results.json'}")
    curves = Path(args.output_dir) / "curves.png"
    if plotting_available():
        write_curves(results.history, curves, f"{config.policy}, {config.resolution} px, seed {config.seed}")
        print(f"curves: {curves}")
    else:
        print(f"curves: not drawn, matplotlib is missing ({INSTALL_HINT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
