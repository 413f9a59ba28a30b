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

from conftest import TINY_ARCH

pytestmark = pytest.mark.slow  # every test reads the records of 21 real runs and 2 copies (about 60 s to make)

REPO = Path(__file__).resolve().parents[1]
# A task that is shapes with quoted reference FIDs measured with its tiers' own 6-sample FID (measured_with), so
# that runs of a tier unchanged are its exact protocol and "published vs reproduced" has something to show; a
# second tier as cheap as smoke ("mini": narrower), so that rank agreement across tiers has two.
TASK_YAML = f"""include: {REPO / 'tasks' / 'shapes.yaml'}
name: shapesref
data: {{num_images: 256}}
tiers:
  smoke:
    training: {{steps: 6, log_every: 2, checkpoint_every: 2}}
    sampling: {{steps: 5}}
    evaluation: {{num_samples: 6, eval_points: [2], reference_images: 12, feature_batch_size: 12}}
  mini:
    model: {{block_out_channels: [16, 32, 32, 32], layers_per_block: 1}}
    training: {{batch_size: 32, steps: 6, ema_decay: 0.9, log_every: 2, checkpoint_every: 2, gpu_required: false}}
    sampling: {{steps: 5, batch_size: 64}}
    evaluation: {{num_samples: 6, eval_points: [2], reference_images: 12, feature_batch_size: 12}}
  noise:  # long enough for the tiny denoiser to learn something, 32 samples: gaps a seed cannot explain show
    model: {{block_out_channels: [32, 64, 64, 64], layers_per_block: 1}}
    optimizer: {{lr: 2.0e-3}}
    training: {{batch_size: 32, steps: 300, ema_decay: 0.99, log_every: 100, checkpoint_every: 300, gpu_required: false}}
    sampling: {{steps: 5}}
    evaluation: {{num_samples: 32, eval_points: [], reference_images: 12, feature_batch_size: 32}}
reference_results:
  measured_with: {{evaluation.num_samples: 6, evaluation.reference_images: 12}}
  best_fid:
    standard: {{smoke: 300.0, mini: 250.0}}
    wide: {{smoke: 310.0, mini: 260.0}}
"""
ARCHS = {"standard": TINY_ARCH, "wide": TINY_ARCH.replace('split(",")[0]', 'split(",")[1]'),
         "narrow": TINY_ARCH.replace('int(os.environ["BLOCK_OUT_CHANNELS"].split(",")[0])', "8")}
# for the noise tier: "twin" is standard initialised from another seed-dependent stream (the same architecture:
# any gap between them is noise); "blank" is deliberately broken: it predicts a huge noise, so DDIM ends on a
# black image whatever the seed (FID 449.6 here, against about 375 for the two)
NOISE_ARCHS = {"standard": TINY_ARCH,
               "twin": TINY_ARCH.replace("    return Tiny(channels)", "    torch.manual_seed(torch.initial_seed() + 1000)\n"
                                                                   "    return Tiny(channels)"),
               "blank": TINY_ARCH.replace("sample=self.out(h)", "sample=self.out(h) * 0 + 1e3")}
