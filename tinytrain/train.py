"""Fine-tune pretrained MobileNetV2 on CIFAR-10 or an image folder at batch 1 with an update policy, measuring the
arena throughout."""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinytrain import paths
from tinytrain.arena import DEFAULT_CAPACITY, Arena
from tinytrain.atomic import check_writable
from tinytrain.budget import fit_schedule
from tinytrain.checkpoint import EpochSums, TrainingState, load_checkpoint, read_progress, save_checkpoint
from tinytrain.data import LABEL_NAMES, Augmenter, Dataset, load_cifar10, load_exact_subset, scan_folder_dataset
from tinytrain.divergence import DivergenceMonitor, TrainingDiverged, non_finite_parameters
from tinytrain.engine import SGD, Engine, MicroBatch, NonFiniteLoss
from tinytrain.evaluation import confusion_matrix, per_class_accuracy
from tinytrain.graph import Graph
from tinytrain.interrupt import StopRequest, TrainingInterrupted
from tinytrain.memory import MEASURING_ARENA_BYTES, StepMemory, measure_training_step
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.plan import UpdatePlan
from tinytrain.pruned_model import load_pruned
from tinytrain.results import ExactSubsetAccuracy, RunResults
from tinytrain.sparse import DEFAULT_FIRST_BLOCK, POLICIES, Coverage, Policy, conv_weight_fraction, make_policy
from tinytrain.weights import load_pretrained
from tinytrain.weights.tflite import import_tflite


@dataclass(frozen=True)
class TrainConfig:
    model: str | None = None  # a pruned model file (scripts/prune_model.py); None: pretrained MobileNetV2-1.0
    weights: str | None = None  # a MobileNetV2-1.0 .tflite to start from (weights/tflite.py); None: TF-slim ImageNet
    dataset: str | None = None  # an image folder or archive (data/folder_dataset.py); None: CIFAR-10
    test_fraction: float | None = None  # a dataset without its own test split: held out for testing (None: 0.2)
    policy: str = "dynamic"
    ratio: float = 0.02  # target fraction of conv weights updated per step (static, dynamic)
    last_k: int = 2
    first_block: int = DEFAULT_FIRST_BLOCK  # front stages before this block stay frozen (static, dynamic)
    ratio_decay: float = 4.0  # channel ratio of the first trained layer over that of the last
    # static, dynamic: also train every bias from this block on. Block 6 is the earliest whose step fits 256 KiB at
    # 128x128 (its offsets only after placement.py's search), block 5 needs 273,792 B, and block 4's 144x32x32
    # expansion gradient alone is 589,824 B.
    bias_from_block: int | None = 7
    resolution: int = 128
    arena_bytes: int = DEFAULT_CAPACITY  # the whole step, input frame included, lives in it
    epochs: int = 16  # 3, 5 and 8 measured lower on the full test set (README, Results)
    micro_batch: int = 1  # samples per SGD step; their gradients are summed in the arena
    lr: float = 0.001
    momentum: float = 0.0
    weight_decay: float = 0.0
    warmup_steps: int = 500
    label_smoothing: float = 0.0  # the loss's target: 1 - this on the label, this / classes on every class
    augment: bool = True
    train_subset: int | None = None
    test_subset: int | None = None
    seed: int = 0
    checkpoint_every: int = 5000


def block_or_none(text: str) -> int | None:
    """Command-line value of --bias-from-block: a block index, or 'none'."""
    return None if text == "none" else int(text)


def training_policy(config: TrainConfig, graph: Graph) -> Policy:
    """The update policy `config` describes, for `graph`. ConfigError when the graph cannot take it (a first block
    after the last conv, or a ratio no layer split can meet)."""
    try:
        return make_policy(config.policy, graph, target_fraction=config.ratio, last_k=config.last_k, seed=config.seed,
                           first_block=config.first_block, ratio_decay=config.ratio_decay,
                           bias_from_block=config.bias_from_block)
    except ValueError as error:
        raise ConfigError(f"{error}; choose other --first-block, --bias-from-block or --ratio values") from error


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to zero (Loshchilov & Hutter 2017)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class ConfigError(ValueError):
    """A training configuration, output folder or resume request that cannot work; found before any work starts."""


