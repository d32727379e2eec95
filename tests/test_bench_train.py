"""tools/bench_train.py's bookkeeping that needs no Caffe: which layers are timed together and
how the per-type rows of the two builds are compared."""
from __future__ import annotations

import pytest

from commands.bench_train import elementwise_time, timing_units

KINDS = ["Python MarketDataLayer", "BatchNorm", "Scale", "ELU", "Convolution 1x1", "BatchNorm",
         "Scale", "Dropout", "Eltwise", "BatchNorm", "Scale"]


def test_a_fused_chain_is_timed_as_one_unit():
    assert timing_units(KINDS, [(1, 3), (5, 3), (9, 2)]) == [
        (0, 0, "Python MarketDataLayer"),
        (1, 3, "BatchNorm+Scale+ELU (one pass)"),
        (4, 4, "Convolution 1x1"),
        (5, 7, "BatchNorm+Scale+Dropout (one pass)"),
        (8, 8, "Eltwise"),
        (9, 10, "BatchNorm+Scale (one pass)"),
    ]


def test_without_chains_every_layer_is_a_unit():
    assert timing_units(KINDS, []) == [(i, i, k) for i, k in enumerate(KINDS)]


def test_the_elementwise_rows_add_up_fused_or_not():
    stock = {"BatchNorm": 0.5, "Scale": 0.25, "ELU": 1.0, "Python ScheduledDropoutLayer": 0.125,
             "Eltwise": 0.0625, "Convolution 1x1": 4.0}
    patched = {"BatchNorm+Scale+ELU (one pass)": 0.5, "BatchNorm+Scale+Dropout (one pass)": 0.25,
               "Eltwise+ELU (one pass)": 0.125, "Convolution 1x1": 2.0}
    assert elementwise_time(stock) == pytest.approx(1.9375)
    assert elementwise_time(patched) == pytest.approx(0.875)
