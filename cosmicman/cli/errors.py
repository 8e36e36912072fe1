"""How the CLI answers a mistake a user can fix: one line on stderr and a non-zero exit, no traceback.

A user error is bad input, an unknown environment, a missing setting or an object store that cannot be
reached; the message says what is wrong and, where it can, what would be right. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import re
import sys

# argparse's own exit status for a bad command line; every user error exits with it
USER_ERROR_EXIT = 2


# A setting read from the process environment fails with a ValueError whose message starts with the variable
# and its value ("COSMICMAN_ENV='moon' is not one of [...]", "COSMICMAN_VARIANTS='x': unknown ..."), wherever
# in the code location it is read
_SETTING_ERROR = re.compile(r"^COSMICMAN_[A-Z0-9_]+=")


class UserError(Exception):
    """A mistake in the input or the setup; its message is the one line the user reads."""


def is_setting_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a setting's refusal of its value (see ``_SETTING_ERROR``)."""
    return isinstance(exc, ValueError) and bool(_SETTING_ERROR.match(str(exc)))


def report_user_error(exc: BaseException) -> int:
    """Print ``exc`` as one line on stderr (a multi-line message is joined) and return the exit status."""
    line = " ".join(str(exc).split())
    print(f"error: {line}", file=sys.stderr)
    return USER_ERROR_EXIT
