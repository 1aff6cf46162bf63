"""Safe writes into the shared cache: atomic files and a lock that lets one process train an entry.

Chapters, tests and users' scripts share ``config.cache_dir()``, sometimes at the same time. Every
cached file is written to a unique temporary name beside its target and renamed into place, so a
reader sees the old file or the new one, never half of one, and an interrupted write leaves nothing
(a process killed mid-write leaves its temporary file, which the next write of that target removes
once it is an hour old).

Training an entry (a classifier, a NEM) holds an OS lock (``flock``) on a lock file; other processes
wait for the result instead of training the same thing twice. The operating system releases the lock
when its holder exits or is killed, so there is no stale lock to detect: the lock file's content
(host and pid) is only information for people.
"""
from __future__ import annotations

import glob
import logging
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: byte-range locks through msvcrt
    fcntl = None
    import msvcrt

__all__ = ["atomic_write", "training_lock"]

log = logging.getLogger(__name__)  # "ranem.cache", a child of the package's "ranem" logger
TMP_MAX_AGE_S = 3600  # no cached file takes an hour to write: an older temporary one is left by a kill


def _remove_stale_temporaries(path: Path, max_age_s: float = TMP_MAX_AGE_S) -> None:
    """Remove the temporary files of ``path`` (``.<name>.*.tmp``) older than ``max_age_s``."""
    now = time.time()
    for tmp in glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*.tmp")):
        try:
            if now - os.stat(tmp).st_mtime > max_age_s:
                os.remove(tmp)
        except OSError:  # removed meanwhile by another writer, or not ours to remove
            pass


def atomic_write(path, write) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file to ``path`` (same folder, created
    if missing). On any error, KeyboardInterrupt included, the temporary file is removed; those
    that killed writers left behind are removed when an hour old."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared like any other file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _try_lock(fd: int) -> bool:
    """Take the exclusive OS lock on ``fd`` without waiting; False if another holder has it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except (BlockingIOError, PermissionError):
        return False
    except OSError:  # msvcrt reports a held lock as EACCES/EDEADLOCK
        if fcntl is None:
            return False
        raise
    return True


def _wait_lock(fd: int, poll_s: float) -> None:
    """Take the exclusive OS lock on ``fd``, waiting as long as it takes."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks in the kernel: woken as soon as the holder lets go
        return
    while not _try_lock(fd):
        time.sleep(poll_s)


def _is_current(fd: int, lock: Path) -> bool:
    """True when ``fd`` is still the file at ``lock``: a holder removes the file before it lets the
    lock go, so a waiter can win the lock of a file nobody else will ever open again."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(lock))
    except FileNotFoundError:
        return False


@contextmanager
def training_lock(lock, poll_s: float = 5.0):
    """Hold ``lock`` (a file path) while training a cache entry; wait while another process holds
    it. Mutual exclusion comes from the OS lock (``flock``), which dies with its process, so a
    killed holder never blocks anyone. The file records host and pid while held and is removed on
    exit. ``poll_s``: seconds between attempts where the OS lock cannot block (Windows)."""
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                if not told:
                    log.warning("another process is training this cache entry (%s); waiting for it", lock)
                    told = True
                _wait_lock(fd, poll_s)
            if _is_current(fd, lock):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the file was removed by its last holder: lock the one now at the path
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
        yield
    finally:
        # Remove the file while still holding the lock (see _is_current), then let go.
        try:
            lock.unlink(missing_ok=True)
        except PermissionError:  # Windows cannot remove an open file; the next holder reuses it
            pass
        os.close(fd)  # closing releases the OS lock
