"""Caffe's own gtests of the layers the project's patches change, run against the patched
library by scripts/caffe/gtest.sh (make setup builds the test binary with the library and keeps
it in the build cache, so this only runs it: well under a minute on 2 cores)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO

# The test cases each patch must keep passing (Caffe's) or adds (the project's).
EXPECTED_CASES = {
    "ConvolutionLayerTest": 15,               # Caffe's: includes 1x1 and group == channels
    "DepthwiseConvolutionTest": 3,            # the depthwise path
    "BatchNormLayerTest": 3,
    "ScaleLayerTest": 22,
    "BiasLayerTest": 20,
    "NeuronLayerTest": 58,                    # ELU and Dropout among them
    "ScheduledDropoutTest": 5,                # the switch_off_iter option
    "PoolingLayerTest": 11,                   # MAX with and without the mask top
    "EltwiseLayerTest": 10,                   # SUM with coefficients among them
    "SplitLayerTest": 3,
    "NetTest": 26,                            # Caffe's: forward/backward ranges among them
    "BatchNormScaleChainTest": 7,             # Net's fused chains (and Eltwise -> ELU)
}


def test_caffe_gtests_of_the_patched_layers_pass():
    # The build of the venv running the suite (.venv, or .venv-gpu under `make test GPU=1`).
    env = {**os.environ, "RMNET_VENV": sys.prefix}
    out = subprocess.run(["bash", str(REPO / "scripts" / "caffe" / "gtest.sh")],
                         capture_output=True, text=True, timeout=900, env=env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    passed = re.findall(r"^\[       OK \] (\w+)/\d+\.(\w+)", out.stdout, re.M)
    per_case: dict[str, set[str]] = {}
    for case, test in passed:
        per_case.setdefault(case, set()).add(test)
    for case, at_least in EXPECTED_CASES.items():
        assert len(per_case.get(case, ())) >= at_least, (case, sorted(per_case.get(case, ())))
    for name in ("TestELU", "TestELUGradient", "TestDropoutHalf", "TestDropoutGradient",
                 "Test1x1Convolution", "Test1x1Gradient", "TestSimpleConvolutionGroup",
                 "TestReLUGradientWithNegativeSlope", "TestGradientMaxTopMask",
                 "TestSumCoeffGradient", "TestFromTo", "TestMatchesTheLayersWithDropout",
                 "TestGradient", "TestEltwiseELUMatchesTheLayers"):
        assert any(name in tests for tests in per_case.values()), name
    assert re.search(r"^\[  PASSED  \] \d+ tests", out.stdout, re.M), text[-2000:]
    assert "FAILED" not in out.stdout
