"""The exported memory plan: the arena's offsets, lifetimes that never share bytes, JSON round trip, C that compiles."""

import json
import shutil
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from tinytrain.arena import Arena
from tinytrain.engine import SGD, Engine
from tinytrain.memory_plan import OP_TYPES, MemoryPlan, OpRecord, TensorRecord, build_memory_plan
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.oplog import OpLog
from tinytrain.plan import LAYER_BY_LAYER, MemorySchedule, PatchSpec
from tinytrain.sparse import POLICIES, make_policy
from tinytrain.step_table import NOT_FREED

REPOSITORY = Path(__file__).resolve().parents[1]
ARENA_BYTES = 64 << 20  # dense momentum buffers at 32 px are about 14 MB
GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc is not installed; the C header cannot be compiled")


@pytest.fixture(scope="module", params=["dynamic", "dense", "dynamic lean", "dynamic lean strided"])
def step(request):
    """The exported plan of one step of a random-init model at 32 px, beside the same step traced in an engine's
    arena of its own. Momentum leaves optimizer state live after
    the step, and weight-gradient tiles of 4 KiB make the same tensor name be allocated many times. "lean" runs the
    frozen front in patches and depthwise convs in place; "strided" also block 14's stride-2 depthwise backward,
    whose output gradient is made in a block of its input gradient's size."""
    graph = build_mobilenetv2(resolution=32)
    policy = request.param.split()[0]
    update_plan = make_policy(policy, graph, seed=0).plan(3, 0)
    schedule = LAYER_BY_LAYER
    if "lean" in request.param:
        ends = [index + 1 for index, layer in enumerate(graph.layers) if layer.name == "features.3.add"]
        schedule = MemorySchedule((PatchSpec(ends[0], (2, 3)),), True, request.param.endswith("strided"))
    engine = Engine(graph, Arena(ARENA_BYTES), wgrad_tile_bytes=4096, memory_schedule=schedule)
    engine.op_log = OpLog(engine.arena)
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    sgd = SGD(lr=0.0, momentum=0.9)
    engine.train_step(image, 0, update_plan, sgd, apply_update=False)
    grown = {event.name for event in engine.arena.trace if event.reuses} & {"dfeatures.14.expand"}
    assert bool(grown) == schedule.in_place_strided_backward
    plan = build_memory_plan(graph, update_plan, ARENA_BYTES, sgd, wgrad_tile_bytes=4096,
                             provenance={"policy": request.param}, memory_schedule=schedule)
    return graph, update_plan, engine, plan


def test_offsets_are_those_the_arena_traced(step):
    _, _, engine, plan = step
    arena, ops = engine.arena, engine.op_log.events
    assert len(plan.tensors) == sum(event.action == "alloc" for event in arena.trace)
    for tensor in plan.tensors:
        alloc = arena.trace[tensor.alloc_event]
        assert (alloc.action, alloc.name, alloc.kind) == ("alloc", tensor.arena_name, tensor.kind)
        # its first op is the one it was allocated in, or the next if it was allocated between two
        assert ops[tensor.first_op].end > tensor.alloc_event
        assert tensor.first_op == 0 or ops[tensor.first_op - 1].end <= tensor.alloc_event
        assert (alloc.offset, alloc.nbytes, alloc.shape) == (tensor.offset, tensor.nbytes, tensor.shape)
        assert np.dtype(alloc.dtype).name == tensor.dtype
        assert tensor.offset % plan.alignment == 0
        if tensor.free_event != NOT_FREED:
            free = arena.trace[tensor.free_event]
            assert (free.action, free.offset) == ("free", tensor.offset)
            # its last op is the one it was freed in, or the one before if it was freed between two
            assert ops[tensor.last_op].start <= tensor.free_event
            assert tensor.last_op == len(ops) - 1 or ops[tensor.last_op + 1].start > tensor.free_event
        else:
            assert tensor.last_op == len(ops) - 1
    assert {tensor.kind for tensor in plan.tensors if tensor.free_event == NOT_FREED} == {"optim"}