CIFAR10_SPLIT_SIZES = {"train": 50_000, "test": 10_000}


def _require(ok: bool, field: str, value, requirement: str) -> None:
    if not ok:
        raise ConfigError(f"--{field.replace('_', '-')} {value}: must be {requirement}")


def validate_config(config: TrainConfig, split_sizes: dict[str, int] | None = None) -> None:
    """Every value in range, so that a bad flag fails at once instead of after an epoch (ConfigError otherwise).

    The subsets and the micro-batch are checked against `split_sizes` (images per split): CIFAR-10's, or a
    --dataset's once it is listed; before that, only against what any dataset allows."""
    if split_sizes is None and config.dataset is None:
        split_sizes = CIFAR10_SPLIT_SIZES
    _require(config.policy in POLICIES, "policy", config.policy, f"one of {', '.join(POLICIES)}")
    _require(math.isfinite(config.ratio) and 0 < config.ratio <= 1, "ratio", config.ratio,
             "a fraction of the conv weights, in (0, 1]")
    _require(config.last_k >= 1, "last_k", config.last_k, "at least 1")
    _require(config.first_block >= 0, "first_block", config.first_block, "a block index, 0 or more")
    _require(math.isfinite(config.ratio_decay) and config.ratio_decay > 0, "ratio_decay", config.ratio_decay,
             "a positive number")
    _require(config.bias_from_block is None or config.bias_from_block >= 0, "bias_from_block",
             config.bias_from_block, "a block index, 0 or more, or 'none'")
    _require(32 <= config.resolution <= 1024, "resolution", config.resolution,
             "in 32..1024 pixels (MobileNetV2 downsamples by 32)")
    _require(config.arena_bytes >= 4096, "arena_bytes", config.arena_bytes, "at least 4,096 bytes")
    _require(config.epochs >= 1, "epochs", config.epochs, "at least 1")
    _require(config.micro_batch >= 1, "micro_batch", config.micro_batch, "at least 1")
    _require(math.isfinite(config.lr) and config.lr > 0, "lr", config.lr, "a positive, finite learning rate")
    _require(0 <= config.momentum < 1, "momentum", config.momentum, "in [0, 1)")
    _require(math.isfinite(config.weight_decay) and config.weight_decay >= 0, "weight_decay", config.weight_decay,
             "0 or a positive, finite number")
    _require(config.warmup_steps >= 0, "warmup_steps", config.warmup_steps, "0 or more")
    _require(0 <= config.label_smoothing < 1, "label_smoothing", config.label_smoothing, "in [0, 1)")
    _require(config.test_fraction is None or (math.isfinite(config.test_fraction) and 0 < config.test_fraction < 1),
             "test_fraction", config.test_fraction, "a fraction in (0, 1)")
    _require(config.test_fraction is None or config.dataset is not None, "test_fraction", config.test_fraction,
             "left out for CIFAR-10, which has its own test split")
    source = "CIFAR-10" if config.dataset is None else config.dataset
    for field, split in (("train_subset", "train"), ("test_subset", "test")):
        value = getattr(config, field)
        if split_sizes is None:
            _require(value is None or value >= 1, field, value, "at least 1, or left out for all")
        else:
            _require(value is None or 1 <= value <= split_sizes[split], field, value,
                     f"in 1..{split_sizes[split]:,} (the {split} images of {source}), or left out for all")
    _require(config.weights is None or config.model is None, "weights", config.weights,
             "left out with --model, which brings its own weights")
    _require(config.seed >= 0, "seed", config.seed, "0 or more")
    _require(config.checkpoint_every >= 1, "checkpoint_every", config.checkpoint_every, "at least 1")
    # Micro-batches never straddle an epoch or a checkpoint, so a resumed run starts on a batch boundary.
    _require(config.checkpoint_every % config.micro_batch == 0, "micro_batch", config.micro_batch,
             f"a divisor of --checkpoint-every ({config.checkpoint_every:,})")
    if split_sizes is not None:
        steps_per_epoch = config.train_subset or split_sizes["train"]
        _require(steps_per_epoch % config.micro_batch == 0, "micro_batch", config.micro_batch,
                 f"a divisor of the {steps_per_epoch:,} training images per epoch and of --checkpoint-every "
                 f"({config.checkpoint_every:,})")


