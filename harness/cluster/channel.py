"""Between a study's driver and its runs on Ray: the ``Channel`` actor on the driver's node, and a run's side of
it, ``DriverLink``, which is the run's hooks (harness/run/request.py ``Hooks``).

Runs report events (started, each evaluation, notes of long work) and their step, and ask whether to stop; the
driver drains the events and asks runs to stop (harness/cluster/pool.py ``RayPool``).
"""
from __future__ import annotations

import contextlib
import os
import threading

POLL_SECONDS = 1.0  # how often a run asks the driver whether to stop (and says which step it is at)


class Channel:
    """A small Ray actor between the driver and its runs: runs report events and their step,
    and ask whether to stop; the driver drains the events and asks runs to stop."""

    def __init__(self):
        self.events: list[tuple[str, dict]] = []
        self.steps: dict[str, int] = {}
        self.stop_keys: set[str] = set()
        self.stop_everything = False

    def report(self, key: str, event: dict) -> None:
        self.events.append((key, event))

    def poll(self, key: str, step: int | None) -> bool:
        if step is not None:
            self.steps[key] = step
        return self.stop_everything or key in self.stop_keys

    def drain(self) -> tuple[list[tuple[str, dict]], dict[str, int]]:
        events, self.events = self.events, []
        return events, dict(self.steps)

    def stop(self, key: str | None) -> None:
        if key is None:
            self.stop_everything = True
        else:
            self.stop_keys.add(key)


class DriverLink:
    """A run's side of the channel, as its hooks: ``should_stop`` (a thread asks the driver every POLL_SECONDS,
    saying the run's step; a driver gone for good counts as a stop request), ``on_evaluation`` and ``log``
    (reported to the driver). Like the DDP launchers' LauncherLink (harness/launch/local.py), one Ray task apart."""

    def __init__(self, channel, key: str):
        import ray

        from harness.protocol.fid import INCEPTION_NOTE
        from harness.protocol.recipe import COMPILE_NOTE
        from harness.protocol.reference import NOTE

        self.channel, self.key = channel, key
        self.step: int | None = None
        self.stop = ray.get(channel.poll.remote(key, None))  # asked before the run starts
        self.done = threading.Event()
        self.notes = (NOTE, INCEPTION_NOTE, COMPILE_NOTE)  # how the lines that announce long work begin

    @contextlib.contextmanager
    def running(self, node: str):
        """Tell the driver the run started (waited for, so that it never sees an outcome before the start),
        then poll for stop requests until the run returns."""
        import ray

        ray.get(self.channel.report.remote(self.key, {"kind": "started", "node": node, "pid": os.getpid()}))
        threading.Thread(target=self._poll, daemon=True).start()
        try:
            yield self
        finally:
            self.done.set()

    def _poll(self) -> None:
        import ray

        misses = 0
        while not self.done.is_set():
            try:
                self.stop = self.stop or ray.get(self.channel.poll.remote(self.key, self.step), timeout=30)
                misses = 0
            except Exception:  # one slow answer on a busy cluster is not a lost driver
                misses += 1
                self.stop = self.stop or misses >= 3
            self.done.wait(POLL_SECONDS)

    def should_stop(self, step: int) -> bool:
        self.step = step
        return self.stop

    def on_evaluation(self, evaluation: dict) -> None:
        self.channel.report.remote(self.key, {"kind": "evaluation", **evaluation})

    def log(self, line: str) -> None:
        """A run's log lines go to its run.log only, but for the ones announcing long work that is not training (an
        FID reference being computed, a first compile: minutes), which the driver prints too: a run never looks
        hung."""
        if line.startswith(self.notes):
            self.channel.report.remote(self.key, {"kind": "note", "text": line})

    def hooks(self):
        from harness.run.request import Hooks  # here: the Channel actor, in this module too, imports no torch

        # ``log`` prints nothing (the task's output is run.log already): a run of several processes passes rank
        # 0's lines to it through its launcher (harness/launch/local.py Watcher), and only the notes go on
        return Hooks(log=self.log, should_stop=self.should_stop, on_evaluation=self.on_evaluation)


def start_channel():
    """The Channel actor, on the driver's node (it lives as long as the driver does), restarted by Ray
    whenever its process is lost, with calls to it retried meanwhile: a run never fails because the
    driver's helper died. Its state (events not yet drained, stop requests) starts empty again; the
    pool sends its stop requests again at every wait."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Channel).options(
        scheduling_strategy=here).remote()
