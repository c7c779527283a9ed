"""Tasks of test_attack_direct.py (imported by the workers by reference)."""

import os
import signal
import stat
import time


def log_call(path, tag, seconds=0.0):
    """Appends ``tag`` to ``path`` (one small O_APPEND write: whole lines), sleeps
    ``seconds`` and returns ``tag``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{tag}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)
    return tag


def log_then_die(path, tag):
    """Logs ``tag``, then SIGKILLs its own worker."""
    log_call(path, tag)
    os.kill(os.getpid(), signal.SIGKILL)


def stray_bytes(x):
    """Writes junk into every socket the worker holds (its link to the pool among them),
    then returns ``x`` as if nothing happened."""
    for fd in range(3, 1024):
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            os.write(fd, b"\xff" * 64)
        except OSError:
            pass
    return x


def die_on_pair(pair):
    """``pair`` is ``(x, bad)``: `os._exit(3)` when ``x == bad``, else ``x``."""
    x, bad = pair
    if x == bad:
        os._exit(3)
    return x
