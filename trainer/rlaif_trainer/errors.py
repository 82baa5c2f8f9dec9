"""Errors shared by every stage, and the exit codes of the stage contract (DESIGN.md §3).

The operator reads a pod's exit code to decide whether a failed stage is worth retrying:
``EXIT_BAD_INPUT`` means the input itself is wrong (a missing file, a malformed JSONL line, a
prompt longer than the model's context), so retrying cannot help and the job fails at once.
Any other non-zero code is treated as transient (OOM kill, node loss, a flaky endpoint).
"""

from __future__ import annotations

EXIT_OK = 0
# sysexits.h EX_DATAERR: "the input data was incorrect in some way".
EXIT_BAD_INPUT = 65
EXIT_RETRYABLE = 1


class BadInputError(Exception):
    """The stage's input is wrong in a way that no retry can fix.

    The message must name what is wrong precisely enough to fix it: the file, the line, the field.
    """
