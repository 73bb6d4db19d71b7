"""scripts/memory_report.py: the plan of another first block measured in the arena, and bad values in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def run(data_dir, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPOSITORY / "scripts" / "memory_report.py"), "--data-dir",
                           str(data_dir), "--steps", "100", *arguments], capture_output=True, text=True,
                          cwd=REPOSITORY, env={**os.environ, "NUMBA_NUM_THREADS": "1"})


def test_a_first_block_that_needs_strided_backward_in_place_is_measured_fitting(data_dir):
    done = run(data_dir, "--first-block", "11", "--json")
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["fits"] and row["high_water_bytes"] <= row["arena_bytes"] == 262_144
    assert row["memory_schedule"].endswith("strided depthwise backward in place")


def test_bad_first_blocks_are_refused_in_one_line(data_dir):
    negative = run(data_dir, "--first-block", "-1")
    assert negative.returncode == 2 and "--first-block -1: must be a block index" in negative.stderr
    past_the_end = run(data_dir, "--first-block", "30")
    assert past_the_end.returncode == 1 and "Traceback" not in past_the_end.stderr
    assert past_the_end.stderr.strip().splitlines()[-1].startswith("error: no conv layer at or after block 30")
