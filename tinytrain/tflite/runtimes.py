"""Run an exported model in the real runtimes, TFLite Micro and LiteRT (test extras), one NHWC sample at a time.

Both take the preprocessed input as float32 (quantized here with the input tensor's scale and zero point when the
model is int8) and return the logits as float32, dequantized for an int8 model.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .flatbuffer import FILE_IDENTIFIER, Quantization
from .packages import require
from .quantization import dequantize, quantize

# TFLite Micro's interpreter is handed an arena of this many bytes per model byte; what it really uses is measured.
TFLM_ARENA_PER_MODEL_BYTE = 10
_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
# LiteRT announces on the C stderr, at every interpreter it makes, the CPU delegate it runs int8 and float32 with
_XNNPACK_NOTICE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


@dataclass
class CapturedText:
    text: str = ""


@contextmanager
def captured_c_stderr() -> Iterator[CapturedText]:
    """What native code writes to the process's stderr (file descriptor 2) inside the block, which Python's
    sys.stderr does not see; in the yielded object's `text` once the block ends."""
    captured = CapturedText()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as file:
        saved = os.dup(2)
        try:
            os.dup2(file.fileno(), 2)
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            file.seek(0)
            captured.text = file.read().decode(errors="replace")


class RuntimeLoadError(ValueError):
    """A runtime that refuses the model (not a TFLite file, or an operator it lacks)."""


class Runtime:
    """One interpreter holding one model; `input` and `output` are its tensors' details as both interpreters give
    them ("shape", "dtype", "quantization_parameters")."""

    name = ""
    input: dict
    output: dict

    def run(self, sample: np.ndarray) -> np.ndarray:
        """Logits (K,) float32 for one preprocessed input (1, H, W, C) float32."""
        raise NotImplementedError

    @staticmethod
    def _quantize(sample: np.ndarray, details: dict) -> np.ndarray:
        if details["dtype"] == np.float32:
            return sample
        return quantize(sample, _quantization(details))

    @staticmethod
    def _dequantize(values: np.ndarray, details: dict) -> np.ndarray:
        if values.dtype == np.float32:
            return values.reshape(-1)
        return dequantize(values, _quantization(details)).reshape(-1)


def _check_is_tflite(model: bytes, runtime: str) -> None:
    """RuntimeLoadError for bytes that are no TFLite flatbuffer, which TFLite Micro's loader does not refuse cleanly."""
    if model[4:8] != FILE_IDENTIFIER:
        raise RuntimeLoadError(f"{runtime} cannot load the model: it is not a TFLite flatbuffer (no "
                               f"{FILE_IDENTIFIER.decode()} identifier at bytes 4 to 8)")


def _quantization(details: dict) -> Quantization:
    """A tensor's per-tensor quantization, from the details dict both interpreters give."""
    parameters = details["quantization_parameters"]
    return Quantization(np.asarray(parameters["scales"]), np.asarray(parameters["zero_points"]))


class TFLiteMicro(Runtime):
    name = "TFLite Micro"

    def __init__(self, model: bytes):
        runtime = require("tflite_micro").runtime
        _check_is_tflite(model, self.name)
        try:
            self.interpreter = runtime.Interpreter.from_bytes(model, arena_size=TFLM_ARENA_PER_MODEL_BYTE * len(model))
        except (RuntimeError, ValueError) as error:
            raise RuntimeLoadError(f"TFLite Micro cannot load the model ({error})") from error
        self.input = self.interpreter.get_input_details(0)
        self.output = self.interpreter.get_output_details(0)

    def run(self, sample):
        self.interpreter.set_input(self._quantize(sample, self.input), 0)
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_output(0), self.output)

    def arena_used_bytes(self) -> int:
        """The bytes of the tensor arena the interpreter used (head: activations; tail: persistent structures), as
        its recording allocator reports them after an invoke. The binding prints that report to the C stderr only,
        so it is read back from there."""
        with captured_c_stderr() as captured:
            self.interpreter.print_allocations()
        report = captured.text
        match = _ARENA_TOTAL.search(report)
        if match is None:
            raise RuntimeError(f"TFLite Micro printed no arena total; it said: {report[:200]!r}")
        return int(match.group(1))


class LiteRT(Runtime):
    name = "LiteRT"

    def __init__(self, model: bytes):
        interpreter = require("ai_edge_litert.interpreter")
        _check_is_tflite(model, self.name)
        try:
            with captured_c_stderr() as captured:
                self.interpreter = interpreter.Interpreter(model_content=model, num_threads=1)
                self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as error:
            raise RuntimeLoadError(f"LiteRT cannot load the model ({error})") from error
        # the delegate's notice would stand before every line the caller prints; anything else LiteRT said stays
        others = [line for line in captured.text.splitlines() if line.strip() != _XNNPACK_NOTICE]
        if others:
            print("\n".join(others), file=sys.stderr)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def run(self, sample):
        self.interpreter.set_tensor(self.input["index"], self._quantize(sample, self.input))
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)


RUNTIMES = (TFLiteMicro, LiteRT)
