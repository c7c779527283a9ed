"""Process and descriptor inspection through /proc (Linux)."""

import os
import time


def _stat(pid):
    """(state, ppid, starttime) of `pid`, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = text[text.rindex(")") + 2 :].split()
    return rest[0], int(rest[1]), int(rest[19]), int(rest[3])


def identity(pid):
    """A stable identity of a live process (pid, start time), or None."""
    st = _stat(pid)
    return None if st is None or st[0] in "ZX" else (pid, st[2])


def alive(ident):
    """Whether the process `ident` (from `identity`) still runs (zombies do not count)."""
    if ident is None:
        return False
    st = _stat(ident[0])
    return st is not None and st[0] not in "ZX" and st[2] == ident[1]


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def children_map():
    kids = {}
    for pid in all_pids():
        st = _stat(pid)
        if st is not None:
            kids.setdefault(st[1], []).append(pid)
    return kids


def descendants(root=None, include_zombies=False):
    """Every process below `root` (default: this one)."""
    root = os.getpid() if root is None else root
    kids = children_map()
    out, todo = [], list(kids.get(root, []))
    while todo:
        pid = todo.pop()
        st = _stat(pid)
        if st is None:
            continue
        if include_zombies or st[0] not in "ZX":
            out.append(pid)
        todo.extend(kids.get(pid, []))
    return sorted(out)


def session_members(sid):
    """Live processes of session `sid` (other than its leader)."""
    out = []
    for pid in all_pids():
        st = _stat(pid)
        if st is not None and st[3] == sid and pid != sid and st[0] not in "ZX":
            out.append(pid)
    return sorted(out)


def zombies(root=None):
    root = os.getpid() if root is None else root
    return [p for p in children_map().get(root, []) if (_stat(p) or ("?",))[0] == "Z"]


def wait_gone(idents, timeout):
    """Waits until none of `idents` runs; those still running after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = [i for i in idents if alive(i)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def wait_for(predicate, timeout, step=0.02):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def threads_of(pid=None):
    pid = os.getpid() if pid is None else pid
    return len(os.listdir(f"/proc/{pid}/task"))
