"""Output locations under failure, for every command line: a location that cannot be written
(wrong type, parent a file, read-only, full) ends with exit status 2 and one line naming it,
nothing half-written is left, results already computed are printed first, and a file a tool
does not recognise as its own is never overwritten."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rmnet.atomic import OutputError, check_output
from rmnet.eval.features import FeatureSet, write_features
from tests.conftest import REPO

PROTOTXT = REPO / "prototxt" / "light" / "deploy.prototxt"


def run_main(main, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:          # argparse errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


def one_line(err: str, progress: bool = False) -> str:
    """The error line; the only line unless ``progress`` lines came before it."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and "Traceback" not in err, err
    assert progress or len(lines) == 1, err
    return lines[-1]


@pytest.fixture
def small_fs(tmp_path):
    """A 64 KiB tmpfs: (mount point, a function that fills it, a function making it read-only);
    skipped where this process may not mount (not root, or in a container without the right)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): the "
                    f"full and read-only location cases need one")

    def fill() -> None:
        with contextlib.suppress(OSError), open(mnt / "filler", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)

    def read_only() -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    try:
        yield mnt, fill, read_only
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def features_file(path: Path) -> Path:
    rng = np.random.default_rng(0)
    q = FeatureSet(rng.standard_normal((4, 8)).astype(np.float32), np.array([1, 2, 3, 4]),
                   np.array([1, 1, 1, 1]), [f"q{i}.jpg" for i in range(4)])
    g = FeatureSet(rng.standard_normal((6, 8)).astype(np.float32), np.array([1, 2, 3, 4, 0, -1]),
                   np.array([2, 2, 2, 2, 2, 2]), [f"g{i}.jpg" for i in range(6)])
    return write_features(path, q, g)


# --- check_output -------------------------------------------------------------------------------

def test_check_output_by_case(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    check_output(tmp_path / "new" / "deeper" / "out.json", "--json")     # parents are created
    check_output(tmp_path / "a_file", "--json")                          # replaced atomically
    check_output(tmp_path / "a_dir", "--out", folder=True)
    check_output(None, "--json")
    with pytest.raises(OutputError, match=r"--json .*a_dir: is a folder, a file is wanted"):
        check_output(tmp_path / "a_dir", "--json")
    with pytest.raises(OutputError, match=r"--out .*a_file: exists and is not a folder"):
        check_output(tmp_path / "a_file", "--out", folder=True)
    with pytest.raises(OutputError, match=r"a_file is a file, not a folder"):
        check_output(tmp_path / "a_file" / "x.json", "--json")


def test_check_output_refuses_a_read_only_location(small_fs):
    mnt, _, read_only = small_fs
    read_only()
    with pytest.raises(OutputError, match=rf"{mnt} is not writable"):
        check_output(mnt / "out.json", "--json")


# --- every command line -------------------------------------------------------------------------

def _cases(tmp: Path) -> list[tuple[str, list[str], Path]]:
    """(tool module, argv, the bad output location) with a wrong-type location each."""
    f, d = tmp / "a_file", tmp / "a_dir"
    log = tmp / "train.log"
    return [
        ("eval_market", ["--features", tmp / "feats.h5", "--json", d], d),
        ("eval_market", ["--features", tmp / "feats.h5", "--rank-list", f / "x.png"], f),
        ("export", ["--prototxt", PROTOTXT, "--weights", tmp / "w.caffemodel", "--out", f], f),
        ("quantize", ["--prototxt", PROTOTXT, "--weights", tmp / "w.caffemodel", "--data", tmp,
                      "--out", f], f),
        ("benchmark", ["--quick", "--json", d], d),
        ("demo", ["--out", f], f),
        ("init_weights", [PROTOTXT, "-o", d], d),
        ("plot_training", [log, "-o", d], d),
        ("plot_weight_ratio", [tmp / "a.caffemodel", tmp / "b.caffemodel", "-o", d], d),
        ("train", ["--data", tmp, "--run-dir", f], f),
        ("gallery", ["build", "--prototxt", PROTOTXT, "--weights", tmp / "w.caffemodel",
                     "--images", tmp, "--out", f], f),
        ("gallery", ["search", tmp / "g", "--images", tmp, "--json", d], d),
        ("bench_gallery", ["--out", d], d),
        ("gpu_check", ["--out", f], f),
        ("import_openvino", [tmp / "model.xml", "-o", d], d),
    ]


@pytest.mark.parametrize("index", range(15))
def test_a_wrong_type_output_location_is_one_line_and_exit_2(tmp_path, index):
    import importlib
    (tmp_path / "a_file").write_text("keep me")
    (tmp_path / "a_dir").mkdir()
    features_file(tmp_path / "feats.h5")
    (tmp_path / "train.log").write_text("")
    tool, argv, bad = _cases(tmp_path)[index]
    main = importlib.import_module(f"commands.{tool}").main
    code, _, err = run_main(main, argv)
    assert code == 2, (tool, err)
    assert str(bad) in one_line(err)
    assert (tmp_path / "a_file").read_text() == "keep me"
    assert list((tmp_path / "a_dir").iterdir()) == []


def test_synthetic_generator_output_location(tmp_path):
    (tmp_path / "a_file").write_text("keep me")
    r = subprocess.run([sys.executable, "-m", "rmnet.data.synthetic", "--out",
                        str(tmp_path / "a_file" / "market")], capture_output=True, text=True)
    assert r.returncode == 2 and "a_file is a file, not a folder" in one_line(r.stderr)


def test_results_are_printed_before_a_full_disk_refuses_the_json(tmp_path, small_fs):
    from commands import eval_market
    mnt, fill, _ = small_fs
    feats = features_file(tmp_path / "feats.h5")
    fill()
    code, out, err = run_main(eval_market.main, ["--features", feats, "--json",
                                                 mnt / "results.json"])
    assert code == 2
    line = one_line(err, progress=True)
    assert "No space left on device" in line and str(mnt / "results.json") in line
    assert "rank-1" in out and "mAP (official, trapezoidal)" in out     # the work was shown
    assert sorted(p.name for p in mnt.iterdir()) == ["filler"]         # nothing half-written


def test_a_full_disk_under_the_features_cache_is_one_line(tmp_path, small_fs):
    from rmnet.eval.features import read_features
    mnt, fill, _ = small_fs
    q, g, _ = read_features(features_file(tmp_path / "feats.h5"))
    fill()
    from commands.errors import command

    @command("t")
    def main(argv):
        write_features(mnt / "cache.h5", q, g, {"k": 1})
        return 0
    code, _, err = run_main(main, [])
    line = one_line(err)
    assert code == 2 and "No space left on device" in line and str(mnt / "cache.h5") in line
    assert sorted(p.name for p in mnt.iterdir()) == ["filler"]


# --- files that are not the tool's own ---------------------------------------------------------

@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    from rmnet.data.synthetic import SyntheticConfig, generate
    root = tmp_path_factory.mktemp("outputs") / "market"
    generate(root, SyntheticConfig(train_ids=1, test_ids=3, images_per_id=2, queries_per_id=1,
                                   seed=4))
    return root


@pytest.fixture(scope="module")
def weights(market) -> Path:
    from rmnet.deploy.export import random_caffemodel
    return random_caffemodel(PROTOTXT, market.parent / "w.caffemodel")


@pytest.mark.parametrize("kind", ["caffemodel", "foreign_h5"])
def test_cache_never_overwrites_a_file_it_did_not_write(tmp_path, market, weights, kind):
    import h5py
    from commands import eval_market
    if kind == "caffemodel":
        cache = tmp_path / "model.caffemodel"
        cache.write_bytes(weights.read_bytes())
    else:
        cache = tmp_path / "other.h5"
        features_file(cache)                    # a features file, but not this tool's
        with h5py.File(cache, "a") as f:
            for k in list(f.attrs):
                del f.attrs[k]
    before = cache.read_bytes()
    code, _, err = run_main(eval_market.main, ["--prototxt", PROTOTXT, "--weights", weights,
                                               "--data", market, "--cache", cache,
                                               "--no-progress"])
    assert code == 2 and "refusing to overwrite it" in err and str(cache) in err
    assert cache.read_bytes() == before


def test_a_prototxt_naming_foreign_python_code_is_refused_before_caffe(tmp_path, market,
                                                                        weights):
    from commands import eval_market
    marker = tmp_path / "imported"
    module = tmp_path / "evil_layer.py"
    module.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        proto = tmp_path / "deploy.prototxt"
        proto.write_text(PROTOTXT.read_text() + '\nlayer { name: "evil" type: "Python" '
                         'bottom: "embedding_calibrated" top: "evil" python_param { '
                         'module: "evil_layer" layer: "EvilLayer" } }\n')
        code, _, err = run_main(eval_market.main, ["--prototxt", proto, "--weights", weights,
                                                   "--data", market, "--no-progress"])
    finally:
        sys.path.remove(str(tmp_path))
    assert code == 2 and "layer 'evil' is a Python layer evil_layer.EvilLayer" in err
    assert not marker.exists()                  # its code never ran


def test_json_results_still_written_where_they_can_be(tmp_path):
    from commands import eval_market
    feats = features_file(tmp_path / "feats.h5")
    code, _, err = run_main(eval_market.main, ["--features", feats, "--json",
                                               tmp_path / "new" / "r.json"])
    assert code == 0, err
    assert json.loads((tmp_path / "new" / "r.json").read_text())["num_valid_queries"] >= 1


# --- inputs that used to give misleading messages ---------------------------------------------

def test_a_one_identity_gallery_is_flagged(tmp_path):
    from commands import eval_market
    rng = np.random.default_rng(1)
    q = FeatureSet(rng.standard_normal((2, 4)).astype(np.float32), np.array([7, 7]),
                   np.array([1, 1]), ["q0.jpg", "q1.jpg"])
    g = FeatureSet(rng.standard_normal((3, 4)).astype(np.float32), np.array([7, 0, -1]),
                   np.array([2, 2, 2]), ["g0.jpg", "g1.jpg", "g2.jpg"])
    feats = write_features(tmp_path / "one.h5", q, g)
    code, out, err = run_main(eval_market.main, ["--features", feats])
    assert code == 0 and "100.00 %" in out
    warned = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warned) == 1 and "Traceback" not in err
    assert warned[0].startswith("eval_market: warning: the gallery holds 1 identity")
    # every evaluation scores through evaluate_rank (demo, quantize, gallery): warned there
    from rmnet.eval.metrics import OneIdentityWarning, evaluate_rank
    with pytest.warns(OneIdentityWarning, match="say nothing about the model"):
        evaluate_rank(np.zeros((2, 3)), q.pids, g.pids, q.camids, g.camids)


def test_embedder_input_mistakes_get_messages_that_say_what_to_do(market, weights):
    from rmnet.deploy.embedder import Embedder
    emb = Embedder.load([PROTOTXT, weights], runtime="pycaffe")
    crop = np.zeros((128, 64, 3), np.uint8)
    with pytest.raises(TypeError, match="got None"):
        emb.embed(None)
    with pytest.raises(TypeError, match=r"one array of shape \(128, 64, 3\): pass \[crop\]"):
        emb.embed(crop)
    with pytest.raises(TypeError, match="embed_paths"):
        emb.embed(str(market / "query"))
    assert emb.embed([crop, crop]).shape == (2, emb.dim)
    assert emb.embed(np.stack([crop, crop])).shape == (2, emb.dim)   # an (N, H, W, 3) batch


def test_training_refuses_a_one_identity_set_and_a_broken_snapshot(tmp_path):
    from rmnet.data.synthetic import SyntheticConfig, generate
    one, three = tmp_path / "one", tmp_path / "three"
    generate(one, SyntheticConfig(train_ids=1, test_ids=2, images_per_id=2, seed=5))
    generate(three, SyntheticConfig(train_ids=3, test_ids=2, images_per_id=2, seed=5))
    tool = [sys.executable, str(REPO / "tools" / "train.py")]
    r = subprocess.run([*tool, "--data", str(one), "--run-dir", str(tmp_path / "r1")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "has 1 identity" in one_line(r.stderr) and str(one) in r.stderr
    bad = tmp_path / "light_iter_4.solverstate"
    bad.write_bytes(b"\x08\x04\x12")                          # a truncated SolverState
    r = subprocess.run([*tool, "--data", str(three), "--run-dir", str(tmp_path / "r2"),
                        "--iters", "4", "--batch-size", "4", "--snapshot", str(bad)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert f"{bad}: cannot resume from it: not a complete solver state" in r.stderr
    assert "history" not in r.stderr                          # not Caffe's own abort message


def test_init_weights_on_a_prototxt_that_does_not_parse(tmp_path):
    from commands import init_weights
    bad = tmp_path / "bad.prototxt"
    bad.write_text("not a prototxt {\n")
    code, _, err = run_main(init_weights.main, [bad, "-o", tmp_path / "x.caffemodel"])
    assert code == 2 and "not a valid Caffe net prototxt" in one_line(err) and str(bad) in err
    assert not (tmp_path / "x.caffemodel").exists()
