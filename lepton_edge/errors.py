"""The errors a command reports as one line, with the exit codes of DESIGN.md."""

from __future__ import annotations


class LeptonError(Exception):
    """An error the command line reports as one line on stderr, never a traceback."""

    exit_code = 2


class BadInput(LeptonError):
    """The user gave something we cannot use: a corrupt model, an unknown profile, bad data (exit 2)."""

    exit_code = 2


class CheckFailed(LeptonError):
    """A check the user asked for did not pass: the model does not fit, outputs differ (exit 1)."""

    exit_code = 1


class Unavailable(LeptonError):
    """Something the request needs is not answering now, a serial device for instance (HTTP 503, exit 2)."""

    exit_code = 2
