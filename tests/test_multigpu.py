"""Several training processes (one per GPU) without a GPU: how the identities of each round are
shared out over the ranks (layers.mining), the data layer taking Caffe's solver rank, and the
launcher's commands, environment and refusals (training.multigpu, rmnet.caffe.nccl)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from layers.data import BatchSource, DataConfig, load_train_list
from layers.mining import HardSampleMiner, shard_identities
from rmnet.data.synthetic import SyntheticConfig, generate
from tests.conftest import REPO


# --- the sharding maths ---------------------------------------------------------------------

@pytest.mark.parametrize("n, ranks", [(751, 4), (10, 3), (8, 8), (5, 1)])
def test_shards_are_disjoint_cover_the_round_and_differ_by_at_most_one(n, ranks):
    order = np.random.default_rng(0).permutation(n)
    shards = [shard_identities(order, r, ranks) for r in range(ranks)]
    joined = np.concatenate(shards)
    assert sorted(joined.tolist()) == list(range(n))             # cover, no repeats
    sizes = [s.size for s in shards]
    assert max(sizes) - min(sizes) <= 1
    np.testing.assert_array_equal(shards[0], order[::ranks])     # a rank keeps the round's order


def test_shard_refuses_bad_ranks_and_too_few_identities():
    order = np.arange(6)
    for rank, ranks in [(2, 2), (-1, 2), (0, 0)]:
        with pytest.raises(ValueError, match="rank must be"):
            shard_identities(order, rank, ranks)
    with pytest.raises(ValueError, match="3 identities cannot be shared out over 4"):
        shard_identities(np.arange(3), 0, 4)


def rounds_of(miner: HardSampleMiner, batches: int) -> dict[int, set[int]]:
    """Identities drawn per round."""
    seen: dict[int, set[int]] = {}
    for _ in range(batches):
        b = miner.next_batch()
        seen.setdefault(b.round, set()).update(int(miner.labels[i]) for i in b.ids)
    return seen


def test_ranks_train_on_disjoint_identities_in_every_round():
    labels = np.repeat(np.arange(24), 5)
    miners = [HardSampleMiner(labels, batch_size=8, images_per_id=4, seed=3, rank=r, ranks=3,
                              mining=False) for r in range(3)]
    per_rank = [rounds_of(m, 12) for m in miners]
    for round_ in (0, 1, 2):
        shares = [p[round_] for p in per_rank]
        assert all(len(s) == 8 for s in shares)              # 24 identities / 3 ranks
        assert set.union(*shares) == set(range(24))
        assert sum(len(s) for s in shares) == 24              # disjoint
    assert per_rank[0][0] != per_rank[0][1]                   # a new shuffle each round


def test_one_rank_draws_exactly_as_before():
    """ranks=1 keeps the single generator: a single-process run's batches do not change."""
    labels = np.repeat(np.arange(10), 3)
    a = HardSampleMiner(labels, batch_size=6, images_per_id=3, seed=7)
    b = HardSampleMiner(labels, batch_size=6, images_per_id=3, seed=7, rank=0, ranks=1)
    ref = np.random.default_rng(7)
    order = ref.permutation(np.unique(labels))            # what the one generator draws first
    first = a.next_batch()
    np.testing.assert_array_equal(first.ids, b.next_batch().ids)
    assert int(labels[first.ids[0]]) in order[:4].tolist()


def test_ranks_have_their_own_image_choices_and_miner_state():
    labels = np.repeat(np.arange(8), 6)
    r0 = HardSampleMiner(labels, batch_size=4, images_per_id=2, seed=1, rank=0, ranks=2)
    r1 = HardSampleMiner(labels, batch_size=4, images_per_id=2, seed=1, rank=1, ranks=2)
    b0 = r0.next_batch()
    r0.update(b0.ids, np.ones(b0.ids.size))
    assert np.isnan(r1.losses).all()                      # feedback stays on its rank
    assert not set(labels[b0.ids]) & set(labels[r1.next_batch().ids])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "market"
    generate(root, SyntheticConfig(train_ids=8, test_ids=2, images_per_id=4, seed=3))
    return root


def source(root, rank: int, ranks: int, train: bool = True) -> BatchSource:
    cfg = DataConfig(root=str(root), height=32, width=16, batch_size=4, images_per_id=2,
                     workers=0, prefetch=1, seed=0, mining=False)
    paths, labels, _ = load_train_list(root)
    return BatchSource(cfg, paths, labels, train, rank=rank, ranks=ranks)


def test_batch_sources_of_two_ranks_see_different_identities(dataset):
    s0, s1 = source(dataset, 0, 2), source(dataset, 1, 2)
    try:
        l0 = {int(x) for _ in range(2) for x in s0.next()[1]}
        l1 = {int(x) for _ in range(2) for x in s1.next()[1]}
    finally:
        s0.close(); s1.close()
    assert l0 and l1 and not l0 & l1 and len(l0 | l1) == 8    # one round: 8 identities


def test_test_phase_is_not_sharded(dataset):
    s = source(dataset, 1, 2, train=False)
    assert (s.rank, s.ranks) == (0, 1)
    s.close()


def test_data_layer_takes_caffes_solver_rank(caffe, dataset, tmp_path):
    from layers.data import batch_sources
    from tests.test_data_layer import data_net

    caffe.set_solver_count(2)
    caffe.set_solver_rank(1)
    caffe.set_multiprocess(True)      # else Python layers refuse a solver count > 1
    try:
        caffe.Net(data_net(tmp_path, dataset, 8, height=32, width=16), caffe.TRAIN)
        src = batch_sources.get("data", caffe.TRAIN)
        assert (src.rank, src.ranks) == (1, 2)
    finally:
        caffe.set_solver_count(1)
        caffe.set_solver_rank(0)
        caffe.set_multiprocess(False)
        batch_sources.get("data", caffe.TRAIN).close()


