"""Errors a user can act on.

A `DfqError` is a user mistake (unknown model, bad file, impossible option): the CLI prints its
one-line message and exits with status 2. A `DfqFailure` is a run that could not finish (a loss that
stays NaN, an export check that fails): exit status 1. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class DfqError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do."""

    exit_code = 2


class DfqFailure(DfqError):
    """The input was fine but the work failed; exit status 1."""

    exit_code = 1