def test_tensors_alive_together_never_share_bytes(step):
    assert_no_overlap(step[3])


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_s_step_table_is_what_a_checked_step_measures_and_never_overlaps(policy):
    """build_memory_plan returns the engine's step table only after a real step, in an arena filled with a
    sentinel, wrote nowhere else and measured the same peak, offsets and ops."""
    graph = build_mobilenetv2(resolution=32, width_mult=0.35)
    plan = build_memory_plan(graph, make_policy(policy, graph, seed=0).plan(3, 0), ARENA_BYTES,
                             SGD(lr=0.0, momentum=0.9), wgrad_tile_bytes=4096)
    assert plan.peak_bytes <= plan.high_water_bytes <= plan.arena_bytes
    assert_no_overlap(plan)


def assert_no_overlap(plan):
    checked = reused = 0
    for a, b in combinations(plan.tensors, 2):
        if a.last_op < b.first_op or b.last_op < a.first_op:
            continue
        earlier, later = sorted((a, b), key=lambda tensor: tensor.alloc_event)
        if earlier.free_event != NOT_FREED and earlier.free_event < later.alloc_event:
            # freed before the other was allocated: the op ranges can then only meet in the op that did both
            assert earlier.last_op == later.first_op, (earlier.name, later.name)
            reused += a.offset < b.offset + b.nbytes and b.offset < a.offset + a.nbytes
            continue
        checked += 1
        assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset, (a.name, b.name)
    assert checked > 0 and reused > 0  # some bytes are reused within an op, so the distinction above matters


def test_peak_is_the_arena_peak(step):
    _, _, engine, plan = step
    arena = engine.arena
    assert plan.peak_bytes == arena.peak_bytes
    assert plan.peak_bytes_by_kind == arena.peak_bytes_by_kind
    # the tensors alone reproduce it: sweep their allocations and frees in trace order
    changes = sorted([(t.alloc_event, t.nbytes) for t in plan.tensors]
                     + [(t.free_event, -t.nbytes) for t in plan.tensors if t.free_event != NOT_FREED])
    assert max(np.cumsum([change for _, change in changes])) == plan.peak_bytes
    assert plan.peak_bytes <= plan.high_water_bytes <= plan.arena_bytes


def test_repeated_names_stay_distinct(step):
    _, _, _, plan = step
    names = [tensor.name for tensor in plan.tensors]
    assert len(set(names)) == len(names)
    tiles = [tensor.name for tensor in plan.tensors if tensor.arena_name == "classifier.dweight"]
    assert tiles == [f"classifier.dweight#{k}" for k in range(len(tiles))] and len(tiles) > 1


def test_ops_read_and_write_live_tensors_and_count_macs(step):
    graph, update_plan, engine, plan = step
    tensors = {tensor.name: tensor for tensor in plan.tensors}
    assert [op.index for op in plan.ops] == list(range(len(plan.ops)))
    loss = [op.index for op in plan.ops if op.type == "loss"]
    assert len(loss) == 1 and plan.ops[0].name == "load input"
    assert all(op.name.startswith("fwd") for op in plan.ops[1:loss[0]])
    assert all(op.name.startswith("bwd") for op in plan.ops[loss[0] + 1:])
    for op in plan.ops:
        assert op.type in OP_TYPES
        for name in op.inputs + op.outputs:
            assert tensors[name].first_op <= op.index <= tensors[name].last_op, (op.name, name)
    between_ops = set()
    for tensor in plan.tensors:  # every tensor is written by the op that allocates it
        if engine.op_log.events[tensor.first_op].start <= tensor.alloc_event:
            assert tensor.name in plan.ops[tensor.first_op].outputs, tensor.name
        else:  # a patch stage's output, allocated before its tiles: written by their copies
            between_ops.add(tensor.name)
            assert any(tensor.name in op.outputs and op.type == "copy"
                       for op in plan.ops[tensor.first_op:tensor.last_op + 1]), tensor.name
    assert between_ops == {stage.output for stage in engine.patch_stages}
    forward = plan.ops[:loss[0]]
    whole = {op.layer for op in forward if " tile " not in op.name}
    tiled = sum(op.macs for op in forward if " tile " in op.name)
    # tiles recompute their halos, so the patched layers cost at least what they cost whole
    assert tiled + sum(op.macs for op in forward if op.layer in whole) >= graph.macs()
    assert sum(op.macs for op in forward if op.layer in whole) == sum(
        layer.macs([graph.shapes[name] for name in layer.inputs]) for layer in graph.layers if layer.name in whole)
    trained = {op.layer for op in plan.ops if op.name.startswith("bwd") and op.trains_weight}
    assert trained == {name for name, update in update_plan.updates.items() if update.trains_weight}
    classifier = next(op for op in plan.ops if op.name == "bwd classifier")
    assert classifier.type == "linear_backward" and classifier.out_channels == tuple(range(10))


