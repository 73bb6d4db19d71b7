"""Runs a graph inside an arena: inference, or one training step (forward, loss, truncated backward, fused SGD)."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tinytrain.arena import Arena
from tinytrain.graph import Graph
from tinytrain.kernels.channels import gather_channels
from tinytrain.kernels.image import normalize_image_forward
from tinytrain.kernels.loss import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from tinytrain.kernels.residual import add_forward
from tinytrain.kernels.sgd import sgd_update
from tinytrain.layers import Add, flat_channels
from tinytrain.plan import GATHER, RETAIN, StepSchedule, UpdatePlan, schedule_step

_NO_MASK = np.zeros(0, dtype=np.uint8)
_NO_MOMENTUM = np.zeros((0, 0, 0), dtype=np.float32)
_FIRST_COLUMN = np.zeros(1, dtype=np.int64)  # the only column of a depthwise or bias "matrix"


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

    def __init__(self, graph: Graph, arena: Arena, wgrad_tile_bytes: int | None = None):
        """`wgrad_tile_bytes`: compute and apply each weight gradient in tiles of output rows of at most this many
        bytes (at least one row), instead of all at once; the result is identical, the wgrad peak is bounded."""
        if wgrad_tile_bytes is not None and wgrad_tile_bytes <= 0:
            raise ValueError(f"wgrad_tile_bytes must be positive, got {wgrad_tile_bytes}")
        self.graph = graph
        self.arena = arena
        self.wgrad_tile_bytes = wgrad_tile_bytes
        std = np.asarray(graph.preprocessing.std, dtype=np.float32)
        mean = np.asarray(graph.preprocessing.mean, dtype=np.float32)
        self._pixel_scale = (1.0 / (255.0 * std)).astype(np.float32)  # (3,)
        self._pixel_shift = (-mean / std).astype(np.float32)  # (3,)
        self._all_channels: dict[int, np.ndarray] = {}
        self._momentum: dict[str, np.ndarray] = {}  # parameter name -> (rows, cols, taps) arena view, kind optim
        self._summed: dict[str, np.ndarray] = {}  # parameter name -> (n_rows, n_cols, taps) micro-batch gradient sum

    # ----------------------------------------------------------------------------------------------------
    # public entry points

    def infer(self, image: np.ndarray, read: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Forward only, nothing saved; returns host copies of the logits and of the tensors named in `read`."""
        schedule = schedule_step(self.graph, UpdatePlan.frozen())
        read = set(read) | {self.graph.output_name}
        with self._rollback_on_error():
            tensors, _, copies = self._forward(image, schedule, read)
            self.arena.free(tensors.pop(self.graph.output_name))
        return copies

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
        schedule = schedule_step(self.graph, plan)
        with self._rollback_on_error():
            tensors, saved, _ = self._forward(image, schedule, set())
            loss, prediction, dlogits = self._loss(tensors.pop(self.graph.output_name), label)
            self._backward(schedule, saved, dlogits, _Update(sgd, apply_update, observe_gradient, micro_batch))
        return StepResult(loss, prediction)

    # ----------------------------------------------------------------------------------------------------
    # forward

    def _forward(self, image, schedule: StepSchedule, read: set[str]):
        arena, graph = self.arena, self.graph
        arena.op_index = 0
        input_kind = "saved" if graph.input_name in schedule.retained_by else "input"
        x = arena.alloc(graph.input_name, graph.input_shape, np.float32, input_kind)
        self._load_input(x, image)
        tensors = {graph.input_name: x}
        saved: dict[int, tuple[np.ndarray | None, np.ndarray | None]] = {}  # layer -> (saved input, relu6 mask)
        copies = {}
        for index, (layer, step) in enumerate(zip(graph.layers, schedule.layers)):
            arena.op_index = index
            inputs = [tensors[name] for name in layer.inputs]
            kind = "saved" if layer.output in schedule.retained_by else "activation"
            out = arena.alloc(layer.output, graph.shapes[layer.output], np.float32, kind)
            saved_input = None
            if step.saved_input == RETAIN:
                saved_input = inputs[0]
            elif step.saved_input == GATHER:
                # dW[k, c] = sum_p dY[k, p] X[c, p]: only the chosen input channels are ever needed
                shape = (len(step.saved_channels),) + inputs[0].shape[1:]
                saved_input = arena.alloc(f"{layer.name}.saved_input", shape, np.float32, "saved")
                gather_channels(flat_channels(saved_input), flat_channels(inputs[0]), step.saved_channels)
            layer.forward(out, *inputs)
            mask = None
            if layer.relu6:
                if step.save_mask:
                    mask = arena.alloc(f"{layer.name}.relu6_mask", (math.ceil(out.size / 8),), np.uint8, "saved")
                layer.apply_relu6(out, _NO_MASK if mask is None else mask, step.save_mask)
            saved[index] = (saved_input, mask)
            tensors[layer.output] = out
            if layer.output in read:
                copies[layer.output] = out.copy()
            for name in set(layer.inputs):
                if schedule.last_forward_use[name] == index and name not in schedule.retained_by:
                    arena.free(tensors.pop(name))
        return tensors, saved, copies

    def _load_input(self, x: np.ndarray, image: np.ndarray) -> None:
        channels, height, width = self.graph.input_shape
        if image.dtype == np.uint8:
            if image.shape != (height, width, channels):
                raise ValueError(f"uint8 image must be (H, W, C) = {(height, width, channels)}, got {image.shape}")
            normalize_image_forward(x, image, self._pixel_scale, self._pixel_shift)
        elif image.dtype == np.float32:
            if image.shape != x.shape:
                raise ValueError(f"float32 input must be preprocessed (C, H, W) = {x.shape}, got {image.shape}")
            if not np.isfinite(image).all():
                raise ValueError("input contains NaN or infinite values")
            np.copyto(x, image)
        else:
            raise TypeError(f"input must be uint8 pixels (H, W, C) or a preprocessed float32 (C, H, W), got {image.dtype}")

    def _loss(self, logits: np.ndarray, label: int):
        arena = self.arena
        arena.op_index = len(self.graph.layers)
        probs = arena.alloc("loss.probs", logits.shape, np.float32, "saved")
        loss = softmax_cross_entropy_forward(probs, logits, label)
        prediction = int(np.argmax(logits))
        arena.free(logits)
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"loss is {loss} (label {label}); lower the learning rate or check the input data")
        dlogits = arena.alloc(f"d{self.graph.output_name}", probs.shape, np.float32, "grad")
        softmax_cross_entropy_backward(dlogits, probs, label)
        arena.free(probs)
        return float(loss), prediction, dlogits

    # ----------------------------------------------------------------------------------------------------
    # backward

    def _backward(self, schedule: StepSchedule, saved, dlogits, update: _Update) -> None:
        arena, graph = self.arena, self.graph
        grads = _Gradients(arena)
        grads.put(graph.output_name, dlogits)
        retained_holders = dict(schedule.retained_by)
        count = len(graph.layers)
        for index in reversed(range(count)):
            step, layer = schedule.layers[index], graph.layers[index]
            saved_input, mask = saved.pop(index)
            if not step.runs_backward:
                continue
            arena.op_index = 2 * count - index
            if isinstance(layer, Add):
                dout = grads.take(layer.output)
                for name, needs_grad in zip(layer.inputs, step.input_needs_grad):
                    if needs_grad:
                        grads.route(name, dout)
                grads.release(dout)
                continue
            dout = grads.take_exclusive(layer.output) if layer.relu6 else grads.take(layer.output)
            if mask is not None:
                layer.relu6_backward(dout, mask)
                arena.free(mask)
            if step.input_needs_grad[0]:
                dx, accumulate = grads.for_write(layer.inputs[0], graph.shapes[layer.inputs[0]])
                layer.backward_input(dx, dout, accumulate)
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

    def _update(self, layer, step, dout, saved_input, update: _Update) -> None:
        arena, layer_update = self.arena, step.update
        if layer_update.bias:
            rows = self._channels(layer.out_channels)
            dbias = arena.alloc(f"{layer.name}.dbias", (layer.out_channels,), np.float32, "wgrad")
            layer.backward_bias(dbias, dout, rows)
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
                layer.backward_weight(dweight, dout, tile_input, rows)
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
            np.add(total, dweight, out=total)
            if not micro_batch.is_last:
                return
            total *= np.float32(1.0 / micro_batch.size)  # the batch mean, in place
            dweight = total
        sgd = update.sgd
        momentum = self._momentum_buffer(parameter, weight.shape) if sgd.momentum else _NO_MOMENTUM
        if update.apply:
            sgd_update(weight, dweight, momentum, rows, cols, sgd.lr, sgd.momentum, sgd.weight_decay)
        if micro_batch.size > 1:
            self.arena.free(self._summed.pop(parameter))

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


