"""Concurrent writers of one gallery, as real processes: nothing a writer reported as saved is
lost, nothing a failed or killed writer began is half there, and readers keep answering.

- The two-writer sequence: a gallery of 40 crops, two ``tools/gallery.py add`` processes (40 and
  8 crops) that both load version 1 before either saves (a barrier in front of the save makes
  the race certain); both land (88 entries), or with ``--attempts 1`` one says it did not land
  (exit 75) and the other's entries are all there.
- The soak test: writer processes adding (and now and then removing) batches of random
  descriptors through ``rmnet.gallery.update``, two reader processes loading and searching
  throughout, writers killed with SIGKILL at seeded random moments (and, seeded, inside their
  own saves) and restarted. At the end every batch whose writer reported success is there
  exactly once, every other batch is there whole or not at all, every version a reader loaded
  held whole batches only, and the gallery loads and finds its entries. The counts are printed.
  A fast run is part of the suite; ``RMNET_SOAK_LONG=1`` runs a longer one.

- The other writers: two exports of one name into one folder leave one export's complete set of
  files; a pre-training or a demo on a run folder another trainer holds is refused.

The workers are this module run as a script (``python -m tests.test_gallery_concurrency``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.absent_packages import needs
from tests.conftest import REPO

MODEL = "c" * 64          # the model hash of the soak test's (random) descriptors
DIM = 16


# --- one process, two gallery objects: the transaction itself ------------------------------

def _saved(folder: Path, n: int, proc: int = 900):
    from rmnet.gallery import Gallery

    g = Gallery.create(folder, DIM, MODEL)
    _, x, e = batch(proc, 0, n, 0)
    g.add(x, e, model_sha256=MODEL)
    g.save()
    return Gallery.load(folder)


def test_a_save_over_a_newer_version_is_a_conflict_and_writes_nothing(tmp_path):
    from rmnet.gallery import Gallery
    from rmnet.gallery.gallery import GalleryConflict

    folder = tmp_path / "g"
    a = _saved(folder, 5)
    b = Gallery.load(folder)
    _, x, e = batch(1, 0, 4, 0)
    a.add(x, e, model_sha256=MODEL)
    a.save()
    _, x, e = batch(2, 0, 3, 0)
    b.add(x, e, model_sha256=MODEL)
    with pytest.raises(GalleryConflict, match=r"the gallery changed since it was loaded \(loaded "
                                              r"v000001, another process saved v000002\); "
                                              r"nothing was saved"):
        b.save()
    g = Gallery.load(folder)
    assert (len(g), g.version) == (9, 2)
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "MANIFEST.json", "v000001",
                                                         "v000002"]
    # a second gallery created in the same folder meanwhile is a conflict too; overwrite is not
    c = Gallery.create(tmp_path / "new", DIM, MODEL)
    _saved(tmp_path / "new", 2)
    with pytest.raises(GalleryConflict, match="another process created a gallery here meanwhile"):
        c.save()
    d = Gallery.create(tmp_path / "new", DIM, MODEL, overwrite=True)
    d.save()
    assert len(Gallery.load(tmp_path / "new")) == 0


def test_update_applies_the_change_again_on_the_newer_version(tmp_path):
    from rmnet.gallery.gallery import GalleryConflict, update

    folder = tmp_path / "g"
    _saved(folder, 5)
    interfere = [3]                  # other "processes" save during the first attempts
    retries = []

    def change(g):
        if interfere[0]:
            interfere[0] -= 1
            update(folder, lambda other: other.add(*batch(10 + interfere[0], 0, 2, 0)[1:],
                                                   model_sha256=MODEL))
        return g.add(*batch(3, 0, 4, 0)[1:], model_sha256=MODEL)

    g, ids = update(folder, change, on_retry=lambda e, n: retries.append((str(e), n)))
    assert [n for _, n in retries] == [2, 3, 4] and "changed since it was loaded" in retries[0][0]
    assert len(g) == 5 + 3 * 2 + 4 and list(ids) == list(range(11, 15)) and g.version == 5
    # every attempt meets another save: the last conflict says so, nothing of it is there
    interfere[0] = 2
    with pytest.raises(GalleryConflict, match="during each of the 2 attempts; nothing of "
                                              "this change was saved: run it again"):
        update(folder, change, attempts=2)
    from rmnet.gallery import Gallery
    g = Gallery.load(folder)
    assert len(g) == 15 + 2 * 2
    assert len(g.store.ids_for_paths([f"p003r000/e{i}" for i in range(4)])) == 4   # once


def test_a_load_follows_a_save_that_pruned_its_version(tmp_path, monkeypatch):
    """A reader read the manifest of v1; two saves switch to v3 and delete v1 before the reader
    opens its files: it loads v3 instead of failing."""
    from rmnet.gallery import Gallery
    from rmnet.gallery import gallery as gmod
    from rmnet.gallery.store import MetadataStore

    folder = tmp_path / "g"
    _saved(folder, 5)
    real = MetadataStore.load_copy.__func__
    calls = []

    def load_copy(cls, path):
        calls.append(Path(path).parent.name)
        if len(calls) == 1:
            for n in (1, 2):
                gmod.update(folder, lambda g, n=n: g.add(*batch(20 + n, 0, 2, 0)[1:],
                                                         model_sha256=MODEL))
        return real(cls, path)

    monkeypatch.setattr(MetadataStore, "load_copy", classmethod(load_copy))
    g = Gallery.load(folder)
    assert calls[0] == "v000001" and calls[-1] == "v000003" and not (folder / "v000001").exists()
    assert (len(g), g.version) == (9, 3)


def test_a_killed_saves_leftovers_go_with_the_next_save(tmp_path):
    folder = tmp_path / "g"
    g = _saved(folder, 3)
    (folder / ".MANIFEST.tmp-abc123.json").write_text("{")     # what a kill mid-rename leaves
    (folder / ".v000002.tmp-xyz").mkdir()
    (folder / "v000002").mkdir()                               # complete, never switched to
    g.save()
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "MANIFEST.json", "v000001",
                                                         "v000003"]


def test_a_failed_build_removes_its_folder_only_when_it_holds_no_gallery(tmp_path):
    from rmnet.gallery.gallery import discard_unsaved

    folder = tmp_path / "g"
    _saved(folder, 3)
    assert discard_unsaved(folder) is False and len(_records(folder)) == 3
    (tmp_path / "h" / ".v000001.tmp-x").mkdir(parents=True)     # a build that died mid-save
    assert discard_unsaved(tmp_path / "h") is True and not (tmp_path / "h").exists()
    assert discard_unsaved(tmp_path / "nowhere") is False


def test_exclusive_lock_waits_and_survives_its_file_being_deleted(tmp_path):
    """A waiter that gets the lock of a deleted lock file locks the new one, so the lock is
    never held twice; a folder is locked as it is, leaving no file in it."""
    import threading

    from rmnet.atomic import LockBusy, describe_os_error, exclusive_lock

    path = tmp_path / "sub" / ".lock"
    holding, release = threading.Event(), threading.Event()
    got = []

    def waiter():
        holding.wait()
        with exclusive_lock(path, timeout=10):
            got.append(os.stat(path).st_ino)
            release.wait(10)

    t = threading.Thread(target=waiter)
    t.start()
    with exclusive_lock(path, timeout=0):
        holding.set()
        time.sleep(0.2)                   # the waiter is polling for the lock by now
        assert not got
        path.unlink()                     # the holder removes the file, then lets go
    for _ in range(500):
        if got:
            break
        time.sleep(0.01)
    assert got and path.exists()
    with pytest.raises(LockBusy) as busy:         # the waiter holds the new file's lock
        with exclusive_lock(path, timeout=0.1):
            pass
    assert describe_os_error(busy.value) == f"{path}: locked by another process (waited 0.1 s)"
    release.set()
    t.join()
    folder = tmp_path / "out"
    folder.mkdir()
    with exclusive_lock(folder, timeout=0):
        with pytest.raises(LockBusy, match=str(folder)):
            with exclusive_lock(folder, timeout=0.05):
                pass
    assert list(folder.iterdir()) == []


# --- the workers (run as processes) -------------------------------------------------------

def batch(proc: int, rnd: int, size: int, seed: int):
    """Batch ``rnd`` of writer process ``proc``: its tag, unit descriptors and entries."""
    from rmnet.gallery import Entry

    tag = f"p{proc:03d}r{rnd:03d}"
    x = np.random.default_rng([seed, proc, rnd]).standard_normal((size, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return tag, x, [Entry(path=f"{tag}/e{i}", camera=rnd, pid=proc) for i in range(size)]


def tag_of(path: str) -> str:
    return path.split("/", 1)[0]


def writer_main(folder: str, report: str, proc: int, rounds: int, size: int, seed: int,
                attempts: int, self_kill: float) -> None:
    """Add ``rounds`` batches (one ``update`` each), removing an earlier batch of its own now
    and then; every step is appended to ``report`` before (``start``, ``removing``) and after
    (``ok``, ``fail``, ``removed``) it. ``self_kill``: the chance, seeded, that the process
    SIGKILLs itself inside a save (after the new version's files, or before the manifest)."""
    from rmnet.gallery import gallery as gmod

    rng = np.random.default_rng([seed, proc, 7])
    fd = os.open(report, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def note(line: str) -> None:
        os.write(fd, f"{line}\n".encode())     # unbuffered: a SIGKILL loses nothing written

    def maybe_die(real):
        def hook(obj, path):
            if rng.random() < self_kill:
                note(f"selfkill {real.__name__}")
                os.kill(os.getpid(), signal.SIGKILL)
            return real(obj, path)
        return hook

    gmod.write_meta_file = maybe_die(gmod.write_meta_file)
    gmod.write_manifest = maybe_die(gmod.write_manifest)
    landed: list[str] = []
    for rnd in range(rounds):
        tag, x, entries = batch(proc, rnd, size, seed)
        op, what = "add", tag
        if landed and rng.random() < 0.2:
            op, what = "remove", landed.pop(int(rng.integers(len(landed))))
        note(f"{'start' if op == 'add' else 'removing'} {what}")

        def change(g, op=op, what=what, x=x, entries=entries):
            if op == "add":
                return g.add(x, entries, model_sha256=MODEL)
            paths = [f"{what}/e{i}" for i in range(size)]
            return g.remove(g.store.ids_for_paths(paths))

        def retrying(conflict, attempt, what=what):
            note(f"retry {what}")

        try:
            gmod.update(folder, change, attempts=attempts, on_retry=retrying)
        except gmod.GalleryConflict:
            note(f"fail {what}")
            continue
        note(f"{'ok' if op == 'add' else 'removed'} {what}")
        if op == "add":
            landed.append(tag)
    os.close(fd)


def reader_main(folder: str, report: str, stop: str, size: int, seed: int) -> None:
    """Load and search until the file ``stop`` exists; count the loads, searches and versions
    seen, and every problem: a load that fails, a version holding part of a batch, a search
    that does not find an entry's own descriptor first."""
    from rmnet.gallery import Gallery

    rng = np.random.default_rng([seed, 99, os.getpid()])
    counts = Counter()
    problems: list[str] = []
    versions = set()
    while not os.path.exists(stop):
        try:
            g = Gallery.load(folder)
        except Exception as e:             # noqa: BLE001 - every failure is a finding here
            problems.append(f"load: {type(e).__name__}: {e}")
            counts["load_errors"] += 1
            continue
        counts["loads"] += 1
        versions.add(g.version)
        records = g.store.get(g.store.all_ids())
        per_tag = Counter(tag_of(r.path) for r in records.values())
        partial = {t: n for t, n in per_tag.items() if n != size}
        if partial:
            problems.append(f"v{g.version:06d}: partial batches {partial}")
        if records:
            r = list(records.values())[int(rng.integers(len(records)))]
            proc, rnd = int(r.path[1:4]), int(r.path[5:8])
            _, x, _ = batch(proc, rnd, size, seed)
            hit = g.search(x[int(r.path.rsplit("e", 1)[1])], k=3, model_sha256=MODEL)[0][0]
            counts["searches"] += 1
            if hit.path != r.path:
                problems.append(f"v{g.version:06d}: search for {r.path} found {hit.path}")
        time.sleep(0.01)
    counts["versions_seen"] = len(versions)
    Path(report).write_text(json.dumps({"counts": counts, "problems": problems[:20]}))


# --- the soak test --------------------------------------------------------------------------

@dataclass
class Soak:
    writers: int = 4
    readers: int = 2
    rounds: int = 25            # batches (adds or removes) each writer slot runs
    size: int = 5               # entries a batch
    kills: int = 5              # SIGKILLs sent by the supervisor, at least
    self_kill: float = 0.04     # chance a save kills its own process midway
    attempts: int = 10
    seed: int = 0
    time_limit: float = 240.0   # seconds; the run is stopped (and fails) past it


def worker(err: Path, *args) -> subprocess.Popen:
    """A worker process (``writer`` or ``reader`` and its arguments), stderr into ``err``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    with open(err, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "tests.test_gallery_concurrency",
                                 *map(str, args)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=f)


def run_soak(tmp: Path, cfg: Soak, check: bool = True) -> dict:
    """Run the soak (module doc) in ``tmp``; return its counts (and assert, unless not
    ``check``, that nothing was lost or half-written)."""
    from rmnet.gallery import Gallery
    from rmnet.gallery import gallery as gmod

    folder = tmp / "gallery"
    g = Gallery.create(folder, DIM, MODEL)
    _, x0, e0 = batch(999, 0, cfg.size, cfg.seed)
    g.add(x0, e0, model_sha256=MODEL)
    g.save()
    rng = np.random.default_rng(cfg.seed)
    stop = tmp / "stop"
    readers = [worker(tmp / f"reader{i}.err", "reader", folder, tmp / f"reader{i}.json", stop,
                      cfg.size, cfg.seed) for i in range(cfg.readers)]
    left = [cfg.rounds] * cfg.writers            # rounds each writer slot still has to run
    procs: dict[int, tuple[subprocess.Popen, int, Path]] = {}
    next_proc = 0
    sent: set[int] = set()          # writer processes the supervisor sent a SIGKILL
    kills = selfkills = restarts = 0    # writers that died of it; that killed themselves
    # The kills come when the writers together have begun these many rounds, each after a
    # further delay of up to 50 ms (seeded): spread over the run whatever the machine's speed.
    total = cfg.writers * cfg.rounds
    marks = sorted(int(m) for m in rng.choice(np.arange(cfg.writers, int(0.8 * total)),
                                              cfg.kills, replace=False))
    kill_at: float | None = None
    start = time.monotonic()

    def launch(slot: int) -> None:
        nonlocal next_proc
        report = tmp / f"writer{next_proc:03d}.log"
        report.touch()
        procs[slot] = (worker(tmp / f"writer{next_proc:03d}.err", "writer", folder, report,
                              next_proc, left[slot], cfg.size, cfg.seed, cfg.attempts,
                              cfg.self_kill), next_proc, report)
        next_proc += 1

    def started(report: Path) -> int:
        text = report.read_text() if report.exists() else ""
        return sum(line.split()[0] in ("start", "removing") for line in text.splitlines())

    for slot in range(cfg.writers):
        launch(slot)
    try:
        while procs:
            if time.monotonic() - start > cfg.time_limit:
                raise AssertionError(f"soak test still running after {cfg.time_limit:g} s")
            now = time.monotonic()
            pending = sum(proc in sent for _, proc, _ in procs.values())
            begun = total - sum(left) + sum(started(r) for _, _, r in procs.values())
            if kills + pending < cfg.kills and kill_at is None and (not marks
                                                                    or begun >= marks[0]):
                marks = marks[1:]        # (no marks left: a kill that missed is made up for)
                kill_at = now + rng.uniform(0.0, 0.05)
            if kill_at is not None and now >= kill_at:
                slot = int(rng.choice(sorted(procs)))
                p, proc, _ = procs[slot]
                if p.poll() is None and proc not in sent:
                    p.send_signal(signal.SIGKILL)
                    sent.add(proc)
                kill_at = None
            for slot, (p, proc, report) in list(procs.items()):
                code = p.poll()
                if code is None:
                    continue
                del procs[slot]
                left[slot] -= started(report)
                if code == -signal.SIGKILL:
                    if "selfkill" in report.read_text():
                        selfkills += 1
                    else:
                        kills += proc in sent
                elif code != 0:
                    err = (tmp / f"writer{proc:03d}.err").read_text()
                    raise AssertionError(f"writer {proc} exited with {code}:\n{err}")
                if left[slot] > 0:                 # killed midway: the rest in a new process
                    restarts += 1
                    launch(slot)
                elif kills < cfg.kills and not procs:
                    raise AssertionError(f"the writers finished after {kills} of {cfg.kills} "
                                         f"kills: give them more rounds")
            time.sleep(0.02)
    finally:
        stop.touch()
        for p, _, _ in procs.values():
            p.kill()
        for p in readers:
            p.wait(timeout=60)

    # what the writers reported, batch by batch
    outcome: dict[str, str] = {tag_of(e0[0].path): "ok"}
    retries = 0
    for report in sorted(tmp.glob("writer*.log")):
        for line in report.read_text().splitlines():
            word, _, what = line.partition(" ")
            if word in ("start", "ok", "fail", "removing", "removed"):
                outcome[what] = word
            retries += word == "retry"
    before = Gallery.load(folder).version
    # one more save: it removes what the killed saves left behind
    gmod.update(folder, lambda g: None)
    final = Gallery.load(folder)
    records = final.store.get(final.store.all_ids())
    present = Counter(tag_of(r.path) for r in records.values())
    paths = Counter(r.path for r in records.values())
    state = Counter(outcome.values())
    counts = {
        "writers": cfg.writers, "readers": cfg.readers, "rounds": cfg.rounds,
        "batch": cfg.size, "seconds": round(time.monotonic() - start, 1),
        "writer_processes": next_proc, "sigkilled": kills, "sigkilled_itself_in_save": selfkills,
        "restarts": restarts, "conflicts_retried": retries,
        "batches_ok": state["ok"], "batches_failed": state["fail"],
        "batches_killed_in_flight": state["start"], "batches_removed": state["removed"],
        "removals_killed_in_flight": state["removing"],
        "in_flight_present": sum(present[t] > 0 for t, s in outcome.items()
                                if s in ("start", "removing")),
        "batches_lost": sum(s == "ok" and present[t] != cfg.size for t, s in outcome.items()),
        "entries": len(final), "version": final.version,
    }
    problems: list[str] = []
    for t, n in present.items():
        if n != cfg.size:
            problems.append(f"batch {t}: {n} of {cfg.size} entries (half present)")
        if t not in outcome:
            problems.append(f"batch {t}: present, but no writer began it")
    for t, s in outcome.items():
        if s == "ok" and present[t] != cfg.size:
            problems.append(f"batch {t}: reported saved, {present[t]} of {cfg.size} present")
        if s in ("fail", "removed") and present[t]:
            problems.append(f"batch {t}: reported {s}, {present[t]} entries present")
    problems += [f"entry {p} stored {n} times" for p, n in paths.items() if n > 1]
    for i in range(cfg.readers):
        r = json.loads((tmp / f"reader{i}.json").read_text())
        for k, v in r["counts"].items():
            counts[f"reader{i}_{k}"] = v
        problems += [f"reader {i}: {p}" for p in r["problems"]]
    # the gallery answers: a landed entry's own descriptor finds it first
    for t in [t for t, s in outcome.items() if s == "ok"][:20]:
        proc, rnd = int(t[1:4]), int(t[5:8])
        _, x, e = batch(proc, rnd, cfg.size, cfg.seed)
        hits = final.search(x, k=1, model_sha256=MODEL)
        problems += [f"search for {ei.path} found {h[0].path if h else None}"
                     for ei, h in zip(e, hits) if not h or h[0].path != ei.path]
    leftovers = sorted(p.name for p in folder.iterdir()
                       if p.name not in (".lock", "MANIFEST.json", f"v{final.version:06d}",
                                         f"v{before:06d}"))
    problems += [f"{folder}: leftover {n}" for n in leftovers]
    counts["problems"] = len(problems)
    print("gallery soak:", json.dumps(counts))
    for p in problems[:20]:
        print("  problem:", p)
    if check:
        assert not problems, "\n".join(problems[:20])
        assert kills >= cfg.kills and counts["batches_ok"] > 0
        for i in range(cfg.readers):
            assert counts[f"reader{i}_loads"] > 0 and counts[f"reader{i}_searches"] > 0
    return counts


def test_soak_writers_readers_and_kills(tmp_path):
    run_soak(tmp_path, Soak())


@pytest.mark.skipif(os.environ.get("RMNET_SOAK_LONG") != "1",
                    reason="the long soak run: RMNET_SOAK_LONG=1")
def test_soak_long(tmp_path):
    run_soak(tmp_path, Soak(writers=6, rounds=150, size=10, kills=40, time_limit=1200.0,
                            seed=int(os.environ.get("RMNET_SOAK_SEED", "1"))))


# --- two `tools/gallery.py add` at once -----------------------------------------------------

PROTOTXT = REPO / "prototxt" / "light" / "deploy.prototxt"

# A real `tools/gallery.py` process whose first save waits until every process named in the
# barrier folder has reached its own: both adds have loaded version 1 before either saves.
BARRIER = """
import os, sys, time
from pathlib import Path
from rmnet.gallery import gallery as gmod
barrier, parties = Path(sys.argv[1]), int(sys.argv[2])
real, waited = gmod.Gallery.save, []
def save(self, *a, **k):
    if not waited:
        waited.append(1)
        (barrier / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(list(barrier.iterdir())) < parties and time.monotonic() < deadline:
            time.sleep(0.01)
    return real(self, *a, **k)
gmod.Gallery.save = save
from commands.gallery import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def crops(tmp_path_factory, caffe) -> dict:
    """Folders of 40, 40 and 8 synthetic crops (Market-1501 names) and a random light model."""
    import cv2

    from rmnet.deploy.export import random_caffemodel, synthetic_crops

    root = tmp_path_factory.mktemp("two_writers")
    images = synthetic_crops(88, seed=5)
    out = {"weights": random_caffemodel(PROTOTXT, root / "m.caffemodel", seed=3)}
    start = 0
    for name, n in (("q1", 40), ("q2", 40), ("q3", 8)):
        folder = root / name
        folder.mkdir()
        for i in range(start, start + n):
            cv2.imwrite(str(folder / f"{i + 1:04d}_c{i % 6 + 1}s1_{i:06d}_00.jpg"), images[i])
        out[name] = folder
        start += n
    out["root"] = root
    return out


def two_writers(crops: dict, name: str, *extra: str) -> tuple[Path, list, int]:
    """Build a gallery of q1, then add q2 and q3 from two processes at once (barrier); returns
    the gallery, the two (exit status, stderr) and the entries in the end."""
    from rmnet.gallery import Gallery

    root, g = crops["root"], crops["root"] / name
    tool = [sys.executable, str(REPO / "tools" / "gallery.py")]
    build = subprocess.run([*tool, "build", "--prototxt", PROTOTXT, "--weights", crops["weights"],
                            "--images", crops["q1"], "--out", g, "--runtime", "pycaffe",
                            "--no-progress"], cwd=REPO, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    barrier = root / f"{name}.barrier"
    barrier.mkdir()
    adds = [subprocess.Popen([sys.executable, "-c", BARRIER, barrier, "2", "add", g,
                              "--images", crops[q], "--runtime", "pycaffe", "--no-progress",
                              *extra], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for q in ("q2", "q3")]
    results = []
    for p in adds:
        _, err = p.communicate(timeout=300)
        results.append((p.returncode, err))
        print(f"$ gallery.py add {g.name} --images {'q2' if p is adds[0] else 'q3'} "
              f"{' '.join(extra)} -> exit {p.returncode}\n{err}")
    n = len(Gallery.load(g))
    print(f"gallery.py info {g.name}: {n} entries")
    return g, results, n


@needs("faiss")   # tools/gallery.py in child processes
def test_two_concurrent_adds_both_land(crops):
    g, results, n = two_writers(crops, "both")
    assert [code for code, _ in results] == [0, 0], results
    assert n == 88
    assert sum("another process saved v000002 after this add loaded v000001; adding again on "
               "top of it (attempt 2 of 10)" in err for _, err in results) == 1, results
    assert "added 40 entries" in results[0][1] and "added 8 entries" in results[1][1]
    paths = [Path(r.path).name for r in _records(g)]
    assert len(paths) == len(set(paths)) == 88


@needs("faiss")   # tools/gallery.py in child processes
def test_two_concurrent_adds_one_attempt_refuses_cleanly(crops):
    g, results, n = two_writers(crops, "once", "--attempts", "1")
    codes = sorted(code for code, _ in results)
    assert codes == [0, 75], results
    lost = next(err for code, err in results if code == 75)
    assert "another process saved the gallery during the one attempt; nothing of this " \
        "change was saved: run it again" in lost
    landed = 40 if results[0][0] == 0 else 8
    assert n == 40 + landed


# --- the other writers: export folders, run folders ----------------------------------------

# A real `tools/export.py` process whose moves into --out start when both exports are ready
# (a barrier in front of the folder's lock) and are slowed down: export 0 waits 1.5 s between
# its .bin and its .xml, export 1 starts 0.3 s later and moves quickly. Unlocked, the folder
# would end with export 1's .bin next to export 0's .xml.
EXPORT = """
import sys, time
from pathlib import Path
from rmnet.deploy import export as ex
barrier, me = Path(sys.argv[1]), int(sys.argv[2])
real_lock, real_move = ex.exclusive_lock, ex._move_in
def lock(*a, **k):
    (barrier / str(me)).touch()
    deadline = time.monotonic() + 300
    while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3 * me)
    return real_lock(*a, **k)
def move(src, dst):
    real_move(src, dst)
    time.sleep(1.5 if me == 0 and dst.suffix == ".bin" else 0.05)
ex.exclusive_lock, ex._move_in = lock, move
from commands.export import main
sys.exit(main(sys.argv[3:]))
"""


def test_two_exports_into_one_folder_leave_one_complete_model(tmp_path, caffe):
    """Two exports named alike (the light net, and the light net with ReLU: same weights
    layout, other graph) into one folder at once: its .onnx, .xml and .bin are one export's."""
    import cv2

    from rmnet.deploy.backends import OnnxRuntimeBackend, OpenVINOBackend
    from rmnet.deploy.export import caffe_forward, random_caffemodel, synthetic_crops

    pytest.importorskip("openvino")
    nets = [PROTOTXT, REPO / "prototxt" / "light_relu" / "deploy.prototxt"]
    weights = [random_caffemodel(n, tmp_path / f"m{i}.caffemodel", seed=i)
               for i, n in enumerate(nets)]
    (tmp_path / "barrier").mkdir()
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-c", EXPORT, tmp_path / "barrier", str(i),
                               "--prototxt", nets[i], "--weights", weights[i], "--out", out,
                               "--name", "model", "--openvino"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    blob = np.stack([cv2.resize(c, (64, 160)) for c in synthetic_crops(4, seed=9)])
    blob = blob.astype(np.float32).transpose(0, 3, 1, 2)
    refs = [caffe_forward(n, w, blob) for n, w in zip(nets, weights)]
    got = {"onnx": OnnxRuntimeBackend(out / "model.onnx").infer(blob),
           "openvino": OpenVINOBackend(out / "model.xml").infer(blob)}
    which = {k: [float(np.abs(v.reshape(len(blob), -1) - r).max()) for r in refs]
             for k, v in got.items()}
    print("max |diff| to export 0, export 1:", which)
    scale = [max(1.0, float(np.abs(r).max())) for r in refs]
    winners = {k: [i for i, d in enumerate(v) if d < 1e-3 * scale[i]] for k, v in which.items()}
    assert len(winners["openvino"]) == 1, f"the IR is neither export's model: {which}"
    assert winners["onnx"] == winners["openvino"], which
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.onnx", "model.xml"]


def test_a_pretraining_or_demo_on_a_locked_run_folder_is_refused(tmp_path):
    """One trainer per run folder: `--pretrain` and the demo take the run's lock, as
    `tools/train.py` does, before anything in the folder is written."""
    from training.pretrain import run_pretrain
    from training.run import RunLock, TrainingError

    run = tmp_path / "pre"
    with RunLock(run / ".train.lock"):
        with pytest.raises(TrainingError, match=rf"another trainer \(pid {os.getpid()}\)"):
            run_pretrain(tmp_path / "no_classes_needed", run)
        assert sorted(p.name for p in run.iterdir()) == [".train.lock"]
        demo = tmp_path / "demo"
        with RunLock(demo / "run" / ".train.lock"):
            r = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--out",
                                str(demo), "--iters", "3"], capture_output=True, text=True,
                               timeout=120, cwd=REPO)
    assert r.returncode == 2 and f"another trainer (pid {os.getpid()})" in r.stderr, r.stderr
    assert "[1/5]" not in r.stdout and sorted(p.name for p in demo.iterdir()) == ["run"]


def _records(folder: Path):
    from rmnet.gallery import Gallery

    g = Gallery.load(folder)
    return g.store.get(g.store.all_ids()).values()


if __name__ == "__main__":
    role, *argv = sys.argv[1:]
    if role == "writer":
        folder, report, proc, rounds, size, seed, attempts, self_kill = argv
        writer_main(folder, report, int(proc), int(rounds), int(size), int(seed), int(attempts),
                    float(self_kill))
    elif role == "reader":
        folder, report, stop, size, seed = argv
        reader_main(folder, report, stop, int(size), int(seed))
    else:
        sys.exit(f"unknown role {role!r}")
