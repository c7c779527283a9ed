"""A module beside the script: workers must find it as the script does (sys.path[0])."""


def triple(x):
    return 3 * x
