"""rmnet.deploy.profile: grouping of runtime nodes into RMNet parts, and the FP32/INT8 comparison
(hand-computed), plus tools/quantize.py's --batches parsing."""
import argparse

import pytest

from rmnet.deploy.profile import LayerTime, compare, format_comparison, layer_group


def _t(ms: float) -> LayerTime:
    return LayerTime("Convolution", "jit", ms)


@pytest.mark.parametrize("name, group", [
    ("bottleneck2_3/dim_inc/conv/WithoutBiases", "stage 2 dim_inc"),
    ("bottleneck1_0/dw/conv/WithoutBiases", "stage 1 dw"),
    ("bottleneck4_0/shortcut/conv/WithoutBiases", "stage 4 shortcut"),
    ("bottleneck12_10/dim_red/conv", "stage 12 dim_red"),
    ("stem/conv/WithoutBiases", "stem"),
    ("head/expand/conv/WithoutBiases", "head"),
    ("input_norm/bn/add/fq_output_0", "input_norm"),
    ("Multiply_2531", "Multiply_2531"),
])
def test_layer_group(name, group):
    assert layer_group(name) == group


def test_compare_sums_groups_in_network_order_and_keeps_totals():
    fp32 = {"stem/conv": _t(1.0),
            "bottleneck1_0/dim_red/conv": _t(2.0), "bottleneck1_1/dim_red/conv": _t(2.0),
            "bottleneck1_0/dim_inc/conv": _t(3.0)}
    int8 = {"input_norm/fq_reorder": _t(0.5),          # only INT8 has it
            "stem/conv": _t(0.5),
            "bottleneck1_0/dim_red/conv": _t(1.0), "bottleneck1_1/dim_red/conv": _t(1.0),
            "bottleneck1_0/dim_inc/conv": _t(4.0)}
    rows = compare(fp32, int8)
    assert [(r.group, r.layers, r.a_ms, r.b_ms) for r in rows] == [
        ("stem", 1, 1.0, 0.5), ("stage 1 dim_red", 2, 4.0, 2.0),
        ("stage 1 dim_inc", 1, 3.0, 4.0), ("input_norm", 1, 0.0, 0.5)]
    assert [r.speedup for r in rows[:3]] == [2.0, 2.0, 0.75]
    assert rows[3].speedup == 0.0
    assert sum(r.a_ms for r in rows) == 8.0 and sum(r.b_ms for r in rows) == 7.0
    lines = format_comparison(rows)
    assert lines[-2].split() == ["total", "5", "8.000", "7.000", "1.14x"]
    # dim_inc (4.0 ms) and input_norm (0.5 ms) gain less than 1.15x: 4.5 / 7 = 64% of INT8 time
    assert lines[-1] == "parts under 1.15x: stage 1 dim_inc, input_norm (64% of the INT8 time)"
    assert lines[3].split() == ["stage", "1", "dim_inc", "1", "3.000", "4.000", "0.75x", "57.1%"]


def test_parse_batches():
    from commands.quantize import parse_batches

    assert parse_batches("16") == [16]
    assert parse_batches("16, 64,16") == [16, 64]
    for bad in ("", "0", "16,x", "-4"):
        with pytest.raises(argparse.ArgumentTypeError, match="--batches"):
            parse_batches(bad)
