"""A program blocked in one of procpool's waits (``test_attack3_process``): ``python
attack3_blocked.py KIND`` prints ``READY`` and blocks in the wait KIND names until the
test sends SIGINT to its process group."""

import sys

import procpool
if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "queue":
        q = procpool.Queue(); print("READY", flush=True); q.get()
    elif kind == "jq":
        q = procpool.JoinableQueue(); q.put(1); q.get(); print("READY", flush=True); q.join()
    elif kind == "simple":
        q = procpool.SimpleQueue(); print("READY", flush=True); q.get()
    elif kind == "pipe":
        a, b = procpool.Pipe(); print("READY", flush=True); a.recv()
    elif kind == "qt":
        q = procpool.Queue(); print("READY", flush=True); q.get(timeout=30)
    elif kind == "full":
        q = procpool.Queue(1); q.put(1); print("READY", flush=True); q.put(2)
    elif kind == "lock":
        l = procpool.Lock(); l.acquire(); print("READY", flush=True); l.acquire()
    elif kind == "sem":
        l = procpool.Semaphore(0); print("READY", flush=True); l.acquire()
    elif kind == "cond":
        c = procpool.Condition(); c.acquire(); print("READY", flush=True); c.wait()
    elif kind == "barrier":
        b = procpool.Barrier(2); print("READY", flush=True); b.wait()
    elif kind == "event":
        e = procpool.Event(); print("READY", flush=True); e.wait()