NOISE_SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """3 architectures x 2 seeds at smoke, x 1 seed at mini; one run with other steps, one with other FID
    samples; one failed run; 3 architectures x 3 seeds at the noise tier; and copies of a real record as a GPU
    bf16 run and a clean-fid-reference run would have written them (this machine has no GPU, no internet)."""
    root = tmp_path_factory.mktemp("report")
    tasks, archs, results = root / "tasks", root / "archs", root / "results"
    tasks.mkdir(), archs.mkdir()
    (tasks / "shapesref.yaml").write_text(TASK_YAML)
    for name, source in {**ARCHS, **NOISE_ARCHS}.items():
        (archs / f"{name}.py").write_text(source)
    (archs / "broken.py").write_text("def build_model(device):\n    raise RuntimeError('boom')\n")
    old = os.environ.get("HARNESS_TASKS_DIR")
    os.environ["HARNESS_TASKS_DIR"] = str(tasks)
    try:
        options = dict(device="cpu", results_dir=results, progress=False, log=lambda m: None)
        for name in ARCHS:
            for seed in (1, 2):
                run("shapesref", str(archs / f"{name}.py"), "smoke", seed, **options)
            run("shapesref", str(archs / f"{name}.py"), "mini", 1, **options)
        for name in NOISE_ARCHS:
            for seed in NOISE_SEEDS:
                run("shapesref", str(archs / f"{name}.py"), "noise", seed, **options)
        run("shapesref", str(archs / "standard.py"), "smoke", 4, overrides={"training.steps": 4}, **options)
        run("shapesref", str(archs / "standard.py"), "smoke", 5, overrides={"evaluation.num_samples": 8}, **options)
        with pytest.raises(Exception):
            run("shapesref", str(archs / "broken.py"), "smoke", 1, **options)
        real = json.loads((results / "shapesref" / "standard" / "smoke" / "seed1" / "record.json").read_text())
        gpu = dict(real, precision="bf16", eval_precision="bf16", device={"type": "cuda", "name": "NVIDIA H200",
                                                                           "capability": "9.0"})
        cleanfid = dict(real, reference=dict(real["reference"], source="clean-fid precomputed cifar10/train/32"))
        for folder, record in (("gpu-copy", gpu), ("cleanfid-copy", cleanfid)):
            (results / folder).mkdir()
            (results / folder / "record.json").write_text(json.dumps(record))
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


CPU = "trained in fp32, sampled in fp32, on cpu; FID reference computed from 12 training images"


def test_the_report_groups_ranks_and_lists_every_run(results, tmp_path):
    out = tmp_path / "r"
    report(results, out)
    runs = read_csv(out / "runs.csv")
    assert len(runs) == 23  # 6 smoke + 3 mini + 9 noise + 2 with other settings + 1 failed + 2 copies: none dropped
    assert [r["status"] for r in runs if r["arch"] == "broken"] == ["failed"]
    board = read_csv(out / "leaderboard.csv")
    smoke = [r for r in board if r["tier"] == "smoke" and r["variant"] == "" and r["conditions"].startswith(CPU)]
    assert sorted(r["arch"] for r in smoke) == ["narrow", "standard", "wide"] and all(r["seeds"] == "2" for r in smoke)
    assert [float(r["best_fid_mean"]) for r in smoke] == sorted(float(r["best_fid_mean"]) for r in smoke)
    ranks = [int(r["rank"]) for r in smoke]  # ties share a rank: 1, then the same or the row's own position
    assert ranks[0] == 1 and all(r in (ranks[i], i + 2) for i, r in enumerate(ranks[1:]))
    # the runs with other steps or other FID samples are groups of their own, never averaged with the tier's
    for changed in ("training.steps=4", "evaluation.num_samples=8"):
        other = [r for r in board if r["variant"] == changed]
        assert len(other) == 1 and other[0]["arch"] == "standard" and other[0]["seeds"] == "1"
    standard = next(r for r in smoke if r["arch"] == "standard")
    assert float(standard["fid_vs_standard"]) == 0.0
    assert any(r["pareto"] == "True" for r in smoke)

    md = (out / "leaderboard.md").read_text()
    assert "best FID ↓ (mean ± std)" in md and "train img/s ↑" in md and "95% interval of the mean" in md
    assert "published best FID (quoted)" in md and "| standard | 300.00 |" in md
    assert "| quoted | standard | published (task reference_results) |" in md  # a row, unranked
    assert "Runs not in the leaderboards" in md and "boom" in md
    assert "tier mini vs tier smoke" in md and "tier smoke: first evaluation after step 0 vs best FID" in md
    assert '"git_commits"' in md and '"inception_weights"' in md


