"""Fine-tune pretrained MobileNetV2 on CIFAR-10 at batch 1 with an update policy, measuring the arena throughout."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinytrain.arena import DEFAULT_CAPACITY, Arena
from tinytrain.atomic import atomic_path
from tinytrain.budget import fit_schedule
from tinytrain.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from tinytrain.data import Augmenter, load_cifar10
from tinytrain.engine import SGD, Engine, MicroBatch, NonFiniteLoss
from tinytrain.graph import Graph
from tinytrain.memory import MEASURING_ARENA_BYTES, measure_training_step
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.paths import data_dir as resolve_data_dir
from tinytrain.plan import UpdatePlan
from tinytrain.prune import load_pruned
from tinytrain.sparse import Coverage, Policy, conv_weight_fraction, make_policy
from tinytrain.weights import load_pretrained

EXACT_SUBSET_FILE = "cifar10/cifar10_exact_subset.npz"


@dataclass(frozen=True)
class TrainConfig:
    model: str | None = None  # a pruned model file (scripts/prune_model.py); None: pretrained MobileNetV2-1.0
    policy: str = "dynamic"
    ratio: float = 0.02  # target fraction of conv weights updated per step (static, dynamic)
    last_k: int = 2
    first_block: int = 13  # front stages before this block stay frozen (static, dynamic)
    ratio_decay: float = 4.0  # channel ratio of the first trained layer over that of the last
    # static, dynamic: also train every bias from this block on. Block 7 is the earliest whose step fits 256 KiB at
    # 128x128: block 4's 144x32x32 expansion gradient alone is 589,824 B.
    bias_from_block: int | None = 7
    resolution: int = 128
    arena_bytes: int = DEFAULT_CAPACITY  # the whole step, input frame included, lives in it
    epochs: int = 3
    micro_batch: int = 1  # samples per SGD step; their gradients are summed in the arena
    lr: float = 0.001
    momentum: float = 0.0
    weight_decay: float = 0.0
    warmup_steps: int = 500
    augment: bool = True
    train_subset: int | None = None
    test_subset: int | None = None
    seed: int = 0
    checkpoint_every: int = 5000


def block_or_none(text: str) -> int | None:
    """Command-line value of --bias-from-block: a block index, or 'none'."""
    return None if text == "none" else int(text)


def training_policy(config: TrainConfig, graph: Graph) -> Policy:
    """The update policy `config` describes, for `graph`."""
    return make_policy(config.policy, graph, target_fraction=config.ratio, last_k=config.last_k, seed=config.seed,
                       first_block=config.first_block, ratio_decay=config.ratio_decay,
                       bias_from_block=config.bias_from_block)


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to zero (Loshchilov & Hutter 2017)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Owns one run: model, policy, arena, data; `run()` trains, evaluates and writes results.json."""

    def __init__(self, config: TrainConfig, output_dir: Path, data_dir=None, cache_dir=None, progress=True):
        self.config = config
        self.output_dir = Path(output_dir)
        self.progress = progress
        self.data_root = resolve_data_dir(data_dir)
        if config.model is None:
            weights = load_pretrained(data_dir=self.data_root, cache_dir=cache_dir)
            self.graph = build_mobilenetv2(num_classes=10, resolution=config.resolution, weights=weights,
                                           seed=config.seed)
        else:
            self.graph = load_pruned(config.model, config.resolution)
        self.policy = training_policy(config, self.graph)
        # Fails here, before any training, if no memory schedule fits the plan into the arena.
        fitted = fit_schedule(self.graph, self.policy.plan(0, 0), config.arena_bytes, SGD(0.0, config.momentum),
                              micro_batch=config.micro_batch)
        self.memory_schedule = fitted.schedule
        self.dry_run = fitted.memory
        self.dense_feature_bytes = measure_training_step(self.graph, UpdatePlan.dense(self.graph),
                                                         MEASURING_ARENA_BYTES).feature_bytes
        train = load_cifar10("train", data_dir=self.data_root, cache_dir=cache_dir, progress=progress)
        self.test = load_cifar10("test", data_dir=self.data_root, cache_dir=cache_dir, progress=progress)
        self.data_source = train.source
        self.train_batches = Augmenter(train.images, train.labels, config.resolution, augment=config.augment,
                                       shuffle=True, subset=config.train_subset, seed=config.seed)
        # Micro-batches never straddle an epoch or a checkpoint, so a resumed run starts on a batch boundary.
        if config.micro_batch < 1 or len(self.train_batches) % config.micro_batch \
                or config.checkpoint_every % config.micro_batch:
            raise ValueError(f"micro_batch {config.micro_batch} must divide the {len(self.train_batches):,} training "
                             f"images per epoch and checkpoint_every ({config.checkpoint_every:,})")
        self.arena = Arena(config.arena_bytes, tracing=False)
        self.engine = Engine(self.graph, self.arena, memory_schedule=self.memory_schedule)
        self.coverage = Coverage(self.graph)
        self.checkpoint_path = self.output_dir / "checkpoint.h5"

    @property
    def total_steps(self) -> int:
        return self.config.epochs * len(self.train_batches)

    def run(self, resume: bool = False) -> dict:
        state = TrainingState(0, [], {}, {}, asdict(self.config))
        if resume:
            state = load_checkpoint(self.checkpoint_path, self.graph)
            if state.config != asdict(self.config):
                raise ValueError(f"{self.checkpoint_path} was written with another configuration: {state.config}")
            self.engine.load_optimizer_state(state.momentum)
            self.coverage.touched = state.coverage
        started = time.perf_counter()
        steps_before = state.step
        self._train(state)
        seconds_per_step = (time.perf_counter() - started) / max(1, state.step - steps_before)
        results = self._results(state, seconds_per_step)
        _write_json(self.output_dir / "results.json", results)
        return results

    def _train(self, state: TrainingState) -> None:
        steps_per_epoch = len(self.train_batches)
        previous_plan = None
        for epoch in range(state.step // steps_per_epoch, self.config.epochs):
            first = state.step - epoch * steps_per_epoch
            losses, hits = [], 0
            batches = self.train_batches.epoch(epoch)
            progress = tqdm(batches, total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/"
                            f"{self.config.epochs}", unit="img", disable=not self.progress)
            for position, (image, label) in enumerate(progress):
                if position < first:  # resuming: replay the epoch's draws up to where the checkpoint stopped
                    continue
                update_step, sample = divmod(state.step, self.config.micro_batch)  # SGD step; place in its batch
                plan = self.policy.plan(update_step, epoch)
                if plan is not previous_plan:
                    self.coverage.record(plan)
                    previous_plan = plan
                sgd = SGD(learning_rate(self.config, update_step, self.total_steps // self.config.micro_batch),
                          self.config.momentum, self.config.weight_decay)
                try:
                    result = self.engine.train_step(image, label, plan, sgd,
                                                    micro_batch=MicroBatch(sample, self.config.micro_batch))
                except NonFiniteLoss as error:
                    raise NonFiniteLoss(f"step {state.step}: {error}. The last good checkpoint is "
                                        f"{self.checkpoint_path}.") from error
                state.step += 1
                losses.append(result.loss)
                hits += result.prediction == label
                if state.step % 100 == 0:
                    progress.set_postfix(loss=f"{np.mean(losses[-500:]):.3f}", acc=f"{hits / len(losses):.3f}",
                                         peak=f"{self.arena.peak_bytes:,}")
                if state.step % self.config.checkpoint_every == 0:
                    self._checkpoint(state)
            state.history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
                                  "train_accuracy": hits / len(losses) if losses else None})
            self._checkpoint(state)

    def _checkpoint(self, state: TrainingState) -> None:
        state.momentum = self.engine.optimizer_state()
        state.coverage = self.coverage.touched
        save_checkpoint(self.checkpoint_path, self.graph, state)

    def evaluate(self, images: np.ndarray, labels: np.ndarray, desc: str) -> float:
        batches = Augmenter(images, labels, self.config.resolution, augment=False, shuffle=False)
        hits = 0
        for image, label in tqdm(batches.epoch(0), total=len(batches), desc=desc, unit="img",
                                 disable=not self.progress):
            hits += int(np.argmax(self.engine.infer(image)[self.graph.output_name])) == label
        return hits / len(batches)

    def _results(self, state: TrainingState, seconds_per_step: float) -> dict:
        count = self.config.test_subset or len(self.test.labels)
        results = {
            "config": asdict(self.config),
            "data": self.data_source,
            "steps": state.step,
            "history": state.history,
            "test_images": count,
            "test_accuracy": self.evaluate(self.test.images[:count], self.test.labels[:count], "test"),
        }
        results.update(self._exact_subset_accuracy(count))
        step_plan = self.policy.plan(0, 0)
        results.update({
            "whole_step_peak_bytes": self.arena.peak_bytes,
            "peak_bytes_by_kind": dict(self.arena.peak_bytes_by_kind),
            "high_water_bytes": self.arena.high_water_bytes,
            "arena_bytes": self.arena.capacity,
            "memory_schedule": self.memory_schedule.describe(self.graph),
            "feature_bytes": self.arena.peak_bytes_by_kind["saved"],
            "dense_feature_bytes": self.dense_feature_bytes,
            "feature_reduction": 1.0 - self.arena.peak_bytes_by_kind["saved"] / self.dense_feature_bytes,
            "conv_weight_fraction_per_step": conv_weight_fraction(self.graph, step_plan),
            "coverage": self.coverage.fraction,
            "seconds_per_step": seconds_per_step,
            "parameter_bytes": self.graph.parameter_bytes(),
        })
        return results

    def _exact_subset_accuracy(self, count: int) -> dict:
        """Accuracy on the pixel-exact test images among the first `count`, and on their copies in the data source."""
        path = self.data_root / EXACT_SUBSET_FILE
        if not path.is_file():
            return {}
        arrays = np.load(path)
        keep = arrays["test_subset_index"] < count
        index = arrays["test_subset_index"][keep]  # test indices 0..1016
        exact = arrays["test_subset_data"][keep].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
        labels = arrays["test_labels"][index]
        return {
            "exact_subset_images": len(index),
            "exact_subset_accuracy": self.evaluate(exact, labels, "exact subset"),
            "exact_subset_source_accuracy": self.evaluate(self.test.images[index], self.test.labels[index],
                                                          "its source copies"),
        }


def _write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2) + "\n")
