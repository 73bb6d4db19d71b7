"""The arena: exact peaks, alignment, first-fit reuse, overflow messages and the trace."""

import numpy as np
import pytest

from tinytrain.arena import Arena, ArenaOverflow


def test_peak_equals_live_bytes_at_peak_hand_checked():
    arena = Arena(4096)
    a = arena.alloc("a", (100,), np.float32, "activation")  # 400 B
    b = arena.alloc("b", (5, 10), np.float32, "saved")  # 200 B
    arena.free(a)
    c = arena.alloc("c", (300,), np.uint8, "grad")  # 300 B
    assert arena.peak_bytes == 600  # a + b, before a was freed
    assert sorted(x.name for x in arena.live_at_peak) == ["a", "b"]
    assert sum(x.nbytes for x in arena.live_at_peak) == arena.peak_bytes
    assert arena.peak_bytes_by_kind == {"input": 0, "activation": 400, "saved": 200, "grad": 300, "wgrad": 0,
                                        "optim": 0, "scratch": 0}
    assert arena.live_bytes == 500
    arena.free(b)
    arena.free(c)
    assert arena.live_bytes == 0 and arena.free_bytes == 4096


def test_views_are_typed_aligned_and_disjoint():
    arena = Arena(4096, alignment=16)
    views = [arena.alloc(f"t{i}", (i + 1, 3), dtype, "scratch")
             for i, dtype in enumerate([np.float32, np.uint8, np.int64, np.float32, np.uint8])]
    for i, view in enumerate(views):
        assert view.__array_interface__["data"][0] % 16 == 0
        assert view.shape == (i + 1, 3)
        assert view.base is not None  # a view into the arena, not a copy
        view[...] = i + 1
    for i, view in enumerate(views):
        assert np.all(view == i + 1)  # no two views overlap


def test_first_fit_reuses_freed_block_and_coalesces():
    arena = Arena(256, alignment=16)
    a = arena.alloc("a", (64,), np.uint8)
    b = arena.alloc("b", (64,), np.uint8)
    c = arena.alloc("c", (64,), np.uint8)
    arena.free(b)
    d = arena.alloc("d", (48,), np.uint8)
    assert arena.offset_of(d) == arena.offset_of(a) + 64  # placed in b's hole
    arena.free(a)
    arena.free(c)
    arena.free(d)
    whole = arena.alloc("whole", (256,), np.uint8)  # only possible if every hole merged back
    assert whole.size == 256
    assert arena.high_water_bytes == 256


def test_overflow_names_request_free_bytes_largest_block_and_holders():
    arena = Arena(256, alignment=16)
    a = arena.alloc("first", (64,), np.uint8, "activation")
    arena.alloc("big_holder", (96,), np.uint8, "saved")
    arena.alloc("third", (64,), np.uint8, "grad")
    arena.free(a)  # free: 64 at the start + 32 at the end, so 96 bytes free but no block of 80
    with pytest.raises(ArenaOverflow) as error:
        arena.alloc("request", (20,), np.float32, "wgrad")
    message = str(error.value)
    assert "'request' [wgrad] (20,) float32, 80 B" in message
    assert "free 96 B" in message
    assert "largest free block 64 B" in message
    assert "big_holder [saved]" in message
    assert message.startswith("arena overflow: cannot allocate 'request'")
    assert "Fix:" in message
    assert arena.live_bytes == 160  # the failed request left nothing behind


def test_trace_records_every_alloc_and_free():
    arena = Arena(1024)
    x = arena.alloc("x", (4,), np.float32, "input")
    y = arena.alloc("y", (2,), np.float32, "grad")
    arena.free(x)
    assert [(e.action, e.offset, e.nbytes, e.kind, e.name) for e in arena.trace] == [
        ("alloc", 0, 16, "input", "x"), ("alloc", 16, 8, "grad", "y"), ("free", 0, 16, "input", "x")]
    arena.free(y)
    arena.reset_peak()
    assert arena.trace == [] and arena.peak_bytes == 0


def test_rollback_frees_only_what_came_after_the_checkpoint():
    arena = Arena(1024)
    keep = arena.alloc("keep", (8,), np.float32, "optim")
    checkpoint = arena.checkpoint()
    arena.alloc("temp1", (8,), np.float32)
    arena.alloc("temp2", (8,), np.float32)
    arena.rollback(checkpoint)
    assert [a.name for a in arena.live()] == ["keep"]
    arena.free(keep)
    assert arena.live_bytes == 0


def test_bad_requests_are_refused_clearly():
    arena = Arena(1024)
    with pytest.raises(ValueError, match="unknown allocation kind"):
        arena.alloc("x", (4,), np.float32, "weights")
    view = arena.alloc("x", (4,), np.float32)
    arena.free(view)
    with pytest.raises(ValueError, match="not a live arena allocation"):
        arena.free(view)
    with pytest.raises(ValueError, match="power of two"):
        Arena(1024, alignment=12)


