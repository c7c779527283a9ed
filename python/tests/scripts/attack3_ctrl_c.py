"""A program interrupted by Ctrl-C while procpool processes run (``test_attack3_process``):
``python attack3_ctrl_c.py MODE`` starts two processes that would run for a minute,
prints ``READY pids``, then waits in the way MODE names (``join``, ``sleep``,
``queue_get``, ``map``, ``event``) until the test sends SIGINT to its process group.
A standard library child gets that SIGINT too; a procpool one must end as well, so that
the program (whose exit joins its children) ends at once."""

import os
import sys
import time

import procpool


def long_child(q, ev):
    q.put(os.getpid())
    time.sleep(60)


def waiting_child(q, ev):
    q.put(os.getpid())
    ev.wait()  # for ever: only a signal ends it


if __name__ == "__main__":
    mode = sys.argv[1]
    q, ev = procpool.Queue(), procpool.Event()
    procs = [procpool.Process(target=t, args=(q, ev)) for t in (long_child, waiting_child)]
    for p in procs:
        p.start()
    pids = sorted(q.get(timeout=20) for _ in procs)
    if mode == "map":
        pool = procpool.Pool(2)
    print("READY", *pids, flush=True)
    if mode == "join":
        procs[0].join()
    elif mode == "sleep":
        time.sleep(60)
    elif mode == "queue_get":
        q.get()
    elif mode == "event":
        ev.wait()
    elif mode == "map":
        # Long tasks (steady short results delay a Ctrl-C: test_attack3_waits).
        pool.map(time.sleep, [60, 60], chunksize=1)
    raise AssertionError("not interrupted")
