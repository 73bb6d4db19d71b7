"""Runs a graph inside an arena: inference, or one training step (forward, loss, truncated backward, fused SGD)."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np

from tinytrain.arena import Arena, ArenaOverflow, describe_tensors
from tinytrain.graph import Graph
from tinytrain.kernels.channels import gather_channels
from tinytrain.kernels.depthwise_inplace import scratch_shape
from tinytrain.kernels.image import normalize_image_forward
from tinytrain.kernels.loss import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from tinytrain.kernels.residual import add_forward
from tinytrain.kernels.sgd import sgd_update
from tinytrain.layers import Add, Depthwise, Pointwise, flat_channels
from tinytrain.oplog import OpLog
from tinytrain.patches import channels_last_weights, plan_patch_stage, run_patch_stage
from tinytrain.placement import plan_placement
from tinytrain.plan import (GATHER, LAYER_BY_LAYER, RETAIN, MemorySchedule, StepSchedule, UpdatePlan, backward_macs,
                            schedule_step)
from tinytrain.recorded_step import ChannelSlots, RecordedStep, plan_shape
from tinytrain.step_table import StepTable, step_table

_NO_MASK = np.zeros(0, dtype=np.uint8)
_NO_MOMENTUM = np.zeros((0, 0, 0), dtype=np.float32)
_FIRST_COLUMN = np.zeros(1, dtype=np.int64)  # the only column of a depthwise or bias "matrix"
REHEARSAL_ARENA_BYTES = 64 << 20  # large enough for dense training at 128x128 (about 11 MB), first-fit


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite; the weights are left as they were before this step."""


@dataclass(frozen=True)
class SGD:
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass(frozen=True)
class MicroBatch:
    """Sample `index` of a micro-batch of `size` samples that share one plan and one SGD step.

    Parameter gradients are summed in the arena (kind wgrad) over the samples and applied, averaged, during the
    last sample's backward; until then no weight changes, so every sample sees the same weights.
    """

    index: int
    size: int

    def __post_init__(self):
        if not 0 <= self.index < self.size:
            raise ValueError(f"micro-batch sample {self.index} outside [0, {self.size})")

    @property
    def is_last(self) -> bool:
        return self.index == self.size - 1


SINGLE_SAMPLE = MicroBatch(0, 1)
GradientObserver = Callable[[str, np.ndarray, np.ndarray, np.ndarray], None]


@dataclass(frozen=True)
class _Update:
    sgd: SGD
    apply: bool
    observe_gradient: GradientObserver | None
    micro_batch: MicroBatch


@dataclass(frozen=True)
class StepResult:
    loss: float
    prediction: int


