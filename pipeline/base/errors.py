"""Errors a user can cause (bad input, unreachable farm) versus bugs in the pipeline.

A `UserError` is printed as one paragraph with no traceback and exits with status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or environment: the message says what was wrong and what to do next."""


EXIT_USER_ERROR = 2
