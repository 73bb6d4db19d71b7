"""The memory plan of one training step for MCU simulators: each tensor where the arena put it, each op; JSON or C.

The plan is the engine's step table (step_table.py): the offsets every step of that shape runs at, and the ops of
its op log (oplog.py), each op's inputs and outputs the blocks it touched. `build_memory_plan` checks the table
against one real step measured in the arena before it returns it.

JSON schema ("tinytrain-memory-plan", schema_version 3): one object with

    schema              "tinytrain-memory-plan"
    schema_version      3; `MemoryPlan.from_json` refuses any other (before 3, ops were numbered by layer)
    provenance          {str: str | int | float | bool}: how the plan was made (policy, resolution, step, seed, ...)
    arena_bytes         capacity of the arena the step ran in
    alignment           every offset is a multiple of it
    peak_bytes          most bytes live at once, as the arena measured it (Arena.peak_bytes)
    peak_bytes_by_kind  {kind: bytes}, each kind's own peak (not necessarily at the same moment)
    high_water_bytes    highest arena byte used: the peak plus alignment padding and fragmentation
    tensors             in allocation order, each
        name            unique in the plan: the arena name, with "#k" (k = 0, 1, ...) appended to every instance of a
                        name the step allocates more than once (tiled weight gradients, copies of shared gradients)
        arena_name      the name the engine gave the allocation
        kind            one of arena.KINDS
        dtype           numpy name: "float32", "uint8"
        shape           [int, ...]
        nbytes          bytes the tensor needs (its block in the arena is rounded up to `alignment`)
        offset          bytes from the arena's aligned start
        first_op        index of the first op it lives through: the op that allocates it (or, allocated between two
                        ops, as a patch stage's output is, the next)
        last_op         index of the last op it lives through: the op that frees it (or, freed between two ops, the
                        one before); the step's last op if it outlives the step
        alloc_event     position of its allocation in the step's trace
        free_event      position of its free in the trace; -1 if it outlives the step (optimizer state)
    ops                 in execution order, each
        index           its place in execution order: 0, 1, 2, ... (forward, the loss, then backward). Backward ops
                        of layers that need no gradient do not run and are absent; every layer of every tile of a
                        patch stage is an op of its own.
        name            "load input", "fwd <layer>", "loss" or "bwd <layer>"; in a patch stage "fwd <layer> tile
                        <k>", with "fwd <source> tile <k>" loading the tile's input and "fwd <output> tile <k>"
                        copying its result into the stage's output; a projection added into its residual in place
                        is "fwd <projection> + <add>"
        type            one of OP_TYPES
        layer           the graph layer it runs; "" for the loss, loads and copies
        inputs          names of the tensors it reads (a copy it makes of a shared gradient before writing it, too)
        outputs         names of the tensors it writes: those it allocates, tensors it writes into that were there
                        before (accumulated gradients, optimizer state, a patch stage's output), and the gradient a
                        residual add's backward hands on to its inputs (the same buffer as its input). An op that
                        writes its output over its input (Arena.reuse: depthwise in place, a projection into its
                        residual) reads the old tensor and writes the new one in the same bytes.
        macs            multiply-accumulates: forward as Graph.macs (a tile: over its pixels, halo included);
                        backward the input gradient (as many as forward, when it is computed) plus the weight
                        gradient of the trained channels only
        trains_weight   the layer's weight is updated this step
        trains_bias     its bias is updated this step
        out_channels    [int, ...] trained weight rows
        in_channels     [int, ...] trained input channels, the ones its saved input keeps (depthwise: out_channels)

Lifetimes are inclusive op ranges, and an op may free a tensor and reuse its bytes for a later allocation within
itself (weight gradient tiles do). Two tensors may share bytes only if one's free_event precedes the other's
alloc_event.

The C header (`MemoryPlan.c_header`, C99, <stdint.h> only) carries the same plan: PREFIX_ARENA_BYTES, _PEAK_BYTES,
_HIGH_WATER_BYTES; per tensor PREFIX_TENSOR_<NAME>_INDEX, _OFFSET and _BYTES; enums of the tensor kinds and op
types; and static const tables of tensors and ops, op inputs and outputs given as tensor indices.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tinytrain.arena import KINDS
from tinytrain.atomic import atomic_path
from tinytrain.engine import SGD
from tinytrain.graph import Graph
from tinytrain.layers import Add, Conv2d, Depthwise, GlobalAvgPool, Linear, Pointwise
from tinytrain.memory import MEASURING_ARENA_BYTES, measured_step_table
from tinytrain.plan import LAYER_BY_LAYER, MemorySchedule, UpdatePlan
from tinytrain.step_table import OpRecord, TensorRecord

SCHEMA = "tinytrain-memory-plan"
SCHEMA_VERSION = 3

_LAYER_TYPES = tuple(layer.op_type for layer in (Conv2d, Depthwise, Pointwise, Add, GlobalAvgPool, Linear))
OP_TYPES = (("load", "copy", "pointwise_add") + _LAYER_TYPES + ("loss",)
            + tuple(f"{op_type}_backward" for op_type in _LAYER_TYPES))
C_PREFIX_PATTERN = r"[A-Z][A-Z0-9]*"  # of the header's identifiers: PREFIX_ARENA_BYTES, prefix_op


@dataclass
class MemoryPlan:
    arena_bytes: int
    alignment: int
    peak_bytes: int
    peak_bytes_by_kind: dict[str, int]
    high_water_bytes: int
    tensors: list[TensorRecord]
    ops: list[OpRecord]
    provenance: dict[str, str | int | float | bool] = field(default_factory=dict)

    # ----------------------------------------------------------------------------------------------------
    # JSON

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> MemoryPlan:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a tinytrain memory plan: schema is {data.get('schema')!r}, expected {SCHEMA!r}")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"memory plan schema_version {data.get('schema_version')!r} is not supported; this "
                             f"tinytrain reads version {SCHEMA_VERSION}: export the plan again")
        fields = {key: value for key, value in data.items() if key not in ("schema", "schema_version")}
        try:
            tensors = [TensorRecord(**{**tensor, "shape": tuple(tensor["shape"])}) for tensor in fields.pop("tensors")]
            ops = [OpRecord(**{**op, **{key: tuple(op[key]) for key in ("inputs", "outputs", "out_channels",
                                                                          "in_channels")}})
                   for op in fields.pop("ops")]
            return cls(tensors=tensors, ops=ops, **fields)
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed memory plan: {error}") from error

    def to_json(self, path: Path) -> None:
        _write_atomically(Path(path), _json_text(self.to_dict()))

    @classmethod
    def from_json(cls, path: Path) -> MemoryPlan:
        return cls.from_dict(json.loads(Path(path).read_text()))

    # ----------------------------------------------------------------------------------------------------
    # C

    def to_c_header(self, path: Path, prefix: str = "TT") -> None:
        _write_atomically(Path(path), self.c_header(prefix))

    def c_header(self, prefix: str = "TT") -> str:
        """The plan as a C99 header: defines, enums and static const tables; see the module docstring."""
        if not re.fullmatch(C_PREFIX_PATTERN, prefix):
            raise ValueError(f"C prefix must be upper-case letters and digits, starting with a letter; got {prefix!r}")
        if self.arena_bytes >= 1 << 32:
            raise ValueError(f"an arena of {self.arena_bytes:,} B does not fit the header's uint32_t offsets")
        P, p = prefix, prefix.lower()
        index_of = {tensor.name: index for index, tensor in enumerate(self.tensors)}
        stems = _c_stems([tensor.name for tensor in self.tensors])
        max_inputs = max([len(op.inputs) for op in self.ops] + [1])  # C99 has no zero-length arrays
        max_outputs = max([len(op.outputs) for op in self.ops] + [1])
        lines = [
            f"/* Memory plan of one tinytrain training step ({SCHEMA} v{SCHEMA_VERSION}), generated by",
            " * tinytrain.memory_plan: do not edit.",
            *(f" * {_c_comment(f'{key}: {value}')}" for key, value in self.provenance.items()),
            f" * Offsets are bytes from the start of an arena of {P}_ARENA_BYTES aligned to {P}_ALIGNMENT. A tensor",
            " * lives from first_op to last_op inclusive; tensors live at the same moment never share bytes. */",
            f"#ifndef {P}_MEMORY_PLAN_H",
            f"#define {P}_MEMORY_PLAN_H",
            "",
            "#include <stdint.h>",
            "",
            f"#define {P}_MEMORY_PLAN_SCHEMA_VERSION {SCHEMA_VERSION}",
            f"#define {P}_ARENA_BYTES {self.arena_bytes}u",
            f"#define {P}_ALIGNMENT {self.alignment}u",
            f"#define {P}_PEAK_BYTES {self.peak_bytes}u /* most bytes live at once */",
            f"#define {P}_HIGH_WATER_BYTES {self.high_water_bytes}u /* highest byte used: the buffer a device needs */",
            f"#define {P}_TENSOR_COUNT {len(self.tensors)}",
            f"#define {P}_OP_COUNT {len(self.ops)}",
            f"#define {P}_OP_MAX_INPUTS {max_inputs}",
            f"#define {P}_OP_MAX_OUTPUTS {max_outputs}",
            f"#define {P}_NO_TENSOR (-1) /* pads the input and output lists of an op */",
            "",
            "typedef enum {",
            *(f"    {P}_KIND_{_c_stem(kind)} = {index}," for index, kind in enumerate(KINDS)),
            f"}} {p}_tensor_kind;",
            "",
            "typedef enum {",
            *(f"    {P}_OP_{_c_stem(op_type)} = {index}," for index, op_type in enumerate(OP_TYPES)),
            f"}} {p}_op_type;",
            "",
            "typedef struct {",
            "    const char *name;",
            f"    {p}_tensor_kind kind;",
            "    const char *dtype;",
            "    uint32_t offset;",
            "    uint32_t nbytes;",
            "    int32_t first_op;",
            "    int32_t last_op; /* inclusive */",
            f"}} {p}_tensor;",
            "",
            "typedef struct {",
            "    int32_t index; /* its place in execution order: forward, the loss, backward */",
            "    const char *name;",
            f"    {p}_op_type type;",
            "    uint64_t macs;",
            "    uint8_t trains_weight;",
            "    uint8_t trains_bias;",
            "    uint32_t trained_out_channels;",
            "    uint32_t trained_in_channels;",
            f"    int32_t inputs[{P}_OP_MAX_INPUTS]; /* tensor indices */",
            f"    int32_t outputs[{P}_OP_MAX_OUTPUTS];",
            f"}} {p}_op;",
            "",
        ]
        for index, (tensor, stem) in enumerate(zip(self.tensors, stems)):
            lines += [
                f"/* {_c_comment(tensor.name)} [{tensor.kind}] {tensor.dtype} {tensor.shape}, ops {tensor.first_op}.."
                f"{tensor.last_op} */",
                f"#define {P}_TENSOR_{stem}_INDEX {index}",
                f"#define {P}_TENSOR_{stem}_OFFSET {tensor.offset}u",
                f"#define {P}_TENSOR_{stem}_BYTES {tensor.nbytes}u",
            ]
        lines += ["", f"static const {p}_tensor {p}_tensors[{P}_TENSOR_COUNT] = {{"]
        for tensor, stem in zip(self.tensors, stems):
            lines.append(f"    {{{_c_string(tensor.name)}, {P}_KIND_{_c_stem(tensor.kind)}, {_c_string(tensor.dtype)}, "
                         f"{P}_TENSOR_{stem}_OFFSET, {P}_TENSOR_{stem}_BYTES, {tensor.first_op}, {tensor.last_op}}},")
        lines += ["};", "", f"static const {p}_op {p}_ops[{P}_OP_COUNT] = {{"]
        for op in self.ops:
            inputs = _c_index_list([index_of[name] for name in op.inputs], max_inputs, f"{P}_NO_TENSOR")
            outputs = _c_index_list([index_of[name] for name in op.outputs], max_outputs, f"{P}_NO_TENSOR")
            lines.append(f"    {{{op.index}, {_c_string(op.name)}, {P}_OP_{_c_stem(op.type)}, UINT64_C({op.macs}), "
                         f"{int(op.trains_weight)}, {int(op.trains_bias)}, {len(op.out_channels)}u, "
                         f"{len(op.in_channels)}u, {inputs}, {outputs}}},")
        lines += ["};", "", f"#endif /* {P}_MEMORY_PLAN_H */", ""]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# building a plan from one step


def build_memory_plan(graph: Graph, update_plan: UpdatePlan, arena_bytes: int = MEASURING_ARENA_BYTES,
                      sgd: SGD = SGD(lr=0.0), wgrad_tile_bytes: int | None = None, provenance: dict | None = None,
                      memory_schedule: MemorySchedule = LAYER_BY_LAYER) -> MemoryPlan:
    """The engine's step table of one training sample of `update_plan` in an arena of `arena_bytes`, checked
    against a real step (memory.measured_step_table): a dry run (no weight changes) at the table's offsets in an
    arena filled with a sentinel must write only where the table says each op writes, and the arena must measure
    the table's peak and offsets. Raises ArenaOverflow if the step does not fit `arena_bytes`."""
    table = measured_step_table(graph, update_plan, arena_bytes, sgd, wgrad_tile_bytes, memory_schedule,
                                checked=True)
    return MemoryPlan(arena_bytes, table.alignment, table.peak_bytes, table.peak_bytes_by_kind,
                      table.high_water_bytes, list(table.tensors), list(table.ops), dict(provenance or {}))


