"""A program that changes its state around its pools, for ``test_attack3_template``:
``python attack3_template.py LOG MODE [ARGS...]``. Its module level reads ``sys.argv``
(as many scripts do), it registers an exit handler and a finalizer that write to LOG,
then (with MODE ``thread``, after starting a thread) runs pools and processes before and
after changing its working directory, environment and ``sys.path``. Prints one JSON
line: what the workers and processes saw."""

import atexit
import json
import os
import sys
import tempfile
import threading
import time
import weakref

import procpool

LOG = sys.argv[1] if len(sys.argv) > 1 else os.devnull
MODE = sys.argv[2] if len(sys.argv) > 2 else "default"


def note(what):
    with open(LOG, "a") as f:
        f.write(f"{what} {os.getpid()}\n")


def seen(_=None):
    try:
        import attack3_extmod

        ext = attack3_extmod.VAL
    except ImportError:
        ext = None
    return [MODE, sys.argv[2:], os.getcwd(), os.environ.get("ATTACK3"), ext]


def ends(_):
    sys.exit(0)


def through_process():
    q = procpool.Queue()
    p = procpool.Process(target=_put_seen, args=(q,))
    p.start()
    got = q.get(timeout=20)
    p.join(20)
    return got


def _put_seen(q):
    q.put(seen())


if __name__ == "__main__":
    atexit.register(note, "atexit")
    weakref.finalize(seen, note, "finalize")
    if MODE == "thread":
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
    out = {"parent": seen()}
    with procpool.Pool(1) as pool:
        out["pool1"] = pool.apply(seen)
        try:
            pool.apply(ends, (0,))
        except procpool.WorkerDied:
            pass
    out["proc1"] = through_process()
    work = tempfile.mkdtemp()
    with open(os.path.join(work, "attack3_extmod.py"), "w") as f:
        f.write("VAL = 42\n")
    home = os.getcwd()
    os.chdir(work)
    os.environ["ATTACK3"] = "set"
    sys.path.insert(0, work)
    with procpool.Pool(1) as pool:
        out["pool2"] = pool.apply(seen)
    out["proc2"] = through_process()
    os.chdir(home)
    del os.environ["ATTACK3"]
    sys.path.remove(work)
    with procpool.Pool(1) as pool:
        out["pool3"] = pool.apply(seen)
    out["work"] = work
    out["pid"] = os.getpid()
    print(json.dumps(out), flush=True)
