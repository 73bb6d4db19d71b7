"""Shared fixtures: where the real data lives (TINYTRAIN_DATA), which CI must have."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The data directory; tests that need it skip without it, except under CI=true, where they fail."""
    value = os.environ.get("TINYTRAIN_DATA")
    if value and Path(value).is_dir():
        return Path(value)
    reason = f"TINYTRAIN_DATA={value!r} is not a directory; point it at the folder holding the weights and CIFAR-10"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the session, so that CIFAR-10's JPEG archive is decoded once for every test that loads it."""
    return tmp_path_factory.mktemp("cache")
