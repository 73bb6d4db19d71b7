"""Stopping a run cleanly: SIGINT or SIGTERM only asks, and the trainer stops at the next step boundary."""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """A stop signal ended training after a checkpoint was written; `--resume` continues from it."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


class StopRequest:
    """While entered, SIGINT and SIGTERM set `signal_number` instead of killing the process. The first signal also
    restores the previous handlers, so a second one stops at once. Outside the main thread, signals cannot be caught
    there: nothing is installed and `signal_number` stays None."""

    def __init__(self):
        self.signal_number: int | None = None
        self._previous = {}

    def _ask(self, signal_number, frame) -> None:
        self.signal_number = signal_number
        self._restore()

    def _restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._ask) for number in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
