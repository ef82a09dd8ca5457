"""Assertions shared by the client programs (conformance.py, test_restart.py).

Python 3.7 compatible: these run inside every SDK's venv, greengrasssdk 1.5.0's included.
"""


class CaseFailure(Exception):
    pass


def need(cond, msg):
    if not cond:
        raise CaseFailure(msg)


def eq(got, expected, what):
    if got != expected:
        raise CaseFailure("{}: got {!r}, expected {!r}".format(what, got, expected))
