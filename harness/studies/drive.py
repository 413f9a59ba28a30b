"""The drive loop of a study: keep the pool full, hand events and outcomes to the study, stop on Ctrl-C.

A ``Driver`` (a Sweep, a Search) says which job comes next and what an event or an outcome means to it;
``drive`` does the rest, the same for both:

- while the study has jobs, the pool runs up to ``max_parallel`` of them;
- every second it hands the runs' events (started, each evaluation, notes of long work), their finished
  outcomes and the step each run is at to the study;
- it ends when nothing runs and nothing is held back (a run whose folder is still locked, to try again);
- the first Ctrl-C, SIGTERM or SIGUSR1 (a scheduler's "time is up") asks every run to checkpoint at its next
  step and return, starts nothing more, and then raises KeyboardInterrupt naming the signal, so that the same
  command continues; a second Ctrl-C kills the runs (each resumes from its last checkpoint); a second SIGTERM
  or SIGUSR1 changes nothing (a scheduler signals every process of a job).
"""
from __future__ import annotations

import abc
import sys

from tqdm.auto import tqdm

from harness.cluster.pool import Job, Outcome, RayPool
from harness.run.signals import signal_of, signals_interrupt

WAIT_SECONDS = 1.0  # how long the driver waits for outcomes before it looks at events again


class Driver(abc.ABC):
    """A study as the drive loop sees it: ``next_job``, ``on_event`` and ``on_outcome`` are its own; the rest
    have defaults. ``say`` writes a line above the progress bar."""

    what = "study"  # the driver in messages ("sweep", "search")
    runs = "every run"  # what a stop asks to checkpoint, in messages

    def __init__(self, stream=None, progress: bool = True):
        self.stream, self.progress = stream or sys.stdout, progress
        self.stopping = False  # after the first Ctrl-C or stop signal: no job starts any more

    @abc.abstractmethod
    def next_job(self) -> Job | None:
        """The job to start now, or None (none left, or none ready yet)."""

    def held_back(self) -> bool:
        """Jobs not submitted yet that will be (a locked run folder, tried again later)."""
        return False

    @abc.abstractmethod
    def on_event(self, key: str, event: dict) -> None:
        """A run's event: started, an evaluation, a note of long work."""

    @abc.abstractmethod
    def on_outcome(self, outcome: Outcome) -> None:
        """A run that returned: completed, failed, interrupted or locked."""

    def on_wait(self, steps: dict[str, int]) -> None:
        """After each wait: the step each running run is at (for progress)."""

    def on_stop(self) -> None:
        """At the first Ctrl-C or stop signal (``stopping`` is set): forget what was not started."""

    def say(self, line: str) -> None:
        tqdm.write(line, file=self.stream)  # above the progress bar, not through it


@signals_interrupt()  # SIGTERM and SIGUSR1 stop the runs as Ctrl-C does
def drive(pool: RayPool, driver: Driver, max_parallel: int) -> None:
    """Run ``driver``'s jobs on ``pool`` until none is left; raises KeyboardInterrupt (the signal's name) after a
    stop, once every run has returned."""
    stopped_by, driver.stopping = "SIGINT", False  # a study's object may drive a second session after a stop
    while True:
        try:
            while not driver.stopping and len(pool.running) < max_parallel:
                job = driver.next_job()
                if job is None:
                    break
                pool.submit(job)
            if not pool.running and not driver.held_back():
                break
            events, steps, outcomes = pool.wait(timeout=WAIT_SECONDS)
            for key, event in events:
                driver.on_event(key, event)
            for outcome in outcomes:
                driver.on_outcome(outcome)
            driver.on_wait(steps)
        except KeyboardInterrupt as interrupt:
            if driver.stopping and signal_of(interrupt) != "SIGINT":
                continue  # a scheduler's signal again (or to the whole job): the runs are stopping already
            again = driver.stopping
            stopped_by = stopped_by if again else signal_of(interrupt)
            driver.stopping = True
            driver.on_stop()
            _interrupt(pool, driver, again, stopped_by)
    if driver.stopping:
        raise KeyboardInterrupt(stopped_by)


def _interrupt(pool: RayPool, driver: Driver, again: bool, by: str) -> None:
    """The first stop asks every run to checkpoint at its next step and return; a second Ctrl-C kills them."""
    what = "Ctrl-C" if by == "SIGINT" else by
    if again:
        driver.say(f"Second {what}: killing the runs now; each resumes from its last checkpoint.")
        pool.kill()
        raise KeyboardInterrupt(by)
    driver.say(f"Stopping ({what}): {driver.runs} checkpoints at its next step, then the {driver.what} exits (Ctrl-C "
               f"again to kill them at once). Run the same command to continue.")
    pool.stop()
