"""How the command-line scripts end: an expected failure prints one line, `error: <what>; <how to fix>`, and exits 1.

A script's parser gets `--debug` from add_debug_flag, which turns the line back into the full traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tinytrain.arena import ArenaOverflow
from tinytrain.checkpoint import CheckpointError
from tinytrain.data.errors import DataError
from tinytrain.divergence import TrainingDiverged
from tinytrain.interrupt import TrainingInterrupted
from tinytrain.pruned_model import PrunedModelError
from tinytrain.tflite.agreement import ModelMismatch
from tinytrain.tflite.convert import ExportError
from tinytrain.tflite.packages import MissingPackageError
from tinytrain.tflite.run_data import TooFewImages
from tinytrain.tflite.runtimes import RuntimeLoadError
from tinytrain.train import ConfigError
from tinytrain.weights.errors import WeightsError

# Each of these carries a message that names the file or setting and says what to do.
EXPECTED_ERRORS = (ArenaOverflow, CheckpointError, ConfigError, DataError, ExportError, MissingPackageError,
                   ModelMismatch, PrunedModelError, RuntimeLoadError, TooFewImages, TrainingDiverged, WeightsError)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help, unless it has no default or its help already says what it is."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def describe_os_error(error: OSError) -> str:
    where = f" ({error.filename})" if error.filename else ""
    return (f"{error.strerror or error}{where}; check that the path exists and is writable, and that the disk has "
            "room")


def run_script(body: Callable[[], int], debug: bool) -> int:
    """body()'s exit status; an expected error prints its line to stderr and gives 1 (`debug`: it is raised). A stop
    signal that training turned into a checkpoint gives 128 + the signal's number, as a shell reports it."""
    try:
        return body()
    except TrainingInterrupted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        return 128 + stop.signal_number
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted outside training; any checkpoint already written is whole: continue with --resume",
              file=sys.stderr)
        return 130
    except OSError as error:
        if debug:
            raise
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 1
    except EXPECTED_ERRORS as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
