"""The machine's processor, how busy its cores are with other processes, and the warning a run gets when its
threads must share."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import llvmlite.binding as llvm
import numba
import scipy

BUSY_CORES_TO_WARN = 0.5  # other processes' cores' worth of CPU above which Numba's default threads contend


def cpu_seconds() -> tuple[float, float, float] | None:
    """(wall, CPU busy on the whole machine, CPU used by this process) in seconds so far; None without /proc/stat.
    Busy counts steal too: time a hypervisor gave to another machine is time this run could not have."""
    try:
        with open("/proc/stat") as stat:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, stat.readline().split()[1:9])
    except OSError:
        return None
    own = os.times()
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return time.perf_counter(), busy, own.user + own.system


def other_cores_busy(before, after) -> float | None:
    """The cores' worth of CPU other processes used between two cpu_seconds() readings; None if unknown."""
    if before is None or after is None:
        return None
    wall, busy, own = (end - start for start, end in zip(before, after))
    return max(0.0, (busy - own) / wall)


def thread_contention_warning(seconds: float = 0.5) -> str | None:
    """A warning when other processes hold cores while NUMBA_NUM_THREADS is unset: Numba then starts one thread per
    core, and its parallel kernels wait for the slowest, which here can make training 20x slower."""
    if "NUMBA_NUM_THREADS" in os.environ:
        return None
    before = cpu_seconds()
    time.sleep(seconds)
    busy = other_cores_busy(before, cpu_seconds())
    if busy is None or busy < BUSY_CORES_TO_WARN:
        return None
    cores = os.cpu_count() or 1
    free = max(1, round(cores - busy))
    return (f"warning: other processes are using {busy:.1f} of this machine's {cores} cores and NUMBA_NUM_THREADS is "
            f"unset, so Numba's {cores} threads will wait on them and training can run many times slower; set "
            f"NUMBA_NUM_THREADS={free} (the free cores)")


def cpu_model() -> str:
    """The processor's name as the kernel reports it, and the CPU that LLVM (hence Numba) compiles for: speed ratios
    between two frameworks depend on both, so a benchmark states them."""
    name = "unknown processor"
    try:
        with open("/proc/cpuinfo") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name} (LLVM target {numba.config.CPU_NAME or llvm.get_host_cpu_name()})"


def blas_kernels() -> str:
    """Which of its kernel sets the OpenBLAS inside SciPy (the sgemm the pointwise kernels call) runs: it picks one for
    the processor unless OPENBLAS_CORETYPE names one, and on a processor with AVX-512 the two can differ in speed."""
    # the layout of SciPy's manylinux wheels, which carry one OpenBLAS; another build of SciPy reports "unknown"
    libraries = sorted((Path(scipy.__file__).parent.parent / "scipy.libs").glob("libscipy_openblas*.so*"))
    try:
        corename = ctypes.CDLL(str(libraries[0])).scipy_openblas_get_corename
    except (IndexError, OSError, AttributeError):
        return "unknown (not SciPy's bundled OpenBLAS)"
    corename.restype = ctypes.c_char_p
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return corename().decode() + (f" (OPENBLAS_CORETYPE={forced})" if forced else ", chosen for this processor")