def prepare_output_dir(output_dir: Path) -> None:
    """Create `output_dir` and prove it writable now, not at the first checkpoint an epoch later."""
    try:
        check_writable(output_dir / "results.json")
    except OSError as error:
        raise ConfigError(f"--output-dir {output_dir}: cannot write there ({error.strerror}); choose a folder you can "
                          "write to") from error


def config_differences(saved: dict, config: TrainConfig) -> list[str]:
    """'key: saved in the checkpoint, current now' for every setting that differs from a checkpoint's. A setting
    newer than the checkpoint counts as saved at its default."""
    current = asdict(config)
    saved = {**asdict(TrainConfig()), **saved}
    return [f"{key.replace('_', '-')}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


class RunAlreadyFinished(Exception):
    """--resume of a run whose training ended and whose results.json exists: nothing is done or overwritten."""


class Trainer:
    """Owns one run: model, policy, arena, data; `run()` trains, evaluates and writes results.json.

    Everything that can be checked is checked before the images are decoded: the configuration, the output folder,
    the layout of a --dataset folder, the checkpoint a resume needs and the memory schedule."""

    def __init__(self, config: TrainConfig, output_dir: Path, data_dir=None, cache_dir=None, progress=True,
                 resume: bool = False):
        validate_config(config)
        self.config = config
        self.output_dir = Path(output_dir)
        self.progress = progress
        self.resume = resume
        self.checkpoint_path = self.output_dir / "checkpoint.h5"
        self.results_path = self.output_dir / "results.json"
        prepare_output_dir(self.output_dir)
        if not resume and self.checkpoint_path.exists():  # a new run would overwrite it at its first checkpoint
            raise ConfigError(f"--output-dir {self.output_dir} already holds a run ({self.checkpoint_path}); continue "
                              "it with --resume, or choose another --output-dir (or delete that one to start over)")
        self.data_root = paths.data_dir(data_dir)
        self.cache_dir = cache_dir
        self.folder = None
        self.class_names = LABEL_NAMES
        self.split_sizes = CIFAR10_SPLIT_SIZES
        if config.dataset is not None:
            self._scan_dataset()
        if resume:
            self._check_resume()
        if config.weights is not None and not Path(config.weights).is_file():
            raise ConfigError(f"--weights {config.weights}: no such file; give the path of a MobileNetV2-1.0 .tflite, "
                              "or leave --weights out for the ImageNet weights")
        if config.model is None:
            weights = (load_pretrained(data_dir=self.data_root, cache_dir=cache_dir) if config.weights is None
                       else import_tflite(config.weights))
            self.graph = build_mobilenetv2(num_classes=len(self.class_names), resolution=config.resolution,
                                           weights=weights, seed=config.seed)
        else:
            self.graph = load_pruned(config.model, config.resolution)
            if self.graph.num_classes != len(self.class_names):
                raise ConfigError(f"--model {config.model}: its classifier has {self.graph.num_classes} classes, the "
                                  f"data {len(self.class_names)}; fine-tune the pretrained model instead (leave out "
                                  "--model), or prune for this many classes")
        self.policy = training_policy(config, self.graph)
        # Fails here, before any training, if no memory schedule fits the plan into the arena.
        fitted = fit_schedule(self.graph, self.policy.plan(0, 0), config.arena_bytes, SGD(0.0, config.momentum),
                              micro_batch=config.micro_batch)
        self.memory_schedule = fitted.schedule
        self.dry_run = fitted.memory
        self.dense_feature_bytes = measure_training_step(self.graph, UpdatePlan.dense(self.graph),
                                                         MEASURING_ARENA_BYTES).feature_bytes
        train, self.test = self._load_split("train"), self._load_split("test")
        self.data_source = train.source
        # crops shift by up to 1/8 of the stored side: CIFAR-10's 4 pixels of 32 (He et al. 2016, sec. 4.2)
        self.train_batches = Augmenter(train.images, train.labels, config.resolution, augment=config.augment,
                                       shuffle=True, subset=config.train_subset, seed=config.seed,
                                       padding=train.images.shape[1] // 8)
        self.arena = Arena(config.arena_bytes, tracing=False)
        self.engine = Engine(self.graph, self.arena, memory_schedule=self.memory_schedule,
                             label_smoothing=config.label_smoothing)
        self.coverage = Coverage(self.graph)
        self.last_good_checkpoint: int | None = None  # step of the newest checkpoint verified finite
        self._last_test_logits: tuple[int, np.ndarray] | None = None  # (step, (N, classes)) of the last evaluation

    def _scan_dataset(self) -> None:
        """List and check the --dataset folder, and the flags that depend on its size, before anything is decoded."""
        config = self.config
        self.folder = scan_folder_dataset(config.dataset, config.test_fraction, config.seed, self.progress)
        if self.folder.has_own_split and config.test_fraction is not None:
            raise ConfigError(f"--test-fraction {config.test_fraction}: {config.dataset} has its own train/ and test/ "
                              "folders; leave --test-fraction out")
        self.class_names = self.folder.class_names
        self.split_sizes = {split: len(files) for split, files in self.folder.files.items()}
        validate_config(config, self.split_sizes)

    def _load_split(self, split: str) -> Dataset:
        if self.folder is None:
            return load_cifar10(split, data_dir=self.data_root, cache_dir=self.cache_dir, progress=self.progress)
        return self.folder.load(split, self.config.resolution, paths.cache_dir(self.cache_dir), self.progress)

    def _check_resume(self) -> None:
        step, saved_config, saved_classes = read_progress(self.checkpoint_path)
        differences = config_differences(saved_config, self.config)
        if differences:
            raise ConfigError(f"{self.checkpoint_path} was written with other settings: {'; '.join(differences)}. "
                              "Resume with the run's own flags, or start a new run in another --output-dir")
        if saved_classes and tuple(saved_classes) != tuple(self.class_names):
            raise ConfigError(f"{self.checkpoint_path} was trained on the classes {', '.join(saved_classes)}; the data "
                              f"now has {', '.join(self.class_names)}. Restore the class folders, or start a new run "
                              "in another --output-dir")
        steps = self.config.epochs * (self.config.train_subset or self.split_sizes["train"])
        if step >= steps and self.results_path.is_file():
            raise RunAlreadyFinished(f"the run in {self.output_dir} already finished ({step:,} steps); its results "
                                     f"are in {self.results_path}, left as they are")

    @property
    def total_steps(self) -> int:
        return self.config.epochs * len(self.train_batches)

    def run(self) -> RunResults:
        state = TrainingState(0, [], {}, {}, asdict(self.config))
        if self.resume:
            state = load_checkpoint(self.checkpoint_path, self.graph, len(self.train_batches))
            self.engine.load_optimizer_state(state.momentum)
            self.coverage.touched = state.coverage
            self.last_good_checkpoint = state.step
        # what predictions need besides the parameters (a checkpoint of format 2 had none of it)
        state.class_names = list(self.class_names)
        state.arena_bytes = self.config.arena_bytes
        state.memory_schedule = self.memory_schedule
        self._train(state)
        results = self._results(state)
        results.write(self.results_path)
        return results

    def _last_good(self) -> str:
        if self.last_good_checkpoint is None:
            return "No checkpoint was written before it; start again with a lower --lr"
        return (f"The last good checkpoint is {self.checkpoint_path} (step {self.last_good_checkpoint:,}); "
                "continue from it with --resume and a lower --lr, or start again")

    def _train(self, state: TrainingState) -> None:
        steps_per_epoch = len(self.train_batches)
        monitor = DivergenceMonitor(self.graph, self.policy.plan(0, 0).updates, self.graph.num_classes)
        progress = tqdm(total=self.total_steps, initial=state.step, unit="img", disable=not self.progress,
                        smoothing=0.05)
        previous_plan = None
        if state.history and "test_accuracy" not in state.history[-1] and \
                state.step == len(state.history) * steps_per_epoch:
            self._test_epoch(state)  # stopped after the epoch's checkpoint, before its test pass finished
        with progress, StopRequest() as stop:
            for epoch in range(state.step // steps_per_epoch, self.config.epochs):
                progress.set_description(f"epoch {epoch + 1}/{self.config.epochs}")
                first = state.step - epoch * steps_per_epoch
                for position, (image, label) in enumerate(self.train_batches.epoch(epoch)):
                    if position < first:  # resuming: replay the epoch's draws up to where the checkpoint stopped
                        continue
                    update_step, sample = divmod(state.step, self.config.micro_batch)  # SGD step; place in its batch
                    if sample == 0 and stop.signal_number is not None:
                        self._checkpoint(state)
                        raise TrainingInterrupted(
                            f"stopped by {signal.Signals(stop.signal_number).name} at step {state.step:,}; the "
                            f"checkpoint {self.checkpoint_path} holds it: continue with --resume", stop.signal_number)
                    plan = self.policy.plan(update_step, epoch)
                    if plan is not previous_plan:
                        self.coverage.record(plan)
                        previous_plan = plan
                    sgd = SGD(learning_rate(self.config, update_step, self.total_steps // self.config.micro_batch),
                              self.config.momentum, self.config.weight_decay)
                    started = time.perf_counter()
                    try:
                        result = self.engine.train_step(image, label, plan, sgd,
                                                        micro_batch=MicroBatch(sample, self.config.micro_batch))
                        monitor.observe(state.step + 1, result.loss)
                    except NonFiniteLoss as error:
                        raise TrainingDiverged(f"step {state.step}: {error}. {self._last_good()}") from error
                    except TrainingDiverged as error:
                        raise TrainingDiverged(f"{error}. {self._last_good()}") from error
                    state.train_seconds += time.perf_counter() - started
                    state.step += 1
                    sums = state.epoch_sums
                    sums.loss += result.loss
                    sums.hits += int(result.prediction == label)
                    sums.steps += 1
                    progress.update()
                    if state.step % 100 == 0:
                        progress.set_postfix(loss=f"{sums.loss / sums.steps:.3f}", acc=f"{sums.hits / sums.steps:.3f}",
                                             peak=f"{self.arena.peak_bytes:,}")
                    # the epoch's last step is checkpointed below, with the epoch's figures closed
                    if state.step % self.config.checkpoint_every == 0 and state.step % steps_per_epoch:
                        self._checkpoint(state)
                sums = state.epoch_sums
                state.history.append({"epoch": epoch + 1, "train_loss": sums.loss / sums.steps,
                                      "train_accuracy": sums.hits / sums.steps})
                state.epoch_sums = EpochSums()
                self._checkpoint(state)
                self._test_epoch(state)

    def _test_epoch(self, state: TrainingState) -> None:
        """The test accuracy of the weights at the end of the epoch just closed, into its history, checkpointed."""
        self._last_test_logits = (state.step, self._test_logits())
        state.history[-1]["test_accuracy"] = self._accuracy(np.argmax(self._last_test_logits[1], axis=1))
        self._checkpoint(state)

    def _checkpoint(self, state: TrainingState) -> None:
        """Written only when every parameter is finite, so a named checkpoint can always be resumed."""
        broken = non_finite_parameters(self.graph, [layer.name for layer in self.graph.weighted_layers])
        if broken:
            raise TrainingDiverged(f"step {state.step}: non-finite values in {', '.join(broken[:4])}; no checkpoint "
                                   f"was written. {self._last_good()}")
        state.momentum = self.engine.optimizer_state()
        state.coverage = self.coverage.touched
        save_checkpoint(self.checkpoint_path, self.graph, state)
        self.last_good_checkpoint = state.step

    def evaluate(self, images: np.ndarray, labels: np.ndarray, desc: str) -> float:
        return float(np.mean(self.predict(images, labels, desc) == labels))

    def predict(self, images: np.ndarray, labels: np.ndarray, desc: str, mirrored: bool = False) -> np.ndarray:
        """(N,) the predicted class of each image, resized as the test images are. `mirrored`: from the logits of
        the image and of its mirror image (left-right) summed, as training's random flips see both."""
        logits = self.logits(images, labels, desc)
        if mirrored:
            logits += self.logits(images, labels, f"{desc}, mirrored", mirror=True)
        return np.argmax(logits, axis=1)

    def logits(self, images: np.ndarray, labels: np.ndarray, desc: str, mirror: bool = False) -> np.ndarray:
        """(N, classes) the logits of each image (`mirror`: of its mirror image), resized as the test images are."""
        batches = Augmenter(images, labels, self.config.resolution, augment=False, shuffle=False)
        logits = np.empty((len(batches), self.graph.num_classes), dtype=np.float32)
        for position, (image, _) in enumerate(tqdm(batches.epoch(0), total=len(batches), desc=desc, unit="img",
                                                   disable=not self.progress)):
            if mirror:
                image = np.ascontiguousarray(image[:, ::-1])  # (H, W, C) left-right
            logits[position] = self.engine.infer(image)[self.graph.output_name]
        return logits

    @property
    def _test_count(self) -> int:
        return self.config.test_subset or len(self.test.labels)

    def _test_logits(self, mirror: bool = False) -> np.ndarray:
        count = self._test_count
        return self.logits(self.test.images[:count], self.test.labels[:count], "test, mirrored" if mirror else "test",
                           mirror)

    def _accuracy(self, predictions: np.ndarray) -> float:
        return float(np.mean(predictions == self.test.labels[:len(predictions)]))

    def _results(self, state: TrainingState) -> RunResults:
        count = self._test_count
        # the last epoch's evaluation, unless that epoch ended in an earlier session of a resumed run
        step, logits = self._last_test_logits or (None, None)
        if step != state.step:
            logits = self._test_logits()
        predictions = np.argmax(logits, axis=1)
        confusion = confusion_matrix(self.test.labels[:count], predictions, len(self.class_names))
        # The dry run counts beside this process's steps: a resumed run may have had no step left to run here.
        measured = (StepMemory.from_arena(self.arena), self.dry_run)
        by_kind = {kind: max(memory.peak_bytes_by_kind.get(kind, 0) for memory in measured)
                   for kind in self.dry_run.peak_bytes_by_kind}
        return RunResults(
            config=asdict(self.config),
            data=self.data_source,
            class_names=list(self.class_names),
            steps=state.step,
            history=state.history,
            test_images=count,
            test_accuracy=self._accuracy(predictions),
            mirrored_test_accuracy=self._accuracy(np.argmax(logits + self._test_logits(mirror=True), axis=1)),
            per_class_accuracy=[None if np.isnan(value) else float(value) for value in per_class_accuracy(confusion)],
            confusion_matrix=confusion.tolist(),
            exact_subset=self._exact_subset_accuracy(count),
            arena_bytes=self.arena.capacity,
            whole_step_peak_bytes=max(memory.whole_step_peak_bytes for memory in measured),
            high_water_bytes=max(memory.high_water_bytes for memory in measured),
            peak_bytes_by_kind=by_kind,
            feature_bytes=by_kind["saved"],
            dense_feature_bytes=self.dense_feature_bytes,
            feature_reduction=1.0 - by_kind["saved"] / self.dense_feature_bytes,
            memory_schedule=self.memory_schedule.describe(self.graph),
            conv_weight_fraction_per_step=conv_weight_fraction(self.graph, self.policy.plan(0, 0)),
            coverage=self.coverage.fraction,
            seconds_per_step=state.train_seconds / state.step,
            parameter_bytes=self.graph.parameter_bytes(),
        )

    def _exact_subset_accuracy(self, count: int) -> ExactSubsetAccuracy | None:
        """Accuracy on the pixel-exact test images among the first `count`, and on their copies in the data source;
        CIFAR-10 only."""
        subset = None if self.folder is not None else load_exact_subset(self.data_root)
        if subset is None:
            return None
        subset = subset.below(count)
        return ExactSubsetAccuracy(
            images=len(subset.index),
            accuracy=self.evaluate(subset.images, subset.labels, "exact subset"),
            source_accuracy=self.evaluate(self.test.images[subset.index], self.test.labels[subset.index],
                                          "its source copies"),
        )