# --------------------------------------------------------------------------------------------------------
# writing


def _write_atomically(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def _json_text(data: dict) -> str:
    """Top level indented, one tensor or op per line: readable and diffable even with long channel lists."""
    entries = []
    for key, value in data.items():
        if isinstance(value, list):
            rows = ",\n".join(f"    {json.dumps(item)}" for item in value)
            entries.append(f"  {json.dumps(key)}: [\n{rows}\n  ]")
        else:
            entries.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(entries) + "\n}\n"


def _c_stem(name: str) -> str:
    """features.17.project#2 -> FEATURES_17_PROJECT_2 (may be empty)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").upper()


def _c_stems(names: list[str]) -> list[str]:
    """Distinct identifier stems: one that is taken already ("a.b" and "a_b") gets the tensor's index appended."""
    used: set[str] = set()
    stems = []
    for index, name in enumerate(names):
        stem = _c_stem(name) or f"T{index}"
        while stem in used:
            stem = f"{stem}_{index}"
        used.add(stem)
        stems.append(stem)
    return stems


def _c_string(text: str) -> str:
    """A C string literal; anything but printable ASCII as fixed-width octal escapes (hex escapes run on)."""
    escaped = []
    for byte in text.encode("utf-8"):
        character = chr(byte)
        if character in '"\\':
            escaped.append("\\" + character)
        elif 32 <= byte < 127:
            escaped.append(character)
        else:
            escaped.append(f"\\{byte:03o}")
    return '"' + "".join(escaped) + '"'


def _c_comment(text: str) -> str:
    """Text that cannot end a C comment or open a nested one (-Wcomment)."""
    return text.replace("*/", "* /").replace("/*", "/ *")


def _c_index_list(indices: list[int], length: int, padding: str) -> str:
    return "{" + ", ".join([str(index) for index in indices] + [padding] * (length - len(indices))) + "}"
