"""Refuse a pickle whose memo indices run ahead of its opcodes, before an unpickler sizes its memo to them.

The C unpickler grows its memo table to the largest index a PUT asks for: one flipped byte can turn BINPUT into
LONG_BINPUT with an index near 2**32, and the table then takes tens of gigabytes and minutes to clear. A pickle
writer numbers its memo entries in order, so an index is never larger than the count of opcodes before it.
"""

from __future__ import annotations

import pickletools
from typing import BinaryIO

MEMO_OPCODES = ("PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET")


def check_memo_indices(stream: BinaryIO) -> None:
    """Raise ValueError if the pickle at the stream's position uses a memo index beyond the opcodes before it.

    The stream is left where it was, for the unpickler to read. Opcodes are only decoded (pickletools.genops), never
    run, and their arguments are read from the stream, so a damaged length fails at its end."""
    start = stream.tell()
    try:
        for position, (opcode, argument, _) in enumerate(pickletools.genops(stream)):
            if opcode.name in MEMO_OPCODES and not 0 <= int(argument) <= position:
                raise ValueError(f"{opcode.name} of memo index {argument} at opcode {position}: damaged pickle")
    finally:
        stream.seek(start)
