"""Every exception a user can meet. ``HarnessError`` and its subclasses are turned into a one-paragraph
message and an exit code by the command line (a traceback only with ``--debug``)."""


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


class RunInterrupted(HarnessError):
    """Stopped from outside (Ctrl-C, SIGTERM, a sweep's stop request) after a checkpoint: run it again to resume."""

    exit_code = 130


class ProcessLost(RunFailed):
    """A process of the run was killed or lost with its node: not the run's own fault, so a
    sweep runs it again (it resumes from its checkpoint)."""


class NonFiniteLoss(Exception):
    """The training loss was NaN or infinite; the run turns it into ``RunFailed`` with its step."""

    def __init__(self, step: int, value: float):
        super().__init__(f"loss was {value} at step {step}")
        self.step = step
        self.value = value
