"""Benchmark only (needs the `test` extra): batch-1 MobileNetV2-1.0 steps timed in tinytrain and in PyTorch CPU
eager on the same work, and profiled by op. scripts/bench_step.py prints what this measures.

The same work: the same folded weights, the same input image and labels, the same trained layers (weights and
biases), plain SGD. PyTorch cannot skip channels, so for `dynamic` it trains the same layers fully. Nothing in the
library imports this module, so torch never becomes a runtime dependency.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from tinytrain.arena import DEFAULT_CAPACITY, Arena
from tinytrain.budget import fit_schedule
from tinytrain.cpu import other_cores_busy
from tinytrain.engine import SGD, Engine
from tinytrain.graph import Graph
from tinytrain.memory import MEASURING_ARENA_BYTES
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.sparse import make_policy
from tinytrain.step_profile import StepProfile, profile_training
from tinytrain.torch_reference import TorchGraph

CASES = ("inference", "dense", "last-k", "dynamic", "dynamic-lean")
PROFILED_CASES = ("dynamic", "dynamic-lean")
NUM_CLASSES = 10
LEARNING_RATE = 1e-3
MATMUL_SIZE = 1024


@dataclass(frozen=True)
class Timing:
    first_ms: float  # the first call: Numba compile or cache load, PyTorch's first-call setup
    median_ms: float  # over the timed calls


@dataclass(frozen=True)
class CaseResult:
    resolution: int
    case: str
    tinytrain: Timing
    torch: Timing
    difference: float  # inference: max |logit difference|; training: |first-step loss difference|

    @property
    def speedup(self) -> float:
        return self.torch.median_ms / self.tinytrain.median_ms


@dataclass(frozen=True)
class ResolutionBenchmark:
    resolution: int
    macs: int  # of the graph's forward pass
    results: list[CaseResult]  # one per case of CASES, in that order
    profiles: dict[str, StepProfile]  # case of PROFILED_CASES -> its profile
    lean_schedule: str  # the memory schedule `dynamic-lean` runs in, described


def time_calls(call: Callable[[int], object], warmup: int, repeats: int, label: str) -> tuple[Timing, object]:
    """call(step) for step 0, 1, ...: the first call alone, `warmup` untimed, then `repeats` timed one by one.
    Returns the timing and what the first call returned."""
    start = time.perf_counter()
    first = call(0)
    first_seconds = time.perf_counter() - start
    for step in range(1, 1 + warmup):
        call(step)
    seconds = []
    for step in tqdm(range(1 + warmup, 1 + warmup + repeats), desc=label, leave=False):
        start = time.perf_counter()
        call(step)
        seconds.append(time.perf_counter() - start)
    return Timing(1000 * first_seconds, 1000 * statistics.median(seconds)), first


def run_case(case: str, graph: Graph, engine: Engine, image: np.ndarray, x: torch.Tensor, warmup: int,
             repeats: int, seed: int) -> CaseResult:
    """Time `case` in both frameworks: `image` (H, W, C) uint8 for tinytrain, `x` (1, C, H, W) the same pixels
    preprocessed for torch."""
    resolution = graph.input_shape[1]
    # The torch model copies the graph's weights as they are now, before tinytrain's steps of this case change
    # them, so both first calls start from the same parameters and their outputs can be compared.
    if case == "inference":
        model = TorchGraph(graph, trained=set())

        def tinytrain_call(step):
            return engine.infer(image)[graph.output_name]

        def torch_call(step):
            with torch.inference_mode():
                return model.logits(x)[0].numpy()
    else:
        policy = make_policy(case.removesuffix("-lean"), graph, seed=seed)
        model = TorchGraph(graph, trained=set(policy.plan(0, 0).updates))
        optimizer = torch.optim.SGD(model.trained_parameters, lr=LEARNING_RATE)
        sgd = SGD(lr=LEARNING_RATE)
        # The label cycles with the step so that the loss never collapses to 0 on the one repeated image: a
        # vanishing gradient would drift into float32 denormals, slow on x86, and time what no real run does.
        targets = [torch.tensor([label]) for label in range(NUM_CLASSES)]

        def tinytrain_call(step):  # the dynamic policy draws new channels at every new step
            return engine.train_step(image, step % NUM_CLASSES, policy.plan(step, 0), sgd).loss

        def torch_call(step):
            return model.train_step(x, targets[step % NUM_CLASSES], optimizer)
    tinytrain_timing, tinytrain_first = time_calls(tinytrain_call, warmup, repeats, f"tinytrain {case} {resolution}px")
    torch_timing, torch_first = time_calls(torch_call, warmup, repeats, f"torch {case} {resolution}px")
    difference = float(np.max(np.abs(np.subtract(tinytrain_first, torch_first))))
    return CaseResult(resolution, case, tinytrain_timing, torch_timing, difference)


def benchmark_resolution(resolution: int, warmup: int, repeats: int, profile_steps: int,
                         seed: int) -> ResolutionBenchmark:
    """Every case of CASES at `resolution`, then the profiles of PROFILED_CASES, on a model of random weights
    (timing does not depend on their values)."""
    graph = build_mobilenetv2(NUM_CLASSES, resolution, width_mult=1.0, weights=None, seed=seed)
    macs = graph.macs()  # before any step: the same model whatever the cases do to its weights
    engine = Engine(graph, Arena(MEASURING_ARENA_BYTES, tracing=False))
    # dynamic-lean: the same step in the 256 KiB arena, in the fastest memory schedule that fits it there
    lean = fit_schedule(graph, make_policy("dynamic", graph, seed=seed).plan(0, 0), DEFAULT_CAPACITY).schedule
    lean_engine = Engine(graph, Arena(DEFAULT_CAPACITY, tracing=False), memory_schedule=lean)
    # One image for every step: uint8 (H, W, C) pixels that tinytrain normalises into its arena, and the same pixels
    # preprocessed once into a (1, C, H, W) tensor for torch.
    image = np.random.default_rng(seed).integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
    mean, std = (np.asarray(value, np.float32) for value in (graph.preprocessing.mean, graph.preprocessing.std))
    x = torch.from_numpy(np.ascontiguousarray(((image / np.float32(255) - mean) / std).transpose(2, 0, 1)[None]))
    results = [run_case(case, graph, lean_engine if case == "dynamic-lean" else engine, image, x, warmup, repeats,
                        seed) for case in CASES]
    profiles = {case: profile_training(lean_engine if case == "dynamic-lean" else engine,
                                       make_policy("dynamic", graph, seed=seed), image, profile_steps,
                                       SGD(lr=LEARNING_RATE), NUM_CLASSES) for case in PROFILED_CASES}
    return ResolutionBenchmark(resolution, macs, results, profiles, lean.describe(graph))


def matmul_gflops(multiply: Callable[[], None], repeats: int) -> float:
    """GFLOP/s of a MATMUL_SIZE^3 float32 product: 2 FLOP per multiply-add, median of `repeats` after one warm-up."""
    multiply()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        multiply()
        seconds.append(time.perf_counter() - start)
    return 2 * MATMUL_SIZE ** 3 / statistics.median(seconds) / 1e9


def machine_matmul_rates(seed: int) -> tuple[float, float]:
    """NumPy's np.matmul (its OpenBLAS, one thread under tinytrain's OPENBLAS_NUM_THREADS=1, the rate the
    pointwise kernels' sgemm gets) and torch.mm on all cores, for scale."""
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32) for _ in range(2))
    out = np.empty_like(a)
    a_torch, b_torch, out_torch = torch.from_numpy(a), torch.from_numpy(b), torch.empty(MATMUL_SIZE, MATMUL_SIZE)
    numpy_rate = matmul_gflops(lambda: np.matmul(a, b, out=out), repeats=10)
    torch_rate = matmul_gflops(lambda: torch.mm(a_torch, b_torch, out=out_torch), repeats=10)
    return numpy_rate, torch_rate


def other_load(before, after) -> str:
    """The cores' worth of CPU other processes used between two cpu_seconds() readings, as text."""
    busy = other_cores_busy(before, after)
    return "unknown (no /proc/stat)" if busy is None else f"{busy:.2f} of {os.cpu_count()} cores"
