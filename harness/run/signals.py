"""How a run is stopped from outside: signals become a request the training loop sees at its next step.

A terminal's Ctrl-C (SIGINT), a scheduler's SIGTERM (SLURM at the time limit or on preemption,
Kubernetes, spot instances: SIGKILL follows after a grace period) and SIGUSR1 (what SLURM setups ask
for with ``--signal=USR1@90`` as "time is almost up") all mean the same: finish the current step,
checkpoint, write the record as ``interrupted``, exit with the signal's conventional code (128 + its
number), and resume at that step next time.
"""
from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopOnSignal:
    """First stop signal: ask for a polite stop (``requested``; ``signal_name`` says which). A second
    Ctrl-C stops at once (KeyboardInterrupt); a second SIGTERM or SIGUSR1 changes nothing (a batch
    script that passes the scheduler's signal on, and the scheduler signalling every process of the
    job, make two; its SIGKILL after the grace period is what ends a stop that takes too long).
    Outside the main thread (a worker's thread) signals cannot be handled, and they are left alone."""

    def __init__(self):
        self.requested, self.signal_name = False, None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def on_request(self, signal_name: str) -> None:
        """Called once, at the first stop signal: a subclass passes the request on (a launcher to its workers)."""

    def _handle(self, signum, frame):
        if self.requested:
            if signum == signal.SIGINT:  # a person pressing Ctrl-C again
                raise KeyboardInterrupt
            return  # a scheduler's signal again, or to every process of the job: the stop is under way
        self.requested, self.signal_name = True, signal.Signals(signum).name
        self.on_request(self.signal_name)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


@contextlib.contextmanager
def signals_interrupt(signals=(signal.SIGTERM, signal.SIGUSR1)):
    """In a driver (sweep, search): these signals raise KeyboardInterrupt naming the signal, so that they
    take the path a Ctrl-C takes (every run asked to checkpoint and return). Enter it after ``ray.init``,
    which installs a SIGTERM handler of its own (``sys.exit``); the previous handlers are back on exit."""

    def handle(signum, frame):
        _received[:] = [signal.Signals(signum).name]
        raise KeyboardInterrupt(_received[0])

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {s: signal.signal(s, handle) for s in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


_received: list[str] = []  # the signal signals_interrupt last turned into a KeyboardInterrupt


def signal_of(interrupt: KeyboardInterrupt) -> str:
    """The signal a KeyboardInterrupt stands for: the one ``signals_interrupt`` named (Ray's waits raise a
    KeyboardInterrupt of their own when one reaches them, so the name is kept aside too), else SIGINT."""
    name = str(interrupt.args[0]) if interrupt.args else ""
    if name in signal.Signals.__members__:
        return name
    return _received[0] if _received else "SIGINT"


def interrupt_exit_code(interrupt: KeyboardInterrupt) -> int:
    """The conventional exit code of a command stopped by that signal: 128 + its number (Ctrl-C: 130)."""
    return 128 + int(signal.Signals[signal_of(interrupt)])
