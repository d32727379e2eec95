#!/usr/bin/python3
"""Replay a Dockerfile's steps in a fresh Debian root, for machines without a Docker engine.

`make docker-check` runs this on docker/Dockerfile, `make docker-check-gpu` (with --gpu) on
docker/Dockerfile.gpu. It reads the Dockerfile itself (so the check
and the image cannot drift), builds the FROM image's equivalent with `debootstrap --variant=minbase`,
then carries out ENV, ARG, WORKDIR, COPY and RUN in order with chroot, and finally runs the
checks given with --check (by default: import caffe, `caffe --version`, and `make test`) inside
the root. What the host happens to have installed is not in there, so a missing install step
fails here. With --gpu the checks are those of the CUDA image (GPU_CHECKS): the CUDA Caffe and
pycaffe load (a CUDA runtime mapped, NCCL built in), the project's GPU entry points stop with
their "no GPU" line and exit status 3 in a root without a GPU (where Caffe itself would abort),
and the test suite passes against the CUDA-built pycaffe in CPU mode.

Only the Dockerfile features the project uses are supported; anything else is refused with the
line number. Runs as root (debootstrap, mount, chroot) inside a private mount namespace, so
nothing stays mounted when it ends. Standard library only: it runs with the system python3
before any venv exists.

Host plumbing, not part of the image: the resolver configuration is copied in, and when the host
routes HTTPS through its own certificate authority (PIP_CERT / SSL_CERT_FILE set), that bundle is
lent to the root for pip, as a Docker daemon's network would be.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CHECKS = [
    "python -c 'import caffe; print(\"caffe imports from\", caffe.__file__)'",
    "caffe --version",
    "make test",
]
# In the CUDA image (docker/Dockerfile.gpu), on a machine without a GPU.
NO_GPU_EXIT = 3
GPU_CHECKS = [
    "python -c 'import caffe; from rmnet.caffe.gpu import gpu_status; s = gpu_status(); "
    "assert s.cudart, \"pycaffe maps no libcudart: not a CUDA build\"; "
    "assert caffe.has_nccl(), \"built without NCCL\"; "
    "print(\"CUDA caffe imports from\", caffe.__file__, \"with\", s.cudart, \"and NCCL;\", "
    "s.count, \"GPUs:\", s.reason)'",
    "caffe --version",
    # The entry points: one "no GPU" line on stderr and status 3, no SIGABRT.
    f"rc=0; python tools/gpu_check.py 2>/tmp/err || rc=$?; cat /tmp/err; "
    f"test $rc -eq {NO_GPU_EXIT} && grep -q '^gpu_check: no GPU' /tmp/err",
    f"rc=0; python tools/train.py --solver solvers/market.prototxt --gpu 0 2>/tmp/err || rc=$?; "
    f"cat /tmp/err; test $rc -eq {NO_GPU_EXIT} && grep -q '^train: no GPU' /tmp/err",
    "make test GPU=1",
]
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
PASS_THROUGH = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_DEFAULT_TIMEOUT")
HOST_CA_IN_ROOT = "/etc/docker-check-host-ca.crt"


class DockerfileError(Exception):
    pass


@dataclass
class Instruction:
    line: int
    op: str
    args: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Split a Dockerfile into instructions, joining backslash continuations."""
    out: list[Instruction] = []
    pending, start = "", 0
    for no, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = no
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        text = pending + stripped
        pending = ""
        op, _, args = text.partition(" ")
        out.append(Instruction(start, op.upper(), args.strip()))
    if pending:
        raise DockerfileError(f"{path}:{start}: line continuation runs past the end of the file")
    return out


def expand(value: str, env: dict[str, str]) -> str:
    """Docker-style $VAR / ${VAR} substitution in ENV, WORKDIR and COPY."""
    import re
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def parse_env_args(args: str, env: dict[str, str], where: str) -> dict[str, str]:
    parts = shlex.split(args)
    if len(parts) >= 2 and "=" not in parts[0]:  # legacy form: ENV KEY value with spaces
        return {parts[0]: expand(" ".join(parts[1:]), env)}
    result = {}
    for part in parts:
        if "=" not in part:
            raise DockerfileError(f"{where}: expected KEY=VALUE, got {part!r}")
        key, _, value = part.partition("=")
        result[key] = expand(value, {**env, **result})
    return result


