"""Atomic file and directory writing, for every output the project produces.

An interrupted run (Ctrl-C, a crash, a full disk) must never leave a half-written caffemodel, plot,
score file or dataset where a later step would take it for a complete one. So every writer works
on a temporary name in the destination's own directory (same file system, so the final rename is
atomic) and the result appears under its real name only once it is complete and flushed to disk:

- ``atomic_path(path)``: a context manager that yields a temporary path for any writer that wants
  a file name (``net.save``, ``fig.savefig``, ``cv2.imwrite``); on a clean exit the file is
  fsynced and ``os.replace``d onto ``path``; on an exception it is deleted and an existing
  ``path`` is left untouched. The temporary name keeps ``path``'s suffix, so writers that pick
  the format from the extension (OpenCV, matplotlib) still work.
- ``atomic_write(path, writer)``: the same, calling ``writer(tmp_path)``.
- ``atomic_write_bytes`` / ``atomic_write_text``: the common cases.
- ``atomic_create_text(path, text)``: a new file that must not replace one (a report named by
  its time): complete under its name at once, ``FileExistsError`` if the name is taken.
- ``check_output(path, option)``: refuse, before any long work, an output location that cannot
  be written (a folder where a file is wanted or the reverse, a parent that is a file, a read-only
  or unwritable folder); ``OutputError`` names the option, the path and the reason.
- ``atomic_dir(path, overwrite=False)``: a whole directory (e.g. a generated dataset) built under
  a temporary name next to ``path`` and renamed into place; a non-empty existing ``path`` is
  refused unless ``overwrite``.
- ``exclusive_lock(path, timeout)``: an exclusive lock between processes (the kernel's ``flock``
  on the file ``path``, or on the folder ``path`` itself, which leaves no lock file behind;
  released when its holder exits, even by SIGKILL), for writers that must not interleave (a
  gallery's saves, an export folder's files); waits up to ``timeout`` seconds.

New files get the usual permissions (0666 minus the umask), an overwritten file keeps its mode.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable; best effort (not every file system supports it)."""
    try:
        fsync_path(path)
    except OSError:
        pass


@contextlib.contextmanager
def _naming(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """Re-raise an OSError that names no file, or only the temporary one, as one naming
    ``path`` (a full disk says ENOSPC without a name): the user's file is what matters."""
    try:
        yield
    except OSError as e:
        if e.filename is None or (tmp is not None and Path(e.filename) == tmp):
            raise type(e)(e.errno, e.strerror or str(e), str(path)) from e
        raise


def _temporary_beside(path: Path) -> Path:
    """A new empty temporary file in ``path``'s folder (created if needed), keeping its suffix
    (writers that pick the format from the extension still work)."""
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.tmp-",
                                        suffix=path.suffix)
        os.close(fd)
    return Path(tmp_name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on success move it onto ``path``.

    The parent directory is created if needed. The writer must create (or overwrite) the yielded
    file; if it raises, the temporary file is removed and ``path`` is unchanged.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, cannot write a file there")
    tmp = _temporary_beside(path)
    try:
        with _naming(path, tmp):
            yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{path}: the writer removed its temporary file {tmp}")
        with _naming(path, tmp):
            try:
                mode = stat.S_IMODE(path.stat().st_mode)
            except FileNotFoundError:
                mode = 0o666 & ~_umask()
            os.chmod(tmp, mode)
            fsync_path(tmp)
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically; return ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))



def atomic_create_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to a new file ``path``, atomically, never replacing anything:
    ``FileExistsError`` if ``path`` exists (also when another process creates it meanwhile:
    the complete temporary file is hard-linked onto the name, which fails on an existing one)."""
    path = Path(path)
    tmp = _temporary_beside(path)
    try:
        with _naming(path, tmp):
            tmp.write_text(text, encoding=encoding)
            os.chmod(tmp, 0o666 & ~_umask())
            fsync_path(tmp)
            os.link(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path

@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``path``; on success rename it to ``path``.

    An existing empty directory at ``path`` is replaced. A non-empty one raises
    ``FileExistsError`` (checked before anything is built, and again before the rename) unless
    ``overwrite``: then it is moved aside, the new directory renamed into place, and the old one
    deleted. If the body raises, the temporary directory is deleted and ``path`` is unchanged.
    """
    path = Path(path)

    def check() -> None:
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                raise FileExistsError(f"{path}: exists and is not a directory")
            if not overwrite and any(path.iterdir()):
                raise FileExistsError(f"{path}: directory exists and is not empty "
                                      f"(pass overwrite/--force to replace it)")

    check()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        check()
        os.sync()   # the files' data reaches the disk before the rename makes them visible
        old = None
        if path.is_dir() and any(path.iterdir()):
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            os.replace(path, old / path.name)
        try:
            os.replace(tmp, path)   # rename(2) replaces an empty directory atomically
        except BaseException:
            if old is not None:   # put the previous contents back
                os.replace(old / path.name, path)
                shutil.rmtree(old, ignore_errors=True)
            raise
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- locks between processes ------------------------------------------------------------------

class LockBusy(TimeoutError):
    """Another process held the lock for longer than the caller would wait (names the file)."""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, timeout: float = 0.0,
                   poll: float = 0.02) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created, with its folder, if missing),
    or on ``path`` itself when it is a folder, for the body; wait up to ``timeout`` seconds for
    another holder, then ``LockBusy``.

    The holder may delete the lock file (a failed command removing the folder it created): a
    waiter that then gets the lock of the deleted file notices that ``path`` is no longer the
    file it locked and locks the current one, so two processes never both believe they hold it.
    """
    import fcntl

    path = Path(path)
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        if path.is_dir():
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockBusy(errno.EWOULDBLOCK, f"locked by another process (waited "
                                       f"{timeout:g} s)", str(path)) from None
                    time.sleep(poll)
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        os.close(fd)                  # the file was deleted or replaced meanwhile: again
    try:
        yield
    finally:
        os.close(fd)                  # closing releases the flock


# --- output locations ---------------------------------------------------------------------------

class OutputError(ValueError):
    """An output location that cannot be written; the message names it and says why."""


def describe_os_error(e: OSError) -> str:
    """An OSError as ``<path>: <reason>`` (or the reason alone when it names no file)."""
    reason = e.strerror or (errno.errorcode.get(e.errno, "") if e.errno else "") or str(e)
    return f"{e.filename}: {reason}" if e.filename else reason


def check_output(path: str | os.PathLike | None, option: str, folder: bool = False) -> None:
    """Raise ``OutputError`` if ``path`` (a file, or with ``folder`` a folder, to be created or
    replaced) cannot be written; missing parent folders are fine (the writers create them)."""
    if path is None:
        return
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise OutputError(f"{option} {path}: exists and is not a folder")
        if not folder and path.is_dir():
            raise OutputError(f"{option} {path}: is a folder, a file is wanted here")
    where = path if (folder and path.is_dir()) else path.parent
    while not where.exists():
        where = where.parent
    if not where.is_dir():
        raise OutputError(f"{option} {path}: {where} is a file, not a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: {where} is not writable")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` (a temporary path of ``atomic_path``, usually); an OSError
    (ENOSPC, EIO, ...) names ``path``, as the one-line errors of the command lines need."""
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
