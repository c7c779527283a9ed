"""The first pool of a single-threaded program: its template is a fork of the program.
Prints one JSON object of what each check saw; ``MODE`` (first argument) picks the check.

* ``kind``: how the template was started (its command line is the program's, or the
  ``python -c`` of a new interpreter), with a thread running first when ``threaded``,
  with 300 MiB of data first when ``big``;
* ``pipe``: a pipe's write end the program closes reaches its reader's end of file (the
  template does not hold it);
* ``module``: a module of the program changed by the program before the pool is seen by
  workers as imported anew;
* ``signal``: a Python SIGTERM handler of the program is not a ``Process``'s;
* ``logging``: a worker's log record reaches the program's log file;
* ``sleep``: a pool whose workers sleep, for the caller to kill the program.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import fresh_mod
import procpool


def pid(_=None):
    return os.getpid()


def log_it(_=None):
    logging.getLogger("worker").warning("from worker %d", os.getpid())
    return True


def nap(x):
    time.sleep(60)


def children():
    out = set()
    for t in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{t}/children") as f:
            out.update(int(p) for p in f.read().split())
    return out


def cmdline(p):
    with open(f"/proc/{p}/cmdline", "rb") as f:
        return f.read()


def main():
    mode = sys.argv[1]
    out = {}
    if mode == "kind":
        stop = threading.Event()
        if "threaded" in sys.argv[2:]:
            threading.Thread(target=stop.wait, daemon=True).start()
        if "big" in sys.argv[2:]:
            ballast = bytearray(300 << 20)  # resident once written
            for i in range(0, len(ballast), 4096):
                ballast[i] = 1
        with procpool.Pool(1) as p:
            workers = {p.apply(pid)} | set(p._core.engine.pids())
            others = children() - workers
            out["template_cmdlines"] = [
                "same" if cmdline(c) == cmdline(os.getpid()) else cmdline(c).decode(errors="replace")
                for c in others
            ]
        stop.set()
    elif mode == "pipe":
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        with procpool.Pool(1) as p:
            p.apply(pid)
            cat.stdin.close()
            try:
                cat.wait(10)
                out["cat_ended"] = True
            except subprocess.TimeoutExpired:
                cat.kill()
                cat.wait()
                out["cat_ended"] = False
    elif mode == "module":
        fresh_mod.VALUE = 42
        with procpool.Pool(1) as p:
            out["worker_value"] = p.apply(fresh_mod.value)
        out["parent_value"] = fresh_mod.value()
    elif mode == "signal":
        signal.signal(signal.SIGTERM, lambda *a: None)
        with procpool.Pool(1) as p:  # the template is forked here
            p.apply(pid)
        proc = procpool.Process(target=time.sleep, args=(30,))
        proc.start()
        time.sleep(0.3)
        proc.terminate()
        proc.join(10)
        out["exitcode"] = proc.exitcode
        if proc.exitcode is None:
            proc.kill()
            proc.join()
    elif mode == "logging":
        logging.basicConfig(filename=sys.argv[2], level=logging.INFO)
        logging.getLogger("parent").warning("from parent")
        with procpool.Pool(1) as p:
            out["logged"] = p.apply(log_it)
        logging.getLogger("parent").warning("parent again")
    elif mode == "sleep":
        with procpool.Pool(2) as p:
            p.map_async(nap, range(2))
            print(json.dumps({"pids": sorted(children())}), flush=True)
            time.sleep(60)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