def debian_suite(image: str, where: str) -> str:
    name, _, tag = image.partition(":")
    if name not in ("debian", "docker.io/library/debian") or not tag:
        raise DockerfileError(f"{where}: only FROM debian:<suite>[-slim] is supported, got {image!r}")
    return tag.removesuffix("-slim")


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def base_root(suite: str, cache: Path, work: Path) -> Path:
    """A pristine minbase root for `suite`, unpacked from a cached tarball when there is one."""
    tarball = cache / f"debian-{suite}-minbase.tar"
    root = work / "root"
    safe_rmtree(root)
    root.mkdir(parents=True)
    if tarball.exists():
        print(f"docker-check: base image from cache {tarball}", flush=True)
        with tarfile.open(tarball) as tf:
            # Our own tarball of a debootstrap root (device nodes, absolute links): trusted.
            kwargs = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
            tf.extractall(root, **kwargs)
        return root
    if not shutil.which("debootstrap"):
        run(["apt-get", "update"])
        run(["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    print(f"docker-check: debootstrap --variant=minbase {suite} (a few minutes)", flush=True)
    run(["debootstrap", "--variant=minbase", suite, str(root)])
    cache.mkdir(parents=True, exist_ok=True)
    tmp = tarball.with_suffix(".tar.partial")
    with tarfile.open(tmp, "w") as tf:
        tf.add(root, arcname=".")
    tmp.replace(tarball)
    return root


def context_files(context: Path) -> list[Path]:
    """Files a `COPY .` would send: the repository's files (tracked, or untracked and not
    ignored by git) minus .dockerignore patterns."""
    listed = subprocess.run(["git", "-C", str(context), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], check=True, capture_output=True).stdout
    patterns = []
    ignore = context / ".dockerignore"
    if ignore.exists():
        patterns = [p.strip().rstrip("/") for p in ignore.read_text().splitlines()
                    if p.strip() and not p.startswith("#")]
    files = []
    for name in listed.decode().split("\0"):
        if not name or not (context / name).is_file():
            continue
        parts = Path(name).parts
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch(pre, pat) or fnmatch(pre, pat.removeprefix("**/")) or
               fnmatch(parts[i - 1], pat.removeprefix("**/"))
               for pat in patterns for i, pre in enumerate(prefixes, 1)):
            continue
        files.append(Path(name))
    return files


class Replayer:
    def __init__(self, root: Path, context: Path, env: dict[str, str]):
        self.root, self.context = root, context
        self.env = dict(BASE_ENV)
        self.host_env = env
        self.workdir = "/"

    def chroot_env(self) -> dict[str, str]:
        return {**self.host_env, **self.env}

    def sh(self, command: str) -> None:
        script = f"set -e; mkdir -p {shlex.quote(self.workdir)}; cd {shlex.quote(self.workdir)}; {command}"
        print(f"docker-check: [{self.workdir}] $ {command}", flush=True)
        subprocess.run(["chroot", str(self.root), "/bin/sh", "-c", script],
                       env=self.chroot_env(), check=True)

    def copy(self, args: str, where: str) -> None:
        parts = shlex.split(args)
        if any(p.startswith("--") for p in parts) or len(parts) != 2 or parts[0] not in (".", "./"):
            raise DockerfileError(f"{where}: only `COPY . <dir>` is supported, got {args!r}")
        dest = expand(parts[1], self.env)
        if not dest.startswith("/"):
            dest = os.path.join(self.workdir, dest)
        target = self.root / dest.lstrip("/")
        files = context_files(self.context)
        for rel in files:
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.context / rel, out)
        print(f"docker-check: copied {len(files)} files to {dest}", flush=True)

    def replay(self, steps: list[Instruction], dockerfile: Path) -> None:
        for n, ins in enumerate(steps, 1):
            where = f"{dockerfile}:{ins.line}"
            print(f"\n=== step {n}/{len(steps)}: {ins.op} {ins.args}", flush=True)
            if ins.op == "FROM":
                continue
            elif ins.op in ("ENV", "ARG"):
                if ins.op == "ARG" and "=" not in ins.args:
                    continue
                self.env.update(parse_env_args(ins.args, self.env, where))
            elif ins.op == "WORKDIR":
                wd = expand(ins.args, self.env)
                self.workdir = wd if wd.startswith("/") else os.path.join(self.workdir, wd)
                (self.root / self.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif ins.op == "COPY":
                self.copy(ins.args, where)
            elif ins.op == "RUN":
                cmd = ins.args
                if cmd.startswith("["):
                    cmd = " ".join(shlex.quote(c) for c in json.loads(cmd))
                self.sh(cmd)
            elif ins.op in ("CMD", "ENTRYPOINT", "LABEL", "EXPOSE", "VOLUME", "USER"):
                if ins.op == "USER" and ins.args not in ("root", "0"):
                    raise DockerfileError(f"{where}: USER other than root is not supported")
            else:
                raise DockerfileError(f"{where}: instruction {ins.op} is not supported by docker-check")


def host_plumbing(root: Path) -> dict[str, str]:
    """Network settings the chroot borrows from the host (not part of the image)."""
    if Path("/etc/resolv.conf").exists():
        shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf", follow_symlinks=True)
    env = {k: os.environ[k] for k in PASS_THROUGH if k in os.environ}
    bundle = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if bundle and Path(bundle).is_file():
        shutil.copy2(bundle, root / HOST_CA_IN_ROOT.lstrip("/"))
        env.update(PIP_CERT=HOST_CA_IN_ROOT, SSL_CERT_FILE=HOST_CA_IN_ROOT,
                   REQUESTS_CA_BUNDLE=HOST_CA_IN_ROOT)
    return env


PSEUDO = ("proc", "dev")


def mount_pseudo_filesystems(root: Path) -> None:
    for sub in PSEUDO:
        (root / sub).mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "proc", "proc", str(root / "proc")])
    run(["mount", "--rbind", "/dev", str(root / "dev")])


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if (p + "/").startswith(prefix)]


