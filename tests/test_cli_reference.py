"""docs/cli.md is the parser's own help, and the `harness` console script is the same program as `python -m harness`."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli.reference import markdown

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_cli_reference_is_current():
    assert (DOCS / "cli.md").read_text() == markdown(), (
        "docs/cli.md is out of date: run `python -m harness.cli.reference > docs/cli.md`")


def test_cli_reference_has_every_subcommand():
    text = (DOCS / "cli.md").read_text()
    for name in ("run", "list", "profile", "bench", "estimate", "sweep", "search", "export", "export-model", "evaluate",
                 "report"):
        assert f"## harness {name}\n" in text and f"usage: python -m harness {name}" in text


def test_console_script_matches_python_dash_m():
    script = shutil.which("harness") or str(Path(sys.executable).with_name("harness"))
    if not Path(script).exists():
        pytest.fail("the `harness` console script is not installed: run `python -m pip install -e \".[dev]\"`")
    ours = subprocess.run([script, "run", "--help"], capture_output=True, text=True, timeout=120)
    theirs = subprocess.run([sys.executable, "-m", "harness", "run", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout.startswith("usage: harness run") and theirs.stdout.startswith("usage: python -m harness run")
    # the usage block wraps by the program's name; everything after it is the same text
    assert ours.stdout.split("\n\n", 1)[1] == theirs.stdout.split("\n\n", 1)[1]
