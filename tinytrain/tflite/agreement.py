"""An exported model run in TFLite Micro and LiteRT against tinytrain's own float inference of the same graph:
logit error, top-1 agreement and accuracy on labelled images; and the inference arena each side needs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from tinytrain.arena import Arena
from tinytrain.engine import Engine
from tinytrain.graph import Graph
from tinytrain.memory import MEASURING_ARENA_BYTES, measure_inference
from tinytrain.plan import LAYER_BY_LAYER, MemorySchedule

from .runtimes import RUNTIMES, Runtime, TFLiteMicro


@dataclass(frozen=True)
class RuntimeAgreement:
    runtime: str
    max_relative_error: float  # over the images: max |logit - tinytrain's| / max |tinytrain's logit|
    top1_agreement: float  # fraction of images whose top-1 class is float tinytrain's
    # fraction of images whose top-1 class differs only by a tie: float's top-1 class shares the runtime's largest
    # logit, and argmax picks a class before it (an int8 model's logits take 256 levels)
    top1_ties: float
    accuracy: float


@dataclass(frozen=True)
class Agreement:
    images: int
    int8: bool  # whether the model takes and gives int8 (else float32)
    tinytrain_accuracy: float  # float32, in the arena
    runtimes: list[RuntimeAgreement]


class ModelMismatch(ValueError):
    """A .tflite whose input or output does not fit the checkpoint's model."""


@dataclass(frozen=True)
class InferenceArena:
    tflite_micro_bytes: int  # TFLite Micro's arena used for this model (activations, then persistent structures)
    tinytrain_peak_bytes: int  # tinytrain's float32 inference peak for the same graph, whole tensors layer by layer
    tinytrain_schedule_peak_bytes: int  # the same in `schedule` (the run's: patches, depthwise in place)


def relative_error(logits: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(logits - reference).max() / max(float(np.abs(reference).max()), 1e-12))


def load_runtimes(graph: Graph, model: bytes) -> list[Runtime]:
    """`model` loaded in every runtime (RuntimeLoadError if one cannot), checked to map the input of `graph`
    (1, H, W, C) to its (1, classes) (ModelMismatch if not)."""
    runtimes = [runtime(model) for runtime in RUNTIMES]
    channels, height, width = graph.input_shape
    expected = ((1, height, width, channels), (1, graph.num_classes))
    for runtime in runtimes:
        shapes = tuple(tuple(int(size) for size in tensor["shape"]) for tensor in (runtime.input, runtime.output))
        if shapes != expected:
            raise ModelMismatch(f"the model maps {shapes[0]} to {shapes[1]}, the checkpoint's model {expected[0]} "
                                f"to {expected[1]}: pass a .tflite exported from this checkpoint")
    return runtimes


def measure_agreement(graph: Graph, runtimes: list[Runtime], samples: Iterable[tuple[np.ndarray, int]], count: int,
                      progress: bool = True) -> Agreement:
    """Each of `count` (image uint8 (H, W, C) at the graph's resolution, label) through tinytrain and through each of
    `runtimes` (load_runtimes: one model in every runtime)."""
    engine = Engine(graph, Arena(MEASURING_ARENA_BYTES, tracing=False))
    errors = np.zeros(len(runtimes))
    agreeing = np.zeros(len(runtimes), np.int64)
    tied = np.zeros(len(runtimes), np.int64)
    hits = np.zeros(len(runtimes), np.int64)
    tinytrain_hits = 0
    for image, label in tqdm(samples, total=count, desc="compare", unit="img", disable=not progress):
        x = graph.preprocessing.normalize(image)
        reference = engine.infer(x)[graph.output_name]
        float_top1 = int(np.argmax(reference))
        tinytrain_hits += int(float_top1 == label)
        sample = np.ascontiguousarray(x.transpose(1, 2, 0)[np.newaxis])  # (1, H, W, C)
        for index, runtime in enumerate(runtimes):
            logits = runtime.run(sample)
            top1 = int(np.argmax(logits))
            errors[index] = max(errors[index], relative_error(logits, reference))
            agreeing[index] += int(top1 == float_top1)
            tied[index] += int(top1 != float_top1 and logits[float_top1] == logits[top1])
            hits[index] += int(top1 == label)
    return Agreement(count, runtimes[0].input["dtype"] == np.int8, tinytrain_hits / count,
                     [RuntimeAgreement(runtime.name, float(errors[index]), agreeing[index] / count, tied[index] / count,
                                       hits[index] / count) for index, runtime in enumerate(runtimes)])


def measure_inference_arena(graph: Graph, model: bytes, schedule: MemorySchedule = LAYER_BY_LAYER) -> InferenceArena:
    """TFLite Micro's arena after one inference of `model`, beside tinytrain's inference peaks of `graph`, layer by
    layer and in `schedule`."""
    micro = TFLiteMicro(model)
    _, height, width = graph.input_shape
    micro.run(np.zeros((1, height, width, graph.input_shape[0]), np.float32))
    return InferenceArena(micro.arena_used_bytes(),
                          measure_inference(graph, MEASURING_ARENA_BYTES).whole_step_peak_bytes,
                          measure_inference(graph, MEASURING_ARENA_BYTES, schedule).whole_step_peak_bytes)


def describe_agreement(name: str, agreement: Agreement, arena: InferenceArena) -> str:
    """The comparison as a small table a person reads."""
    kind = "int8" if agreement.int8 else "float32"
    lines = [f"{name} ({kind}) on {agreement.images:,} test images; tinytrain float32 accuracy "
             f"{agreement.tinytrain_accuracy:.2%}",
             f"  {'runtime':<14}{'max logit error':>17}{'top-1 agreement':>17}{'lost to ties':>14}{'accuracy':>10}"]
    for runtime in agreement.runtimes:
        lines.append(f"  {runtime.runtime:<14}{runtime.max_relative_error:>17.2e}{runtime.top1_agreement:>17.2%}"
                     f"{runtime.top1_ties:>14.2%}{runtime.accuracy:>10.2%}")
    lines.append(f"  inference arena: TFLite Micro {arena.tflite_micro_bytes:,} B ({kind}); tinytrain float32 "
                 f"{arena.tinytrain_peak_bytes:,} B layer by layer, {arena.tinytrain_schedule_peak_bytes:,} B in the "
                 "run's memory schedule")
    return "\n".join(lines)
