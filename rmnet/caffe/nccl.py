"""One rank of a multi-GPU training run over Caffe's own NCCL bindings.

`caffe train` refuses Python layers with more than one GPU, so a multi-GPU run is one process
per GPU (training.multigpu starts them), each running this module:

    python -m rmnet.caffe.nccl --solver S --gpus 0,1 --rank R --uid HEX [--weights W | --snapshot S]

Each process sets its device and Caffe's solver count and rank *before* the solver is built
(Caffe initialises test nets and writes snapshots on rank 0 only, and the project's data layer
reads the rank to take its share of each round's identities), restores the snapshot if any,
joins the NCCL communicator named by the unique id the launcher made, takes rank 0's weights
(`bcast`) and trains: gradients are summed over the ranks and divided by their number after
each backward pass, so every rank applies the same update. Rank 0 runs Caffe's Solve (the final
snapshot and test included); the others step the same number of iterations.

This is the sequence of BVLC Caffe's python/train.py (except the unique id: see new_uid);
nothing here is home-made reduction.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


NCCL_UNIQUE_ID_BYTES = 128


def new_uid() -> bytes:
    """A fresh NCCL unique id (the rendezvous of one communicator): ncclGetUniqueId of the
    libnccl that Caffe links, through ctypes. Not pycaffe's ``NCCL.new_uid()``: it returns the id
    with ``PyBytes_FromString``, which stops at the first zero byte (the id holds a socket
    address, so it always has some), and Caffe's NCCL constructor then copies 128 bytes from the
    shorter string. The process that calls this hosts NCCL's bootstrap root and must live until
    every rank has joined (the launcher does)."""
    import ctypes

    import caffe

    from rmnet.caffe.gpu import loaded_library

    if not caffe.has_nccl():
        raise RuntimeError("this Caffe is built without NCCL (make setup GPU=1 builds it with)")
    lib = loaded_library("libnccl")
    if lib is None:
        raise RuntimeError("pycaffe reports NCCL but no libnccl is loaded")
    buf = ctypes.create_string_buffer(NCCL_UNIQUE_ID_BYTES)
    rc = ctypes.CDLL(lib).ncclGetUniqueId(buf)
    if rc != 0:
        raise RuntimeError(f"ncclGetUniqueId failed with NCCL error {rc}")
    return buf.raw


def run_rank(solver_path: str, gpus: list[int], rank: int, uid: bytes,
             weights: str | None = None, snapshot: str | None = None,
             save_weights: str | None = None) -> int:
    """Train rank ``rank`` of ``len(gpus)`` on device ``gpus[rank]``; returns the final
    iteration. ``save_weights``: write this rank's final weights there (gpu_check compares the
    ranks)."""
    import caffe

    caffe.set_device(gpus[rank])
    caffe.set_mode_gpu()
    caffe.set_solver_count(len(gpus))
    caffe.set_solver_rank(rank)
    caffe.set_multiprocess(True)
    solver = caffe.get_solver(str(solver_path))
    if snapshot:
        solver.restore(str(snapshot))
    elif weights:
        solver.net.copy_from(str(weights))
    nccl = caffe.NCCL(solver, uid)
    nccl.bcast()
    solver.add_callback(nccl)
    if solver.param.layer_wise_reduce:
        solver.net.after_backward(nccl)
    if rank == 0:
        solver.solve()
    else:
        solver.step(solver.param.max_iter - solver.iter)
    if save_weights:
        solver.net.save(str(save_weights))
    return int(solver.iter)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--solver", required=True)
    ap.add_argument("--gpus", required=True, help="all ranks' devices, e.g. 0,1")
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--uid", required=True, help="NCCL unique id, hex")
    ap.add_argument("--weights")
    ap.add_argument("--snapshot")
    ap.add_argument("--save-weights")
    args = ap.parse_args(argv)
    from rmnet.caffe.gpu import NO_GPU_EXIT, NoGPUError, parse_gpu_ids, require_gpus
    try:
        gpus = parse_gpu_ids(args.gpus)
        if not 0 <= args.rank < len(gpus):
            raise ValueError(f"--rank {args.rank} is not one of the {len(gpus)} ranks")
        uid = bytes.fromhex(args.uid)
        if len(uid) != NCCL_UNIQUE_ID_BYTES:
            raise ValueError(f"--uid must be {NCCL_UNIQUE_ID_BYTES} bytes in hex, got {len(uid)}")
    except ValueError as e:
        print(f"nccl rank: {e}", file=sys.stderr)
        return 2
    try:
        require_gpus([gpus[args.rank]])
    except NoGPUError as e:
        print(f"nccl rank {args.rank}: {e}", file=sys.stderr)
        return NO_GPU_EXIT
    if not Path(args.solver).is_file():
        print(f"nccl rank {args.rank}: {args.solver}: no such solver", file=sys.stderr)
        return 2
    run_rank(args.solver, gpus, args.rank, uid, args.weights, args.snapshot, args.save_weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())
