"""``import harness``: the notebook's functions are the CLI's, and importing the subpackages never hides them."""
import csv
import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAST, TINY_ARCH

import harness

# A search space of tiny denoisers (the width is the one choice; no baselines): trials that take seconds.
TINY_SPACE = TINY_ARCH.split("\n\ndef build_model")[0] + '''

def suggest(trial):
    return {"channels": trial.suggest_categorical("channels", [2, 4])}


def build(choices, block_out_channels, device="cpu"):
    return Tiny(choices["channels"]).to(device)
'''


def test_import_is_light_and_the_names_survive_importing_the_subpackages():
    import harness.report.write  # noqa: F401  (sets harness.report, the package: no function of that name)
    import harness.run.runner  # noqa: F401
    import harness.search.driver  # noqa: F401
    import harness.studies.sweep  # noqa: F401

    assert all(callable(getattr(harness, name)) for name in harness.__all__)
    assert harness.run_one.__module__ == "harness"


def test_a_run_a_sweep_the_frame_and_the_report_from_python(tiny_arch, tmp_path):
    results = tmp_path / "results"
    record = harness.run_one("shapes", str(tiny_arch), "smoke", device="cpu", results_dir=results, overrides=FAST,
                             progress=False, log=lambda message: None)
    assert record.status == "completed" and record.step == FAST["training.steps"] and math.isfinite(record.best_fid)

    # the same cell as a sweep: Sweep.execute as `harness sweep` runs it, which finds it done and trains nothing
    manifest = harness.run_sweep([str(tiny_arch)], ["smoke"], task="shapes", results_dir=results, overrides=FAST,
                                 device="cpu", cpus_per_run=1, progress=False)
    (cell,) = manifest["cells"]
    assert cell["status"] == "skipped" and cell["record"] == str(results / "shapes" / "tiny" / "smoke" / "seed42" /
                                                                 "record.json")

    runs = harness.load_runs(results)
    assert isinstance(runs, pd.DataFrame) and len(runs) == 1
    row = runs.iloc[0]
    assert (row.arch, row.tier, row.seed, row.best_fid) == ("tiny", "smoke", 42, record.best_fid)

    report = harness.make_report(results, tmp_path / "report")
    assert (tmp_path / "report" / "index.html").is_file() and len(report.runs) == 1
    with open(tmp_path / "report" / "runs.csv") as f:  # the CLI's runs.csv is the same frame
        (written,) = list(csv.DictReader(f))
    assert written["arch"] == "tiny" and math.isclose(float(written["best_fid"]), record.best_fid, rel_tol=1e-5)

    meta = harness.export_model(results / "shapes" / "tiny" / "smoke" / "seed42", tmp_path / "exported",
                                arch=str(tiny_arch))  # outside architectures/: named, not taken from the record
    assert meta["step"] == record.step and meta["weights"] == "ema"


@pytest.mark.slow  # end to end
def test_a_search_from_python_returns_what_the_cli_reports(tmp_path, capsys):
    from harness.cli.main import main

    space, results = tmp_path / "space.py", tmp_path / "results"
    space.write_text(TINY_SPACE)
    result = harness.run_search("shapes", "smoke", trials=2, study="api", space=space, device="cpu",
                                results_dir=results, overrides=FAST, cpus_per_trial=1, progress=False,
                                stream=io.StringIO())
    assert result["counts"] == {"COMPLETE": 2} and result["storage"] == f"sqlite:///{results / 'studies' / 'api.db'}"
    assert all(Path(row["run_folder"], "record.json").is_file() and math.isfinite(row["fid"]) for row in result["best"])

    capsys.readouterr()  # `harness search --status --json` reads the same study and prints the same summary
    assert main(["search", "--task", "shapes", "--tier", "smoke", "--study", "api", "--space", str(space),
                 "--results-dir", str(results), "--status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(result, default=str))
