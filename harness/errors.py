"""Every exception a user can meet. ``HarnessError`` and its subclasses are turned into a one-paragraph
message and an exit code by the command line (a traceback only with ``--debug``)."""
import signal


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
    """Stopped from outside (Ctrl-C, SIGTERM, SIGUSR1, a sweep's stop request) after a checkpoint: run it
    again to resume. ``signal_name`` is the signal that asked for the stop (None for a caller's request);
    the command exits with its conventional code, 128 + its number (130 without one, as for Ctrl-C)."""

    def __init__(self, message: str, signal_name: str | None = None):
        super().__init__(message)
        self.signal_name = signal_name
        self.exit_code = 128 + int(getattr(signal, signal_name or "SIGINT"))


class ProcessLost(RunFailed):
    """A process of the run was killed or lost with its node: not the run's own fault, so a
    sweep runs it again (it resumes from its checkpoint)."""


class CannotWrite(HarnessError):
    """A file of the run could not be written (a full disk, a read-only or vanished folder). The
    message names the file and the space free there; nothing half-written is left under its name."""

    exit_code = 1


class NonFiniteLoss(Exception):
    """The training loss was NaN or infinite; the run turns it into ``RunFailed`` with its step."""

    def __init__(self, step: int, value: float):
        super().__init__(f"loss was {value} at step {step}")
        self.step = step
        self.value = value
