"""Time batch-1 MobileNetV2-1.0 steps in tinytrain and in PyTorch CPU eager on the same work; profile; GFLOP/s."""

from __future__ import annotations

import tinytrain  # noqa: F401, I001  first: it sets OPENBLAS_NUM_THREADS=1 before NumPy or torch loads a BLAS

import argparse
import json
import os
import sys

import numba
import torch

from tinytrain.arena import DEFAULT_CAPACITY
from tinytrain.cpu import blas_kernels, cpu_model, cpu_seconds
from tinytrain.step_benchmark import (MATMUL_SIZE, NUM_CLASSES, ResolutionBenchmark, benchmark_resolution,
                                      machine_matmul_rates, other_load)
from tinytrain.step_profile import OUTSIDE_KERNELS


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


PHASES = ("forward", "loss", "backward", "step")


def print_report(benchmarks: list[ResolutionBenchmark], rates: tuple[float, float], disturbance: str, args,
                 out) -> None:
    def say(line=""):
        print(line, file=out)

    results = [result for benchmark in benchmarks for result in benchmark.results]
    say(f"MobileNetV2-1.0, batch 1, float32, BatchNorm folded, random init, {NUM_CLASSES} classes; "
        f"{os.cpu_count()} cores of {cpu_model()}; threads: Numba {numba.get_num_threads()}, "
        f"PyTorch {torch.get_num_threads()}, OpenBLAS {os.environ.get('OPENBLAS_NUM_THREADS')}; "
        f"torch {torch.__version__}, numba {numba.__version__}")
    say(f"OpenBLAS kernels (SciPy's, behind the pointwise products' sgemm): {blas_kernels()}")
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
    for benchmark in benchmarks:
        r = next(result for result in benchmark.results if result.case == "inference")
        flop = 2 * benchmark.macs
        tinytrain_rate = flop / r.tinytrain.median_ms / 1e6
        say(f"  {r.resolution:>3}x{r.resolution:<3} {flop / 1e6:7.1f} MFLOP: tinytrain {tinytrain_rate:6.2f} "
            f"GFLOP/s ({tinytrain_rate / numpy_rate:.0%} of NumPy matmul), torch "
            f"{flop / r.torch.median_ms / 1e6:6.2f} GFLOP/s")
    say(f"  float32 {MATMUL_SIZE}x{MATMUL_SIZE} matmul: NumPy np.matmul {numpy_rate:.1f} GFLOP/s "
        f"(OpenBLAS, {os.environ.get('OPENBLAS_NUM_THREADS')} thread as tinytrain sets it), torch.mm "
        f"{torch_rate:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    for benchmark in benchmarks:
        resolution = benchmark.resolution
        for case, profile in benchmark.profiles.items():
            timed = next(r for r in benchmark.results if r.case == case)
            say()
            say(f"tinytrain {case} step at {resolution}x{resolution} by op: mean of {args.profile_steps} "
                f"instrumented steps {profile.step_ms:.2f} ms (uninstrumented median {timed.tinytrain.median_ms:.2f} "
                f"ms); outside kernels {profile.ms[OUTSIDE_KERNELS]:.3f} ms, {profile.kernel_calls} kernel calls "
                f"({1000 * profile.ms[OUTSIDE_KERNELS] / profile.kernel_calls:.1f} us a call)")
            say(f"  {'phase':<9}{'op':<50}{'ms':>8}{'share':>7}{'GFLOP/s':>9}")
            rows = sorted(profile.ms.items(), key=lambda item: (PHASES.index(item[0][0]), -item[1]))
            for (phase, op), ms in rows:
                macs = profile.forward_macs.get(op, 0) if phase == "forward" else 0
                rate = f"{2 * macs / ms / 1e6:9.2f}" if macs else ""
                say(f"  {phase:<9}{op:<50}{ms:>8.3f}{ms / profile.step_ms:>7.1%}{rate}")
    for benchmark in benchmarks:
        say(f"dynamic-lean at {benchmark.resolution}x{benchmark.resolution}, in {DEFAULT_CAPACITY:,} B: "
            f"{benchmark.lean_schedule}")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count())
    out = sys.stderr if args.json else sys.stdout
    before = cpu_seconds()
    benchmarks = [benchmark_resolution(resolution, args.warmup, args.repeats, args.profile_steps, args.seed)
                  for resolution in args.resolution]
    rates = machine_matmul_rates(args.seed)
    disturbance = other_load(before, cpu_seconds())
    print_report(benchmarks, rates, disturbance, args, out)
    if args.json:
        print(json.dumps([{"case": r.case, "tinytrain_ms": round(r.tinytrain.median_ms, 3),
                           "torch_ms": round(r.torch.median_ms, 3), "speedup": round(r.speedup, 3),
                           "resolution": r.resolution} for benchmark in benchmarks for r in benchmark.results],
                         indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
