"""Time each convolution kernel at the shapes of MobileNetV2-1.0: ms per call and GFLOP/s, then per-network totals."""

import tinytrain  # noqa: F401, I001  first: it sets OPENBLAS_NUM_THREADS=1 before NumPy loads a BLAS

import argparse

import numba

from tinytrain.kernel_benchmark import graph_totals, kernel_cases, time_case
from tinytrain.models.mobilenetv2 import build_mobilenetv2


def parse_args():
    parser = argparse.ArgumentParser(
        description="Time the depthwise, stem, pointwise input-gradient and ReLU6 kernels on random data at every "
                    "distinct layer shape of MobileNetV2-1.0 (and a few patch tile shapes): the fastest of --repeats "
                    "calls, after one untimed call. GFLOP/s is 2 x MACs / time. Threads: NUMBA_NUM_THREADS "
                    "(set it to 1 for one core). Totals call each kernel once per layer of the network.")
    parser.add_argument("--resolution", type=int, default=128, help="input side in pixels (default 128)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per kernel and shape (default 50)")
    parser.add_argument("--kernel", default="", help="only kernels whose name contains this text")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and data")
    args = parser.parse_args()
    if args.resolution < 1 or args.repeats < 1:
        parser.error("--resolution and --repeats must be positive")
    return args


def main():
    args = parse_args()
    graph = build_mobilenetv2(10, args.resolution, weights=None, seed=args.seed)
    cases = [case for case in kernel_cases(graph, args.seed) if args.kernel in case.kernel]
    print(f"MobileNetV2-1.0 at {args.resolution} px, {numba.get_num_threads()} Numba thread(s), "
          f"best of {args.repeats} calls")
    print(f"{'kernel':36} {'input shape':28} {'layers':>6} {'ms':>9} {'GFLOP/s':>8}")
    timings = []
    for case in cases:
        timing = time_case(case, args.repeats)
        timings.append(timing)
        print(f"{case.kernel:36} {case.shape:28} {case.calls or 'tile':>6} {1e3 * timing.seconds:9.4f} "
              f"{timing.gflops:8.2f}")
    print(f"\n{'kernel, once per layer':36} {'ms':>9} {'GFLOP/s':>8}")
    for total in graph_totals(timings):
        print(f"{total.kernel:36} {1e3 * total.seconds:9.3f} {total.gflops:8.2f}")


if __name__ == "__main__":
    main()
