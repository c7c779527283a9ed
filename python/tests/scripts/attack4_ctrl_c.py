"""A program blocked in one of a Queue's waits, for Ctrl-C tests (test_attack4_queue).

Usage: attack4_ctrl_c.py WAIT. Prints "blocked" when about to enter the wait, then, on
Ctrl-C, "interrupted" and exits with status 3. WAIT is one of:

get            get() on an empty queue
get_timeout    get(timeout=60) on an empty queue
full_ring      put() on a ring holding 4096 messages
full_socket    put() of 2000-byte messages on a full socket (no reader)
maxsize        put() on a full Queue(maxsize=2)
join           JoinableQueue.join() with one item not done
stopped_holder put() while another process holding the sender lock is stopped
turn           put() in the main thread while another thread of it holds the
               process's turn (blocked in a send on a full socket)
"""

import os
import signal
import sys
import threading
import time

import procpool
from attack4_ringmem import RingMem


def _fill_socket(q):
    # 2000-byte messages go through the socket; about 4 MiB fill it (no reader).
    for _ in range(4000):
        q.put(b"x" * 2000)


def main(wait):
    # As a program run from a terminal, even when this one's starter ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    q = procpool.Queue(maxsize=2 if wait == "maxsize" else 0)
    block = q.put
    arg = 1
    if wait == "get":
        block, arg = (lambda _: q.get()), None
    elif wait == "get_timeout":
        block, arg = (lambda _: q.get(timeout=60)), None
    elif wait == "full_ring":
        for i in range(4096):
            q.put(i)
    elif wait == "full_socket":
        n = 0
        while q.qsize() < 2000 and n < 2100:
            try:
                q.put(b"x" * 2000, timeout=0.2)
            except Exception:
                break
            n += 1
        arg = b"x" * 2000
    elif wait == "maxsize":
        q.put(1)
        q.put(2)
    elif wait == "join":
        q = procpool.JoinableQueue()
        q.put(1)
        block, arg = (lambda _: q.join()), None
    elif wait == "stopped_holder":
        pid = os.fork()
        if pid == 0:
            while True:
                q.put(0)
                q.get()
        os.environ["ATTACK4_CHILD"] = str(pid)
        mem = RingMem(q)
        while True:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.002)
            if mem.holder_pid == pid:
                break
            os.kill(pid, signal.SIGCONT)
    elif wait == "turn":
        threading.Thread(target=_fill_socket, args=(q,), daemon=True).start()
        while q.qsize() < 900:
            time.sleep(0.01)
        time.sleep(0.2)
    else:
        raise SystemExit(f"unknown wait {wait}")
    print("blocked", flush=True)
    try:
        block(arg)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        code = 3
    else:
        print("returned", flush=True)
        code = 0
    child = os.environ.get("ATTACK4_CHILD")
    if child:
        os.kill(int(child), signal.SIGKILL)
        os.waitpid(int(child), 0)
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1])
