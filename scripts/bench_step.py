"""Time batch-1 MobileNetV2-1.0 steps in tinytrain and in PyTorch CPU eager on the same work; profile; GFLOP/s."""

from __future__ import annotations

import tinytrain  # noqa: F401, I001  first: it sets OPENBLAS_NUM_THREADS=1 before NumPy or torch loads a BLAS

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numba
import numpy as np
import torch
from tqdm import tqdm

from tinytrain.arena import DEFAULT_CAPACITY, Arena
from tinytrain.budget import fit_schedule
from tinytrain.cpu import cpu_seconds, other_cores_busy
from tinytrain.engine import SGD, Engine
from tinytrain.graph import Graph
from tinytrain.memory import MEASURING_ARENA_BYTES
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.sparse import make_policy
from tinytrain.step_profile import OUTSIDE_KERNELS, profile_training
from tinytrain.torch_reference import TorchGraph

CASES = ("inference", "dense", "last-k", "dynamic", "dynamic-lean")
NUM_CLASSES = 10
LEARNING_RATE = 1e-3
MATMUL_SIZE = 1024


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Time one batch-1 step of MobileNetV2-1.0 (float32, BatchNorm frozen and folded into the convs, "
                    "a new 10-class head) in tinytrain and in PyTorch CPU eager, in the same process, on the same "
                    "work: the same folded weights, the same input image and labels, the same trained layers "
                    "(weights and biases), plain SGD (lr 1e-3, no momentum). Cases: inference (a forward pass; "
                    "torch under inference_mode); dense (every layer trains); last-k (the make_policy default, the "
                    "last 2 weighted layers); dynamic (tinytrain's dynamic sparse update, a new channel draw every "
                    "step; PyTorch cannot skip channels, so it trains the same layers fully); dynamic-lean (the same "
                    "dynamic step in a 256 KiB arena, in the fastest memory schedule that fits it there: the frozen "
                    "front in patches, depthwise convs in place). Weights are randomly "
                    "initialised: timing does not depend on their values, so no pretrained download is needed. "
                    "Each figure is the median over --repeats timed steps; the first call of each case (Numba "
                    "compile or cache load, PyTorch's first-call setup) is excluded and printed separately. Also "
                    "printed: a per-op profile of tinytrain's dynamic and dynamic-lean steps (each kernel call of "
                    "the recorded steps timed; what remains is the time outside kernels) and the achieved inference "
                    "GFLOP/s next to this machine's float32 matmul rate. PyTorch runs on "
                    "torch.set_num_threads(os.cpu_count()); Numba on its default, one thread per core. Run it on an "
                    "otherwise idle machine: the report says how much CPU other processes took meanwhile; re-run "
                    "when that is not near 0.")
    parser.add_argument("--resolution", type=int, nargs="+", default=[32, 128],
                        help="input side(s) in pixels, each timed in turn (default: 32 128)")
    parser.add_argument("--repeats", type=int, default=30,
                        help="timed steps per case and framework; the median is reported (default 30)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps per case and framework after the first call, so that caches and "
                             "thread pools settle (default 3)")
    parser.add_argument("--profile-steps", type=int, default=10,
                        help="instrumented tinytrain steps each profile averages over (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, the image and the channel draws")
    parser.add_argument("--json", action="store_true",
                        help="print only a JSON list of {case, tinytrain_ms, torch_ms, speedup, resolution} on "
                             "stdout; the tables go to stderr")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.profile_steps < 1 or min(args.resolution) < 1:
        parser.error("--repeats, --profile-steps and --resolution must be positive, --warmup not negative")
    return args


# --------------------------------------------------------------------------------------------------------
# timing


@dataclass(frozen=True)
class Timing:
    first_ms: float  # the first call: Numba compile or cache load, PyTorch's first-call setup
    median_ms: float  # over the timed calls


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


def run_case(case: str, graph: Graph, engine: Engine, image: np.ndarray, x: torch.Tensor, args) -> CaseResult:
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
        policy = make_policy(case.removesuffix("-lean"), graph, seed=args.seed)
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
    tinytrain_timing, tinytrain_first = time_calls(tinytrain_call, args.warmup, args.repeats,
                                                   f"tinytrain {case} {resolution}px")
    torch_timing, torch_first = time_calls(torch_call, args.warmup, args.repeats, f"torch {case} {resolution}px")
    difference = float(np.max(np.abs(np.subtract(tinytrain_first, torch_first))))
    return CaseResult(resolution, case, tinytrain_timing, torch_timing, difference)


# --------------------------------------------------------------------------------------------------------
# throughput


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


# --------------------------------------------------------------------------------------------------------
# report


def other_load(before, after) -> str:
    """The cores' worth of CPU other processes used between two cpu_seconds() readings, as text."""
    busy = other_cores_busy(before, after)
    return "unknown (no /proc/stat)" if busy is None else f"{busy:.2f} of {os.cpu_count()} cores"


PHASES = ("forward", "loss", "backward", "step")


