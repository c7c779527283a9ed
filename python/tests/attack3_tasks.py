"""Tasks of the ``test_attack3_*`` files (importable by name in workers)."""


#: Set in the test process only: a result that reads this fails to unpickle there.
IN_CALLER = {"on": False}


def _refuse():
    if IN_CALLER["on"]:
        raise ValueError("this result cannot be read here")
    return "read"


class Unreadable:
    """Pickles in the worker; fails to unpickle in the caller."""

    def __reduce__(self):
        return _refuse, ()




def unreadable_6(x):
    return Unreadable() if x == 6 else x * 10
