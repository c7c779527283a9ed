"""A main module without its guard that starts procpool's engine directly (no Python
check on the way): the engine itself refuses to start a pool in a worker still starting."""
from procpool import _core


def f(x):
    return x


e = _core.Engine(1)
print(list(e.run(f, [1])))
e.close()
e.join()
