"""The Market-1501 data layer with weighted hard-sample mining, and its loss feedback layer.

`MarketDataLayer` (tops: data, label, sample_weight, sample_id) feeds the train and test nets
under the plain `caffe train` command:

- TRAIN: batches chosen by `layers.mining.HardSampleMiner` (paper V.ii steps a-e) from the last
  known per-sample losses, augmented by `layers.augment` with a difficulty that rises each round;
- TEST: the train images in a fixed order, resized only, weights 1 (the test net reports losses).

`HardSampleFeedbackLayer` (bottoms: sample_id and per-sample loss blobs) hands each forward pass's
per-sample losses back to the data layer of the same net, found by its layer name (``source``).

Images are decoded and augmented in worker processes (``workers``, default 2), a few batches
ahead (``prefetch``), so Caffe's thread only copies finished batches. Which images and which
augmentation each batch gets is decided in the layer (seeded), so results do not depend on which
worker ran first. An unreadable image is replaced by zeros with weight 0 (it adds no loss or
gradient), never drawn again, and reported once per round.

Output: raw BGR 0..255 float32 (N, 3, H, W) at the variant's size, as the nets expect.
"""
from __future__ import annotations

import atexit
import collections
import multiprocessing as mp
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from layers import augment
from layers.mining import HardSampleMiner, mix_terms, rank_seed

try:
    import caffe
except ImportError:  # pragma: no cover
    caffe = None


