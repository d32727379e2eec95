"""Training around the plain `caffe train` command: checks before it starts, the initial
caffemodel (paper V.ii), BatchNorm statistics for an untrained net, and a runner that streams
Caffe's log with progress and turns a crash into one message naming the iteration and layer.

Used by tools/init_weights.py, tools/train.py and tools/demo.py. Users can always run
`caffe train -solver solvers/market.prototxt` themselves; these are conveniences around it.
"""
from __future__ import annotations

import fnmatch
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from rmnet.caffe.caffemodel import WeightsError, check_fit, read_caffemodel
from rmnet.caffe.protos import ProtoError, caffe_pb2, read_net, read_solver
from rmnet.caffe.pycaffe import import_caffe, load_net, net_from_param, param_shapes, save_net
from rmnet.atomic import atomic_path
from training.init import TransferReport, copy_by_name, msra, orthogonal

from rmnet.paths import REPO  # noqa: E402


class TrainingError(RuntimeError):
    """Training cannot start or stopped; the message says why, naming files/iteration/layer."""


# --- caffemodels ------------------------------------------------------------------------------

def without_data_layer(prototxt, drop_feedback: bool = False):
    """The net (a prototxt path or a NetParameter, copied) with its Market-1501 data layer swapped
    for an Input layer of the same tops and shapes: the net instantiates without a dataset or
    worker processes. ``drop_feedback`` also removes the hard-sample-mining feedback layer,
    which needs the data layer."""
    net_param = caffe_pb2().NetParameter()
    net_param.CopyFrom(prototxt if isinstance(prototxt, type(net_param)) else read_net(prototxt))
    if drop_feedback:
        keep = [l for l in net_param.layer if l.python_param.layer != "HardSampleFeedbackLayer"]
        del net_param.layer[:]
        net_param.layer.extend(keep)
    for layer in net_param.layer:
        if layer.type == "Python" and layer.python_param.layer == "MarketDataLayer":
            cfg = data_layer_config(layer, prototxt if not isinstance(prototxt, type(net_param))
                                    else "the net")
            n = cfg.batch_size
            tops, name = list(layer.top), layer.name
            layer.Clear()
            layer.name, layer.type = name, "Input"
            layer.top.extend(tops)
            shapes = [(n, 3, cfg.height, cfg.width)]
            for shape in shapes + [(n,)] * (len(tops) - 1):
                layer.input_param.shape.add().dim.extend(shape)
    return net_param


def net_param_shapes(prototxt: str | os.PathLike, phase: str = "TEST") -> dict[str, list[tuple]]:
    """{layer: [blob shapes]} of a net, from Caffe itself, without reading its dataset."""
    return param_shapes(net_from_param(without_data_layer(prototxt, drop_feedback=True), phase))


def check_weights_fit(prototxt: str | os.PathLike, caffemodel: str | os.PathLike,
                      phase: str = "TEST") -> None:
    """Refuse a caffemodel whose layers do not fit the net (Caffe would abort mid-run).

    Every layer both have must agree in blob count and shapes, and at least one layer must be
    shared. Layers only the net has (losses, dropout counters) are fine: Caffe keeps their
    initialisation. TrainingError naming both files and the layer.
    """
    try:
        check_fit(net_param_shapes(prototxt, phase), prototxt, caffemodel, require_all=False)
    except WeightsError as e:
        raise TrainingError(str(e)) from None


