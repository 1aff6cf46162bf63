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

Reading back is checked too: a cached JSON note or safetensors file that is truncated, corrupted or
does not match the SHA-256 recorded when it was written raises ``CacheError``, which names the file
and says how to rebuild it, instead of a bare parser error or silently wrong weights.
"""
from __future__ import annotations

import ast
import glob
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows: byte-range locks through msvcrt
    fcntl = None
    import msvcrt

__all__ = ["atomic_write", "training_lock", "CacheError", "file_sha256", "tensors_sha256", "content_sha256", "read_json",
           "read_safetensors", "check_sha256", "classifier_fingerprint", "code_digest"]

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


# ----------------------------------------------------------------------------- integrity on read
class CacheError(ValueError):
    """A cached file that cannot be trusted: truncated, corrupted, or not the one recorded. The
    message names the file and how to rebuild it."""


def _broken(path, why: str, rebuild: str) -> CacheError:
    return CacheError(f"cached file {path} {why}; {rebuild}")


def file_sha256(path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_sha256(tensors: dict) -> str:
    """SHA-256 (hex) of named tensors: names, dtypes, shapes and bytes, in name order. Stored in a
    safetensors file's own header, it lets the file check itself when it has no JSON note."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def classifier_fingerprint(model: torch.nn.Module) -> dict:
    """Name + SHA-256 of every weight and buffer: identifies the classifier a NEM (and a training
    checkpoint) was made for. Its format is stored in every saved NEM: changing it orphans them."""
    info = getattr(model, "ranem_info", None) or {}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = info.get("name") or cfg.get("architecture") or type(model).__name__
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return {"name": str(name), "sha256": h.hexdigest()}


def content_sha256(tensors: dict, meta: dict) -> str:
    """SHA-256 (hex) of a safetensors file's content: its tensors and its (JSON) metadata, so that
    neither a weight nor a recorded number (config, history) can change unnoticed."""
    text = json.dumps(meta, sort_keys=True)
    return hashlib.sha256(f"{tensors_sha256(tensors)}:{text}".encode()).hexdigest()


def read_json(path, rebuild: str) -> dict:
    """A cached JSON note as a dict; ``CacheError`` naming the file when it does not parse."""
    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _broken(path, f"is not valid JSON ({err})", rebuild) from err
    if not isinstance(value, dict):
        raise _broken(path, f"holds a JSON {type(value).__name__}, not an object", rebuild)
    return value


def read_safetensors(path, rebuild: str) -> tuple[dict, dict]:
    """(tensors on the CPU, the header's metadata) of a cached safetensors file; ``CacheError``
    naming the file when it is truncated or corrupted (safetensors' own error names no file)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as err:  # SafetensorError, or OSError/ValueError from a header cut short
        raise _broken(path, f"cannot be read as safetensors ({type(err).__name__}: {err})", rebuild) from err
    return tensors, meta


def check_sha256(path, expected: str | None, rebuild: str) -> None:
    """Refuse (``CacheError``) a file whose SHA-256 differs from ``expected``; entries written before
    digests were recorded (``expected`` None) are accepted as they are."""
    if expected is not None and file_sha256(path) != expected:
        raise _broken(path, f"does not match the SHA-256 recorded when it was written ({expected[:12]}...): "
                            "it was changed or corrupted on disk", rebuild)


def _code_of(source: str) -> str:
    """A module's code without its comments and docstrings (its AST without them)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_digest(package=None, exclude: tuple = ("config.py",)) -> str:
    """SHA-256 (hex) of the code of every module of ``package`` (default: ranem's own folder) but
    ``exclude``, without comments and docstrings: it changes when what the code computes may, and
    only then. ``config.py`` is left out by default: it holds every mode's settings, and a result
    depends on its own mode's (which a caller hashes itself)."""
    package = Path(package) if package is not None else Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(package.rglob("*.py")):
        if f.relative_to(package).as_posix() not in exclude:
            h.update(f.relative_to(package).as_posix().encode() + b"\0" + _code_of(f.read_text()).encode())
    return h.hexdigest()
