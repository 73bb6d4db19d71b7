"""One fixed byte arena: every tensor a training step writes is an aligned, typed view into it, counted exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_CAPACITY = 262_144  # 256 KiB, the on-chip SRAM budget of the target microcontrollers
DEFAULT_ALIGNMENT = 16  # bytes; enough for float32 SIMD loads and every dtype used here

# What an allocation is for. The memory report and the timeline are broken down by these.
KINDS = ("input", "activation", "saved", "grad", "wgrad", "optim", "scratch")


class ArenaOverflow(MemoryError):
    """Raised when an allocation does not fit; the message says what was asked, what is free and who holds the rest."""


@dataclass(frozen=True)
class Allocation:
    name: str
    kind: str
    offset: int
    nbytes: int  # bytes the tensor needs (what the memory figures count)
    reserved: int  # nbytes rounded up to the alignment (what the free list loses)
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class TraceEvent:
    action: str  # "alloc" or "free"
    offset: int
    nbytes: int
    kind: str
    name: str
    # what the view was, so that a trace alone describes every tensor (the memory plan export reads them)
    shape: tuple[int, ...]
    dtype: str  # numpy dtype string, as in Allocation: "<f4"
    reuses: bool = False  # an alloc in place of the tensor freed just before at the same offset (Arena.reuse)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _format_bytes(nbytes: int) -> str:
    return f"{nbytes:,} B ({nbytes / 1024:.1f} KiB)"


def describe_tensors(allocations, count: int = 5) -> str:
    """The `count` largest allocations, one indented line each."""
    largest = sorted(allocations, key=lambda allocation: -allocation.nbytes)[:count]
    return "\n".join(f"    {a.name} [{a.kind}] {a.shape} {np.dtype(a.dtype).name}: {_format_bytes(a.nbytes)}"
                     for a in largest) or "    (nothing)"


class Arena:
    """An allocator over one preallocated uint8 buffer: first-fit, or the offsets of a Placement planned ahead.

    Memory figures count the bytes each tensor needs. `high_water_bytes` is the highest arena address ever
    used, which also counts alignment padding and fragmentation: the buffer size a device must really have.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, alignment: int = DEFAULT_ALIGNMENT, tracing: bool = True):
        """`tracing=False` keeps the peaks but not the event list (long runs would grow it without bound)."""
        if capacity <= 0:
            raise ValueError(f"arena capacity must be positive, got {capacity}")
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"arena alignment must be a power of two, got {alignment}")
        self.capacity = capacity
        self.alignment = alignment
        self.buffer = np.zeros(capacity, dtype=np.uint8)
        self._base_address = self.buffer.ctypes.data
        # The buffer itself must start aligned so that offsets aligned to `alignment` are aligned addresses.
        self._base_shift = (-self._base_address) % alignment
        self._free_blocks: list[tuple[int, int]] = [(self._base_shift, capacity - self._base_shift)]
        self._live: dict[int, Allocation] = {}
        self._placement: dict[tuple[str, int], tuple[int, int]] | None = None  # (name, n) -> (offset, reserved)
        self._occurrences: dict[str, int] = {}  # allocations of each name since the placement was set
        self._trace_positions: dict[int, int] = {}  # offset -> trace position of the live allocation's alloc
        self.tracing = tracing
        self.trace: list[TraceEvent] = []
        self.live_bytes = 0
        self.live_bytes_by_kind = dict.fromkeys(KINDS, 0)
        self.reset_peak()

    # ----------------------------------------------------------------------------------------------------
    # allocation

    def alloc(self, name: str, shape, dtype=np.float32, kind: str = "activation") -> np.ndarray:
        """Return a zero-copy view of `shape` and `dtype` placed in the arena."""
        if kind not in KINDS:
            raise ValueError(f"unknown allocation kind {kind!r} for {name!r}; use one of {KINDS}")
        shape = tuple(int(dim) for dim in shape) if isinstance(shape, (tuple, list)) else (int(shape),)
        if any(dim < 0 for dim in shape):
            raise ValueError(f"negative dimension in shape {shape} for {name!r}")
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        reserved = max(_round_up(nbytes, self.alignment), self.alignment)
        if self._placement is not None:
            offset = self._planned_offset(name, reserved)
        else:
            offset = self._take_block(reserved)
        if offset is None:
            raise ArenaOverflow(self._overflow_message(name, shape, dtype, kind, nbytes, reserved))
        return self._place(Allocation(name, kind, offset, nbytes, reserved, shape, dtype.str))

    def _place(self, allocation: Allocation, reuses: bool = False) -> np.ndarray:
        self._live[allocation.offset] = allocation
        self.live_bytes += allocation.nbytes
        self.live_bytes_by_kind[allocation.kind] += allocation.nbytes
        self.high_water_bytes = max(self.high_water_bytes, allocation.offset + allocation.reserved - self._base_shift)
        if self.tracing:
            self._trace_positions[allocation.offset] = len(self.trace)
        self._record("alloc", allocation, reuses)
        self._update_peaks()
        offset = allocation.offset
        return self.buffer[offset:offset + allocation.nbytes].view(allocation.dtype).reshape(allocation.shape)

    def reuse(self, view: np.ndarray, name: str, shape, dtype=np.float32, kind: str = "activation") -> np.ndarray:
        """Hand the bytes of a live allocation on to a new tensor of at most its size, at the same offset, for an op
        that writes its output over its input. The trace records the old tensor's free, then the new one's alloc,
        so the two are never counted together; a smaller tensor gives the tail back to the free list."""
        offset = self.offset_of(view)
        if offset not in self._live:
            raise ValueError("reuse() got an array that is not a live arena allocation")
        old = self._live[offset]
        dtype = np.dtype(dtype)
        shape = tuple(int(dim) for dim in shape)
        nbytes = math.prod(shape) * dtype.itemsize
        reserved = max(_round_up(nbytes, self.alignment), self.alignment)
        if reserved > old.reserved:
            raise ValueError(f"reuse(): {name!r} needs {reserved:,} B, more than the {old.reserved:,} B of "
                             f"{old.name!r} it would replace")
        self._release(offset)
        self._take_block_at(offset, reserved)
        if self._placement is not None:
            self._occurrences[name] = self._occurrences.get(name, 0) + 1
        return self._place(Allocation(name, kind, offset, nbytes, reserved, shape, dtype.str), reuses=True)

    def free(self, view: np.ndarray) -> None:
        """Give the block of a view returned by `alloc` back to the arena."""
        offset = self.offset_of(view)
        if offset not in self._live:
            raise ValueError("free() got an array that is not a live arena allocation (already freed, or a sub-view)")
        self._release(offset)

    def checkpoint(self) -> frozenset[int]:
        """The offsets live now; `rollback` frees everything allocated after."""
        return frozenset(self._live)

    def rollback(self, checkpoint: frozenset[int]) -> None:
        for offset in [offset for offset in self._live if offset not in checkpoint]:
            self._release(offset)

    def _release(self, offset: int) -> None:
        allocation = self._live.pop(offset)
        self.live_bytes -= allocation.nbytes
        self.live_bytes_by_kind[allocation.kind] -= allocation.nbytes
        self._record("free", allocation)
        self._give_block(allocation.offset, allocation.reserved)

    # ----------------------------------------------------------------------------------------------------
    # planned offsets

    def use_placement(self, placement: dict[tuple[str, int], tuple[int, int]] | None) -> None:
        """From now on, the n-th allocation named `name` goes to `placement[(name, n)]` (offsets from the aligned
        start, as in the trace), until use_placement(None). A request the placement does not hold is a bug."""
        self._placement = placement
        self._occurrences = {}

    def _planned_offset(self, name: str, reserved: int) -> int:
        occurrence = self._occurrences.get(name, 0)
        self._occurrences[name] = occurrence + 1
        planned = self._placement.get((name, occurrence))
        if planned is None or planned[1] != reserved:
            raise AssertionError(f"allocation {name!r} #{occurrence} ({reserved:,} B) is not the one its placement "
                                 f"planned ({planned}); the step's allocations changed since it was planned")
        offset = planned[0] + self._base_shift
        self._take_block_at(offset, reserved)
        return offset

    def offset_of(self, view: np.ndarray) -> int:
        return view.__array_interface__["data"][0] - self._base_address

    def trace_position_of(self, view: np.ndarray) -> int | None:
        """Where in the trace the live allocation starting at `view` was made; None if before the trace began."""
        offset = self.offset_of(view)
        if offset not in self._live:
            raise ValueError("trace_position_of() got an array that is not the start of a live arena allocation")
        return self._trace_positions.get(offset)

    def block_bytes(self, view: np.ndarray) -> int:
        """The bytes reserved for the live allocation starting at `view`: at least its own."""
        offset = self.offset_of(view)
        if offset not in self._live:
            raise ValueError("block_bytes() got an array that is not the start of a live arena allocation")
        return self._live[offset].reserved

    def is_live(self, view: np.ndarray) -> bool:
        return self.offset_of(view) in self._live

    def live_blocks(self) -> tuple[tuple[int, int], ...]:
        """(offset, reserved) of every live allocation, offsets from the aligned start as in the trace."""
        return tuple((a.offset - self._base_shift, a.reserved) for a in self.live())

    def live(self) -> list[Allocation]:
        return sorted(self._live.values(), key=lambda allocation: allocation.offset)

    # ----------------------------------------------------------------------------------------------------
    # statistics

    def reset_peak(self) -> None:
        """Start a new measurement window: peaks restart from what is live now, and the trace is cleared."""
        self.peak_bytes = self.live_bytes
        self.peak_bytes_by_kind = dict(self.live_bytes_by_kind)
        self.live_at_peak: list[Allocation] = self.live()
        self.high_water_bytes = max((a.offset + a.reserved - self._base_shift for a in self._live.values()), default=0)
        self.trace = []
        self._trace_positions = {}  # what was live before has no position in the new trace

    @property
    def usable_offset(self) -> int:
        """Where offset 0 of the trace lies in the buffer: the first aligned byte."""
        return self._base_shift

    @property
    def usable_bytes(self) -> int:
        """Bytes from the aligned start to the end: what offsets can reach."""
        return self.capacity - self._base_shift

    @property
    def free_bytes(self) -> int:
        return sum(size for _, size in self._free_blocks)

    @property
    def largest_free_block(self) -> int:
        return max((size for _, size in self._free_blocks), default=0)

    def _update_peaks(self) -> None:
        for kind, nbytes in self.live_bytes_by_kind.items():
            if nbytes > self.peak_bytes_by_kind[kind]:
                self.peak_bytes_by_kind[kind] = nbytes
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
            self.live_at_peak = self.live()

    def _record(self, action: str, allocation: Allocation, reuses: bool = False) -> None:
        if self.tracing:
            self.trace.append(
                TraceEvent(action, allocation.offset - self._base_shift, allocation.nbytes,
                           allocation.kind, allocation.name, allocation.shape, allocation.dtype, reuses)
            )

    # ----------------------------------------------------------------------------------------------------
    # free list: sorted, coalesced (offset, size) blocks

    def _take_block(self, reserved: int) -> int | None:
        for index, (offset, size) in enumerate(self._free_blocks):
            if size >= reserved:
                if size == reserved:
                    del self._free_blocks[index]
                else:
                    self._free_blocks[index] = (offset + reserved, size - reserved)
                return offset
        return None

    def _take_block_at(self, offset: int, reserved: int) -> None:
        """Take [offset, offset + reserved) out of the free block that holds it."""
        for index, (start, size) in enumerate(self._free_blocks):
            if start <= offset and offset + reserved <= start + size:
                pieces = [(start, offset - start), (offset + reserved, start + size - offset - reserved)]
                self._free_blocks[index:index + 1] = [piece for piece in pieces if piece[1] > 0]
                return
        raise AssertionError(f"bytes [{offset}, {offset + reserved}) are not free")

    def _give_block(self, offset: int, size: int) -> None:
        blocks = self._free_blocks
        index = 0
        while index < len(blocks) and blocks[index][0] < offset:
            index += 1
        blocks.insert(index, (offset, size))
        if index + 1 < len(blocks) and offset + size == blocks[index + 1][0]:
            blocks[index] = (offset, size + blocks[index + 1][1])
            del blocks[index + 1]
        if index > 0 and blocks[index - 1][0] + blocks[index - 1][1] == offset:
            blocks[index - 1] = (blocks[index - 1][0], blocks[index - 1][1] + blocks[index][1])
            del blocks[index]

    def _overflow_message(self, name, shape, dtype, kind, nbytes, reserved) -> str:
        holders = describe_tensors(self._live.values())
        return (
            f"arena overflow: cannot allocate {name!r} [{kind}] {shape} {dtype.name}, "
            f"{_format_bytes(nbytes)} ({reserved:,} B aligned).\n"
            f"  arena capacity {_format_bytes(self.capacity)}, free {_format_bytes(self.free_bytes)}, "
            f"largest free block {_format_bytes(self.largest_free_block)}.\n"
            f"  largest live tensors:\n{holders}\n"
            f"  Fix: enlarge the arena (--arena-bytes), lower the input resolution, or train fewer layers/channels."
        )
