"""Run records: one JSON per (task, architecture, tier, seed), written atomically.

The schema is documented in ``results/README.md``; ``SCHEMA_VERSION`` changes with it. Reports read
many records at once with ``harness.report.tables.load_runs`` (``harness.load_runs`` in the Python API).
"""
from __future__ import annotations

import json
import platform
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError
from harness.files import REPO_ROOT, atomic_write_json, keep_spare, now
from harness.peaks import matmul_precision, mfu

if TYPE_CHECKING:
    import torch

SCHEMA_VERSION = 3
RECORD_FILE = "record.json"
CHECKPOINT_FILE = "checkpoint.pt"
SPARE_FILE = ".record.spare"  # disk held for a final record on a full disk (RunRecord.save)
SPARE_BYTES = 64 * 1024  # at least; twice the running record, which grows with its loss curve


def run_dir(results_dir: str | Path, task: str, arch: str, tier: str, seed: int) -> Path:
    return Path(results_dir) / task / arch / tier / f"seed{seed}"


def ensure_writable(directory: Path) -> None:
    """Fail early, with a clear message, if results cannot be written there."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise HarnessError(
            f"Cannot write results to {directory} ({exc.strerror or exc}). Choose a writable directory "
            f"with --results-dir DIR, or fix the permissions."
        ) from exc


def git_commit() -> str | None:
    """HEAD of the harness checkout, with '+dirty' if tracked files changed; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "clean-fid", "numpy", "scipy", "fvcore", "diffusion-arch-harness"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def device_info(device: torch.device) -> dict:
    import torch  # here only: a report reads records without loading torch

    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(device)))}
    return {"type": device.type, "name": cpu_name(), "threads": torch.get_num_threads()}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def substitution_line(note: dict) -> str:
    """The log and terminal line of one ``substitutions`` entry of a record."""
    return f"Substitution: {note['what']}: asked for {note['asked']}, using {note['used']}: {note['why']}."


def sampling_rate(evaluations: list[dict]) -> float | None:
    """Generated images per second over all of a run's evaluations (None before the first)."""
    seconds = sum(e["sample_seconds"] for e in evaluations)
    return round(sum(e["num_samples"] for e in evaluations) / seconds, 2) if seconds else None


def run_timings(totals: dict, record: "RunRecord", device_type: str, processes: int) -> dict:
    """The record's ``timings`` from the run's running totals: img/s, seconds, and the MFU (per device: the
    run's images/s over as many devices' peaks as processes trained it) where the MACs are known."""
    train_seconds, images = totals["train_seconds"], totals["train_images"]
    timings = {"train_images_per_sec": round(images / train_seconds, 2) if train_seconds else None,
               "sampling_images_per_sec": sampling_rate(record.evaluations),
               "train_seconds": round(train_seconds, 2), "eval_seconds": round(totals["eval_seconds"], 2),
               "wall_seconds": round(totals["wall_seconds"], 2)}
    if train_seconds and "gflops" in (record.profile or {}):
        peak = matmul_precision(record.precision, device_type, record.device.get("capability"))
        timings["train_mfu"] = mfu(record.profile["gflops"], images / train_seconds, record.device["name"], peak,
                                   devices=processes)
        timings["mfu_peak"] = peak
    return timings


