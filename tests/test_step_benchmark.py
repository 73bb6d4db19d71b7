"""The step benchmark: both frameworks run the same work (their first outputs agree), every case is timed and
profiled, and scripts/bench_step.py --json prints the rows its readers parse."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tinytrain.cpu import cpu_model
from tinytrain.step_benchmark import CASES, PROFILED_CASES, benchmark_resolution
from tinytrain.step_profile import OUTSIDE_KERNELS

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def measured():
    return benchmark_resolution(32, warmup=0, repeats=2, profile_steps=1, seed=0)


def test_every_case_is_the_same_work_in_both_frameworks(measured):
    assert [result.case for result in measured.results] == list(CASES)
    for result in measured.results:
        # inference: the largest logit difference; training: the first step's loss difference
        assert result.difference < 1e-4, result
        assert result.tinytrain.median_ms > 0 and result.torch.median_ms > 0


def test_each_profile_times_the_kernels_of_every_phase(measured):
    assert set(measured.profiles) == set(PROFILED_CASES)
    for profile in measured.profiles.values():
        assert profile.kernel_calls > 0 and OUTSIDE_KERNELS in profile.ms
        kernel_phases = {op[0] for op, ms in profile.ms.items() if op != OUTSIDE_KERNELS and ms > 0}
        assert kernel_phases == {"forward", "loss", "backward", "step"}


def test_the_script_prints_the_json_rows():
    done = subprocess.run([sys.executable, str(REPOSITORY / "scripts" / "bench_step.py"), "--resolution", "32",
                           "--repeats", "1", "--warmup", "0", "--profile-steps", "1", "--json"],
                          capture_output=True, text=True, cwd=REPOSITORY, env={**os.environ, "NUMBA_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [row["case"] for row in rows] == list(CASES)
    for row in rows:
        assert set(row) == {"case", "resolution", "tinytrain_ms", "torch_ms", "speedup"} and row["resolution"] == 32
    assert "ms per step, median of 1" in done.stderr and "dynamic-lean at 32x32" in done.stderr
    # ratios depend on the processor and on the BLAS kernels run on it, so the report names both
    assert f"cores of {cpu_model()};" in done.stderr and "OpenBLAS kernels (SciPy's" in done.stderr


@pytest.mark.skipif(platform.machine() != "x86_64", reason="Haswell is a kernel set of OpenBLAS on x86-64 only")
def test_the_blas_kernels_named_are_the_ones_openblas_runs():
    # OpenBLAS reads OPENBLAS_CORETYPE when it loads, so each setting needs a process of its own.
    def reported(environment):
        return subprocess.run([sys.executable, "-c", "from tinytrain.cpu import blas_kernels; print(blas_kernels())"],
                              capture_output=True, text=True, check=True, env=environment).stdout.strip()

    unset = {name: value for name, value in os.environ.items() if name != "OPENBLAS_CORETYPE"}
    if reported(unset).startswith("unknown"):
        pytest.skip("SciPy without its bundled OpenBLAS: the kernel set cannot be asked")
    assert reported({**unset, "OPENBLAS_CORETYPE": "Haswell"}) == "Haswell (OPENBLAS_CORETYPE=Haswell)"
    assert reported(unset).endswith(", chosen for this processor")
