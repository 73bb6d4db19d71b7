"""A recorded step (the kernel calls of the first step of a shape, run again for every later step of that shape)
computes what the step-by-step engine computes, allocates nothing, and checks every drawn channel list."""

import numpy as np
import pytest

from tinytrain.arena import DEFAULT_CAPACITY, Arena
from tinytrain.budget import fit_schedule
from tinytrain.engine import SGD, Engine
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.plan import LayerUpdate, UpdatePlan
from tinytrain.sparse import POLICIES, make_policy

BIG_ARENA = 64 << 20
STEPS = 4


def images(resolution, count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8) for _ in range(count)]


def count_allocations(arena: Arena) -> list[str]:
    """Names of what `arena` allocates from now on (alloc and reuse), through a wrapper on the instance."""
    names = []
    for method in ("alloc", "reuse"):
        original = getattr(arena, method)

        def counting(*args, _original=original, **kwargs):
            names.append(args[0] if method == "alloc" else args[1])
            return _original(*args, **kwargs)

        setattr(arena, method, counting)
    return names


def train(engine, graph, policy_name, resolution, momentum=0.9):
    """STEPS steps of a policy (the same draws for every engine, by its seed): the losses, the trained weights, and
    what the arena allocated in the steps after the first two (the first with momentum creates its buffers)."""
    policy = make_policy(policy_name, graph, seed=3, first_block=13, bias_from_block=15)
    losses = []
    for step, (image, label) in enumerate(zip(images(resolution, STEPS), (3, 7, 1, 9))):
        if step == 2:
            allocated = count_allocations(engine.arena)
        result = engine.train_step(image, label, policy.plan(step, 0), SGD(0.05 / (step + 1), momentum))
        losses.append((result.loss, result.prediction))
    return losses, {layer.name: layer.weight.copy() for layer in graph.weighted_layers}, allocated


@pytest.mark.parametrize("policy_name", POLICIES)
def test_recorded_steps_train_as_the_step_by_step_engine(policy_name):
    resolution = 32
    recorded_graph, plain_graph, initial = (build_mobilenetv2(resolution=resolution, width_mult=0.35, seed=1)
                                            for _ in range(3))
    recorded = Engine(recorded_graph, Arena(BIG_ARENA, tracing=False))
    plain = Engine(plain_graph, Arena(BIG_ARENA, tracing=False), plan_offsets=False)  # first-fit, never recorded
    recorded_losses, recorded_weights, recorded_allocations = train(recorded, recorded_graph, policy_name, resolution)
    plain_losses, plain_weights, plain_allocations = train(plain, plain_graph, policy_name, resolution)
    assert recorded_allocations == [] and plain_allocations  # later steps replay; the plain engine never does
    assert recorded_losses == pytest.approx(plain_losses, rel=1e-6)
    for name, weight in plain_weights.items():
        np.testing.assert_allclose(recorded_weights[name], weight, rtol=1e-6, atol=1e-7, err_msg=name)
    assert any(not np.array_equal(plain_weights[layer.name], layer.weight) for layer in initial.weighted_layers)


def test_a_recorded_lean_step_in_256_kib_allocates_nothing_and_matches_the_unrecorded_one():
    resolution = 128
    lean_graph, plain_graph = (build_mobilenetv2(resolution=resolution, seed=2) for _ in range(2))
    policy = make_policy("dynamic", lean_graph, seed=5, bias_from_block=7)
    schedule = fit_schedule(lean_graph, policy.plan(0, 0), DEFAULT_CAPACITY).schedule
    assert schedule.patches and schedule.in_place_depthwise
    arena = Arena(DEFAULT_CAPACITY, tracing=False)
    lean = Engine(lean_graph, arena, memory_schedule=schedule)
    # the same memory schedule, first-fit in a large arena: never recorded (test_lean compares it with layer by layer)
    plain = Engine(plain_graph, Arena(BIG_ARENA, tracing=False), memory_schedule=schedule, plan_offsets=False)
    frames = images(resolution, 3, seed=4)
    for step, frame in enumerate(frames):
        allocated = count_allocations(arena) if step == 2 else []
        plan = policy.plan(step, 0)
        lean_result = lean.train_step(frame, step, plan, SGD(0.01))
        plain_result = plain.train_step(frame, step, plan, SGD(0.01))
        assert lean_result.loss == pytest.approx(plain_result.loss, rel=1e-6)
    assert allocated == []  # the third step replays the second's calls: no arena bookkeeping at all
    assert arena.peak_bytes <= DEFAULT_CAPACITY and arena.live_bytes == 0
    for lean_layer, plain_layer in zip(lean_graph.weighted_layers, plain_graph.weighted_layers):
        np.testing.assert_allclose(lean_layer.weight, plain_layer.weight, rtol=1e-6, atol=1e-7, err_msg=lean_layer.name)


def test_recorded_inference_returns_what_the_plain_engine_returns():
    graph = build_mobilenetv2(resolution=32, width_mult=0.35, seed=3)
    recorded = Engine(graph, Arena(BIG_ARENA, tracing=False))
    plain = Engine(graph, Arena(BIG_ARENA, tracing=False), plan_offsets=False)
    for number, frame in enumerate(images(32, 3, seed=6)):
        if number == 2:
            allocated = count_allocations(recorded.arena)
        ours = recorded.infer(frame, read=("pool",))
        theirs = plain.infer(frame, read=("pool",))
        assert ours.keys() == theirs.keys()
        for name in theirs:
            np.testing.assert_array_equal(ours[name], theirs[name])
    assert allocated == []


@pytest.mark.parametrize("channels, problem", [([0, 0], "repeated"), ([1, 99], "out of range"),
                                               ([-1, 2], "out of range")])
def test_a_recorded_step_refuses_a_bad_draw_before_touching_anything(channels, problem):
    graph = build_mobilenetv2(resolution=32, width_mult=0.35, seed=4)
    layer = graph.layer("features.16.project")
    arena = Arena(BIG_ARENA, tracing=False)
    engine = Engine(graph, arena)
    frame = images(32, 1)[0]

    def plan(rows):
        return UpdatePlan({layer.name: LayerUpdate(np.array(rows, dtype=np.int64), np.arange(4, dtype=np.int64))})

    for _ in range(2):
        engine.train_step(frame, 1, plan([1, 2]), SGD(0.1))
    before = layer.weight.copy()
    with pytest.raises(ValueError, match=problem):
        engine.train_step(frame, 1, plan(channels), SGD(0.1))
    np.testing.assert_array_equal(layer.weight, before)
    allocated = count_allocations(arena)
    engine.train_step(frame, 1, plan([3, 0]), SGD(0.1))  # the next good draw is still a recorded step
    assert allocated == [] and not np.array_equal(layer.weight, before)


def test_a_recorded_step_checks_again_a_channel_array_that_could_have_changed():
    """A read-only array a step has seen is taken as it was; one made writeable again is checked again."""
    graph = build_mobilenetv2(resolution=32, width_mult=0.35, seed=4)
    layer = graph.layer("features.16.project")
    engine = Engine(graph, Arena(BIG_ARENA, tracing=False))
    frame = images(32, 1)[0]
    rows = np.array([1, 2], dtype=np.int64)
    rows.flags.writeable = False
    plan = UpdatePlan({layer.name: LayerUpdate(rows, np.arange(4, dtype=np.int64))})
    for _ in range(3):  # the first records the step, the later ones replay it
        engine.train_step(frame, 1, plan, SGD(0.1))
    rows.flags.writeable = True
    rows[1] = 1
    with pytest.raises(ValueError, match="repeated"):
        engine.train_step(frame, 1, plan, SGD(0.1))
