"""Tests of ranem.cache: atomic writes and the training lock shared by every cached artefact
(its stress test is tests/test_lock.py)."""
import os
import socket
import stat
import threading
import time

import pytest

from ranem import cache


def test_atomic_write_creates_folder_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "x.json"
    cache.atomic_write(target, lambda p: p.write_text("one"))
    cache.atomic_write(target, lambda p: p.write_text("two"))
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, error):
    target = tmp_path / "model.json"
    target.write_text("old")

    def crash(path):
        path.write_text("half")
        raise error
    with pytest.raises(error):
        cache.atomic_write(target, crash)
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"] and target.read_text() == "old"


def test_stale_temporary_files_are_removed_on_the_next_write(tmp_path):
    target = tmp_path / "model.safetensors"
    old, fresh, other = (tmp_path / ".model.safetensors.abc123.tmp", tmp_path / ".model.safetensors.def456.tmp",
                         tmp_path / ".other.json.xyz.tmp")
    for p in (old, fresh, other):
        p.write_text("half")
    hours_ago = time.time() - 2 * cache.TMP_MAX_AGE_S
    os.utime(old, (hours_ago, hours_ago))
    os.utime(other, (hours_ago, hours_ago))
    cache.atomic_write(target, lambda p: p.write_text("whole"))
    # The killed writer's old file goes; a fresh one may belong to a live writer; other targets wait.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, fresh.name, other.name])


def test_a_leftover_lock_file_is_taken_over(tmp_path):
    lock = tmp_path / "k.lock"
    lock.write_text(f"{socket.gethostname()} 999999")  # left by a killed holder: the OS lock is gone
    with cache.training_lock(lock, poll_s=0.01):
        assert lock.read_text().split() == [socket.gethostname(), str(os.getpid())]
    assert not lock.exists()


def test_training_lock_serialises_and_cleans_up(tmp_path):
    lock = tmp_path / "sub" / "t.lock"
    events = []

    def second():
        with cache.training_lock(lock, poll_s=0.01):
            events.append("second in")

    with cache.training_lock(lock, poll_s=0.01):
        assert lock.read_text().split() == [socket.gethostname(), str(os.getpid())]
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.1)
        events.append("first out")  # the second holder is still waiting here
    thread.join(5)
    assert events == ["first out", "second in"] and not lock.exists()


def test_training_lock_is_released_on_error(tmp_path):
    lock = tmp_path / "t.lock"
    with pytest.raises(RuntimeError):
        with cache.training_lock(lock):
            raise RuntimeError("training failed")
    assert not lock.exists()


def test_a_waiter_is_told_through_the_ranem_logger(tmp_path, caplog):
    # The package logs instead of printing: a second holder that has to wait says so once, as a
    # warning of the "ranem.cache" logger (shown on stderr until the application configures logging).
    lock = tmp_path / "train.lock"
    waited = threading.Event()

    def second_holder():
        with cache.training_lock(lock, poll_s=0.01):
            waited.set()

    with caplog.at_level("WARNING", logger="ranem"):
        with cache.training_lock(lock):
            waiter = threading.Thread(target=second_holder)
            waiter.start()
            deadline = time.monotonic() + 10
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.01)
        waiter.join(10)
    assert waited.is_set()
    messages = [r for r in caplog.records if r.name == "ranem.cache"]
    assert len(messages) == 1 and "waiting for it" in messages[0].getMessage()
