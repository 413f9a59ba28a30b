"""`python -m harness report` on records made by real runs: tables, grouping, references, rank
agreement, byte-identical Markdown/CSV, and the page opened in headless Chromium."""
import csv
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.runner import run

from conftest import FAST, TINY_ARCH

pytestmark = pytest.mark.slow  # every test reads the records of 11 real runs (about 40 s to make)

REPO = Path(__file__).resolve().parents[1]
# a task that is shapes with quoted reference FIDs, so "published vs reproduced" has something to show
# and a second tier as cheap as smoke ("mini": narrower), so that rank agreement across tiers has two
TASK_YAML = f"""include: {REPO / 'tasks' / 'shapes.yaml'}
name: shapesref
tiers:
  mini:
    model: {{block_out_channels: [16, 32, 32, 32], layers_per_block: 1}}
    training: {{batch_size: 32, steps: 120, ema_decay: 0.9}}
    sampling: {{batch_size: 64}}
    evaluation: {{num_samples: 64, eval_points: [0], reference_images: 256, feature_batch_size: 64}}
reference_results:
  best_fid:
    standard: {{smoke: 300.0, mini: 250.0}}
    wide: {{smoke: 310.0, mini: 260.0}}
"""
ARCHS = {"standard": TINY_ARCH, "wide": TINY_ARCH.replace('split(",")[0]', 'split(",")[1]'),
         "narrow": TINY_ARCH.replace('int(os.environ["BLOCK_OUT_CHANNELS"].split(",")[0])', "8")}
SETTINGS = dict(FAST, **{"evaluation.eval_points": [2]})


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """3 architectures x 2 seeds at smoke, x 1 seed at mini; one run with other steps; one failed run."""
    root = tmp_path_factory.mktemp("report")
    tasks, archs, results = root / "tasks", root / "archs", root / "results"
    tasks.mkdir(), archs.mkdir()
    (tasks / "shapesref.yaml").write_text(TASK_YAML)
    for name, source in ARCHS.items():
        (archs / f"{name}.py").write_text(source)
    (archs / "broken.py").write_text("def build_model(device):\n    raise RuntimeError('boom')\n")
    old = os.environ.get("HARNESS_TASKS_DIR")
    os.environ["HARNESS_TASKS_DIR"] = str(tasks)
    try:
        options = dict(device="cpu", results_dir=results, progress=False, log=lambda m: None)
        for name in ARCHS:
            for seed in (1, 2):
                run("shapesref", str(archs / f"{name}.py"), "smoke", seed, overrides=SETTINGS, **options)
            run("shapesref", str(archs / f"{name}.py"), "mini", 1, overrides=SETTINGS, **options)
        run("shapesref", str(archs / "standard.py"), "smoke", 3, overrides=dict(SETTINGS, **{"training.steps": 4}),
            **options)
        with pytest.raises(Exception):
            run("shapesref", str(archs / "broken.py"), "smoke", 1, overrides=SETTINGS, **options)
        yield results
    finally:
        if old is None:
            os.environ.pop("HARNESS_TASKS_DIR", None)
        else:
            os.environ["HARNESS_TASKS_DIR"] = old


