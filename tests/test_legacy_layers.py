"""Run folders rendered by earlier versions name their Python layers ``rmnet.layers.<module>``:
they still load (as the very modules under ``layers``), say once that they are deprecated, and
a run resumes with ``tools/train.py --resume``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from layers.registry import PARAM_CONFIGS
from rmnet.caffe.pycaffe import PROJECT_PYTHON_LAYERS, is_project_layer
from rmnet.data.synthetic import SyntheticConfig, generate
from tests.conftest import REPO


def test_the_loader_knows_exactly_the_registered_layers():
    assert set(PARAM_CONFIGS) == PROJECT_PYTHON_LAYERS
    assert is_project_layer("rmnet.layers.losses", "AMSoftmaxLossLayer")
    assert not is_project_layer("rmnet.layers.losses", "Softmax")
    assert not is_project_layer("os", "system")


@pytest.mark.parametrize("module", sorted({m for m, _ in PARAM_CONFIGS}))
def test_old_module_name_is_the_new_module(module):
    old = "rmnet." + module
    code = (f"import importlib, sys; old = importlib.import_module({old!r}); "
            f"new = importlib.import_module({module!r}); "
            f"import {old}; "
            f"print(old is new, sys.modules[{old!r}] is new)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True"]
    notices = [ln for ln in r.stderr.splitlines() if "deprecated" in ln]
    assert notices == [f"rmnet: deprecated Python layer module {old!r} in a prototxt: it is "
                       f"{module!r} now (re-render the nets to silence this)"]


def test_a_run_rendered_with_the_old_module_names_resumes(tmp_path):
    data = tmp_path / "market"
    generate(data, SyntheticConfig(train_ids=6, test_ids=2, images_per_id=6, seed=1))
    run = tmp_path / "run"
    tool = [sys.executable, str(REPO / "tools" / "train.py")]
    base = ["--data", str(data), "--run-dir", str(run), "--batch-size", "12"]
    r = subprocess.run([*tool, *base, "--iters", "4"], capture_output=True, text=True, cwd=REPO,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    # The run folder as the previous version rendered it.
    renamed = 0
    for net in run.glob("*.prototxt"):
        text = net.read_text()
        renamed += text.count('module: "layers.')
        net.write_text(text.replace('module: "layers.', 'module: "rmnet.layers.'))
    assert renamed >= 3
    for f in (run / "snapshots").glob("light_iter_4.*"):
        f.unlink()
    r = subprocess.run([*tool, *base, "--resume"], capture_output=True, text=True, cwd=REPO,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "light_iter_2.solverstate" in r.stdout
    log = (run / "train.log").read_text()
    assert "deprecated Python layer module 'rmnet.layers.data'" in log + r.stderr
    assert (run / "snapshots" / "light_iter_4.caffemodel").is_file()
    assert 'module: "rmnet.layers.' in (run / "train.prototxt").read_text()   # left as it was