# --- the launcher ---------------------------------------------------------------------------

def test_rank_commands_and_environment():
    from training.multigpu import rank_command, rank_env, rank_log

    uid = bytes(range(16))
    cmd = rank_command("s.prototxt", [2, 5], 1, uid, weights="w.caffemodel", python="py")
    assert cmd == ["py", "-m", "rmnet.caffe.nccl", "--solver", "s.prototxt", "--gpus", "2,5",
                   "--rank", "1", "--uid", uid.hex(), "--weights", "w.caffemodel"]
    assert "--snapshot" in rank_command("s", [0, 1], 0, uid, snapshot="x.solverstate")
    with pytest.raises(ValueError, match="rank 2 is not one of the 2"):
        rank_command("s", [0, 1], 2, uid)
    with pytest.raises(ValueError, match="weights or a snapshot"):
        rank_command("s", [0, 1], 0, uid, weights="a", snapshot="b")
    env0, env1 = rank_env(0, {"PYTHONPATH": "/x"}), rank_env(1, {})
    assert env0["PYTHONPATH"].split(":") == [str(REPO), "/x"] and env1["PYTHONPATH"] == str(REPO)
    assert env0["GLOG_minloglevel"] == "0" and env1["GLOG_minloglevel"] == "1"
    assert rank_log("runs/x/train.log", 0).name == "train.log"
    assert rank_log("runs/x/train.log", 3).name == "train.log.rank3"


def test_one_gpu_is_not_a_multi_gpu_run(tmp_path):
    from training.multigpu import run_multi_gpu

    with pytest.raises(ValueError, match="two or more GPUs"):
        run_multi_gpu("s.prototxt", [0], tmp_path / "log", uid=b"x")


def test_a_failing_rank_stops_the_run_and_is_named(tmp_path, monkeypatch):
    """Without a GPU every rank stops with 'no GPU' (status 3): the launcher must report the
    failed rank, with its log, and leave no process behind."""
    from training import multigpu
    from training.run import TrainingError

    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "x"\n')
    with pytest.raises(TrainingError) as e:
        multigpu.run_multi_gpu(solver, [0, 1], tmp_path / "train.log", uid=bytes(128),
                               cwd=tmp_path)
    msg = str(e.value)
    assert "GPU rank" in msg and "no GPU" in msg and "exited with 3" in msg
    assert (tmp_path / "train.log.rank1").is_file()


def run_py(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_rank_process_refuses_bad_arguments_and_no_gpu(tmp_path):
    out = run_py("-m", "rmnet.caffe.nccl", "--solver", "x", "--gpus", "0,1", "--rank", "2",
                 "--uid", "00")
    assert out.returncode == 2 and "--rank 2 is not one of the 2 ranks" in out.stderr
    out = run_py("-m", "rmnet.caffe.nccl", "--solver", "x", "--gpus", "0", "--rank", "0",
                 "--uid", "zz")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    out = run_py("-m", "rmnet.caffe.nccl", "--solver", "x", "--gpus", "0,1", "--rank", "1",
                 "--uid", "00")
    assert out.returncode == 2 and "--uid must be 128 bytes in hex, got 1" in out.stderr
    out = run_py("-m", "rmnet.caffe.nccl", "--solver", "x", "--gpus", "0,1", "--rank", "1",
                 "--uid", bytes(128).hex())
    assert out.returncode == 3, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("nccl rank 1: no GPU")


def test_nccl_unique_id_keeps_its_zero_bytes():
    """pycaffe's NCCL.new_uid() cuts the id at its first zero byte; ours is all 128 bytes."""
    import caffe

    from rmnet.caffe.gpu import loaded_library
    from rmnet.caffe.nccl import new_uid

    if not caffe.has_nccl() or loaded_library("libnccl") is None:
        pytest.skip("this Caffe is built without NCCL (the CUDA build has it)")
    try:
        uid = new_uid()
    except RuntimeError as e:           # NCCL may want a device even for this
        pytest.skip(f"NCCL cannot make an id on this machine: {e}")
    assert len(uid) == 128 and b"\0" in uid
    assert len(bytes(caffe.NCCL.new_uid())) < 128          # the bug this avoids


def test_train_cli_hands_the_devices_to_caffe(dataset, tmp_path, monkeypatch):
    """With the devices there (faked), --gpu N reaches `caffe train -gpu N` and --gpus 0,1 the
    multi-GPU launcher, after the same checks and run folder as a CPU run."""
    import rmnet.caffe.gpu as gpu
    import commands.train as cli
    import training.multigpu as multigpu

    checked, calls = [], []
    monkeypatch.setattr(gpu, "require_gpus", lambda ids: checked.append(ids))
    monkeypatch.setattr(cli, "run_caffe_train", lambda solver, log, **kw: calls.append(("one", kw)))
    monkeypatch.setattr(multigpu, "run_multi_gpu",
                        lambda solver, gpus, log, **kw: calls.append(("multi", gpus, kw)))
    common = ["--data", str(dataset), "--run-dir", str(tmp_path / "run"), "--iters", "6",
              "--batch-size", "8"]
    assert cli.main(common + ["--gpu", "1"]) == 0
    assert cli.main(common + ["--gpus", "0,1"]) == 0
    assert checked == [[1], [0, 1]]
    (kind, kw), (kind2, gpus, kw2) = calls
    assert kind == "one" and kw["gpu"] == 1
    assert kind2 == "multi" and gpus == [0, 1] and kw2["weights"].endswith("init.caffemodel")
    assert kw2["max_iter"] == 6
