"""Task functions of test_chunk_records (importable, so they go by reference)."""

import os

from attack_tasks import _die, _log


class Odd:
    """A result that goes as a pickle (not a plain value)."""

    def __init__(self, v):
        self.v = v

    def __eq__(self, other):
        return type(other) is Odd and other.v == self.v


class Big(int):
    """An int subclass: must come back as itself."""


def value_of(i):
    """A result of a kind chosen by ``i``: each kind of item record, and failures."""
    k = i % 16
    if k == 0:
        return None
    if k == 1:
        return i % 3 == 0
    if k == 2:
        return -i * 10**20
    if k == 3:
        return -i
    if k == 4:
        return float(i) / 7
    if k == 5:
        return float("inf") if i % 2 else -0.0
    if k == 6:
        return f"é{i}\u2603"
    if k == 7:
        return "\ud800" + str(i)  # not UTF-8: goes as a pickle
    if k == 8:
        return bytes([i % 256]) * (i % 5)
    if k == 9:
        return bytes([i % 256]) * (70 * 1024)  # large: goes as a pickle
    if k == 10:
        return "x" * (70 * 1024)
    if k == 11:
        return Odd(i)
    if k == 12:
        return Big(i)
    if k == 13:
        raise ValueError(f"item {i}")
    if k == 14:
        return bytearray([i % 256]) * (100 * 1024)  # out of band
    return (i, [i], {"i": i})


def big_logged(arg):
    """``(i, size, how, dir)``: logs ``start i``; dies as told, else logs ``end i`` and
    returns ``size`` bytes of ``i % 256`` (a ``bytearray``: out of band)."""
    i, size, how, d = arg
    _log(d, f"start {i}")
    if how:
        _die(how)
    _log(d, f"end {i}")
    return bytearray([i % 256]) * size


def pid_of(_):
    return os.getpid()


def safe_value_of(i):
    """``("ok", value_of(i))``, or ``("err", its exception)``."""
    try:
        return ("ok", value_of(i))
    except Exception as e:
        return ("err", e)


def star_pow(x):
    """``pow(*x)``."""
    return pow(*x)
