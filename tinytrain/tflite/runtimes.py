"""Run an exported model in the real runtimes, TFLite Micro and LiteRT (test extras), one NHWC sample at a time.

Both take the preprocessed input as float32 (quantized here with the input tensor's scale and zero point when the
model is int8) and return the logits as float32, dequantized for an int8 model.
"""

from __future__ import annotations

import os
import re
import tempfile

import numpy as np

from .flatbuffer import Quantization
from .packages import require
from .quantization import dequantize, quantize

# TFLite Micro's interpreter is handed an arena of this many bytes per model byte; what it really uses is measured.
TFLM_ARENA_PER_MODEL_BYTE = 10
_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")


class RuntimeLoadError(ValueError):
    """A runtime that refuses the model (not a TFLite file, or an operator it lacks)."""


class Runtime:
    """One interpreter holding one model."""

    name = ""

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


def _quantization(details: dict) -> Quantization:
    """A tensor's per-tensor quantization, from the details dict both interpreters give."""
    parameters = details["quantization_parameters"]
    return Quantization(np.asarray(parameters["scales"]), np.asarray(parameters["zero_points"]))


class TFLiteMicro(Runtime):
    name = "TFLite Micro"

    def __init__(self, model: bytes):
        runtime = require("tflite_micro").runtime
        try:
            self.interpreter = runtime.Interpreter.from_bytes(model, arena_size=TFLM_ARENA_PER_MODEL_BYTE * len(model))
        except (RuntimeError, ValueError) as error:
            raise RuntimeLoadError(f"TFLite Micro cannot load the model ({error})") from error

    def run(self, sample):
        self.interpreter.set_input(self._quantize(sample, self.interpreter.get_input_details(0)), 0)
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_output(0), self.interpreter.get_output_details(0))

    def arena_used_bytes(self) -> int:
        """The bytes of the tensor arena the interpreter used (head: activations; tail: persistent structures), as
        its recording allocator reports them after an invoke. The binding prints that report to the C stderr only,
        so it is read back from there."""
        with tempfile.TemporaryFile(mode="w+b") as captured:
            saved = os.dup(2)
            try:
                os.dup2(captured.fileno(), 2)
                self.interpreter.print_allocations()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            captured.seek(0)
            report = captured.read().decode(errors="replace")
        match = _ARENA_TOTAL.search(report)
        if match is None:
            raise RuntimeError(f"TFLite Micro printed no arena total; it said: {report[:200]!r}")
        return int(match.group(1))


class LiteRT(Runtime):
    name = "LiteRT"

    def __init__(self, model: bytes):
        interpreter = require("ai_edge_litert.interpreter")
        try:
            self.interpreter = interpreter.Interpreter(model_content=model, num_threads=1)
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as error:
            raise RuntimeLoadError(f"LiteRT cannot load the model ({error})") from error
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def run(self, sample):
        self.interpreter.set_tensor(self.input["index"], self._quantize(sample, self.input))
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)


RUNTIMES = (TFLiteMicro, LiteRT)
