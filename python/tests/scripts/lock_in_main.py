"""A class defined in __main__ holding a lock, whose method is the task (CPython's
test_traceback pattern): by reference with Pool, ProcessPoolExecutor and Process."""
import threading

import procpool


class Job:
    lock = threading.Lock()

    def __init__(self, k):
        self.k = k

    def run(self, x):
        with self.lock:
            return x * self.k, __name__


def put(q, job):
    q.put(job.run(7))


if __name__ == "__main__":
    job = Job(3)
    with procpool.Pool(2) as pool:
        assert pool.map(job.run, range(3)) == [(0, "__mp_main__"), (3, "__mp_main__"), (6, "__mp_main__")]
    with procpool.ProcessPoolExecutor(1) as ex:
        assert ex.submit(job.run, 5).result() == (15, "__mp_main__")
    q = procpool.Queue()
    p = procpool.Process(target=put, args=(q, job))
    p.start()
    assert q.get(timeout=20) == (21, "__mp_main__")
    p.join(20)
    assert p.exitcode == 0
    print("OK")
