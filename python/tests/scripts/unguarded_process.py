"""A main module without its guard that starts a Process at import time."""
import procpool


def f():
    pass


p = procpool.Process(target=f)
p.start()
p.join(20)
print("exitcode", p.exitcode)