@dataclass(frozen=True)
class DataConfig:
    """param_str of MarketDataLayer (JSON). Unknown keys are refused.

    ``root``: one dataset root or a list of them, trained on together (identities kept apart,
    labels offset; rmnet.data.datasets); ``format``: their layout (one for all, one per root, or
    null: detected); ``trainval``: MSMT17 trains on list_train + list_val."""
    root: str | list[str]
    format: str | list[str | None] | None = None
    trainval: bool = False
    height: int = 160
    width: int = 64
    batch_size: int = 64
    images_per_id: int = 4
    mining: bool = True
    weighted: bool = False
    keep_fraction: float = 0.5
    difficulty_start: float = 0.0
    difficulty_step: float = 0.1          # per pass over the identities (without a ramp)
    difficulty_ramp_iters: int | None = None   # else: start -> 1 linearly over these iterations
    iter_size: int = 1                    # the solver's: batches per iteration, for the ramp
    worker_timeout: float = 300.0         # seconds to wait for a batch before giving up
    max_zoom: float = 0.2
    max_erase_prob: float = 0.5
    max_erase_area: float = 0.3
    num_classes: int | None = None
    workers: int = 2
    prefetch: int = 4
    seed: int = 0
    name: str = "data"   # what HardSampleFeedbackLayer's "source" refers to

    def __post_init__(self):
        checks = [
            (self.height >= 16 and self.width >= 16, "height and width must be >= 16"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.images_per_id >= 1, "images_per_id must be >= 1"),
            (0 < self.keep_fraction <= 1, "keep_fraction must be in (0, 1]"),
            (0 <= self.difficulty_start <= 1, "difficulty_start must be in [0, 1]"),
            (self.difficulty_step >= 0, "difficulty_step must be >= 0"),
            (self.workers >= 0, "workers must be >= 0 (0: decode in Caffe's thread)"),
            (self.prefetch >= 1, "prefetch must be >= 1"),
            (self.difficulty_ramp_iters is None or self.difficulty_ramp_iters >= 1,
             "difficulty_ramp_iters must be >= 1 or null"),
            (self.iter_size >= 1, "iter_size must be >= 1"),
            (self.worker_timeout > 0, "worker_timeout must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def difficulty(self, round_: int, iteration: int) -> float:
        """Augmentation difficulty (paper V.ii e): a linear ramp over ``difficulty_ramp_iters``
        solver iterations when set (resumes with the iteration), else ``difficulty_step`` more
        for each pass over the identities."""
        if self.difficulty_ramp_iters is not None:
            t = min(1.0, iteration / self.difficulty_ramp_iters)
            return self.difficulty_start + (1.0 - self.difficulty_start) * t
        return min(1.0, self.difficulty_start + self.difficulty_step * round_)


# --- work done in the worker processes ------------------------------------------------------

@dataclass(frozen=True)
class Job:
    index: int
    paths: list[str]
    params: list[augment.AugmentParams | None]
    height: int
    width: int


def load_job(job: Job, out: np.ndarray | None = None) -> tuple[int, np.ndarray, list[int]]:
    """Load, augment and stack one batch: (index, uint8 (N,H,W,3), positions of bad images,
    which are zeros). ``out``: the array to fill (a worker's shared slot), else a new one."""
    from rmnet.data.images import ImageError, load_bgr

    if out is None:
        out = np.zeros((len(job.paths), job.height, job.width, 3), np.uint8)
    bad = []
    for i, (path, p) in enumerate(zip(job.paths, job.params)):
        try:
            out[i] = augment.apply(load_bgr(path), job.height, job.width, p)
        except ImageError:
            out[i] = 0
            bad.append(i)
    return job.index, out, bad


def _worker_init() -> None:
    import signal

    import cv2
    cv2.setNumThreads(1)
    # A worker forked from `caffe train` inherits glog's failure handler, which would print a
    # crash report ("*** SIGTERM received ...", a stack trace) into the training log when the
    # worker is stopped at the end of the run: a worker just ends.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # `caffe train` may exit without stopping the workers: end with it (Linux's parent-death
    # signal) instead of failing to send the next prefetched batch into a closed pipe.
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):   # not Linux: the worker stops at the broken pipe instead
        pass


def _worker_main(tasks, results, slots: np.ndarray) -> None:
    """One worker: load each (slot, job) it is sent into its shared slot, in order, and send
    back only (index, batch size, positions of bad images)."""
    _worker_init()
    while True:
        try:
            slot, job = tasks.recv()
        except (EOFError, OSError):   # the parent is gone
            return
        index, _, bad = load_job(job, slots[slot, :len(job.paths)])
        try:
            results.send((index, len(job.paths), bad))
        except (BrokenPipeError, OSError):
            return


class WorkerPool:
    """Worker processes, each with its own two pipes and its own slots of shared memory: job k
    goes to worker k mod n, which writes the batch into one of its slots and sends back a few
    bytes; results come back from each worker in order. Batches never travel through a pipe
    (the parent would wait while a 2 MB batch is copied through it in 64 KiB pieces), and no
    lock is shared between processes, so a worker that dies or stops can never block
    the parent: a dead worker is an end of file on its pipe (named at once), a stuck one a
    timeout, and ``close`` kills them all (multiprocessing.Pool.terminate can wait forever on
    a lock a worker holds).

    ``in_flight``: the most jobs outstanding at once (the prefetch depth); each worker gets
    enough slots that no slot is rewritten before its batch was read (``result`` copies it)."""

    def __init__(self, n: int, ctx, in_flight: int, batch_shape: tuple[int, ...]) -> None:
        import mmap

        self._workers = []
        self._sent = 0
        self._per_worker = -(-in_flight // n)
        shape = (n, self._per_worker, *batch_shape)
        # Anonymous shared memory, inherited by the forked workers.
        self._memory = mmap.mmap(-1, int(np.prod(shape)))
        self._slots = np.frombuffer(self._memory, np.uint8).reshape(shape)
        try:
            for w in range(n):
                task_r, task_w = ctx.Pipe(duplex=False)
                res_r, res_w = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker_main, args=(task_r, res_w, self._slots[w]),
                                   daemon=True, name=f"MarketDataLayer worker {w}")
                proc.start()
                task_r.close()     # the parent keeps only its ends: a dead worker is EOF
                res_w.close()
                self._workers.append((proc, task_w, res_r))
        except BaseException:
            self.close()
            raise

    def submit(self, job: Job) -> tuple[int, int]:
        """Send a job; returns its ticket (worker, slot) for ``result``, in submission order."""
        k = self._sent % len(self._workers)
        slot = (self._sent // len(self._workers)) % self._per_worker
        self._sent += 1
        proc, task_w, _ = self._workers[k]
        try:
            task_w.send((slot, job))
        except (BrokenPipeError, OSError):
            raise RuntimeError(f"MarketDataLayer: {proc.name} (pid {proc.pid}) is gone "
                               f"(exit status {proc.exitcode}; killed, e.g. out of memory?)"
                               ) from None
        return k, slot

    def result(self, ticket: tuple[int, int], timeout: float
               ) -> tuple[int, np.ndarray, list[int]]:
        """(index, a copy of the batch, bad positions) of a ticket, whose results come in
        submission order; RuntimeError, naming the worker, if it died or took longer than
        ``timeout`` seconds."""
        k, slot = ticket
        proc, _, res_r = self._workers[k]
        try:
            if res_r.poll(timeout):
                index, n, bad = res_r.recv()
                return index, self._slots[k, slot, :n].copy(), bad
        except (EOFError, OSError):
            proc.join(1.0)
            raise RuntimeError(f"MarketDataLayer: {proc.name} (pid {proc.pid}) died before "
                               f"sending its batch (exit status {proc.exitcode}; killed, e.g. "
                               f"out of memory?)") from None
        raise RuntimeError(f"MarketDataLayer: no batch from {proc.name} (pid {proc.pid}) in "
                           f"{timeout:.0f} s (it hung, or the machine is overloaded)")

    def close(self) -> None:
        """Kill the workers and wait for them (a few seconds at most)."""
        for proc, _, _ in self._workers:
            if proc.is_alive():
                proc.kill()
        for proc, task_w, res_r in self._workers:
            proc.join(5.0)
            task_w.close()
            res_r.close()
        self._workers = []


# --- the batch producer (no Caffe) ---------------------------------------------------------

class BatchSource:
    """Plans batches (ids, weights, augmentation) and loads them, prefetching in workers."""

    def __init__(self, cfg: DataConfig, paths: list[str], labels: np.ndarray, train: bool,
                 log=print, rank: int = 0, ranks: int = 1):
        self.cfg, self.paths, self.labels, self.train = cfg, paths, labels, train
        self.log = log
        # Several training processes (one per GPU): each trains on its share of every round's
        # identities (layers.mining.shard_identities) with its own augmentation stream.
        self.rank, self.ranks = (rank, ranks) if train else (0, 1)
        self.first_batch = 0
        self._seed(cfg.seed, cfg.seed + 1)
        self._test_pos = 0
        self._test_round = 0
        self._planned = 0
        self._pending: collections.deque = collections.deque()
        self._pool = None
        self.bad: set[int] = set()
        self._bad_this_round: list[int] = []
        self._round = 0

    def _seed(self, miner_seed, aug_seed) -> None:
        self.miner = HardSampleMiner(self.labels, self.cfg.batch_size, self.cfg.images_per_id,
                                     keep_fraction=self.cfg.keep_fraction,
                                     mining=self.cfg.mining and self.train,
                                     weighted=self.cfg.weighted, seed=miner_seed,
                                     rank=self.rank, ranks=self.ranks)
        self.aug_rng = np.random.default_rng(aug_seed if self.ranks == 1
                                             else rank_seed(aug_seed, self.rank))

    def resume_at(self, batches_done: int) -> None:
        """Continue a run that has drawn ``batches_done`` batches (from a snapshot): the
        difficulty ramp continues, and the sampling and augmentation streams are reseeded from
        (seed, batches_done), so a resumed run does not replay the first batches. (The miner's
        loss estimates are not in the snapshot: they are relearnt within one pass.)"""
        if self._planned:
            raise RuntimeError("resume_at must come before the first batch")
        self.first_batch = int(batches_done)
        if batches_done:
            self._seed([self.cfg.seed, batches_done], [self.cfg.seed + 1, batches_done])

    def _plan(self) -> tuple[Job, np.ndarray, np.ndarray, int]:
        cfg = self.cfg
        if self.train:
            b = self.miner.next_batch()
            ids, weights, round_ = b.ids, b.weights, b.round
            iteration = (self.first_batch + self._planned) // cfg.iter_size
            d = cfg.difficulty(round_, iteration)
            params = [augment.draw_params(self.aug_rng, d, cfg.max_zoom, cfg.max_erase_prob,
                                          cfg.max_erase_area) for _ in ids]
        else:
            n = len(self.paths)
            ids = (self._test_pos + np.arange(cfg.batch_size)) % n
            round_ = self._test_round             # one round = one pass over the list
            self._test_round += (self._test_pos + cfg.batch_size) // n
            self._test_pos = int((self._test_pos + cfg.batch_size) % n)
            weights = np.ones(cfg.batch_size, np.float32)
            params = [None] * cfg.batch_size
        job = Job(self._planned, [self.paths[i] for i in ids], params, cfg.height, cfg.width)
        self._planned += 1
        return job, ids, weights, round_

    def _submit(self) -> None:
        job, ids, weights, round_ = self._plan()
        if self._pool is not None:
            handle = self._pool.submit(job)
        else:
            handle = load_job(job)
        self._pending.append((handle, ids, weights, round_))

    def start(self) -> None:
        if self.cfg.workers > 0 and self._pool is None:
            # fork: the workers only decode and augment (numpy, OpenCV), never touch Caffe.
            # (Not spawn: under the `caffe` tool sys.executable is whatever python3 is on PATH.)
            # OpenCV's thread pool does not survive a fork: a child whose parent has already
            # run a parallel OpenCV call hangs in its first one. With one thread at fork time
            # the children never use the pool; the parent gets its setting back after.
            import cv2
            threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                cfg = self.cfg
                self._pool = WorkerPool(cfg.workers, mp.get_context("fork"), cfg.prefetch,
                                        (cfg.batch_size, cfg.height, cfg.width, 3))
            finally:
                cv2.setNumThreads(threads)
        while len(self._pending) < self.cfg.prefetch:
            self._submit()

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(images uint8 NHWC, labels, weights, ids) of the next batch."""
        if not self._pending:
            self.start()
        handle, ids, weights, round_ = self._pending.popleft()
        if self._pool is None:
            _, images, bad = handle
        else:
            _, images, bad = self._pool.result(handle, self.cfg.worker_timeout)
        if round_ != self._round:
            self._report_bad()
            self._round = round_
        if bad:
            weights = weights.copy()
            weights[bad] = 0.0
            bad_ids = [int(ids[i]) for i in bad]
            new = [i for i in bad_ids if i not in self.bad]
            self.bad.update(bad_ids)
            self._bad_this_round.extend(new)
            self.miner.exclude(bad_ids)
            if len(self.bad) == len(self.paths):
                raise RuntimeError("no readable image left in the dataset")
        self._submit()
        return images, self.labels[ids], weights, ids

    def _report_bad(self) -> None:
        if self._bad_this_round:
            shown = ", ".join(self.paths[i] for i in self._bad_this_round[:3])
            more = len(self._bad_this_round) - 3
            self.log(f"MarketDataLayer: skipped {len(self._bad_this_round)} unreadable image(s) "
                     f"this round: {shown}{f' and {more} more' if more > 0 else ''}")
            self._bad_this_round = []

    def close(self) -> None:
        """Report what is left to report and stop the worker processes."""
        self._report_bad()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
            self._pending.clear()     # tickets of workers that no longer exist


def load_train_list(root: str | Path | list, format=None, trainval: bool = False
                    ) -> tuple[list[str], np.ndarray, int]:
    """(paths, contiguous labels, number of identities) of the train split of one dataset root
    or several (any format of rmnet.data.datasets; labels of each set offset past the last)."""
    from rmnet.data.datasets import load_train_sets

    ts = load_train_sets(str(root) if isinstance(root, Path) else root, format, trainval)
    return ts.paths, ts.labels, ts.num_classes


# --- Caffe adapters --------------------------------------------------------------------------

@dataclass(frozen=True)
class FeedbackConfig:
    """param_str of HardSampleFeedbackLayer: the data layer it feeds (its "name") and the
    weights of the per-sample loss columns, in the order the bottoms give them."""
    source: str = "data"
    weights: list[float] = field(default_factory=lambda: [1.0])


class SourceRegistry:
    """The batch sources of the data layers alive in this process, by (layer name, phase).

    Caffe's Python layers cannot see each other: the hard-sample feedback layer finds the data
    layer whose miner it feeds by the ``source`` name in its param_str (the generator writes the
    data layer's name there), in its own setup, which Caffe runs after the data layer's. A net
    built later in the same process under the same name and phase replaces (and stops) the
    previous source. Benchmarks and tests use ``get`` to reach a live source."""

    def __init__(self) -> None:
        self._sources: dict[tuple[str, int], BatchSource] = {}

    def register(self, name: str, phase: int, source: BatchSource) -> None:
        old = self._sources.get((name, phase))
        if old is not None and old is not source:
            old.close()
        self._sources[(name, phase)] = source

    def get(self, name: str, phase: int) -> BatchSource | None:
        return self._sources.get((name, phase))


batch_sources = SourceRegistry()


if caffe is not None:
    from layers.errors import reports_errors
    from rmnet.config import parse_config

    @reports_errors
    class MarketDataLayer(caffe.Layer):
        """Tops: data (N,3,H,W) BGR 0..255, label (N,), sample_weight (N,), sample_id (N,)."""

        def setup(self, bottom, top):
            if bottom or len(top) != 4:
                raise ValueError("MarketDataLayer: no bottoms, four tops "
                                 "(data, label, sample_weight, sample_id)")
            cfg = parse_config(DataConfig, self.param_str, "MarketDataLayer")
            paths, labels, n_ids = load_train_list(cfg.root, cfg.format, cfg.trainval)
            if cfg.num_classes is not None and n_ids != cfg.num_classes:
                raise ValueError(f"MarketDataLayer: {cfg.root} has {n_ids} train identities but "
                                 f"the net was generated for num_classes={cfg.num_classes}")
            train = self.phase == caffe.TRAIN
            # One process per GPU (training.multigpu): Caffe's solver rank and count are set
            # before the net is built; 0 of 1 otherwise.
            self.source = BatchSource(cfg, paths, labels, train,
                                      log=lambda m: print(m, file=sys.stderr, flush=True),
                                      rank=int(caffe.solver_rank()),
                                      ranks=int(caffe.solver_count()))
            # Caffe's Python layers do not see their own layer name: the "name" in param_str
            # (the generator writes the layer's name) registers it for the feedback layer.
            batch_sources.register(cfg.name, self.phase, self.source)
            atexit.register(self.source.close)
            self.cfg = cfg
            # Batches drawn so far, in a parameter blob so that snapshots keep it and a resumed
            # run continues the difficulty ramp. The prototxt must give the layer
            # `param { lr_mult: 0 decay_mult: 0 }` (the generator does): weight decay would
            # otherwise shrink the count.
            if len(self.blobs) == 0:
                self.blobs.add_blob(1)
                self.blobs[0].data[...] = 0
            self.started = False

        def reshape(self, bottom, top):
            n, h, w = self.cfg.batch_size, self.cfg.height, self.cfg.width
            top[0].reshape(n, 3, h, w)
            for i in range(1, 4):          # RawBlobVec does not slice
                top[i].reshape(n)

        def forward(self, bottom, top):
            if not self.started:            # the snapshot's counter is loaded by now
                self.started = True
                done = int(self.blobs[0].data.flat[0])
                if done and self.phase == caffe.TRAIN:
                    self.source.resume_at(done)
            images, labels, weights, ids = self.source.next()
            if self.phase == caffe.TRAIN:
                self.blobs[0].data.flat[0] += 1
            top[0].data[...] = images.transpose(0, 3, 1, 2)
            top[1].data[...] = labels
            top[2].data[...] = weights
            top[3].data[...] = ids

        def backward(self, top, propagate_down, bottom):
            pass

    @reports_errors
    class HardSampleFeedbackLayer(caffe.Layer):
        """Bottoms: sample_id (N,), then per-sample loss blobs ((N,) or (N,k)). Their columns,
        in order, are weighted by ``weights`` into each sample's estimated loss (paper V.ii b)."""

        def setup(self, bottom, top):
            if len(bottom) < 2 or top:
                raise ValueError("HardSampleFeedbackLayer: bottoms sample_id and >= 1 per-sample "
                                 "loss blob; no tops")
            self.cfg = parse_config(FeedbackConfig, self.param_str, "HardSampleFeedbackLayer")
            self.source = batch_sources.get(self.cfg.source, self.phase)
            if self.source is None:
                raise ValueError(f"HardSampleFeedbackLayer: no MarketDataLayer named "
                                 f"{self.cfg.source!r} in this net")

        def reshape(self, bottom, top):
            pass

        def forward(self, bottom, top):
            source = self.source
            n = bottom[0].data.shape[0]
            ids = bottom[0].data.reshape(n).astype(np.int64)
            terms = np.concatenate([bottom[i].data.reshape(n, -1) for i in range(1, len(bottom))], axis=1)
            try:
                losses = mix_terms(terms, self.cfg.weights)
            except ValueError as e:
                raise ValueError(f"HardSampleFeedbackLayer: {e}") from None
            if source.train:
                source.miner.update(ids, losses)

        def backward(self, top, propagate_down, bottom):
            pass
