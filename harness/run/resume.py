"""What a checkpoint must agree with to be resumed, and the one-paragraph refusal when it does not."""
from __future__ import annotations

from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.protocol import registry
from harness.protocol.spec import TaskSpec, fields_where
from harness.protocol.tasks import field_defaults


def run_fingerprint(spec: TaskSpec, device: torch.device, precision: str) -> dict:
    """What a checkpoint must agree with to be resumed: the fixed settings, the device type (RNG
    states are per device) and the precision."""
    return {**_training_fingerprint(spec.to_dict()), "device type": device.type, "precision": precision}


def _training_fingerprint(config: dict, prefix: str = "") -> dict:
    """The resolved config minus the fields a resume may change (spec.py declares them ``resumable``: they
    change neither what was trained nor what an FID means, so evaluations before and after stay comparable),
    flattened to dotted keys. Everything else, evaluation and sampling settings included, is fixed."""
    resumable = set(fields_where(resumable=True))
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name in resumable:
            continue
        if isinstance(value, dict):
            out.update(_training_fingerprint(value, f"{name}."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def check_resumable(state: dict, fingerprint: dict, architecture: registry.Architecture, path: Path) -> None:
    if state.get("arch_sha256") != architecture.sha256:
        raise HarnessError(
            f"The architecture file {architecture.path} changed since the checkpoint {path} was written, so the "
            f"run cannot resume. Pass --fresh to start over (or restore the file)."
        )
    after = fingerprint
    # a field added to the task since the checkpoint was written counts as its default there; one declared
    # resumable since then is left out of both sides, as it is of fingerprints written now
    resumable = set(fields_where(resumable=True))
    stored = {k: v for k, v in state.get("fingerprint", {}).items() if k not in resumable}
    before = {**{k: v for k, v in field_defaults().items() if k in after}, **stored}
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if "device type" in changed:
        raise HarnessError(
            f"The checkpoint {path} was written on {before.get('device type')!r} and this run is on "
            f"{after['device type']!r}: random-number states and precision differ between devices, so it cannot "
            f"resume here. Resume with --device {before.get('device type')}, or pass --fresh to start over."
        )
    if changed:
        details = "; ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed[:5])
        raise HarnessError(
            f"The checkpoint {path} was made with different settings ({details}), so the run cannot resume "
            f"without mixing incomparable results. "
            f"Pass --fresh to start over, or use another --results-dir."
        )
