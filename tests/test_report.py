"""`python -m harness report` on records made by real runs: tables, grouping, references, rank
agreement, byte-identical Markdown/CSV, and the page opened in headless Chromium."""
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

pytestmark = pytest.mark.slow  # each `harness report` is a process that imports torch and draws plots: ~15 s

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "report"  # made by tests/fixtures/make_report_records.py (real runs)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The committed records (what the report reads: record.json and samples.png of 21 real runs and 2 copies),
    copied so that no test can change them: see tests/fixtures/make_report_records.py for what each run is."""
    root = tmp_path_factory.mktemp("report")
    shutil.copytree(FIXTURE, root, dirs_exist_ok=True)
    return root / "results"


def report(results, out, *args):
    env = dict(os.environ, HARNESS_TASKS_DIR=str(results.parent / "tasks"))
    done = subprocess.run([sys.executable, "-m", "harness", "report", "--results-dir", str(results), "--out", str(out),
                           *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def default_report(results, tmp_path_factory):
    """One `harness report` of every record, shared by the tests that read the default output (read-only)."""
    out = tmp_path_factory.mktemp("default") / "r"
    report(results, out)
    return out


def test_the_fixture_records_have_the_current_schema():
    from harness.run.records import SCHEMA_VERSION

    records = [json.loads(p.read_text()) for p in (FIXTURE / "results").rglob("record.json")]
    assert len(records) == 23
    stale = {r.get("schema_version") for r in records} - {SCHEMA_VERSION}
    assert not stale, f"tests/fixtures/report is schema {stale}: run python tests/fixtures/make_report_records.py"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


CPU = "trained in fp32, sampled in fp32, on cpu; FID reference computed from 12 training images"


def test_the_report_groups_ranks_and_lists_every_run(default_report):
    out = default_report
    runs = read_csv(out / "runs.csv")
    assert len(runs) == 23  # 6 smoke + 3 mini + 9 noise + 2 with other settings + 1 failed + 2 copies: none dropped
    assert [r["status"] for r in runs if r["arch"] == "broken"] == ["failed"]
    board = read_csv(out / "leaderboard.csv")
    smoke = [r for r in board if r["tier"] == "smoke" and r["variant"] == "" and r["conditions"].startswith(CPU)]
    assert sorted(r["arch"] for r in smoke) == ["narrow", "standard", "wide"] and all(r["seeds"] == "2" for r in smoke)
    assert [float(r["best_fid_mean"]) for r in smoke] == sorted(float(r["best_fid_mean"]) for r in smoke)
    size = {}
    for r in board:
        key = (r["task"], r["tier"], r["variant"], r["conditions"])
        size[key] = size.get(key, 0) + 1
    for r in board:  # a rank is 1 + the rows separated from it and ahead; its range runs to those not behind it
        if r["rank_text"] == "not established":  # one seed, nothing to borrow, others on its board: no rank
            assert r["rank"] == r["rank_high"] == "" and r["noise_source"] == "unknown"
            continue
        behind, ahead = ([x for x in r[c].split(", ") if x] for c in ("behind", "ahead_of"))
        assert int(r["rank"]) == 1 + len(behind)
        assert int(r["rank_high"]) == size[r["task"], r["tier"], r["variant"], r["conditions"]] - len(ahead)
    # the runs with other steps or other FID samples are groups of their own, never averaged with the tier's;
    # fewer steps also moves the last evaluation point, which best FID is taken over
    for changed in ("evaluation.eval_points=[2, 4], training.steps=4", "evaluation.num_samples=8"):
        other = [r for r in board if r["variant"] == changed]
        assert len(other) == 1 and other[0]["arch"] == "standard" and other[0]["seeds"] == "1"
    standard = next(r for r in smoke if r["arch"] == "standard")
    assert float(standard["fid_vs_standard"]) == 0.0
    assert any(r["pareto"] == "True" for r in smoke)

    md = (out / "leaderboard.md").read_text()
    assert "best FID ↓ (95% interval)" in md and "train img/s ↑" in md and "verdict (Holm over the board's pairs)" in md
    assert "seed-to-seed SD" in md and "FID sampling SD" in md  # the details split each row's noise
    assert "published best FID (quoted)" in md and "| standard | 300.00 |" in md
    assert "| quoted | standard |  | 300.00 | published (task reference_results), not ranked |" in md
    assert "Runs not in the leaderboards" in md and "boom" in md
    assert "| mini: best FID | smoke: best FID |" in md and "| smoke: FID at step 2 | smoke: best FID |" in md
    assert '"git_commits"' in md and '"inception_weights"' in md


def _sections(md: str) -> dict[str, str]:
    """Markdown section title -> its text (a title may repeat: the conditions line tells them apart)."""
    parts = md.split("\n## ")[1:]
    return {p.split("\n", 1)[0] + " | " + p.split("\n")[2]: p for p in parts}


def test_runs_that_differ_in_precision_device_reference_or_samples_are_never_averaged(default_report):
    board = read_csv(default_report / "leaderboard.csv")
    standard = [r for r in board if r["arch"] == "standard" and r["tier"] == "smoke"]
    # the CPU fp32 runs (2 seeds), the GPU bf16 record, the clean-fid-reference record, the 8-sample run and the
    # 4-step run: five rows, each in a table of its own, none averaged with another
    assert sorted(r["seeds"] for r in standard) == ["1", "1", "1", "1", "2"]
    assert len({(r["variant"], r["conditions"]) for r in standard}) == 5
    gpu = next(r for r in standard if "on cuda" in r["conditions"])
    assert gpu["conditions"].startswith("trained in bf16, sampled in bf16, on cuda") and gpu["rank"] == "1"
    assert any("FID reference clean-fid precomputed cifar10/train/32" in r["conditions"] for r in standard)
    # published FIDs only beside tables made with the exact protocol; elsewhere one line says why not
    for title, text in _sections((default_report / "leaderboard.md").read_text()).items():
        if not title.startswith("shapesref v2 / smoke"):
            continue
        exact = "variant:" not in title
        assert ("| quoted | standard |" in text) == exact and ("published inside it" in text) == exact, title
        assert ("are not quoted beside this table" in text) == (not exact), title
    md = (default_report / "leaderboard.md").read_text()
    assert "these runs differ (changed from the tier: evaluation.num_samples=8)" in md


def test_gaps_within_noise_are_ties_and_gaps_beyond_it_are_ranked(results, default_report):
    noise = [r for r in read_csv(default_report / "leaderboard.csv") if r["tier"] == "noise"]
    assert [r["seeds"] for r in noise] == ["3", "3", "3"]
    first, second, blank = noise
    # standard and twin are one architecture from two initialisations: tied, one rank, paired over the 3 seeds
    assert {first["arch"], second["arch"]} == {"standard", "twin"} and blank["arch"] == "blank"
    assert second["tied"] == "True" and first["rank"] == second["rank"] == "1" and first["rank_high"] == "2"
    assert second["gap_kind"] == "paired over 3 shared seeds"
    assert float(second["gap_low"]) < 0 < float(second["gap_high"])
    assert second["tied_with"] == first["arch"] and first["tied_with"] == second["arch"]
    # the broken model is far beyond noise: behind both under Holm, rank 3
    assert blank["tied"] == "False" and blank["rank"] == blank["rank_high"] == "3" and float(blank["gap_low"]) > 0
    assert sorted(blank["behind"].split(", ")) == ["standard", "twin"]
    # each row's interval is Student's t over its three seeds' best FIDs, read from the records themselves, its
    # per-seed variance never below the FID's sampling variance (standard's seeds agree more closely than that)
    records = [json.loads(p.read_text()) for p in results.rglob("record.json") if "noise" in p.parts]
    floored = []
    for r in noise:
        fids = [x["best_fid"] for x in records if x["arch"] == r["arch"]]
        sampling = np.mean([e["fid_std"] for x in records if x["arch"] == r["arch"] for e in x["evaluations"]
                            if e["step"] == x["best_step"]])
        assert float(r["sampling_sd"]) == pytest.approx(sampling, rel=1e-5)  # the split's sampling part
        spread = statistics.variance(fids)  # exact: three equal FIDs have 0, not a rounding residue of the mean
        variance = max(spread, sampling**2)
        floored.append(variance > spread)
        half = stats.t.ppf(0.975, 2) * np.sqrt(variance / 3)
        assert float(r["ci_low"]) == pytest.approx(np.mean(fids) - half, rel=1e-5)
        assert float(r["ci_high"]) == pytest.approx(np.mean(fids) + half, rel=1e-5)
        assert r["ci_kind"] == "measured over 3 seeds" and r["noise_source"] == "measured"
    # twin's spread is its own; standard's is its sampling noise; blank draws the same images for every seed
    assert floored == [False, True, True]
    md = (default_report / "leaderboard.md").read_text()
    sentence = next(line for line in md.splitlines() if line.startswith("Top two: ") and "shared seeds" in line)
    assert ": within noise. At the spread seen" in sentence and "would give 80% power to separate" in sentence
    assert "tied with standard; ahead of blank" in md and ") separated |" in md and "≈ not separated |" in md
    records = [json.loads(p.read_text()) for p in results.rglob("record.json") if "noise" in p.parts]
    streams = {r["seed"]: set() for r in records}
    for r in records:
        streams[r["seed"]].add(r["stream_sha256"])
    assert all(len(s) == 1 for s in streams.values())  # equal seeds drew equal batches and noise: pairing is valid


def test_the_same_records_give_byte_identical_markdown_and_csv(results, default_report, tmp_path):
    report(results, tmp_path / "b")  # a second process, another folder, a later time
    for name in ("leaderboard.md", "leaderboard.csv", "runs.csv"):
        assert (default_report / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_filters_keep_only_what_was_asked(results, tmp_path):
    report(results, tmp_path / "f", "--arch", "standard", "--tier", "mini")
    runs = read_csv(tmp_path / "f" / "runs.csv")
    assert {(r["arch"], r["tier"]) for r in runs} == {("standard", "mini")}


def test_files_that_cannot_be_read_are_named_in_the_report_and_on_stderr(tmp_path):
    """A record cut short (a full disk), one of the wrong shape, one without its fields, a damaged sweep
    manifest and a file in studies/ that is no SQLite database: each named with its reason, the rest reported."""
    root = tmp_path / "copy"
    shutil.copytree(FIXTURE, root)
    results = root / "results"
    damaged = {"shapesref/cut/smoke/seed1/record.json": '{"task": "shapesref", "tier": "sm',
               "shapesref/list/smoke/seed1/record.json": "[1, 2]",
               "shapesref/fieldless/smoke/seed1/record.json": '{"status": "completed"}',
               "sweeps/shapesref-0123456789.json": '{"sweep": "shapesref-01',
               "studies/old.db": "not a database"}
    for name, text in damaged.items():
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_text(text)
    done = report(results, tmp_path / "r")
    err, board = " ".join(done.stderr.split()), (tmp_path / "r" / "leaderboard.md").read_text()
    page = (tmp_path / "r" / "index.html").read_text()
    assert "## Files that could not be read" in board and "<h2>Files that could not be read</h2>" in page
    for name, why in (("cut", "is not a valid record: Unterminated string"),
                      ("list", "is not a valid record: it holds a JSON list"),
                      ("fieldless", "is not a valid record: it lacks the field 'task'")):
        path = str(results / f"shapesref/{name}/smoke/seed1/record.json")
        assert f"warning: {path} {why}" in err, err
        assert path in board and path in page
    for name, why in (("sweeps/shapesref-0123456789.json", "is not valid JSON"),
                      ("studies/old.db", "is not a study Optuna can open")):
        assert f"warning: {results / name} {why}" in err, err
    assert len(read_csv(tmp_path / "r" / "runs.csv")) == 23  # every readable record is still there


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


def test_the_page_is_static_and_offline_and_marks_the_best_values(default_report):
    out = default_report
    page = _Page()
    page.feed((out / "index.html").read_text())
    assert page.images and all((out / src).is_file() for src in page.images)  # every image beside the page
    assert not any(src.startswith(("http:", "https:", "/")) for src in page.images + page.links)
    assert page.scripts == 0 and page.best > 0


def test_the_page_opens_in_headless_chromium_without_errors(default_report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium fonts-dejavu-core)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    out = tmp_path / "browser"
    shutil.copytree(default_report, out)  # the screenshot is written beside the page
    messages = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                                     "--disable-dev-shm-usage"])
        try:
            view = browser.new_page(viewport={"width": 1280, "height": 1000})  # a laptop screen
            view.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
            view.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
            view.on("requestfailed", lambda r: messages.append(f"failed: {r.url}"))
            view.goto((out / "index.html").as_uri())
            view.wait_for_load_state("load")
            images = view.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, "
                                   "i.naturalWidth])")
            # each board's compact table, as laid out: its width against the viewport's
            compact = view.evaluate("Array.from(document.querySelectorAll('table.compact')).map(t => "
                                    "[t.getBoundingClientRect().right, t.parentElement.scrollWidth, "
                                    "t.parentElement.clientWidth])")
            page_width = view.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            forests = view.evaluate("Array.from(document.images).filter(i => i.src.endsWith('-forest.png'))"
                                    ".map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width])")
            view.screenshot(path=str(out / "screenshot.png"), full_page=True)
        finally:
            browser.close()
    assert images and all(complete and width > 0 for _, complete, width in images), images
    assert not [m for m in messages if m.startswith(("error", "pageerror", "failed"))], messages
    assert (out / "screenshot.png").stat().st_size > 10_000
    boards = (default_report / "leaderboard.md").read_text().count("\n## ") - sum(
        (default_report / "leaderboard.md").read_text().count(f"\n## {s}") for s in (
            "Runs not in", "Files that", "Proxy fidelity", "Study ", "Sweeps", "Provenance"))
    assert len(compact) == len(forests) == boards > 0, (compact, forests)
    # no compact table scrolls sideways or runs past the window; the page itself has no horizontal scrollbar
    assert all(right <= 1280 and scroll <= client for right, scroll, client in compact), compact
    assert page_width[0] <= page_width[1], page_width
    assert all(done and width > 0 and shown <= 1280 for done, width, shown in forests), forests


def test_the_fidelity_section_and_its_plot_are_in_both_formats(default_report):
    md = (default_report / "leaderboard.md").read_text()
    section = md.split("\n## Proxy fidelity\n")[1].split("\n## ")[0]
    assert "| mini: best FID | smoke: best FID | 3 |" in section and "![fidelity.png](fidelity.png)" in section
    assert (default_report / "fidelity.png").stat().st_size > 10_000
    page = (default_report / "index.html").read_text()
    assert "<h2>Proxy fidelity</h2>" in page and 'src="fidelity.png"' in page


def test_the_early_fid_is_an_evaluation_before_the_last():
    from harness.report.tables import _early_fid

    evaluations = [{"step": 0, "fid": 400.0}, {"step": 2, "fid": 350.0}, {"step": 6, "fid": 320.0}]
    assert _early_fid({"evaluations": evaluations}) == 350.0
    # only the final evaluation after step 0: no early proxy (rank agreement would compare it with itself)
    assert _early_fid({"evaluations": [evaluations[0], evaluations[2]]}) is None
    assert _early_fid({"evaluations": []}) is None


def test_the_sampler_view_and_grid_csv_hold_the_noise_boards_grid(results, default_report):
    """The noise tier's runs hold a sampler grid (tests/fixtures/make_report_records.py): grid.csv has every
    result, the protocol's beside them, and the board's view shows each architecture's mean FID and rank at
    every point, next to the protocol's, as the records say."""
    records = [json.loads(p.read_text()) for p in results.rglob("record.json") if "noise" in p.parts]
    grid = [r for r in read_csv(default_report / "grid.csv") if r["tier"] == "noise"]
    points = ["ddim:5", "ddim:2", "ddim:10", "dpmpp_2m:2", "dpmpp_2m:5", "unipc:5"]
    assert len(grid) == 3 * 3 * len(points) and {r["point"] for r in grid} == set(points)
    for record in records:
        final = record["evaluations"][-1]
        mine = {r["point"]: float(r["fid"]) for r in grid if r["arch"] == record["arch"]
                and int(r["seed"]) == record["seed"]}
        expected = {"ddim:5": final["fid"], **{k: v["fid"] for k, v in final["samplers"].items()}}
        assert mine == pytest.approx(expected, rel=5e-6)  # the CSV's 6 significant digits
    md = (default_report / "leaderboard.md").read_text()
    section = md.split("### Samplers and step counts")[1].split("\n## ")[0]
    assert ("| arch | " + " | ".join(points) + " | ddim 2-10 steps: mean | ddim 2-10 steps: loss | dpmpp_2m 2-5 steps: "
            "mean | dpmpp_2m 2-5 steps: loss |") in section
    blank = [r["evaluations"][-1]["samplers"]["unipc:5"]["fid"] for r in records if r["arch"] == "blank"]
    assert f"{np.mean(blank):.2f} (3)" in section.split("| blank |")[1].split("\n")[0]  # last of three at unipc:5
    assert md.count("### Samplers and step counts") == 1  # only the noise board has a grid
    for arch in ("standard", "twin"):  # one architecture from two initialisations: tied, as on the leaderboard
        assert section.split(f"| {arch} |")[1].split("|")[0].strip().endswith("(1–2)")
    assert "fid-vs-sampling-steps.png" in section
    assert next(default_report.glob("*fid-vs-sampling-steps.png")).stat().st_size > 10_000
    page = (default_report / "index.html").read_text()
    assert "<h3>Samplers and step counts</h3>" in page and "fid-vs-sampling-steps.png" in page