def safe_rmtree(root: Path) -> None:
    """Remove the root, but never while anything (the host's /dev!) is still mounted in it."""
    if not root.exists():
        return
    for sub in PSEUDO:
        subprocess.run(["umount", "-R", "-l", str(root / sub)], stderr=subprocess.DEVNULL)
    left = mounts_under(root)
    if left:
        raise RuntimeError(f"refusing to remove {root}: still mounted: {', '.join(left)}")
    shutil.rmtree(root)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dockerfile", type=Path)
    ap.add_argument("--context", type=Path, default=REPO, help="build context (default: the repo)")
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/rmnet-docker-check"),
                    help="where the root is built (removed at the end unless --keep)")
    ap.add_argument("--cache", type=Path,
                    default=Path(os.environ.get("RMNET_CACHE") or
                                 Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rmnet")
                    / "docker-check",
                    help="where the pristine base root is cached as a tarball")
    ap.add_argument("--check", action="append", default=None,
                    help="shell command run in the finished root (repeatable); default: "
                         + "; ".join(DEFAULT_CHECKS))
    ap.add_argument("--gpu", action="store_true",
                    help="default checks of the CUDA image: " + "; ".join(GPU_CHECKS))
    ap.add_argument("--keep", action="store_true", help="keep the root afterwards")
    args = ap.parse_args()

    if os.geteuid() != 0:
        print("docker-check: needs root (debootstrap, mount, chroot)", file=sys.stderr)
        return 2
    if os.environ.get("RMNET_DOCKER_CHECK_NS") != "1":
        # Re-run in a private mount namespace: every mount vanishes when we exit.
        env = {**os.environ, "RMNET_DOCKER_CHECK_NS": "1"}
        return subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                               *sys.argv], env=env).returncode

    t0 = time.monotonic()
    dockerfile = args.dockerfile.resolve()
    try:
        steps = parse_dockerfile(dockerfile)
        froms = [s for s in steps if s.op == "FROM"]
        if len(froms) != 1 or steps[0].op != "FROM":
            raise DockerfileError(f"{dockerfile}: expected exactly one FROM, as the first instruction")
        suite = debian_suite(froms[0].args, f"{dockerfile}:{froms[0].line}")
        root = base_root(suite, args.cache, args.work)
        mount_pseudo_filesystems(root)
        rep = Replayer(root, args.context.resolve(), host_plumbing(root))
        rep.replay(steps, dockerfile)
        print("\n=== checks in the finished root", flush=True)
        for check in args.check or (GPU_CHECKS if args.gpu else DEFAULT_CHECKS):
            rep.sh(check)
    except DockerfileError as e:
        print(f"docker-check: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"docker-check: FAILED: {e.cmd if isinstance(e.cmd, str) else ' '.join(e.cmd)} "
              f"exited {e.returncode}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            safe_rmtree(args.work / "root")
    print(f"docker-check: passed in {time.monotonic() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
