"""Safe writes into the shared cache: atomic files and a lock that lets one process train an entry.

Chapters, tests and users' scripts share ``config.cache_dir()``, sometimes at the same time. Every
cached file is written to a unique temporary name beside its target and renamed into place, so a
reader sees the old file or the new one, never half of one, and an interrupted write leaves nothing.
Training an entry (a classifier, a NEM) takes a lock file; other processes wait for the result
instead of training the same thing twice. A lock left by a dead process is taken over.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "training_lock"]

STALE_AFTER_S = 6 * 3600  # no cpu-mode training takes this long; an older lock is abandoned


def atomic_write(path, write) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file to ``path`` (same folder, created
    if missing). On any error, KeyboardInterrupt included, the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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


def lock_is_stale(lock: Path, max_age_s: float = STALE_AFTER_S) -> bool:
    """True when ``lock`` is unreadable, too old, or held by a process of this host that is gone."""
    try:
        host, pid = lock.read_text().split()
        age = time.time() - lock.stat().st_mtime
    except (OSError, ValueError):
        return True
    if age > max_age_s:
        return True
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, owned by another user
            return False
    return False


@contextmanager
def training_lock(lock, poll_s: float = 5.0):
    """Hold ``lock`` (a file path) while training a cache entry; wait while another live process
    holds it. The lock file records host and pid, and is removed on exit."""
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if lock_is_stale(lock):
                lock.unlink(missing_ok=True)
                continue
            if not told:
                print(f"another process is training this cache entry ({lock}); waiting for it", flush=True)
                told = True
            time.sleep(poll_s)
            continue
        os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
        os.close(fd)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