def _sections(md: str) -> dict[str, str]:
    """Markdown section title -> its text (a title may repeat: the conditions line tells them apart)."""
    parts = md.split("\n## ")[1:]
    return {p.split("\n", 1)[0] + " | " + p.split("\n")[2]: p for p in parts}


def test_runs_that_differ_in_precision_device_reference_or_samples_are_never_averaged(results, tmp_path):
    report(results, tmp_path / "c")
    board = read_csv(tmp_path / "c" / "leaderboard.csv")
    standard = [r for r in board if r["arch"] == "standard" and r["tier"] == "smoke"]
    # the CPU fp32 runs (2 seeds), the GPU bf16 record, the clean-fid-reference record, the 8-sample run and the
    # 4-step run: five rows, each in a table of its own, none averaged with another
    assert sorted(r["seeds"] for r in standard) == ["1", "1", "1", "1", "2"]
    assert len({(r["variant"], r["conditions"]) for r in standard}) == 5
    gpu = next(r for r in standard if "on cuda" in r["conditions"])
    assert gpu["conditions"].startswith("trained in bf16, sampled in bf16, on cuda") and gpu["rank"] == "1"
    assert any("FID reference clean-fid precomputed cifar10/train/32" in r["conditions"] for r in standard)
    # published FIDs only beside tables made with the exact protocol; elsewhere one line says why not
    for title, text in _sections((tmp_path / "c" / "leaderboard.md").read_text()).items():
        if not title.startswith("shapesref v2 / smoke"):
            continue
        exact = "variant:" not in title
        assert ("| quoted | standard |" in text) == exact and ("published inside it" in text) == exact, title
        assert ("are not quoted beside this table" in text) == (not exact), title
    assert "these runs differ (changed from the tier: evaluation.num_samples=8)" in (tmp_path / "c" / "leaderboard.md").read_text()


def test_gaps_within_noise_are_ties_and_gaps_beyond_it_are_ranked(results, tmp_path):
    report(results, tmp_path / "n")
    noise = [r for r in read_csv(tmp_path / "n" / "leaderboard.csv") if r["tier"] == "noise"]
    assert [r["seeds"] for r in noise] == ["3", "3", "3"]
    first, second, blank = noise
    # standard and twin are one architecture from two initialisations: tied, one rank, paired over the 3 seeds
    assert {first["arch"], second["arch"]} == {"standard", "twin"} and blank["arch"] == "blank"
    assert second["tied"] == "True" and first["rank"] == second["rank"] == "1"
    assert second["gap_kind"] == "paired over 3 shared seeds" and float(second["gap_low"]) < 0 < float(second["gap_high"])
    # the broken model is far beyond noise: its own rank, its gap's interval above zero
    assert blank["tied"] == "False" and blank["rank"] == "3" and float(blank["gap_low"]) > 0
    for r in noise:  # every row's mean inside its own interval, from its seeds (blank's is one point: always black)
        assert float(r["ci_low"]) <= float(r["best_fid_mean"]) <= float(r["ci_high"]) and r["ci_kind"] == "t over 3 seeds"
    assert float(first["ci_low"]) < float(first["best_fid_mean"]) < float(first["ci_high"])
    md = (tmp_path / "n" / "leaderboard.md").read_text()
    sentence = next(line for line in md.splitlines() if line.startswith("Top two: ") and "shared seeds" in line)
    assert ": within noise. At the observed spread" in sentence and "seeds of each would separate" in sentence
    assert "| ≈1 |" in md and "≈ within noise" in md and " separated" in md
    records = [json.loads(p.read_text()) for p in results.rglob("record.json") if "noise" in p.parts]
    streams = {r["seed"]: set() for r in records}
    for r in records:
        streams[r["seed"]].add(r["stream_sha256"])
    assert all(len(s) == 1 for s in streams.values())  # equal seeds drew equal batches and noise: pairing is valid


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
