"""Targets of the Process attacks."""

import ctypes
import os
import signal
import subprocess
import sys
import time


def exit_as(how):
    if how == "abort":
        os.abort()
    if how == "segv":
        ctypes.string_at(0)
    if how == "exit_msg":
        sys.exit("a message")
    if how == "exit_none":
        sys.exit()
    if how == "exit_300":
        sys.exit(300)
    if how == "kbint":
        raise KeyboardInterrupt
    if how == "sigterm_self":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)


def spawn_escapees(path):
    """Starts a grandchild (``sleep``) and a raw fork that ignores SIGTERM, SIGHUP and
    SIGINT, writes their pids, then sleeps. (Leaving the session on purpose, ``setsid``,
    is documented to escape; these do not.)"""
    p = subprocess.Popen(["sleep", "60"])
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        time.sleep(60)
        os._exit(0)
    with open(path, "w") as f:
        f.write(f"{p.pid} {pid}\n")
    time.sleep(60)


MSG = 8 << 20


def writer(q, n):
    for i in range(n):
        q.put(bytes([i]) * MSG)


def reader(q, path, count, slow):
    for _ in range(count):
        m = q.get(timeout=20)
        ok = len(m) == MSG and m.count(m[:1]) == MSG
        with open(path, "a") as f:
            f.write(f"{m[0]} {int(ok)}\n")
        if slow:
            time.sleep(0.2)
