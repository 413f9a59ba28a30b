"""Shared fixtures: an isolated cache directory, and tiny architecture files for fast runs."""
import os
import textwrap

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two test workers on two cores: one torch thread each (and in the processes they start),
    # since two processes of two threads each run about 8x slower than one. A test that needs
    # other thread settings sets them itself.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

TINY_ARCH = '''
"""A two-convolution denoiser: enough to exercise the training loop in a second."""
import os

import torch
from diffusers.models.unets.unet_2d import UNet2DOutput


class Tiny(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.inp = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.time = torch.nn.Embedding(1000, channels)
        self.out = torch.nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x, timestep):
        h = torch.nn.functional.silu(self.inp(x) + self.time(timestep)[:, :, None, None])
        return UNet2DOutput(sample=self.out(h))


def build_model(device):
    channels = int(os.environ["BLOCK_OUT_CHANNELS"].split(",")[0])
    return Tiny(channels).to(device)
'''

# The tiny denoiser, slowed to ~0.25 s per training step so that a test can act while it trains.
SLOW_ARCH = TINY_ARCH.replace("    def forward(self, x, timestep):\n",
                              "    def forward(self, x, timestep):\n        if self.training:\n"
                              "            __import__('time').sleep(0.25)\n")

# A two-process run of SLOW_ARCH long enough to be stopped, killed or lost mid-way and resumed (24 steps of
# ~0.25 s, checkpoints every 8, a batch that splits 4/4 over the processes): tests/test_signals.py and
# tests/test_multinode.py compare their resumed runs with its uninterrupted run (``straight_run(..., devices=2)``).
TWO_PROCESSES = {"training.steps": 24, "training.checkpoint_every": 8, "training.log_every": 1,
                 "training.batch_size": 8}

# Settings that make a whole run take seconds: few steps, few samples, a tiny FID reference.
FAST = {
    "training.steps": 6,
    "training.log_every": 2,
    "training.checkpoint_every": 2,
    "evaluation.num_samples": 6,
    "evaluation.eval_points": [],
    "evaluation.reference_images": 12,
    "evaluation.feature_batch_size": 12,
    "sampling.steps": 5,
    "data.num_images": 256,
}


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Reference statistics and downloads go to a fresh folder, never the user's cache."""
    path = tmp_path_factory.mktemp("harness-cache")
    old = os.environ.get("HARNESS_CACHE_DIR")
    os.environ["HARNESS_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("HARNESS_CACHE_DIR", None)
    else:
        os.environ["HARNESS_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """shared(name, make) -> a folder that ``make(folder)`` filled, made once per test session: by the first
    pytest-xdist worker that asks for it, under a file lock (another worker asking meanwhile waits, then reuses
    it). For expensive runs that several tests only read; a test that changes what it finds there copies it."""
    import shutil

    from filelock import FileLock  # a dependency of torch

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own (popen-gw0, ...)
    (root / "shared").mkdir(exist_ok=True)

    def get(name, make):
        folder = root / "shared" / name
        with FileLock(str(folder) + ".lock"):
            if not (folder / ".made").exists():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                make(folder)
                (folder / ".made").touch()
        return folder

    return get


@pytest.fixture(scope="session")
def straight_run(shared):
    """straight_run(source, overrides, devices=1) -> the run folder of the uninterrupted reference run (seed 42,
    shapes/smoke with FAST and ``overrides``, one thread per process: one process is test_sweep.reference_run, in the
    asking worker's process; more are `harness run --devices N`) of
    the architecture file slow.py holding ``source``. Made once per session (``shared``) for the tests that stop,
    kill or starve such a run and compare its resumed end with it (tests/test_signals.py, test_tracking.py,
    test_full_disk.py, test_sweep.py, test_multinode.py): the same command each would run. Read it only (its
    record, its checkpoint's weights)."""
    import hashlib
    import json
    import subprocess

    from test_sweep import _run_command, folder, reference_run

    def get(source, overrides, devices=1):
        def make(where):
            arch = where / "slow.py"
            arch.write_text(textwrap.dedent(source))
            if devices == 1:
                reference_run(arch, where / "results", overrides=overrides)
                return
            done = subprocess.run(_run_command(arch, where / "results", 42, overrides) + ["--devices", str(devices)],
                                  capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(devices)),
                                  timeout=400)
            assert done.returncode == 0, done.stdout + done.stderr

        key = hashlib.sha256(json.dumps([source, overrides, devices], sort_keys=True).encode()).hexdigest()[:16]
        return folder(shared(f"straight-{key}", make) / "results", "slow")

    return get


@pytest.fixture
def write_arch(tmp_path):
    """write_arch(name, source) -> path of a new architecture file in a temporary folder."""

    def write(name, source):
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return path

    return write


@pytest.fixture
def tiny_arch(write_arch):
    return write_arch("tiny", TINY_ARCH)


@pytest.fixture
def arch_dir_with_a_broken_file(tmp_path, monkeypatch):
    """HARNESS_ARCH_DIR holding a copy of no_attn.py and broken.py, whose build_model raises 'boom'."""
    import shutil

    from harness.protocol import registry

    arch_dir = tmp_path / "archs"
    arch_dir.mkdir()
    shutil.copy(registry.find_architecture("no_attn").path, arch_dir / "no_attn.py")
    (arch_dir / "broken.py").write_text("def build_model(device):\n    raise RuntimeError('boom')\n")
    monkeypatch.setenv("HARNESS_ARCH_DIR", str(arch_dir))
    return arch_dir


def stop_ray_cluster(ray_tmp):
    """`ray stop --force` for one test's own `ray start` nodes: it stops every Ray process on the machine,
    a test in the other worker's included. These are the processes whose command line names the nodes'
    RAY_TMPDIR (GCS, raylets, agents) and everything they started (the workers)."""
    import psutil

    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(ray_tmp) in part for part in proc.info["cmdline"] or []):
            roots.append(proc)
    procs = {p.pid: p for root in roots for p in [root, *_children(root)]}
    for proc in procs.values():
        with _gone():
            proc.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=15)
    for proc in alive:
        with _gone():
            proc.kill()
    psutil.wait_procs(alive, timeout=15)


def _children(proc):
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _gone():
    import contextlib

    import psutil

    return contextlib.suppress(psutil.Error)


def pytest_collection_modifyitems(items):
    """The end-to-end (slow) tests first, each group in its module's order: pytest-xdist hands tests out in this
    order as workers free up, so the short tests fill the end of the run and no worker is left alone on a minute-long
    test while the other has nothing to do."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_terminal_summary(terminalreporter):
    """The figures tests measured (``record_property("measured", text)``, e.g. the statistics' false-separation
    rates on simulated boards), printed at the end of every run, also from pytest-xdist's workers."""
    lines = [value for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
             for name, value in getattr(report, "user_properties", []) if name == "measured"]
    if lines:
        terminalreporter.section("measured by the tests")
        for line in lines:
            terminalreporter.write_line(line)
