"""A program for ``test_attack_spare``: ``python attack_spare.py MODE``. Runs
``procpool.Process`` starts around the spare process the template keeps ready (killing
it, the template, or changing what a new process must see) and prints one JSON line with
what it found; mode ``hold`` prints ``READY <spare> <template>`` and waits."""

import json
import os
import signal
import sys
import threading
import time

import procpool
from procpool import _core


def code(c):
    os._exit(c)


def seen():
    return [os.environ.get("SPARE_VAR"), os.getcwd(), sys.path[0], "colorsys" in sys.modules]


def report(q):
    q.put(seen())


def run(c):
    p = procpool.Process(target=code, args=(c,))
    p.start()
    p.join(20)
    assert p.exitcode is not None, "join timed out"
    rc = p.exitcode
    p.close()
    return rc


def children():
    """{pid: state} of this process's children (zombies included)."""
    pids = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids += f.read().split()
        except FileNotFoundError:  # a thread that has just ended
            pass
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as s:
                out[int(pid)] = s.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            pass
    return out


def fds():
    return len(os.listdir("/proc/self/fd"))


def wait_spare(timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = _core._spare_pid()
        if pid:
            return pid
        time.sleep(0.01)
    return None


def gone(pid, timeout=5):
    """Whether ``pid`` is no longer a child of this process (alive or zombie)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid not in children():
            return True
        time.sleep(0.01)
    return False


def main(mode):
    out = {}
    if mode == "hold":
        run(0)
        run(0)  # a spare is asked for from the second start on
        spare = wait_spare()
        print("READY", spare, _core._template_pid(), flush=True)
        time.sleep(60)
        return
    if mode == "spare_killed":
        out["first"] = [run(3), run(0)]
        spare = wait_spare()
        out["had_spare"] = spare is not None
        os.kill(spare, signal.SIGKILL)
        time.sleep(0.1)
        out["after"] = [run(c) for c in (4, 0, 5)]
        out["dead_spare_reaped"] = gone(spare)
        # Killed after the check a start makes: stopped, then killed while in use.
        spare = wait_spare()
        os.kill(spare, signal.SIGSTOP)
        p = procpool.Process(target=code, args=(6,))
        p.start()
        used = p.pid == spare
        os.kill(spare, signal.SIGKILL)
        p.join(20)
        out["stopped_then_killed"] = [used, p.exitcode]
        out["next"] = run(7)
    elif mode == "template_killed":
        out["first"] = [run(1), run(0)]
        spare = wait_spare()
        os.kill(_core._template_pid(), signal.SIGKILL)
        time.sleep(0.1)
        # The spare waits on its own socket: it is still used; then a new template.
        p = procpool.Process(target=code, args=(2,))
        p.start()
        out["spare_used"] = p.pid == spare
        p.join(20)
        out["codes"] = [p.exitcode] + [run(c) for c in (3, 0, 4)]
        # Killed while a spare request waits for its answer (before, during or after
        # the spare's fork), five times.
        for c in (5, 6, 7, 8, 9):
            p = procpool.Process(target=code, args=(c,))
            p.start()
            template = _core._template_pid()
            if template is not None:  # None: the start used a spare, and found the
                # template dead when asking for the next one (started again when needed)
                os.kill(template, signal.SIGKILL)
            p.join(20)
            out["codes"].append(p.exitcode)
        out["codes"] += [run(c) for c in (10, 0)]
    elif mode == "one":
        out["code"] = run(4)
        time.sleep(0.3)
        out["spare"] = _core._spare_pid()
    elif mode == "many":
        run(0)
        run(0)
        wait_spare()
        before = fds()
        out["codes_ok"] = all(run(i % 7) == i % 7 for i in range(150))
        wait_spare()
        out["fd_growth"] = fds() - before
    elif mode == "threads":
        run(0)
        errors, codes = [], {}

        def worker(k):
            try:
                codes[k] = [run((k * 10 + i) % 100) for i in range(12)]
            except BaseException as e:  # noqa: BLE001 - reported
                errors.append(repr(e))

        ts = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        out["errors"] = errors
        out["codes_ok"] = all(codes.get(k) == [(k * 10 + i) % 100 for i in range(12)] for k in range(6))
    elif mode == "stale":
        q = procpool.Queue()

        def look():
            p = procpool.Process(target=report, args=(q,))
            p.start()
            r = q.get(timeout=20)
            p.join(20)
            return r

        look()
        out["a"] = look()
        wait_spare()
        os.environ["SPARE_VAR"] = "changed"
        out["b"] = look()
        wait_spare()
        import tempfile

        d = tempfile.mkdtemp()
        os.chdir(d)
        out["c"] = look()
        wait_spare()
        sys.path.insert(0, d)
        out["d"] = look()
        wait_spare()
        import colorsys  # noqa: F401 - a module imported after the spare was forked

        out["e"] = look()
        out["dir"] = d
        os.chdir("/")
        os.rmdir(d)
    # No child left but the template and at most one spare, no zombie.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        kids = children()
        if not any(s == "Z" for s in kids.values()):
            break
        time.sleep(0.02)
    kids = children()
    out["zombies"] = sorted(p for p, s in kids.items() if s == "Z")
    spare = _core._spare_pid()
    out["others"] = sorted(set(kids) - {spare, _core._template_pid()})
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
