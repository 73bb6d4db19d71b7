"""The memory timeline agrees with what the arena measured, op by op; a hand-made table pins down the attribution."""

import numpy as np
import pytest

from tinytrain.arena import KINDS, Arena, TraceEvent
from tinytrain.engine import Engine
from tinytrain.memory import MEASURING_ARENA_BYTES
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.oplog import OpEvent
from tinytrain.plan import LAYER_BY_LAYER, MemorySchedule, PatchSpec, UpdatePlan
from tinytrain.sparse import make_policy
from tinytrain.step_table import NOT_FREED, OpRecord, StepTable, TensorRecord, tensors_from_trace
from tinytrain.timeline import measure_timeline, timeline_from_table, timeline_ops

RESOLUTION = 32  # memory is exact at any size; 32 px keeps the dry runs well under a second


@pytest.fixture(scope="module")
def graph():
    return build_mobilenetv2(num_classes=10, resolution=RESOLUTION, weights=None)  # memory does not depend on values


def patched(graph) -> MemorySchedule:
    """The front up to features.2.project in 2x2 tiles, then features.3 and features.4 in 2x2 tiles."""
    names = [layer.name for layer in graph.layers]
    return MemorySchedule((PatchSpec(names.index("features.2.project") + 1, (2, 2)),
                           PatchSpec(names.index("features.4.project") + 1, (2, 2))), True)


@pytest.fixture(scope="module", params=["dense", "dynamic", "dynamic patched"])
def measured(request, graph):
    schedule = patched(graph) if request.param.endswith("patched") else LAYER_BY_LAYER
    return measure_timeline(graph, make_policy(request.param.split()[0], graph).plan(0, 0),
                            memory_schedule=schedule)


def test_stacked_maximum_is_the_whole_step_peak(measured):
    timeline, step = measured
    assert timeline.total_bytes.max() == step.whole_step_peak_bytes


def test_each_kind_reaches_its_measured_peak(measured):
    timeline, step = measured
    assert {kind: int(timeline.bytes_of(kind).max()) for kind in KINDS} == step.peak_bytes_by_kind


def test_one_column_per_op(measured, graph):
    timeline, _ = measured
    assert timeline.bytes_by_kind.shape == (len(KINDS), len(timeline.op_names))
    assert len(timeline.op_names) == 2 * len(graph.layers) + 1
    assert timeline.op_names[timeline.loss_op_index] == "loss"


def test_the_step_frees_everything_it_allocated(measured):
    timeline, _ = measured
    assert not timeline.end_bytes_by_kind.any()


def test_dynamic_saves_far_less_than_dense(graph):
    dense, _ = measure_timeline(graph, UpdatePlan.dense(graph))
    dynamic, _ = measure_timeline(graph, make_policy("dynamic", graph).plan(0, 0))
    assert dynamic.bytes_of("saved").max() < 0.05 * dense.bytes_of("saved").max()


def test_a_patch_stage_counts_under_its_last_layer_and_the_input_under_the_first(graph):
    schedule = patched(graph)
    engine = Engine(graph, Arena(MEASURING_ARENA_BYTES), memory_schedule=schedule)
    table = engine.training_step_table(make_policy("dynamic", graph).plan(0, 0))
    columns = timeline_ops(table.ops, graph, schedule)
    assert columns == sorted(columns)
    loss = next(op.index for op in table.ops if op.type == "loss")
    assert columns[0] == 0 and table.ops[0].name == "load input" and columns[loss] == len(graph.layers)
    for spec in schedule.patches:
        stage = {op.name for op, column in zip(table.ops, columns) if column == spec.end_layer - 1}
        assert len(stage) > 2 * 2 and all(" tile " in name for name in stage)  # every tile's loads, layers, copies
    backward = [(column, op.layer) for op, column in zip(table.ops, columns) if op.index > loss]
    assert all(column == 2 * len(graph.layers) - [layer.name for layer in graph.layers].index(name)
               for column, name in backward)


def test_attribution_within_an_op_by_hand():
    """Op 0 allocates a (100 B) and b (50 B) then frees a; the loss frees b first and allocates c, which outlives
    the step; the backward op after it does nothing."""
    def tensor(name, kind, nbytes, first_op, last_op, alloc_event, free_event):
        return TensorRecord(name, name, kind, "uint8", (nbytes,), nbytes, 0, first_op, last_op, alloc_event,
                            free_event)

    def op(index, name, op_type, layer):
        return OpRecord(index, name, op_type, layer, (), (), 0, False, False, (), ())

    a, b = tensor("a", "activation", 100, 0, 0, 0, 2), tensor("b", "saved", 50, 0, 1, 1, 3)
    c = tensor("c", "grad", 30, 1, 1, 4, NOT_FREED)
    table = StepTable(16, 256, (a, b, c), (op(0, "fwd x", "add", "x"), op(1, "loss", "loss", "")))
    assert (table.peak_bytes, table.peak_op, table.live_at_peak) == (150, 0, (a, b))
    assert table.peak_bytes_by_kind == {**dict.fromkeys(KINDS, 0), "activation": 100, "saved": 50, "grad": 30}
    timeline = timeline_from_table(table, ["fwd x", "loss", "bwd x"], [0, 1], arena_bytes=256)
    expected = {"activation": [100, 0, 0], "saved": [50, 50, 0], "grad": [0, 0, 30]}
    for kind in KINDS:
        np.testing.assert_array_equal(timeline.bytes_of(kind), expected.get(kind, [0, 0, 0]))
    assert timeline.end_bytes_by_kind[KINDS.index("grad")] == 30


def test_a_trace_that_does_not_start_empty_is_refused():
    op = OpEvent(0, 1, "fwd x", "add", "x", (), (), 0, (), (), False, False)
    with pytest.raises(ValueError, match="allocated before the trace began"):
        tensors_from_trace([TraceEvent("free", 0, 16, "activation", "a", (16,), "|u1")], [op])


def test_the_figure_draws_each_measured_panel(graph, tmp_path):
    pytest.importorskip("matplotlib")
    from tinytrain.timeline_figure import measure_panels, write_timeline_figure

    plan = make_policy("dynamic", graph).plan(0, 0)
    panels = measure_panels(graph, {"dynamic": (plan, LAYER_BY_LAYER), "dynamic patched": (plan, patched(graph))})
    assert [panel.title for panel in panels] == ["dynamic", "dynamic patched"]
    for panel in panels:
        assert int(panel.timeline.total_bytes.max()) == panel.memory.whole_step_peak_bytes
    path = tmp_path / "figures" / "timeline.png"
    write_timeline_figure(panels, f"{RESOLUTION}x{RESOLUTION}", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [entry.name for entry in path.parent.iterdir()] == ["timeline.png"]  # no temporary left beside it
