"""The one exception type the command line turns into a message instead of a traceback."""


class HarnessError(Exception):
    """A problem the user can fix: bad input, missing data, an architecture that breaks the contract.

    The message is shown as-is (one paragraph: what was wrong and how to fix it); the command
    exits non-zero. ``exit_code`` lets a failed run (status ``failed``) exit differently from
    bad input.
    """

    exit_code = 2


class RunFailed(HarnessError):
    """Training stopped on its own (e.g. a non-finite loss); the record has status ``failed``."""

    exit_code = 1
