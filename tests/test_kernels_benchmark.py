"""The kernel benchmark times the work the graph does: its cases add up to the graph's convolution MACs."""

from tinytrain.kernel_benchmark import graph_totals, kernel_cases, time_case
from tinytrain.models.mobilenetv2 import build_mobilenetv2


def test_cases_cover_every_convolution_of_the_graph():
    graph = build_mobilenetv2(10, 32, weights=None)
    cases = kernel_cases(graph)
    shapes = [graph.shapes[layer.inputs[0]] for layer in graph.layers]
    for op_type, kernel in (("conv2d", "conv2d_forward"), ("depthwise", "depthwise_forward"),
                            ("pointwise", "pointwise_backward_input")):
        macs = sum(layer.macs([shape]) for layer, shape in zip(graph.layers, shapes) if layer.op_type == op_type)
        assert sum(case.flops * case.calls for case in cases if case.kernel == kernel) == 2 * macs


def test_totals_weigh_each_shape_by_its_layers():
    cases = [case for case in kernel_cases(build_mobilenetv2(10, 32, weights=None)) if case.kernel == "relu6_backward"]
    timings = [time_case(case, repeats=2) for case in cases]
    (total,) = graph_totals(timings)
    assert total.seconds == sum(timing.seconds * timing.case.calls for timing in timings) > 0
    assert total.flops == sum(case.flops * case.calls for case in cases)
