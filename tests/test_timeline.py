"""The memory timeline agrees with what the arena measured, op by op; a hand-made trace pins down the attribution."""

import numpy as np
import pytest

from tinytrain.arena import KINDS, TraceEvent
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.plan import UpdatePlan
from tinytrain.sparse import make_policy
from tinytrain.timeline import measure_timeline, timeline_from_trace

RESOLUTION = 32  # memory is exact at any size; 32 px keeps the two dry runs well under a second


@pytest.fixture(scope="module")
def graph():
    return build_mobilenetv2(num_classes=10, resolution=RESOLUTION, weights=None)  # memory does not depend on values


@pytest.fixture(scope="module", params=["dense", "dynamic"])
def measured(request, graph):
    return measure_timeline(graph, make_policy(request.param, graph).plan(0, 0))


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


def test_attribution_within_an_op_by_hand():
    """Op 0 allocates a (100 B) and b (50 B) then frees a; op 1 frees b first and allocates c; op 2 does nothing."""
    def event(op_index, action, offset, nbytes, kind, name):
        return TraceEvent(op_index, action, offset, nbytes, kind, name, (nbytes,), "|u1")

    trace = [event(0, "alloc", 0, 100, "activation", "a"), event(0, "alloc", 112, 50, "saved", "b"),
             event(0, "free", 0, 100, "activation", "a"), event(1, "free", 112, 50, "saved", "b"),
             event(1, "alloc", 0, 30, "grad", "c")]
    timeline = timeline_from_trace(trace, ["fwd x", "loss", "bwd x"], arena_bytes=256)
    expected = {"activation": [100, 0, 0], "saved": [50, 50, 0], "grad": [0, 0, 30]}
    for kind in KINDS:
        np.testing.assert_array_equal(timeline.bytes_of(kind), expected.get(kind, [0, 0, 0]))
    assert timeline.end_bytes_by_kind[KINDS.index("grad")] == 30


def test_a_trace_that_does_not_start_empty_is_refused():
    with pytest.raises(ValueError, match="empty arena"):
        timeline_from_trace([TraceEvent(0, "free", 0, 16, "activation", "a", (16,), "|u1")], ["fwd x"],
                            arena_bytes=256)