def init_weights(prototxt: str | os.PathLike, out: str | os.PathLike, seed: int = 0,
                 msra_mode: str = "fan_out", orthogonal_pattern: str = "*/dim_red/conv",
                 source: str | os.PathLike | None = None,
                 log: Callable[[str], None] = print) -> TransferReport | None:
    """Write the initial caffemodel of ``prototxt`` (paper V.ii): orthogonal squeezing 1x1
    convolutions, MSRA for every other convolution, the prototxt's fillers for the rest; with
    ``source``, then copy every layer whose name and shapes match from that caffemodel (a backbone
    trained elsewhere) and return the report."""
    for p in (prototxt, source):
        if p is not None and not Path(p).is_file():
            raise TrainingError(f"{p}: no such file")
    try:
        net = load_net(prototxt, require_input=False)   # parse errors first: Caffe aborts
    except ValueError as e:                              # ProtoError, a foreign Python layer
        raise TrainingError(str(e)) from None
    rng = np.random.default_rng(seed)
    n_orth = n_msra = 0
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type != "Convolution" or not len(layer.blobs):
            continue
        w = layer.blobs[0].data
        if fnmatch.fnmatch(name, orthogonal_pattern):
            w[...] = orthogonal(w.shape, rng)
            n_orth += 1
        else:
            group = max(1, net.blobs[net.bottom_names[name][0]].data.shape[1] // w.shape[1])
            w[...] = msra(w.shape, rng, group=group, mode=msra_mode)
            n_msra += 1
    for layer in net.layers:
        # Caffe leaves BatchNorm's statistics at zero, scale factor included, which the TEST
        # phase turns into x / sqrt(eps). Identity statistics (mean 0, variance 1, factor 1) make
        # the initial caffemodel a usable net; training replaces them within a few hundred
        # iterations (moving average 0.999, the prior keeps weight 0.999^n / (1 + sum)).
        if layer.type == "BatchNorm":
            layer.blobs[0].data[...] = 0
            layer.blobs[1].data[...] = 1
            layer.blobs[2].data[...] = 1
    log(f"init_weights: {n_orth} orthogonal, {n_msra} MSRA ({msra_mode}) convolutions")
    report = None
    if source is not None:
        target = {name: [b.data for b in blobs] for name, blobs in net.params.items()}
        try:
            report = copy_by_name(target, read_caffemodel(source))
        except WeightsError as e:
            raise TrainingError(str(e)) from None
        log(f"init_weights: from {source}: " + report.summary())
        if not report.copied:
            raise TrainingError(f"{source} shares no layer with {prototxt}")
    with atomic_path(out) as tmp:
        save_net(net, tmp)
    return report


def calibrate_batchnorm(deploy: str | os.PathLike, weights: str | os.PathLike,
                        image_paths: list[str], out: str | os.PathLike, batch_size: int = 32,
                        batches: int = 10, seed: int = 0) -> None:
    """Give a net BatchNorm statistics measured on ``image_paths``: run ``batches`` batches of
    random training images through the net in the TRAIN phase, where Caffe's BatchNorm
    accumulates its statistics from zero, and save (the deploy net's layers). Every other blob
    is unchanged. For an untrained net (an initial caffemodel has identity placeholders; Caffe's
    own fresh nets have zeros, which its TEST phase turns into a division by sqrt(eps)) this is
    still the untrained network, measured fairly; for a trained one (tools/bn_stats.py) it
    replaces running averages that lag behind weights which moved fast."""
    caffe = import_caffe()

    net = caffe.Net(str(deploy), caffe.TRAIN, weights=str(weights))
    for layer in net.layers:
        if layer.type == "BatchNorm":
            for blob in layer.blobs:
                blob.data[...] = 0
    _, _, h, w = net.blobs["data"].data.shape
    for blob in image_batches(image_paths, h, w, batch_size, batches, seed):
        net.blobs["data"].reshape(*blob.shape)
        net.blobs["data"].data[...] = blob
        net.forward()
    with atomic_path(out) as tmp:
        save_net(net, tmp)


def image_batches(image_paths: list[str], height: int, width: int, batch_size: int = 32,
                  batches: int = 10, seed: int = 0):
    """``batches`` float32 (N <= batch_size, 3, height, width) raw BGR batches: consecutive
    slices of a seeded permutation of the images, wrapping around (a slice that reaches the
    end is shorter). The images BatchNorm statistics are estimated on
    (``calibrate_batchnorm``, ``training.unfold``)."""
    from rmnet.data.images import load_blob

    if not image_paths:
        raise TrainingError("no images to estimate BatchNorm statistics on")
    order = np.random.default_rng(seed).permutation(len(image_paths))
    for i in range(batches):
        idx = order[(i * batch_size) % len(order):][:batch_size]
        yield load_blob([image_paths[j] for j in idx], height, width)


# --- a run folder for a dataset -------------------------------------------------------------

def scaled_schedule(iters: int, base: dict) -> dict:
    """The paper's schedule squeezed into ``iters`` iterations (lr steps at 1/3 and 2/3, dropout
    switched off at 2/3), snapshots and tests at sensible intervals."""
    step = max(1, iters // 3)
    return {
        "solver": {"max_iter": iters, "stepsize": step,
                   "snapshot": max(1, min(base["snapshot"], iters // 2)),
                   "test_interval": max(1, min(base["test_interval"], iters)),
                   "display": max(1, min(base["display"], iters // 20 or 1)),
                   "average_loss": max(1, min(base["average_loss"], iters // 20 or 1))},
        "dropout": {"switch_off_iter": min(iters, 2 * step)},
    }


def prepare_run(variant: str, data: Path | list[Path], run_dir: Path, iters: int | None,
                batch_size: int | None = None, extra: dict | None = None,
                log: Callable[[str], None] = print, format: str | list | None = None,
                trainval: bool = False) -> dict:
    """Render the variant for ``data`` (one dataset root, or a list trained on together) into
    ``run_dir``; returns write_run's paths. The class count is the sum of the sets' training
    identities; ``format`` (one, or one per root; None: detected) and ``trainval`` (MSMT17)
    go into the data layer's config as they are."""
    from generator import load_variant, write_run
    from rmnet.data.datasets import load_train_sets

    roots = [Path(d) for d in data] if isinstance(data, (list, tuple)) else [Path(data)]
    names = [str(r.resolve()) for r in roots]
    ts = load_train_sets(names, format, trainval)
    if ts.num_classes < 2:
        raise TrainingError(f"{', '.join(names)}: the training split has {ts.num_classes} "
                            f"identity; training a re-identification model needs at least 2")
    data_cfg: dict = {"root": names[0] if len(names) == 1 else names}
    if format is not None:
        data_cfg["format"] = format
    if trainval:
        data_cfg["trainval"] = True
    overrides: dict = {"num_classes": ts.num_classes, "data": data_cfg}
    if batch_size:
        overrides["data"]["batch_size"] = batch_size
    if iters:
        cfg = load_variant(variant).config
        for key, value in scaled_schedule(iters, cfg["solver"]).items():
            overrides.setdefault(key, {}).update(value)
        if not cfg["dropout"]["switch_off_iter"]:
            overrides["dropout"].pop("switch_off_iter")      # rows that never switch it off
        def scaled(n: int) -> int:   # the ramps keep their share of the schedule
            return max(1, round(n * iters / cfg["solver"]["max_iter"]))
        sm = cfg["losses"]["smart_margins"]
        if sm:
            overrides["losses"] = {"smart_margins": dict(sm, ramp_iters=scaled(sm["ramp_iters"]))}
        if cfg["data"].get("difficulty_ramp_iters"):
            overrides["data"]["difficulty_ramp_iters"] = scaled(cfg["data"]["difficulty_ramp_iters"])
    for key, value in (extra or {}).items():
        if isinstance(value, dict):
            overrides.setdefault(key, {}).update(value)
        else:
            overrides[key] = value
    for ds, offset in zip(ts.datasets, ts.offsets):
        log(ds.summary() + (f" (labels from {offset})" if len(ts.datasets) > 1 else ""))
    check_some_readable(ts)
    return write_run(variant, run_dir, overrides)


def check_some_readable(ts) -> None:
    """TrainingError naming the dataset folder if none of its training images can be read.

    The data layer skips an unreadable image (weight 0) and stops only when none is left, which
    for a set that is all unreadable (copied wrong, truncated, another format under the right
    names) would come after Caffe started and maybe wrote snapshots. Here the images are read in
    order until one decodes: one read for a healthy set, and at most as many as are unreadable."""
    from rmnet.data.images import ImageError, load_bgr

    for ds in ts.datasets:
        paths = [r.path for r in ds.train]
        first = None
        for p in paths:
            try:
                load_bgr(p)
                break
            except ImageError as e:
                first = first or e
        else:
            if paths:
                raise TrainingError(f"{ds.root}: all {len(paths)} training images are unreadable "
                                    f"(the first: {first}); nothing to train on")


# --- checks before `caffe train` ------------------------------------------------------------

@dataclass(frozen=True)
class SolverInfo:
    path: Path
    train_net: Path
    test_nets: list[Path]
    max_iter: int
    snapshot_prefix: str
    data_roots: list[str]


def inspect_solver(solver: str | os.PathLike, cwd: str | os.PathLike = ".") -> SolverInfo:
    """Parse a solver and its nets, resolving paths as `caffe train` run in ``cwd`` would;
    TrainingError for a missing solver or net, or a dataset folder that is not Market-1501."""
    from rmnet.data.datasets import load_train_sets, sources
    from rmnet.data.market import DatasetError

    cwd = Path(cwd)
    path = Path(solver)
    full = path if path.is_absolute() else cwd / path
    if not full.is_file():
        raise TrainingError(f"{solver}: no such solver file (paths are relative to {cwd.resolve()})")
    try:
        s = read_solver(full)
    except ProtoError as e:
        raise TrainingError(str(e)) from None

    def resolve(p: str, what: str) -> Path:
        q = Path(p) if Path(p).is_absolute() else cwd / p
        if not q.is_file():
            raise TrainingError(f"{solver}: its {what} {p} does not exist (paths resolve from "
                                f"{cwd.resolve()}, where caffe train runs)")
        return q

    if not s.net:
        raise TrainingError(f"{solver}: no 'net' (this project's solvers name train and test nets)")
    train = resolve(s.net, "net")
    tests = [resolve(t, "test_net") for t in s.test_net]
    roots = []
    for net_path in [train, *tests]:
        try:
            net = read_net(net_path)
        except ProtoError as e:
            raise TrainingError(str(e)) from None
        for layer in net.layer:
            if layer.type == "Python" and layer.python_param.layer == "MarketDataLayer":
                cfg = data_layer_config(layer, net_path)
                try:
                    srcs = sources(cfg.root, cfg.format)
                    new = [src for src in srcs if src.root not in roots]
                    if new:
                        check_some_readable(load_train_sets(
                            [str(Path(src.root) if Path(src.root).is_absolute() else
                                 cwd / src.root) for src in new],
                            [src.format for src in new], cfg.trainval))
                        roots += [src.root for src in new]
                except DatasetError as e:
                    raise TrainingError(f"{net_path}: data layer: {e}") from None
    prefix = s.snapshot_prefix
    if prefix:
        folder = (Path(prefix) if Path(prefix).is_absolute() else cwd / prefix).parent
        if not folder.is_dir():
            raise TrainingError(f"{solver}: snapshot folder {folder} does not exist "
                                f"(Caffe would refuse to start)")
    return SolverInfo(full, train, tests, int(s.max_iter), prefix, roots)


def data_layer_config(layer, net_path: str | os.PathLike):
    """The ``DataConfig`` of a MarketDataLayer in a net, parsed as the layer itself will;
    TrainingError naming the net and the layer if its param_str is wrong."""
    from rmnet.config import ConfigError, parse_config
    from layers.data import DataConfig

    try:
        return parse_config(DataConfig, layer.python_param.param_str,
                            f"{net_path}: layer {layer.name!r} (MarketDataLayer)")
    except ConfigError as e:
        raise TrainingError(str(e)) from None


# --- running `caffe train` ----------------------------------------------------------------

class RunLock:
    """An exclusive lock on a run (its snapshot prefix): a second trainer on the same run is
    refused while the first is alive, since both would write the same snapshots and log. The
    lock is the kernel's (``flock``), so it is released when its holder dies, even by SIGKILL;
    the file stays and records the holder's pid."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise TrainingError(f"{self.path}: another trainer (pid {holder}) is running this "
                                f"run; wait for it or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)          # closing releases the flock
            self._fd = None


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM when the parent dies (Linux), so a
    killed trainer leaves no orphaned `caffe train` writing snapshots."""
    import ctypes

    PR_SET_DEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:          # the parent is already gone
        os._exit(1)


class TrainingInterrupted(TrainingError):
    """Ctrl-C (SIGINT): Caffe stopped, snapshotting first; the log is complete."""

    def __init__(self, message: str, iteration: int):
        super().__init__(message)
        self.iteration = iteration


_ITER = re.compile(r"\] Iteration (\d+)")
_LOSS = re.compile(r"\] Iteration (\d+).*, loss = (\S+)")
_LR = re.compile(r"\] Iteration (\d+), lr = (\S+)")
_PY_ERROR = re.compile(r"^((?:\w+\.)*\w+(?:Error|Exception)): (.*)$")   # dotted names too
_FATAL = re.compile(r"^F\d{8} .*\] (.*)$")


def caffe_binary() -> str:
    """The venv's `caffe` wrapper (it sets up the paths Python layers need)."""
    for candidate in (Path(sys.executable).parent / "caffe", REPO / ".venv" / "bin" / "caffe"):
        if candidate.is_file():
            return str(candidate)
    raise TrainingError("no caffe binary next to this Python or in .venv/bin: run `make setup`")


class _Progress:
    """What `caffe train` has printed so far: the iteration, loss and lr, the errors, and a
    progress line echoed at most every ``every`` seconds."""

    def __init__(self, max_iter: int | None, echo: Callable[[str], None], every: float):
        self.max_iter, self.echo, self.every = max_iter, echo, every
        self.iteration, self.loss, self.lr = 0, float("nan"), float("nan")
        self.errors: list[str] = []
        self.first_iter: int | None = None
        self.start = time.monotonic()
        self.last_echo = 0.0

    def feed(self, line: str) -> None:
        if m := _LOSS.search(line):
            self.iteration = int(m.group(1))
            self.loss = float(m.group(2)) if m.group(2) not in ("nan", "-nan") else float("nan")
        elif m := _LR.search(line):
            self.iteration, self.lr = int(m.group(1)), float(m.group(2))
        elif m := _ITER.search(line):
            self.iteration = int(m.group(1))
        else:
            stripped = line.strip()
            if _PY_ERROR.match(stripped) or _FATAL.match(stripped):
                self.errors.append(stripped)
            elif stripped.startswith("MarketDataLayer: skipped"):
                self.echo(f"  {stripped} (every one is in the log)")
        if self.first_iter is None and "Iteration" in line and _ITER.search(line):
            self.first_iter = self.iteration
            self.start = time.monotonic()
        now = time.monotonic()
        if (now - self.last_echo >= self.every and self.first_iter is not None
                and self.iteration > self.first_iter):
            self.last_echo = now
            per = (now - self.start) / (self.iteration - self.first_iter)
            total = f"/{self.max_iter}" if self.max_iter else ""
            eta = (f", ETA {((self.max_iter - self.iteration) * per) / 60:.1f} min"
                   if self.max_iter else "")
            self.echo(f"  iteration {self.iteration}{total}  loss {self.loss:.4g}  "
                      f"lr {self.lr:.3g}  {per:.2f} s/iter{eta}")


def run_caffe_train(solver: str | os.PathLike, log_path: str | os.PathLike,
                    weights: str | None = None, snapshot: str | None = None,
                    cwd: str | os.PathLike = ".", max_iter: int | None = None,
                    echo: Callable[[str], None] = print, every: float = 10.0,
                    append: bool = False, gpu: int | None = None) -> None:
    """Run `caffe train`, write its whole log to ``log_path`` and echo a progress line at most
    every ``every`` seconds (iteration/max, smoothed loss, lr, s/iter, ETA). A non-zero exit
    raises TrainingError with the last iteration reached and the error Caffe or a Python layer
    printed (e.g. the loss layer that saw a NaN). ``append``: add to an existing log (a resumed
    run keeps its earlier curves). ``gpu``: train on that CUDA device (`-gpu N`, which
    overrides the solver's solver_mode); check it exists first (rmnet.caffe.gpu.require_gpus),
    since Caffe aborts without one."""
    cmd = [caffe_binary(), "train", "-solver", str(solver)]
    if weights:
        cmd += ["-weights", str(weights)]
    if snapshot:
        cmd += ["-snapshot", str(snapshot)]
    if gpu is not None:
        cmd += ["-gpu", str(int(gpu))]
    env = dict(os.environ)
    env.setdefault("GLOG_logtostderr", "1")
    env["GLOG_minloglevel"] = "0"       # the solver's INFO lines carry the iterations and losses
    stream_training(cmd, log_path, cwd=cwd, env=env, max_iter=max_iter, echo=echo, every=every,
                    append=append)


def stream_training(cmd: list[str], log_path: str | os.PathLike, cwd: str | os.PathLike,
                    env: dict[str, str], max_iter: int | None = None,
                    echo: Callable[[str], None] = print, every: float = 10.0,
                    append: bool = False,
                    started: Callable[[subprocess.Popen], None] | None = None) -> None:
    """Run a training command that prints Caffe's solver log (the `caffe` tool, or the root
    rank of a multi-GPU run), as run_caffe_train describes. ``started`` is called with the
    process once it runs (a multi-GPU launcher watches the other ranks with it)."""
    progress = _Progress(max_iter, echo, every)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a" if append else "w", buffering=1) as log:   # line-buffered: tail it
        log.write("$ " + " ".join(cmd) + "\n")
        # Caffe runs in a session of its own, so a Ctrl-C in the terminal reaches only this
        # process, which passes one SIGINT on: Caffe's own SIGINT action ("stop") snapshots,
        # then exits, and the log keeps everything it printed until then.
        proc = subprocess.Popen(cmd, cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                preexec_fn=_die_with_parent, start_new_session=True)
        if started is not None:
            started(proc)
        assert proc.stdout is not None
        interrupted: list[int] = []

        def on_sigint(signum, frame) -> None:
            if not interrupted and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            interrupted.append(signum)

        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
        try:
            for line in proc.stdout:
                log.write(line)
                progress.feed(line)
            code = proc.wait()
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, previous)
    iteration, errors = progress.iteration, progress.errors
    if interrupted:
        raise TrainingInterrupted(f"interrupted at iteration {iteration}; Caffe stopped and "
                                  f"snapshotted (full log: {log_path})", iteration)
    if code != 0:
        cause = errors[-1] if errors else f"caffe exited with code {code}"
        if not errors and code == -signal.SIGKILL:
            cause = ("caffe was killed (SIGKILL), most likely by the kernel for want of memory: "
                     "the log's 'Memory required for data' lines say what the nets need; try "
                     "a smaller batch size")
        if cause.startswith("F") and (m := _FATAL.match(cause)):
            cause = m.group(1)
        raise TrainingError(f"training stopped at iteration {iteration}: {cause} "
                            f"(full log: {log_path})")


def final_snapshot(prefix: str | os.PathLike, max_iter: int) -> Path:
    """The caffemodel Caffe writes at the end of training."""
    return Path(f"{prefix}_iter_{max_iter}.caffemodel")


def snapshots(prefix: str | os.PathLike, ext: str = ".solverstate") -> list[tuple[int, Path]]:
    """(iteration, file) pairs of a snapshot prefix, oldest first: its .solverstate files, or
    with ``ext=".caffemodel"`` its caffemodels."""
    prefix = Path(prefix)
    found = []
    for p in prefix.parent.glob(prefix.name + "_iter_*" + ext):
        m = re.search(r"_iter_(\d+)" + re.escape(ext) + "$", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def usable_snapshot(state: Path) -> str | None:
    """Why a .solverstate cannot be resumed from (None: it can). Our Caffe writes each file
    atomically (scripts/caffe/patches/0002-atomic-proto-writes.patch), but a snapshot is two
    files, caffemodel first: a run killed in between leaves a state whose caffemodel is
    missing or older, and snapshots from a Caffe without the patch may be truncated. Caffe
    would abort on either."""
    if not Path(state).is_file():
        return "no such file"
    s = caffe_pb2().SolverState()
    try:
        s.ParseFromString(Path(state).read_bytes())
    except Exception:
        return "not a complete solver state (truncated?)"
    if not s.learned_net:
        return "names no caffemodel"
    net = Path(s.learned_net)
    if not net.is_absolute():
        net = Path(state).parent / net.name
    if not net.is_file():
        return f"its caffemodel {s.learned_net} is missing"
    try:
        read_caffemodel(net)
    except WeightsError as e:
        return str(e)
    return None


def newest_usable_snapshot(prefix: str | os.PathLike,
                           log: Callable[[str], None] = print) -> Path | None:
    """The newest snapshot of ``prefix`` that Caffe can resume from, skipping broken ones."""
    for _, state in reversed(snapshots(prefix)):
        problem = usable_snapshot(state)
        if problem is None:
            return state
        log(f"skipping {state}: {problem}")
    return None


def train_images(root: str | os.PathLike, format: str | None = None) -> list[str]:
    from rmnet.data.datasets import load_dataset

    return [str(r.path) for r in load_dataset(root, format).train]