def test_json_round_trips_and_refuses_other_versions(step, tmp_path):
    _, _, _, plan = step
    path = tmp_path / "plan.json"
    plan.to_json(path)
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # written through a temporary, renamed
    assert MemoryPlan.from_json(path) == plan
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    with pytest.raises(ValueError, match="schema_version 99"):
        MemoryPlan.from_dict(data)


@needs_gcc
def test_header_compiles_and_its_offsets_can_be_asserted(step, tmp_path):
    _, _, _, plan = step
    header = tmp_path / "plan.h"
    plan.to_c_header(header)
    compile_c(header)
    tensor = plan.tensors[1]
    stem = tensor.name.replace(".", "_").upper()
    # C99 has no static_assert: an array of negative size is the portable compile-time check
    check = (f'#include "plan.h"\n'
             f"typedef char offset_is_right[(TT_TENSOR_{stem}_OFFSET == {tensor.offset}u) ? 1 : -1];\n"
             f"int first_input_of_first_op(void) {{ return tt_ops[0].inputs[0] + (int)tt_tensors[0].offset; }}\n")
    (tmp_path / "check.c").write_text(check)
    compile_c(tmp_path / "check.c")
    (tmp_path / "wrong.c").write_text(check.replace(f"== {tensor.offset}u", f"== {tensor.offset + 1}u"))
    with pytest.raises(AssertionError, match="negative"):
        compile_c(tmp_path / "wrong.c")


@needs_gcc
def test_header_identifiers_are_valid_and_collision_free(tmp_path):
    names = ["a.b", "a_b", "a_b_1", "1st", "*/ comment", "\"quoted\""]
    tensors = [TensorRecord(name, name, "activation", "float32", (4,), 16, 16 * index, 0, 0, index, -1)
               for index, name in enumerate(names)]
    op = OpRecord(0, "fwd */ odd \"op\"", "add", "odd", tuple(names[:2]), tuple(names[2:]), 0, False, False, (), ())
    plan = MemoryPlan(1024, 16, 96, {"activation": 96}, 96, tensors, [op])
    header = tmp_path / "plan.h"
    plan.to_c_header(header, prefix="SIM")
    compile_c(header)
    defined = [line.split()[1] for line in header.read_text().splitlines() if line.startswith("#define SIM_TENSOR_")]
    offsets = [name for name in defined if name.endswith("_OFFSET")]
    assert len(offsets) == len(set(offsets)) == len(names)


def test_script_exports_both_files_and_refuses_bad_input(tmp_path):
    run = [sys.executable, str(REPOSITORY / "scripts" / "export_plan.py"), "--resolution", "32"]
    done = subprocess.run(run + ["--json", str(tmp_path / "p.json"), "--header", str(tmp_path / "p.h")],
                          capture_output=True, text=True, cwd=REPOSITORY)
    assert done.returncode == 0, done.stderr
    plan = MemoryPlan.from_json(tmp_path / "p.json")
    assert f"{len(plan.tensors)} tensors" in done.stdout and f"peak {plan.peak_bytes:,} B" in done.stdout
    assert plan.provenance["policy"] == "dynamic" and (tmp_path / "p.h").is_file()
    refused = subprocess.run(run + ["--step", "-1"], capture_output=True, text=True, cwd=REPOSITORY)
    assert refused.returncode == 2 and "--step must be at least 0" in refused.stderr


def compile_c(path: Path) -> None:
    done = subprocess.run([GCC, "-fsyntax-only", "-std=c99", "-Wall", "-Werror", str(path)], capture_output=True,
                          text=True, cwd=path.parent)
    assert done.returncode == 0, done.stderr