def report(results, out, *args):
    env = dict(os.environ, HARNESS_TASKS_DIR=str(results.parent / "tasks"))
    done = subprocess.run([sys.executable, "-m", "harness", "report", "--results-dir", str(results), "--out", str(out),
                           *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_report_groups_ranks_and_lists_every_run(results, tmp_path):
    out = tmp_path / "r"
    report(results, out)
    runs = read_csv(out / "runs.csv")
    assert len(runs) == 11  # 6 + 3 + 1 with other steps + 1 failed: none dropped
    assert [r["status"] for r in runs if r["arch"] == "broken"] == ["failed"]
    board = read_csv(out / "leaderboard.csv")
    smoke = [r for r in board if r["tier"] == "smoke" and "training.steps=6" in r["variant"]]
    assert sorted(r["arch"] for r in smoke) == ["narrow", "standard", "wide"]
    assert all(r["seeds"] == "2" for r in smoke) and [r["rank"] for r in smoke] == ["1", "2", "3"]
    assert [float(r["best_fid_mean"]) for r in smoke] == sorted(float(r["best_fid_mean"]) for r in smoke)
    # the run with other steps is a group of its own, never averaged with the 6-step ones
    other = [r for r in board if "training.steps=4" in r["variant"]]
    assert len(other) == 1 and other[0]["arch"] == "standard" and other[0]["seeds"] == "1"
    standard = next(r for r in smoke if r["arch"] == "standard")
    assert float(standard["fid_vs_standard"]) == 0.0
    assert any(r["pareto"] == "True" for r in smoke)

    md = (out / "leaderboard.md").read_text()
    assert "best FID ↓ (mean ± std)" in md and "train img/s ↑" in md
    assert "published best FID (quoted)" in md and "| standard | 300.00 |" in md
    assert "| quoted | standard | published (task reference_results) |  | 300.00 |" in md  # a row, unranked
    assert "Runs not in the leaderboards" in md and "boom" in md
    assert "tier mini vs tier smoke" in md and "tier smoke: first evaluation after step 0 vs best FID" in md
    assert '"git_commits"' in md and '"inception_weights"' in md


def test_the_same_records_give_byte_identical_markdown_and_csv(results, tmp_path):
    report(results, tmp_path / "a")
    report(results, tmp_path / "b")
    for name in ("leaderboard.md", "leaderboard.csv", "runs.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_filters_keep_only_what_was_asked(results, tmp_path):
    report(results, tmp_path / "f", "--arch", "standard", "--tier", "mini")
    runs = read_csv(tmp_path / "f" / "runs.csv")
    assert {(r["arch"], r["tier"]) for r in runs} == {("standard", "mini")}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.best, self.scripts = [], [], 0, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("a", "link") and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "td" and attrs.get("class") == "best":
            self.best += 1
        if tag == "script":
            self.scripts += 1


def test_the_page_is_static_and_offline_and_marks_the_best_values(results, tmp_path):
    out = tmp_path / "h"
    report(results, out)
    page = _Page()
    page.feed((out / "index.html").read_text())
    assert page.images and all((out / src).is_file() for src in page.images)  # every image beside the page
    assert not any(src.startswith(("http:", "https:", "/")) for src in page.images + page.links)
    assert page.scripts == 0 and page.best > 0


def test_the_page_opens_in_headless_chromium_without_errors(results, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium fonts-dejavu-core)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    out = tmp_path / "browser"
    report(results, out)
    messages = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                                     "--disable-dev-shm-usage"])
        try:
            view = browser.new_page(viewport={"width": 1400, "height": 1000})
            view.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
            view.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
            view.on("requestfailed", lambda r: messages.append(f"failed: {r.url}"))
            view.goto((out / "index.html").as_uri())
            view.wait_for_load_state("load")
            images = view.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, "
                                   "i.naturalWidth])")
            view.screenshot(path=str(out / "screenshot.png"), full_page=True)
        finally:
            browser.close()
    assert images and all(complete and width > 0 for _, complete, width in images), images
    assert not [m for m in messages if m.startswith(("error", "pageerror", "failed"))], messages
    assert (out / "screenshot.png").stat().st_size > 10_000


def test_the_early_fid_is_an_evaluation_before_the_last():
    from harness.report.tables import _early_fid

    evaluations = [{"step": 0, "fid": 400.0}, {"step": 2, "fid": 350.0}, {"step": 6, "fid": 320.0}]
    assert _early_fid({"evaluations": evaluations}) == 350.0
    # only the final evaluation after step 0: no early proxy (rank agreement would compare it with itself)
    assert _early_fid({"evaluations": [evaluations[0], evaluations[2]]}) is None
    assert _early_fid({"evaluations": []}) is None