@dataclass
class RunRecord:
    task: str
    task_version: int | None
    tier: str
    arch: str
    seed: int
    status: str  # "running", "completed", "failed", "interrupted"
    config: dict  # the resolved TaskSpec
    arch_file: str
    arch_sha256: str | None
    param_count: int | None  # None only when the model could not be built (status failed)
    device: dict
    versions: dict
    git_commit: str | None
    created_at: str
    updated_at: str
    precision: str = "fp32"  # what the run actually used: "bf16" (autocast on CUDA) or "fp32"
    step: int = 0  # training steps done
    loss_curve: list = field(default_factory=list)  # [[step, mean loss over the log interval], ...]
    evaluations: list = field(default_factory=list)  # [{step, fid, kid, num_samples, ...}, ...]
    best_fid: float | None = None
    best_step: int | None = None
    final_fid: float | None = None
    final_kid: float | None = None
    reference: dict = field(default_factory=dict)  # FID reference: source, images, cache file
    inception: dict = field(default_factory=dict)  # weights: path, where found, id
    timings: dict = field(default_factory=dict)
    failure: dict | None = None  # {"step", "message", "error"} when status is "failed"
    profile: dict | None = None  # parameters and FLOPs, when profiling is available
    samples_png: str | None = None
    # the processes that trained it: {"count": N, "backend": None | "gloo" | "nccl", "devices": [name per rank],
    # "hosts": [host name per rank]}
    processes: dict | None = None
    # what sampling ran in ("fp32" or "bf16"); None in records from before it was its own setting, when
    # sampling ran in the training precision
    eval_precision: str | None = None
    tier_config: dict | None = None  # the tier's resolved config before any --set/--steps/--fid-samples
    task_file: dict | None = None  # {"path", "sha256"} of the task file the run was resolved from
    substitutions: list = field(default_factory=list)  # every fallback: [{"what", "asked", "used", "why"}]
    # when status is "interrupted": {"step", "signal" ("SIGINT", "SIGTERM", "SIGUSR1"; None for a sweep's or
    # search's stop request), "at"}; absent (None) in records from before 2026-12-03
    interruption: dict | None = None
    # the device-dependent settings the run used (harness/protocol/recipe.py Recipe): device_type, precision,
    # sampling_precision, channels_last, optimizer ("fused", "foreach", "for-loop"), compile, rng_states;
    # None in records from before 2026-12-03
    recipe: dict | None = None
    stream_sha256: str | None = None  # the first training step's draws (harness/protocol/trainer.py): pairs seeds
    schema_version: int = SCHEMA_VERSION

    def add_evaluation(self, evaluation: dict) -> None:
        self.evaluations = [e for e in self.evaluations if e["step"] != evaluation["step"]] + [evaluation]
        self.evaluations.sort(key=lambda e: e["step"])
        best = min(self.evaluations, key=lambda e: e["fid"])
        self.best_fid, self.best_step = best["fid"], best["step"]
        last = self.evaluations[-1]
        self.final_fid, self.final_kid = last["fid"], last["kid"]

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, directory: Path) -> Path:
        """Atomically. While the run is unfinished its folder holds a spare (twice the record, SPARE_BYTES
        at least) that a final status may use where the disk has filled up, so a run stopped by a full disk
        still says so in its record."""
        self.updated_at = now()
        path, spare = directory / RECORD_FILE, directory / SPARE_FILE
        atomic_write_json(path, self.to_dict(), spare=None if self.status == "running" else spare)
        if self.status == "running":
            keep_spare(spare, max(SPARE_BYTES, 2 * path.stat().st_size))
        elif self.status == "completed":
            spare.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: Path) -> "RunRecord":
        data = json.loads(Path(path).read_text())
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def read_record(path: Path) -> tuple[RunRecord | None, str | None]:
    """(the record at ``path``, None); (None, None) where there is none; (None, why) where one is there
    but cannot be read (cut short by a full disk, edited by hand): callers say so and go on without it."""
    if not Path(path).exists():
        return None, None
    try:
        return RunRecord.load(path), None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"{path} {why_unreadable(exc)}"


def why_unreadable(exc: Exception) -> str:
    """Why a record file could not be read, as the end of a sentence that starts with its path."""
    if isinstance(exc, OSError):
        return f"cannot be read ({exc.strerror or exc})"
    if isinstance(exc, KeyError):
        return f"is not a valid record: it lacks the field {exc}"
    return f"is not a valid record: {exc}"  # not JSON (cut short by a full disk, say), or the wrong shape

