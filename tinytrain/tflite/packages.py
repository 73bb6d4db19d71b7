"""The optional packages of the TFLite export and its runtimes, imported on first use with a one-line fix if absent."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingPackageError(ImportError):
    """An optional package is not installed; the message says what to install."""


# package to import -> (what it is for, the pip command that installs it, from the project's checkout)
INSTALL = {
    "flatbuffers": ("the TFLite export", 'pip install -e ".[tflite]"'),
    "tflite": ("the TFLite export and import", 'pip install -e ".[tflite]"'),
    "tflite_micro": ("running models in TFLite Micro", 'pip install -e ".[test]"'),
    "ai_edge_litert": ("running models in LiteRT", 'pip install -e ".[test]"'),
}


def require(name: str) -> ModuleType:
    """`import name`, or MissingPackageError naming the command that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        purpose, command = INSTALL[name.split(".")[0]]
        raise MissingPackageError(f"{purpose} needs the {name!r} package, which is not installed: {command}") from error
