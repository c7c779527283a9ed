"""A module of the program (not installed): workers import it anew, as with ``spawn``."""

VALUE = 1


def value(_=None):
    return VALUE