class _Gradients:
    """Activation gradients by tensor name. The residual add hands one buffer to both of its inputs, so a buffer
    may be held under several names; it is freed when its last holder releases it, and copied before anyone
    writes into it while it is shared."""

    def __init__(self, arena: Arena):
        self.arena = arena
        self.by_tensor: dict[str, np.ndarray] = {}
        self.holders: dict[int, int] = {}  # arena offset -> number of holders

    def put(self, name: str, view: np.ndarray) -> None:
        self.by_tensor[name] = view
        offset = self.arena.offset_of(view)
        self.holders[offset] = self.holders.get(offset, 0) + 1

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

    def for_write(self, name: str, shape) -> tuple[np.ndarray, bool]:
        """The buffer to write d`name` into, and whether to accumulate (another consumer already wrote it)."""
        if name in self.by_tensor:
            self._make_exclusive(name)
            return self.by_tensor[name], True
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
        add_forward(target.reshape(-1), target.reshape(-1), view.reshape(-1))

    def _make_exclusive(self, name: str) -> None:
        view = self.by_tensor[name]
        if self.holders[self.arena.offset_of(view)] > 1:
            copy = self.arena.alloc(f"d{name}", view.shape, np.float32, "grad")
            np.copyto(copy, view)
            self.release(view)
            self.put(name, copy)