def print_report(results: list[CaseResult], profiles: dict, macs: dict, rates: tuple[float, float],
                 disturbance: str, args, out) -> None:
    def say(line=""):
        print(line, file=out)

    say(f"MobileNetV2-1.0, batch 1, float32, BatchNorm folded, random init, {NUM_CLASSES} classes; "
        f"{os.cpu_count()} cores; threads: Numba {numba.get_num_threads()}, PyTorch {torch.get_num_threads()}, "
        f"OpenBLAS {os.environ.get('OPENBLAS_NUM_THREADS')}; torch {torch.__version__}, numba {numba.__version__}")
    # Another job on these cores slows both frameworks, and not evenly: re-run when this is not near 0.
    say(f"CPU used by other processes during the run: {disturbance}")
    say()
    say(f"ms per step, median of {args.repeats} (first call and {args.warmup} warm-up steps excluded)")
    say(f"{'resolution':>10}  {'case':<10}{'tinytrain_ms':>13}{'torch_ms':>10}{'speedup':>9}  check (first call)")
    for r in results:
        check = "max |logit diff|" if r.case == "inference" else "|loss diff|"
        say(f"{r.resolution:>10}  {r.case:<10}{r.tinytrain.median_ms:>13.2f}{r.torch.median_ms:>10.2f}"
            f"{r.speedup:>8.2f}x  {check} {r.difference:.1e}")
    say()
    say("warm-up: the first call of each case, ms (tinytrain: Numba compile or cache load of the kernels it is the "
        "first to use)")
    say(f"{'resolution':>10}  {'case':<10}{'tinytrain':>11}{'torch':>9}")
    for r in results:
        say(f"{r.resolution:>10}  {r.case:<10}{r.tinytrain.first_ms:>11.1f}{r.torch.first_ms:>9.1f}")
    say()
    numpy_rate, torch_rate = rates
    say("inference throughput, 2 FLOP per MAC of graph.macs(), over the median inference time")
    for r in results:
        if r.case == "inference":
            flop = 2 * macs[r.resolution]
            tinytrain_rate = flop / r.tinytrain.median_ms / 1e6
            say(f"  {r.resolution:>3}x{r.resolution:<3} {flop / 1e6:7.1f} MFLOP: tinytrain {tinytrain_rate:6.2f} "
                f"GFLOP/s ({tinytrain_rate / numpy_rate:.0%} of NumPy matmul), torch "
                f"{flop / r.torch.median_ms / 1e6:6.2f} GFLOP/s")
    say(f"  float32 {MATMUL_SIZE}x{MATMUL_SIZE} matmul: NumPy np.matmul {numpy_rate:.1f} GFLOP/s "
        f"(OpenBLAS, {os.environ.get('OPENBLAS_NUM_THREADS')} thread as tinytrain sets it), torch.mm "
        f"{torch_rate:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    for (resolution, case), profile in profiles.items():
        timed = next(r for r in results if r.resolution == resolution and r.case == case)
        say()
        say(f"tinytrain {case} step at {resolution}x{resolution} by op: mean of {args.profile_steps} instrumented "
            f"steps {profile.step_ms:.2f} ms (uninstrumented median {timed.tinytrain.median_ms:.2f} ms); outside "
            f"kernels {profile.ms[OUTSIDE_KERNELS]:.3f} ms, {profile.kernel_calls} kernel calls "
            f"({1000 * profile.ms[OUTSIDE_KERNELS] / profile.kernel_calls:.1f} us a call)")
        say(f"  {'phase':<9}{'op':<50}{'ms':>8}{'share':>7}{'GFLOP/s':>9}")
        rows = sorted(profile.ms.items(), key=lambda item: (PHASES.index(item[0][0]), -item[1]))
        for (phase, op), ms in rows:
            macs = profile.forward_macs.get(op, 0) if phase == "forward" else 0
            rate = f"{2 * macs / ms / 1e6:9.2f}" if macs else ""
            say(f"  {phase:<9}{op:<50}{ms:>8.3f}{ms / profile.step_ms:>7.1%}{rate}")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count())
    out = sys.stderr if args.json else sys.stdout
    before = cpu_seconds()
    results, profiles, macs, lean_schedules = [], {}, {}, {}
    for resolution in args.resolution:
        graph = build_mobilenetv2(NUM_CLASSES, resolution, width_mult=1.0, weights=None, seed=args.seed)
        macs[resolution] = graph.macs()
        engine = Engine(graph, Arena(MEASURING_ARENA_BYTES, tracing=False))
        # dynamic-lean: the same step in the 256 KiB arena, in the fastest memory schedule that fits it there
        lean = fit_schedule(graph, make_policy("dynamic", graph, seed=args.seed).plan(0, 0), DEFAULT_CAPACITY)
        lean_engine = Engine(graph, Arena(DEFAULT_CAPACITY, tracing=False), memory_schedule=lean.schedule)
        lean_schedules[resolution] = lean.schedule.describe(graph)
        # One image for every step: uint8 (H, W, C) pixels that tinytrain normalises into its arena, and the same
        # pixels preprocessed once into a (1, C, H, W) tensor for torch.
        image = np.random.default_rng(args.seed).integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
        mean, std = (np.asarray(value, np.float32) for value in (graph.preprocessing.mean, graph.preprocessing.std))
        x = torch.from_numpy(np.ascontiguousarray(((image / np.float32(255) - mean) / std).transpose(2, 0, 1)[None]))
        for case in CASES:
            results.append(run_case(case, graph, lean_engine if case == "dynamic-lean" else engine, image, x, args))
        for case, profiled in (("dynamic", engine), ("dynamic-lean", lean_engine)):
            profiles[resolution, case] = profile_training(profiled, make_policy("dynamic", graph, seed=args.seed),
                                                          image, args.profile_steps, SGD(lr=LEARNING_RATE),
                                                          NUM_CLASSES)
    rates = machine_matmul_rates(args.seed)
    disturbance = other_load(before, cpu_seconds())
    print_report(results, profiles, macs, rates, disturbance, args, out)
    for resolution, schedule in lean_schedules.items():
        print(f"dynamic-lean at {resolution}x{resolution}, in {DEFAULT_CAPACITY:,} B: {schedule}", file=out)
    if args.json:
        print(json.dumps([{"case": r.case, "tinytrain_ms": round(r.tinytrain.median_ms, 3),
                           "torch_ms": round(r.torch.median_ms, 3), "speedup": round(r.speedup, 3),
                           "resolution": r.resolution} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
