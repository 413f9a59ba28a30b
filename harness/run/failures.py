"""What a run that failed by itself says about it: one sentence of what happened, one of what to do."""
from __future__ import annotations

from pathlib import Path

import torch

from harness.errors import HarnessError, NonFiniteLoss


def describe_failure(exc: Exception, step: int, log_path: Path | None) -> tuple[str, str]:
    """(what happened, advice) for the record's ``failure.message`` and the command's error."""
    if isinstance(exc, NonFiniteLoss):
        return (f"Training diverged: the loss was {exc.value} at step {exc.step}.",
                "Check the architecture's initialisation and normalisation, or the learning rate.")
    if isinstance(exc, torch.OutOfMemoryError):
        return (f"Out of memory at step {step} ({str(exc).splitlines()[0]}).",
                "Use a larger GPU, a smaller tier, or a smaller --set training.batch_size.")
    if isinstance(exc, HarnessError):
        return str(exc), ""
    return f"The run raised {type(exc).__name__} at step {step}: {exc}.", f"The traceback is in {log_path}."


def stopped_message(what: str, said: str, kept: Path, last_good_step: int, advice: str) -> str:
    """The error of a run that failed: what happened, where its record is, the checkpoint kept, what to do."""
    checkpoint = f" and the last good checkpoint (step {last_good_step}) is kept at {kept}. " if kept.exists() else ". "
    return f"{what} The run stopped; {said}{checkpoint}{advice}"
