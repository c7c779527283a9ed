"""A main module without its guard: each worker that imports it would start a pool."""
import procpool


def f(x):
    return x


pool = procpool.Pool(2)
print(pool.map(f, range(4)))
pool.close()
pool.join()
