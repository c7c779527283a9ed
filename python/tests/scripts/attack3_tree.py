"""A program with a tree of procpool processes, for ``test_attack3_process``: a pool, a
``Process`` blocked on an empty queue, one blocked on a held lock, and one that runs its
own pool and its own ``Process``. Prints ``READY pid...`` (every process it knows of),
then sleeps until the test kills it."""

import os
import time

import procpool


def blocked_get(q, out):
    out.put(os.getpid())
    q.get()


def blocked_lock(lock, out):
    out.put(os.getpid())
    lock.acquire()


def worker_pid(_):
    time.sleep(0.05)
    return os.getpid()


def nested(out):
    out.put(os.getpid())
    with procpool.Pool(2) as pool:
        for pid in set(pool.map(worker_pid, range(8), chunksize=1)):
            out.put(pid)
        inner = procpool.Process(target=blocked_get, args=(procpool.Queue(), out))
        inner.start()
        pool.apply_async(time.sleep, (60,))
        time.sleep(60)


if __name__ == "__main__":
    out, q, lock = procpool.Queue(), procpool.Queue(), procpool.Lock()
    lock.acquire()
    value = procpool.Array("d", 100_000)  # an arena of its own
    pool = procpool.Pool(2)
    pids = set(pool.map(worker_pid, range(8), chunksize=1))
    procs = [
        procpool.Process(target=blocked_get, args=(q, out)),
        procpool.Process(target=blocked_lock, args=(lock, out)),
        procpool.Process(target=nested, args=(out,)),
    ]
    for p in procs:
        p.start()
    # 2 workers here, 3 processes, the nested one's 2 workers and its own process.
    deadline = time.monotonic() + 20
    while len(pids) < 8 and time.monotonic() < deadline:
        try:
            pids.add(out.get(timeout=0.5))
        except Exception:
            pass
    print("READY", *sorted(pids), flush=True)
    pool.apply_async(time.sleep, (60,))
    time.sleep(60)
