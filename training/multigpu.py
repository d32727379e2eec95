"""Multi-GPU training: one process per GPU over Caffe's NCCL bindings (rmnet.caffe.nccl).

`caffe train -gpu 0,1` refuses the project's Python layers ("PythonLayer does not support CLI
Multi-GPU"), so `tools/train.py --gpus 0,1` starts one `python -m rmnet.caffe.nccl` process per
device with the same solver, one NCCL unique id and its rank. What that means for training:

- each rank runs the prototxt's batch on its own device, and Caffe averages the gradients over
  the ranks: the effective batch is ``len(gpus) x batch_size``, at the solver's learning rate
  (this project keeps the lr; see docs/gpus.md, "Several GPUs");
- the data layer gives each rank its share of every round's identities (layers.mining), so
  ranks see different images; hard-sample mining stays per rank;
- rank 0 alone runs the test nets and writes snapshots (Caffe's root solver); its log is the
  run's log (with the usual progress lines), the other ranks' go to ``<log>.rank<N>`` and
  show only warnings and errors;
- if any rank fails, the others are stopped (NCCL would wait for it for ever) and the error
  names the rank and its log.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

from rmnet.paths import REPO
from training.run import TrainingError, stream_training


def rank_log(log_path: str | os.PathLike, rank: int) -> Path:
    """Where rank ``rank``'s output goes (rank 0: the run's log itself)."""
    log_path = Path(log_path)
    return log_path if rank == 0 else log_path.with_name(f"{log_path.name}.rank{rank}")


def rank_command(solver: str | os.PathLike, gpus: list[int], rank: int, uid: bytes,
                 weights: str | None = None, snapshot: str | None = None,
                 save_weights: str | os.PathLike | None = None,
                 python: str = sys.executable) -> list[str]:
    """The command line of one rank's process."""
    if not gpus or not 0 <= rank < len(gpus):
        raise ValueError(f"rank {rank} is not one of the {len(gpus)} ranks")
    if weights and snapshot:
        raise ValueError("give weights or a snapshot, not both")
    cmd = [python, "-m", "rmnet.caffe.nccl", "--solver", str(solver),
           "--gpus", ",".join(str(g) for g in gpus), "--rank", str(rank), "--uid", uid.hex()]
    if weights:
        cmd += ["--weights", str(weights)]
    if snapshot:
        cmd += ["--snapshot", str(snapshot)]
    if save_weights:
        cmd += ["--save-weights", str(save_weights)]
    return cmd


def rank_env(rank: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a rank: the repository importable (Caffe loads the project's Python
    layers by module name), Caffe's INFO log on rank 0 only."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]]
                                                       if env.get("PYTHONPATH") else []))
    env.setdefault("GLOG_logtostderr", "1")
    env["GLOG_minloglevel"] = "0" if rank == 0 else "1"
    return env


def run_multi_gpu(solver: str | os.PathLike, gpus: list[int], log_path: str | os.PathLike,
                  weights: str | None = None, snapshot: str | None = None,
                  cwd: str | os.PathLike = ".", max_iter: int | None = None,
                  echo: Callable[[str], None] = print, every: float = 10.0,
                  append: bool = False, uid: bytes | None = None,
                  save_weights_dir: str | os.PathLike | None = None) -> None:
    """Train ``solver`` on ``gpus`` (two or more; check them first with
    rmnet.caffe.gpu.require_gpus), one process per device, streaming rank 0's log as
    run_caffe_train does. TrainingError if any rank fails."""
    if len(gpus) < 2:
        raise ValueError("run_multi_gpu needs two or more GPUs (one: run_caffe_train(gpu=...))")
    if uid is None:
        from rmnet.caffe.nccl import new_uid
        uid = new_uid()
    solver = str(Path(cwd, solver).resolve()) if not Path(solver).is_absolute() else str(solver)

    def save_path(rank: int) -> str | None:
        return str(Path(save_weights_dir) / f"rank{rank}.caffemodel") if save_weights_dir else None

    others: list[tuple[int, subprocess.Popen, Path]] = []
    files = []
    failed: list[tuple[int, int]] = []
    stop = threading.Event()
    root: list[subprocess.Popen] = []

    def watch() -> None:
        # NCCL blocks every rank until all take part: one rank's death must end the others.
        while not stop.wait(1.0):
            for rank, proc, _ in others:
                code = proc.poll()
                if code not in (None, 0) and (rank, code) not in failed:
                    failed.append((rank, code))
            if failed:
                for p in root + [p for _, p, _ in others]:
                    if p.poll() is None:
                        p.terminate()
                return

    try:
        for rank in range(1, len(gpus)):
            path = rank_log(log_path, rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "a" if append else "w")
            files.append(f)
            cmd = rank_command(solver, gpus, rank, uid, weights, snapshot, save_path(rank))
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            others.append((rank, subprocess.Popen(cmd, cwd=str(cwd), env=rank_env(rank),
                                                  stdout=f, stderr=subprocess.STDOUT), path))
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        error: TrainingError | None = None
        try:
            stream_training(rank_command(solver, gpus, 0, uid, weights, snapshot, save_path(0)),
                            log_path, cwd=cwd, env=rank_env(0), max_iter=max_iter, echo=echo,
                            every=every, append=append, started=root.append)
        except TrainingError as e:
            error = e
        for rank, proc, _ in others:
            try:
                code = proc.wait(timeout=None if error is None else 10)
            except subprocess.TimeoutExpired:
                proc.terminate()
                code = proc.wait()
            if code != 0 and (rank, code) not in failed:
                failed.append((rank, code))
        stop.set()
        first = [(r, c) for r, c in failed if c > 0] or failed
        if first:
            rank, code = first[0]
            raise TrainingError(f"GPU rank {rank} (device {gpus[rank]}) exited with {code}: "
                                f"{last_error(rank_log(log_path, rank))} "
                                f"(its log: {rank_log(log_path, rank)}; rank 0's: {log_path})")
        if error is not None:
            raise error
    finally:
        stop.set()
        for _, proc, _ in others:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        for f in files:
            f.close()


def last_error(log: Path) -> str:
    """The last error-looking line of a rank's log (or its last line)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if ln.startswith(("F", "E")) and "]" in ln or "Error" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "no output"