class Engine:
    """Runs steps of one graph in one arena; every tensor of a step is allocated and freed there."""

    def __init__(self, graph: Graph, arena: Arena, wgrad_tile_bytes: int | None = None,
                 memory_schedule: MemorySchedule = LAYER_BY_LAYER, plan_offsets: bool = True,
                 label_smoothing: float = 0.0):
        """`wgrad_tile_bytes`: compute and apply each weight gradient in tiles of output rows of at most this many
        bytes (at least one row), instead of all at once; the result is identical, the wgrad peak is bounded.
        `memory_schedule`: patches and in-place depthwise convs (see MemorySchedule); the same numbers.
        `plan_offsets`: the first step of each shape is rehearsed in a large arena and planned into its step table
        (step_table.py); every later step of that shape takes its offsets, and in an arena that keeps no trace
        replays the first one's kernel calls (recorded_step.py, `replays_steps`). False: first-fit at run time,
        every step in full. Micro-batches always run first-fit. `label_smoothing`: the training loss's target puts
        1 - label_smoothing on the label and label_smoothing / classes on every class."""
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if wgrad_tile_bytes is not None and wgrad_tile_bytes <= 0:
            raise ValueError(f"wgrad_tile_bytes must be positive, got {wgrad_tile_bytes}")
        self.graph = graph
        self.arena = arena
        self.wgrad_tile_bytes = wgrad_tile_bytes
        self.memory_schedule = memory_schedule
        self.plan_offsets = plan_offsets
        self.label_smoothing = label_smoothing
        self.op_log: OpLog | None = None  # set to OpLog(arena) to record what each op reads and writes
        self.call_timer = None  # set to a step_profile.CallTimer to time each call of the recorded steps
        self._written: list[int] = []  # tensors there before the current op that it writes into (its op log)
        self._tables: dict[tuple, tuple[StepTable, dict]] = {}  # step shape, what was live before -> its table
        # planned once: the tiles never change from one step to the next
        self.patch_stages = []
        for spec in memory_schedule.patches:
            first = self.patch_stages[-1].end_layer if self.patch_stages else 0
            self.patch_stages.append(plan_patch_stage(graph, first, spec.end_layer, spec.grid))
        # the tiles' conv weights channels last (host memory, as the layers' own: not arena)
        self._tile_weights = [channels_last_weights(stage, graph) for stage in self.patch_stages]
        self._pixel_scale, self._pixel_shift = graph.preprocessing.pixel_scale_and_shift()  # (3,), (3,)
        self._all_channels: dict[int, np.ndarray] = {}
        self._momentum: dict[str, np.ndarray] = {}  # parameter name -> (rows, cols, taps) arena view, kind optim
        self._summed: dict[str, np.ndarray] = {}  # parameter name -> (n_rows, n_cols, taps) micro-batch gradient sum
        self._programs: dict[tuple, RecordedStep] = {}  # step shape and what was live before it -> its kernel calls
        self._tape: list | None = None  # the kernel calls of the step being recorded
        # this step's inputs and results, which the recorded calls read and write
        self._image: np.ndarray | None = None
        self._label = 0
        self._step_update: _Update | None = None
        self._result: StepResult | None = None
        self._copies: dict[str, np.ndarray] = {}

    # ----------------------------------------------------------------------------------------------------
    # public entry points

    def infer(self, image: np.ndarray, read: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Forward only, nothing saved; returns host copies of the logits and of the tensors named in `read`."""
        self._check_input(image)
        self._image, self._copies = image, {}
        key = ("infer", tuple(sorted(read)), image.dtype.str)
        if self._replay(key):
            return self._copies
        schedule = schedule_step(self.graph, UpdatePlan.frozen())
        rehearsal = self._inference_rehearsal(read, image.dtype)
        read = set(read) | {self.graph.output_name}
        with self._recording(key), self._planned_offsets(key, rehearsal), self._rollback_on_error():
            tensors, _ = self._forward(schedule, read)
            self.arena.free(tensors.pop(self.graph.output_name))
        return self._copies

    def train_step(self, image: np.ndarray, label: int, plan: UpdatePlan, sgd: SGD, apply_update: bool = True,
                   observe_gradient: GradientObserver | None = None,
                   micro_batch: MicroBatch = SINGLE_SAMPLE) -> StepResult:
        """One sample: forward, softmax cross-entropy, backward down to the earliest trained layer, SGD.

        Each layer's gradient is applied and freed as soon as it is computed, after its input gradient has used
        the old weights, so weight gradients of different layers are never live together. With
        `apply_update=False` every buffer is allocated and computed but no weight changes (a dry run).
        `observe_gradient(parameter, dparameter, rows, cols)` sees each parameter gradient, as (rows, cols, taps),
        just before it is applied and freed. `micro_batch`: this sample's place in a micro-batch (see MicroBatch).
        """
        if micro_batch.size > 1 and self.wgrad_tile_bytes is not None:
            raise ValueError("micro-batches sum whole weight gradients; they cannot be combined with wgrad tiles")
        if not 0 <= label < self.graph.num_classes:
            raise ValueError(f"label {label} outside [0, {self.graph.num_classes})")
        with self._rollback_on_error():  # a bad input abandons an unfinished micro-batch too
            self._check_input(image)
        self._image, self._label = image, label
        self._step_update = _Update(sgd, apply_update, observe_gradient, micro_batch)
        key = None  # micro-batches run first-fit: their gradient sums outlive one sample
        if micro_batch.size == 1:
            key = ("train", plan_shape(self.graph, plan), bool(sgd.momentum), image.dtype.str)
        recorded_key, channels = None, None
        if observe_gradient is None:  # a recorded step calls kernels only, never an observer
            program = self._program(key)
            if program is not None:
                program.channels.refill(plan)
                self._run(program)
                return self._result
            if key is not None and self.replays_steps:
                recorded_key, channels = key, ChannelSlots(self.graph, plan)
                plan = channels.plan  # the recorded kernels read the channels from these arrays, refilled every step
        schedule = schedule_step(self.graph, plan)
        with (self._recording(recorded_key, channels), self._planned_offsets(key, self._rehearsal(plan, sgd)),
              self._rollback_on_error()):
            tensors, saved = self._forward(schedule, set())
            dlogits = self._loss(tensors.pop(self.graph.output_name))
            self._backward(schedule, saved, dlogits, self._step_update)
        return self._result

    def training_step_table(self, plan: UpdatePlan, sgd: SGD = SGD(lr=0.0), image_dtype=np.uint8) -> StepTable:
        """The step table of one training sample of `plan`'s shape in this engine's arena, with what is live in it
        now: planned now if that shape has not run yet. ArenaOverflow if its offsets cannot fit the arena."""
        if not self.plan_offsets:
            raise ValueError("an engine with plan_offsets=False places tensors first-fit and plans no step table")
        schedule_step(self.graph, plan)  # the plan's own errors first
        key = ("train", plan_shape(self.graph, plan), bool(sgd.momentum), np.dtype(image_dtype).str)
        return self._planned(key, self._rehearsal(plan, sgd, np.dtype(image_dtype)))[0]

    def inference_step_table(self, image_dtype=np.uint8) -> StepTable:
        """The step table of one forward pass (`infer`) in this engine's arena, as training_step_table's."""
        if not self.plan_offsets:
            raise ValueError("an engine with plan_offsets=False places tensors first-fit and plans no step table")
        key = ("infer", (), np.dtype(image_dtype).str)
        return self._planned(key, self._inference_rehearsal((), np.dtype(image_dtype)))[0]

    def _inference_rehearsal(self, read: tuple[str, ...], image_dtype: np.dtype) -> Callable[[Engine], None]:
        return lambda engine: engine.infer(self._blank_image(image_dtype), read)

    def _rehearsal(self, plan: UpdatePlan, sgd: SGD, image_dtype: np.dtype | None = None) -> Callable[[Engine], None]:
        """A training step of `plan`'s shape on a blank image with no update, for another engine to plan it on."""
        dtype = self._image.dtype if image_dtype is None else image_dtype
        return lambda engine: engine.train_step(self._blank_image(dtype), 0, plan, SGD(0.0, sgd.momentum),
                                                apply_update=False)

    def _blank_image(self, dtype: np.dtype) -> np.ndarray:
        """Memory does not depend on pixel values: zeros, as uint8 pixels (H, W, C) or preprocessed (C, H, W)."""
        channels, height, width = self.graph.input_shape
        shape = (height, width, channels) if dtype == np.uint8 else (channels, height, width)
        return np.zeros(shape, dtype=dtype)

    # ----------------------------------------------------------------------------------------------------
    # recorded steps: a step's kernel calls on its planned arena views, run again for every step of its shape

    @property
    def replays_steps(self) -> bool:
        """Whether steps are recorded and replayed: at planned offsets, in an arena that keeps no trace, with no op
        log. The arena's bookkeeping of a recorded step would be the same every time, so later steps of its shape
        only call its kernels. Parameters must then be updated in place (as SGD and checkpoint loading do): the
        recorded calls hold the layers' weight and bias arrays, and a rebound array needs a new Engine."""
        return self.plan_offsets and not self.arena.tracing and self.op_log is None

    def _program(self, key: tuple | None) -> RecordedStep | None:
        if key is None or not self.replays_steps:
            return None
        return self._programs.get(key + (self.arena.live_blocks(),))

    def _run(self, program: RecordedStep) -> None:
        if self.call_timer is not None:
            self.call_timer.run(program.calls)
            return
        for kernel, arguments in program.calls:
            kernel(*arguments)

    def _replay(self, key: tuple) -> bool:
        program = self._program(key)
        if program is None:
            return False
        self._run(program)
        return True

    @contextmanager
    def _recording(self, key: tuple | None, channels: ChannelSlots | None = None):
        """Record the kernel calls of the step run inside, and keep them for `key` if the step completes."""
        if key is None or not self.replays_steps:
            yield
            return
        fixed = self.arena.live_blocks()
        self._tape = []
        try:
            yield
            self._programs[key + (fixed,)] = RecordedStep(tuple(self._tape), channels)
        finally:
            self._tape = None

    def _call(self, kernel: Callable, *arguments) -> None:
        kernel(*arguments)
        if self._tape is not None:
            self._tape.append((kernel, arguments))

    # ----------------------------------------------------------------------------------------------------
    # forward

    def _forward(self, schedule: StepSchedule, read: set[str]):
        arena, graph = self.arena, self.graph
        if not self.patch_stages:
            input_kind = "saved" if graph.input_name in schedule.retained_by else "input"
            start = self._op_start()
            x = arena.alloc(graph.input_name, graph.input_shape, np.float32, input_kind)
            self._call(self._load_image, x)
            self._record(start, "load input", "load", "", ())
            tensors = {graph.input_name: x}
            first = 0
        else:
            tensors = {self.patch_stages[-1].output: self._run_patch_stages(schedule)}
            first = self.patch_stages[-1].end_layer
        saved: dict[int, tuple[np.ndarray | None, np.ndarray | None]] = {}  # layer -> (saved input, relu6 mask)
        for name in read.intersection(tensors):
            self._call(self._copy_out, name, tensors[name])
        fused = set()  # residual adds already done by the projection before them
        for index in range(first, len(graph.layers)):
            layer, step = graph.layers[index], schedule.layers[index]
            if index in fused:  # the add of a fused projection: done with it
                saved[index] = (None, None)
                continue
            inputs = [tensors[name] for name in layer.inputs]
            start, reads = self._op_start(), self._ids(*inputs)
            kind = "saved" if layer.output in schedule.retained_by else "activation"
            saved_input = None
            if step.saved_input == RETAIN:
                saved_input = inputs[0]
            elif step.saved_input == GATHER:
                # dW[k, c] = sum_p dY[k, p] X[c, p]: only the chosen input channels are ever needed
                shape = (len(step.saved_channels),) + inputs[0].shape[1:]
                saved_input = arena.alloc(f"{layer.name}.saved_input", shape, np.float32, "saved")
                self._call(gather_channels, flat_channels(saved_input), flat_channels(inputs[0]), step.saved_channels)
            residual_add = self._residual_add_in_place(index, schedule, read)
            if residual_add is not None:
                # the projection is added straight into the residual stream, whose bytes become the add's output
                add = graph.layers[residual_add]
                residual = add.inputs[0] if add.inputs[1] == layer.output else add.inputs[1]
                out_kind = "saved" if add.output in schedule.retained_by else "activation"
                residual_ids = self._ids(tensors[residual])  # before its bytes change hands
                out = arena.reuse(tensors.pop(residual), add.output, graph.shapes[add.output], np.float32, out_kind)
                layer.forward_into_residual(out, inputs[0], call=self._call)
                self._record(start, f"fwd {layer.name} + {add.name}", "pointwise_add", layer.name,
                             reads + residual_ids, self._macs(layer), step.update)
                fused.add(residual_add)
                saved[index] = (saved_input, None)
                tensors[add.output] = out
                if add.output in read:
                    self._call(self._copy_out, add.output, out)
                self._free_dead_inputs(layer, index, schedule, tensors)
                continue
            clip = layer.relu6 and layer.fuses_relu6 and not step.save_mask  # the ReLU6 in the conv's own kernel
            if self._runs_in_place(index, schedule, read):
                scratch_planes = scratch_shape(inputs[0].shape, graph.shapes[layer.output])
                scratch = arena.alloc(f"{layer.name}.scratch", scratch_planes, np.float32, "scratch")
                out = arena.reuse(tensors.pop(layer.inputs[0]), layer.output, graph.shapes[layer.output],
                                  np.float32, kind)
                layer.forward_in_place(out, inputs[0], scratch, clip, call=self._call)
                arena.free(scratch)
            else:
                out = arena.alloc(layer.output, graph.shapes[layer.output], np.float32, kind)
                if clip:
                    layer.forward(out, inputs[0], clip, call=self._call)
                else:
                    layer.forward(out, *inputs, call=self._call)
            mask = None
            if layer.relu6 and not clip:
                if step.save_mask:
                    mask = arena.alloc(f"{layer.name}.relu6_mask", (math.ceil(out.size / 8),), np.uint8, "saved")
                layer.apply_relu6(out, _NO_MASK if mask is None else mask, step.save_mask, call=self._call)
            self._record(start, f"fwd {layer.name}", layer.op_type, layer.name, reads, self._macs(layer), step.update)
            saved[index] = (saved_input, mask)
            tensors[layer.output] = out
            if layer.output in read:
                self._call(self._copy_out, layer.output, out)
            self._free_dead_inputs(layer, index, schedule, tensors)
        return tensors, saved

    def _free_dead_inputs(self, layer, index: int, schedule: StepSchedule, tensors: dict) -> None:
        for name in set(layer.inputs):
            if name in tensors and schedule.last_forward_use[name] == index and name not in schedule.retained_by:
                self.arena.free(tensors.pop(name))

    def _residual_add_in_place(self, index: int, schedule: StepSchedule, read: set[str]) -> int | None:
        """The index of the residual add that a projection (pointwise, no ReLU6) can be fused into: the add comes
        next, reads the projection and a residual stream that nothing reads after it."""
        graph = self.graph
        layer = graph.layers[index]
        if not (self.memory_schedule.in_place_depthwise and isinstance(layer, Pointwise) and not layer.relu6
                and index + 1 < len(graph.layers) and isinstance(graph.layers[index + 1], Add)):
            return None
        add = graph.layers[index + 1]
        if layer.output not in add.inputs or add.inputs[0] == add.inputs[1]:
            return None
        residual = add.inputs[0] if add.inputs[1] == layer.output else add.inputs[1]
        for name in (layer.output, residual):
            if (schedule.last_forward_use[name] != index + 1 or name in schedule.retained_by or name in read
                    or name == graph.input_name):
                return None
        return index + 1

    def _runs_in_place(self, index: int, schedule: StepSchedule, read: set[str]) -> bool:
        """A depthwise conv may overwrite its input when nothing reads that input after it."""
        layer = self.graph.layers[index]
        if not (self.memory_schedule.in_place_depthwise and isinstance(layer, Depthwise)):
            return False
        name = layer.inputs[0]
        return (schedule.last_forward_use[name] == index and name not in schedule.retained_by and name not in read
                and name != self.graph.input_name)

    def _run_patch_stages(self, schedule: StepSchedule) -> np.ndarray:
        """The frozen front, tile by tile; returns the last stage's output, whole. The camera frame (uint8,
        H x W x 3) is the step's input in the arena; the first stage's tiles normalise only the pixels they read."""
        arena, graph = self.arena, self.graph
        for index in range(self.patch_stages[-1].end_layer):
            step = schedule.layers[index]
            if step.runs_backward or step.saved_input is not None:
                raise ValueError(f"{graph.layers[index].name} trains or passes a gradient in this plan, but the memory "
                                 f"schedule runs it in patches; patch only frozen layers before the first trained one")
        channels, height, width = graph.input_shape
        start = self._op_start()
        if self._image.dtype == np.uint8:
            source = arena.alloc(f"{graph.input_name}.frame", (height, width, channels), np.uint8, "input")
        else:
            source = arena.alloc(graph.input_name, graph.input_shape, np.float32, "input")
        self._call(self._copy_image, source)
        self._record(start, "load input", "load", "", ())

        # each load is bound to its own source: the loop moves on to the next stage's
        load = partial(self._load_frame_window, source) if source.dtype == np.uint8 else partial(_load_window, source)
        for stage, weights in zip(self.patch_stages, self._tile_weights):
            kind = "saved" if stage.output in schedule.retained_by else "activation"
            out = arena.alloc(stage.output, graph.shapes[stage.output], np.float32, kind)
            run_patch_stage(stage, graph, arena, source, load, out, weights, self.op_log, self._call)
            arena.free(source)
            source, load = out, partial(_load_window, out)
        return source

    def _load_image(self, x: np.ndarray) -> None:
        """x (C, H, W) <- this step's image: uint8 pixels (H, W, C) normalised, or a preprocessed float32 copied."""
        if self._image.dtype == np.uint8:
            normalize_image_forward(x, self._image, self._pixel_scale, self._pixel_shift)
        else:
            np.copyto(x, self._image)

    def _load_frame_window(self, frame: np.ndarray, tile: np.ndarray, region, call: Callable) -> None:
        """tile (h, w, C) <- the `region` of the camera frame (H, W, C) uint8, normalised."""
        window = frame[region.top:region.bottom, region.left:region.right]
        call(normalize_image_forward, tile.transpose(2, 0, 1), window, self._pixel_scale, self._pixel_shift)

    def _copy_image(self, frame: np.ndarray) -> None:
        np.copyto(frame, self._image)

    def _copy_out(self, name: str, view: np.ndarray) -> None:
        self._copies[name] = view.copy()

    def _check_input(self, image: np.ndarray) -> None:
        channels, height, width = self.graph.input_shape
        if image.dtype == np.uint8:
            if image.shape != (height, width, channels):
                raise ValueError(f"uint8 image must be (H, W, C) = {(height, width, channels)}, got {image.shape}")
        elif image.dtype == np.float32:
            if image.shape != self.graph.input_shape:
                raise ValueError(f"float32 input must be preprocessed (C, H, W) = {self.graph.input_shape}, got "
                                 f"{image.shape}")
            if not np.isfinite(image).all():
                raise ValueError("input contains NaN or infinite values")
        else:
            raise TypeError(f"input must be uint8 pixels (H, W, C) or a preprocessed float32 (C, H, W), got "
                            f"{image.dtype}")

    def _loss(self, logits: np.ndarray) -> np.ndarray:
        arena = self.arena
        start, reads = self._op_start(), self._ids(logits)
        probs = arena.alloc("loss.probs", logits.shape, np.float32, "saved")
        self._call(self._loss_forward, probs, logits)
        arena.free(logits)
        dlogits = arena.alloc(f"d{self.graph.output_name}", probs.shape, np.float32, "grad")
        self._call(self._loss_backward, dlogits, probs)
        arena.free(probs)
        self._record(start, "loss", "loss", "", reads)
        return dlogits

    def _loss_forward(self, probs: np.ndarray, logits: np.ndarray) -> None:
        loss = float(softmax_cross_entropy_forward(probs, logits, self._label, self.label_smoothing))
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"loss is {loss} (label {self._label}); lower the learning rate or check the input "
                                "data")
        self._result = StepResult(loss, int(np.argmax(logits)))

    def _loss_backward(self, dlogits: np.ndarray, probs: np.ndarray) -> None:
        softmax_cross_entropy_backward(dlogits, probs, self._label, self.label_smoothing)

    # ----------------------------------------------------------------------------------------------------
    # the op log (memory plan export)

    def _op_start(self) -> int:
        return self.op_log.start() if self.op_log is not None else 0

    def _ids(self, *views) -> tuple[int, ...]:
        return self.op_log.ids(*views) if self.op_log is not None else ()

    def _record(self, start: int, name: str, op_type: str, layer: str, reads: tuple[int, ...], macs: int = 0,
                update=None) -> None:
        """Log the op that began at `start`: what it read, what it allocated, and the existing tensors it wrote."""
        if self.op_log is not None:
            selects = layer != "" and getattr(self.graph.layer(layer), "selects_input_by_output", False)
            self.op_log.record(start, name, op_type, layer, reads, macs, update, selects, tuple(self._written))
        self._written.clear()

    def _macs(self, layer) -> int:
        return layer.macs([self.graph.shapes[name] for name in layer.inputs])

    # ----------------------------------------------------------------------------------------------------
    # backward

    def _backward(self, schedule: StepSchedule, saved, dlogits, update: _Update) -> None:
        arena, graph = self.arena, self.graph
        grads = _Gradients(arena, self._call)
        grads.put(graph.output_name, dlogits)
        grown = self._grown_gradients(schedule)
        retained_holders = dict(schedule.retained_by)
        for index in reversed(range(len(graph.layers))):
            step, layer = schedule.layers[index], graph.layers[index]
            saved_input, mask = saved.pop(index, (None, None))  # a patched layer saves nothing
            if not step.runs_backward:
                continue
            start = self._op_start()
            if isinstance(layer, Add):
                dout = grads.take(layer.output)
                reads = self._ids(dout)
                for name, needs_grad in zip(layer.inputs, step.input_needs_grad):
                    if needs_grad:
                        grads.route(name, dout)
                        self._written.extend(self._ids(grads.by_tensor[name]))
                grads.release(dout)
                self._record(start, f"bwd {layer.name}", "add_backward", layer.name, reads)
                continue
            dout = grads.take_exclusive(layer.output) if layer.relu6 else grads.take(layer.output)
            reads = self._ids(*(view for view in (dout, mask, saved_input) if view is not None))
            macs = backward_macs(layer, [graph.shapes[name] for name in layer.inputs], step)
            op_type = f"{layer.op_type}_backward"
            if mask is not None:
                self._written.extend(self._ids(dout))  # masked in place
                layer.relu6_backward(dout, mask, call=self._call)
                arena.free(mask)
            if self._backward_in_place(layer, step, grads, dout):
                # the bias gradient reads dout, so it comes first; dx then overwrites dout
                if step.update is not None:
                    self._update(layer, step, dout, saved_input, update)
                scratch_planes = scratch_shape(dout.shape, graph.shapes[layer.inputs[0]])
                scratch = arena.alloc(f"{layer.name}.scratch", scratch_planes, np.float32, "scratch")
                dx = arena.reuse(dout, f"d{layer.inputs[0]}", graph.shapes[layer.inputs[0]], np.float32, "grad")
                layer.backward_input_in_place(dx, dout, scratch, call=self._call)
                arena.free(scratch)
                grads.hand_over(layer.inputs[0], dx)
                if step.saved_input == GATHER:
                    arena.free(saved_input)
                self._record(start, f"bwd {layer.name}", op_type, layer.name, reads, macs, step.update)
                continue
            if step.input_needs_grad[0]:
                dx, accumulate = grads.for_write(layer.inputs[0], graph.shapes[layer.inputs[0]],
                                                 grown.get(layer.inputs[0], 0))
                if accumulate:
                    self._written.extend(self._ids(dx))
                layer.backward_input(dx, dout, accumulate, call=self._call)
            if step.update is not None:
                self._update(layer, step, dout, saved_input, update)
            if step.saved_input == GATHER:
                arena.free(saved_input)
            elif step.saved_input == RETAIN:
                name = layer.inputs[0]
                retained_holders[name] -= 1
                if retained_holders[name] == 0:
                    arena.free(saved_input)
            grads.release(dout)
            self._record(start, f"bwd {layer.name}", op_type, layer.name, reads, macs, step.update)

    def _may_write_dx_over_dout(self, layer, step) -> bool:
        """A depthwise conv whose weight does not train, in a schedule with depthwise in place: a trained weight's
        update would need dout after dx has used the old weights."""
        return (self.memory_schedule.in_place_depthwise and isinstance(layer, Depthwise) and step.input_needs_grad[0]
                and (step.update is None or not step.update.trains_weight) and step.saved_input != RETAIN)

    def _backward_in_place(self, layer, step, grads: _Gradients, dout: np.ndarray) -> bool:
        """Such a conv writes dx over dout when dx is its input's only gradient and dout's block holds dx: at
        stride 1 always, strided when dout was made in a block of dx's size (_grown_gradients)."""
        return (self._may_write_dx_over_dout(layer, step) and not grads.has(layer.inputs[0])
                and self.arena.block_bytes(dout) >= self.graph.tensor_bytes(layer.inputs[0]))

    def _grown_gradients(self, schedule: StepSchedule) -> dict[str, int]:
        """Tensor -> floats of the block its gradient is made in, for the output of every strided depthwise conv
        that will write its larger input gradient over that gradient (MemorySchedule.in_place_strided_backward)."""
        if not self.memory_schedule.in_place_strided_backward:
            return {}
        return {layer.output: math.prod(self.graph.shapes[layer.inputs[0]])
                for layer, step in zip(self.graph.layers, schedule.layers)
                if step.runs_backward and self._may_write_dx_over_dout(layer, step) and layer.stride != 1}

    def _update(self, layer, step, dout, saved_input, update: _Update) -> None:
        arena, layer_update = self.arena, step.update
        if layer_update.bias:
            rows = self._channels(layer.out_channels)
            dbias = arena.alloc(f"{layer.name}.dbias", (layer.out_channels,), np.float32, "wgrad")
            layer.backward_bias(dbias, dout, rows, call=self._call)
            self._apply(update, f"{layer.name}.bias", layer.bias.reshape(-1, 1, 1), dbias.reshape(-1, 1, 1), rows,
                        _FIRST_COLUMN)
            arena.free(dbias)
        if layer_update.trains_weight:
            cols = _FIRST_COLUMN if layer.selects_input_by_output else layer_update.in_channels
            # Rows of dW are independent, so they can be computed and applied a tile at a time.
            row_bytes = 4 * int(np.prod(layer.dweight_shape(1, len(cols))))
            rows_per_tile = len(layer_update.out_channels)
            if self.wgrad_tile_bytes is not None:
                rows_per_tile = max(1, self.wgrad_tile_bytes // row_bytes)
            for start in range(0, len(layer_update.out_channels), rows_per_tile):
                rows = layer_update.out_channels[start:start + rows_per_tile]
                dweight = arena.alloc(f"{layer.name}.dweight", layer.dweight_shape(len(rows), len(cols)),
                                      np.float32, "wgrad")
                # depthwise: row j of the saved input belongs to out_channels[j], so it is tiled alongside
                tile_input = saved_input[start:start + rows_per_tile] if layer.selects_input_by_output else saved_input
                layer.backward_weight(dweight, dout, tile_input, rows, call=self._call)
                self._apply(update, f"{layer.name}.weight", layer.weight_rows_cols,
                            dweight.reshape(len(rows), len(cols), -1), rows, cols)
                arena.free(dweight)

    def _apply(self, update: _Update, parameter: str, weight, dweight, rows, cols) -> None:
        """weight (rows, cols, taps) -= SGD step from dweight (n_rows, n_cols, taps) at [rows][:, cols]."""
        if update.observe_gradient is not None:
            update.observe_gradient(parameter, dweight, rows, cols)
        micro_batch = update.micro_batch
        if micro_batch.size > 1:
            total = self._summed_gradient(parameter, dweight.shape)
            self._written.extend(self._ids(total))
            np.add(total, dweight, out=total)
            if not micro_batch.is_last:
                return
            total *= np.float32(1.0 / micro_batch.size)  # the batch mean, in place
            dweight = total
        momentum = self._momentum_buffer(parameter, weight.shape) if update.sgd.momentum else _NO_MOMENTUM
        if update.sgd.momentum:
            self._written.extend(self._ids(momentum))
        self._call(self._sgd_step, weight, dweight, momentum, rows, cols)
        if micro_batch.size > 1:
            self.arena.free(self._summed.pop(parameter))

    def _sgd_step(self, weight, dweight, momentum, rows, cols) -> None:
        """The SGD update of this step's settings (its learning rate changes from step to step)."""
        update = self._step_update
        if update.apply:
            sgd = update.sgd
            sgd_update(weight, dweight, momentum, rows, cols, sgd.lr, sgd.momentum, sgd.weight_decay)

    def _channels(self, count: int) -> np.ndarray:
        if count not in self._all_channels:
            self._all_channels[count] = np.arange(count, dtype=np.int64)
        return self._all_channels[count]

    # ----------------------------------------------------------------------------------------------------

    def _summed_gradient(self, parameter: str, shape) -> np.ndarray:
        """The running sum of a parameter's gradient over a micro-batch, (n_rows, n_cols, taps), zeroed at its
        first sample. The plan is the same for every sample, so the shape is too."""
        total = self._summed.get(parameter)
        if total is None:
            total = self.arena.alloc(f"{parameter}.summed_gradient", shape, np.float32, "wgrad")
            total.fill(0.0)
            self._summed[parameter] = total
        elif total.shape != shape:
            raise ValueError(f"{parameter}: gradient {shape} in a micro-batch summing {total.shape}; every sample of "
                             "a micro-batch must use the same plan")
        return total

    def _momentum_buffer(self, parameter: str, shape) -> np.ndarray:
        """One buffer per whole parameter, so that a channel keeps its velocity across different draws."""
        buffer = self._momentum.get(parameter)
        if buffer is None:
            buffer = self.arena.alloc(f"{parameter}.momentum", shape, np.float32, "optim")
            buffer.fill(0.0)
            self._momentum[parameter] = buffer
        return buffer

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Host copies of the momentum buffers, by parameter name (for checkpoints)."""
        return {parameter: buffer.copy() for parameter, buffer in self._momentum.items()}

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        for parameter, values in state.items():
            np.copyto(self._momentum_buffer(parameter, values.shape), values)

    @contextmanager
    def _planned_offsets(self, key: tuple | None, rehearsal: Callable[[Engine], object]):
        """Run the step at the offsets of its table (`key`: its shape; None: first-fit), planned for the blocks
        live now the first time that shape runs."""
        if not self.plan_offsets or key is None:
            yield
            return
        _, offsets = self._planned(key, rehearsal)
        self.arena.use_placement(offsets)
        try:
            yield
        finally:
            self.arena.use_placement(None)

    def _planned(self, key: tuple, rehearsal: Callable[[Engine], object]) -> tuple[StepTable, dict]:
        """The step table of shape `key` with what is live now, and its offsets; planned if it is new.
        ArenaOverflow if its planned offsets do not fit this arena."""
        key = key + (self.arena.live_blocks(),)
        if key not in self._tables:
            table = self._rehearse(rehearsal, key[-1])
            if table.high_water_bytes > self.arena.usable_bytes:
                raise ArenaOverflow(self._overflow_message(table))
            self._tables[key] = table, table.offsets()
        return self._tables[key]

    def _rehearse(self, rehearsal: Callable[[Engine], object], fixed) -> StepTable:
        """One step of the same shape in a large arena, first-fit, traced and op-logged: its lifetimes give the
        offsets, its op log the ops."""
        engine = Engine(self.graph, Arena(REHEARSAL_ARENA_BYTES), self.wgrad_tile_bytes, self.memory_schedule,
                        plan_offsets=False)
        for parameter, buffer in self._momentum.items():  # live before the step here: fixed blocks, not traced
            engine._momentum_buffer(parameter, buffer.shape)
        arena = engine.arena
        arena.reset_peak()
        engine.op_log = OpLog(arena)
        rehearsal(engine)
        placement = plan_placement(arena.trace, self.arena.alignment, fixed, self.arena.usable_bytes)
        return step_table(arena.trace, engine.op_log.events, placement, self.arena.alignment)

    def _overflow_message(self, table: StepTable) -> str:
        return (f"arena overflow when planning the step: its offsets need {table.high_water_bytes:,} B, the arena "
                f"has {self.arena.capacity:,} B. Fullest at op {table.peak_op} ({table.ops[table.peak_op].name}), "
                f"{table.peak_bytes:,} B of its own tensors live; the largest there:\n"
                f"{describe_tensors(table.live_at_peak)}\n"
                "  Fix: enlarge the arena (--arena-bytes), lower the input resolution, train fewer layers/channels, "
                "or use a leaner memory schedule (patches, depthwise in place).")

    @contextmanager
    def _rollback_on_error(self):
        """On an exception inside a step, free what the step allocated so the arena stays usable. Momentum buffers
        the step created go with it; an unfinished micro-batch is abandoned and its gradient sums freed."""
        checkpoint = self.arena.checkpoint()
        try:
            yield
        except BaseException:
            self.arena.rollback(checkpoint)
            self._momentum = {name: view for name, view in self._momentum.items() if self.arena.is_live(view)}
            for view in self._summed.values():
                if self.arena.is_live(view):
                    self.arena.free(view)
            self._summed.clear()
            raise


def _load_window(source: np.ndarray, tile: np.ndarray, region, call: Callable) -> None:
    """tile (h, w, C) <- the `region` of source (C, H, W)."""
    call(np.copyto, tile.transpose(2, 0, 1), source[:, region.top:region.bottom, region.left:region.right])


class _Gradients:
    """Activation gradients by tensor name. The residual add hands one buffer to both of its inputs, so a buffer
    may be held under several names; it is freed when its last holder releases it, and copied before anyone
    writes into it while it is shared."""

    def __init__(self, arena: Arena, call: Callable):
        self.arena = arena
        self.call = call  # runs (and, while a step is recorded, records) a kernel
        self.by_tensor: dict[str, np.ndarray] = {}
        self.holders: dict[int, int] = {}  # arena offset -> number of holders

    def put(self, name: str, view: np.ndarray) -> None:
        self.by_tensor[name] = view
        offset = self.arena.offset_of(view)
        self.holders[offset] = self.holders.get(offset, 0) + 1

    def has(self, name: str) -> bool:
        return name in self.by_tensor

    def hand_over(self, name: str, view: np.ndarray) -> None:
        """`view` now holds d`name`, in the bytes of a gradient the caller took (and so holds) exclusively."""
        self.by_tensor[name] = view

    def take(self, name: str) -> np.ndarray:
        """Remove the gradient of `name`; the caller now holds it and must release it."""
        return self.by_tensor.pop(name)

    def take_exclusive(self, name: str) -> np.ndarray:
        self._make_exclusive(name)
        return self.take(name)

    def release(self, view: np.ndarray) -> None:
        offset = self.arena.offset_of(view)
        self.holders[offset] -= 1
        if self.holders[offset] == 0:
            del self.holders[offset]
            self.arena.free(view)

    def for_write(self, name: str, shape, block_floats: int = 0) -> tuple[np.ndarray, bool]:
        """The buffer to write d`name` into, and whether to accumulate (another consumer already wrote it). A new
        one is made in a block of `block_floats` when that is more than its own size, the rest left for an op that
        will write a larger tensor over it."""
        if name in self.by_tensor:
            self._make_exclusive(name)
            return self.by_tensor[name], True
        size = math.prod(shape)
        if block_floats > size:
            view = self.arena.alloc(f"d{name}", (block_floats,), np.float32, "grad")[:size].reshape(shape)
        else:
            view = self.arena.alloc(f"d{name}", shape, np.float32, "grad")
        self.put(name, view)
        return view, False

    def route(self, name: str, view: np.ndarray) -> None:
        """Hand `view` on as the gradient of `name`, adding it to what is there already."""
        if name not in self.by_tensor:
            self.put(name, view)
            return
        self._make_exclusive(name)
        target = self.by_tensor[name]
        self.call(add_forward, target.reshape(-1), target.reshape(-1), view.reshape(-1))

    def _make_exclusive(self, name: str) -> None:
        view = self.by_tensor[name]
        if self.holders[self.arena.offset_of(view)] > 1:
            copy = self.arena.alloc(f"d{name}", view.shape, np.float32, "grad")
            self.call(np.copyto, copy, view)
            self.release(view)
            self.put(name, copy)