def test_reuse_hands_the_bytes_on_and_returns_the_tail():
    arena = Arena(1024, alignment=16)
    big = arena.alloc("x", (64,), np.float32)  # 256 B
    after = arena.alloc("y", (4,), np.float32)
    smaller = arena.reuse(big, "x_small", (16,), np.float32, "grad")
    assert arena.offset_of(smaller) == arena.offset_of(big) and arena.is_live(smaller)
    assert [event.reuses for event in arena.trace] == [False, False, False, True]
    assert arena.live_bytes == 64 + 16 and arena.live_bytes_by_kind["grad"] == 64
    tail = arena.alloc("tail", (48,), np.float32)  # the 192 B given back fit right after it
    assert arena.offset_of(tail) == arena.offset_of(smaller) + 64
    with pytest.raises(ValueError, match="more than"):
        arena.reuse(after, "too_big", (8,), np.float32)


def test_a_placement_puts_each_allocation_where_it_was_planned_and_rejects_the_unplanned():
    arena = Arena(4096, alignment=16)
    arena.use_placement({("a", 0): (512, 64), ("b", 0): (0, 32), ("a", 1): (1024, 64)})
    first, second, again = arena.alloc("a", (16,)), arena.alloc("b", (8,)), arena.alloc("a", (16,))
    assert [event.offset for event in arena.trace] == [512, 0, 1024]
    assert arena.high_water_bytes == 1024 + 64
    with pytest.raises(AssertionError, match="not the one its placement planned"):
        arena.alloc("c", (4,))
    arena.use_placement(None)
    for view in (first, second, again):
        arena.free(view)
    assert arena.live_bytes == 0


def _assert_no_overlap_while_both_live(trace, placement) -> None:
    spans, start = {}, {}
    occurrences = {}
    for position, event in enumerate(trace):
        if event.action == "alloc":
            key = (event.name, occurrences.get(event.name, 0))
            occurrences[event.name] = key[1] + 1
            start[event.offset] = (key, position)
        else:
            key, begin = start.pop(event.offset)
            spans[key] = (begin, position)
    for key, begin in start.values():
        spans[key] = (begin, len(trace))
    keys = list(spans)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if spans[a][0] <= spans[b][1] and spans[b][0] <= spans[a][1]:
                (offset_a, size_a), (offset_b, size_b) = placement.offsets[a], placement.offsets[b]
                assert offset_a + size_a <= offset_b or offset_b + size_b <= offset_a, (a, b)


def test_planned_offsets_never_overlap_while_both_live():
    """Random lifetimes, some never freed (they are planned as live through the whole step); greedy by size, and
    searched further for an arena no larger than the most bytes live at once."""
    from tinytrain.placement import plan_placement

    rng = np.random.default_rng(5)
    first_fit = Arena(1 << 20, alignment=16)
    live = []
    for step in range(300):
        if live and rng.random() < 0.45:
            first_fit.free(live.pop(rng.integers(len(live))))
        else:
            live.append(first_fit.alloc(f"t{step}", (int(rng.integers(1, 2000)),), np.float32))
    greedy = plan_placement(first_fit.trace, 16)
    searched = plan_placement(first_fit.trace, 16, capacity=first_fit.peak_bytes)
    for placement in (greedy, searched):
        _assert_no_overlap_while_both_live(first_fit.trace, placement)
        assert placement.high_water_bytes >= first_fit.peak_bytes
    assert searched.high_water_bytes <= greedy.high_water_bytes


def test_a_placement_that_overflows_greedy_by_size_is_searched_until_it_fits():
    """Seven lifetimes (bytes, first event, last event) whose greedy-by-size offsets reach 176 B while at most 160
    B are ever live at once; searched for a 160 B arena, they fit it, and the same search gives the same offsets."""
    from tinytrain.placement import plan_placement

    lifetimes = [(80, 5, 7), (64, 1, 4), (32, 3, 8), (48, 7, 9), (64, 3, 5), (80, 0, 2), (48, 6, 11)]
    events = sorted([(first, 1, index) for index, (_, first, _) in enumerate(lifetimes)]
                    + [(last, 0, index) for index, (_, _, last) in enumerate(lifetimes)])
    first_fit = Arena(1 << 16, alignment=16)
    views = {}
    for _, starts, index in events:  # at the same time, frees before allocations
        if starts:
            views[index] = first_fit.alloc(f"t{index}", (lifetimes[index][0],), np.uint8)
        else:
            first_fit.free(views.pop(index))
    assert first_fit.peak_bytes == 160
    assert plan_placement(first_fit.trace, 16).high_water_bytes == 176
    assert plan_placement(first_fit.trace, 16, capacity=1000).high_water_bytes == 176  # fits: no search
    searched = plan_placement(first_fit.trace, 16, capacity=160)
    assert searched.high_water_bytes == 160
    _assert_no_overlap_while_both_live(first_fit.trace, searched)
    assert plan_placement(first_fit.trace, 16, capacity=160) == searched
    # a capacity below the bytes live at once cannot be met by any order: greedy's offsets, not searched
    assert plan_placement(first_fit.trace, 16, capacity=150).high_water_bytes == 176
