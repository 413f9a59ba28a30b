"""``import harness``: the notebook's functions are the CLI's, and importing the subpackages never hides them."""
import csv
import math

import pandas as pd
from conftest import FAST

import harness


def test_import_is_light_and_the_names_survive_importing_the_subpackages():
    import harness.report.write  # noqa: F401  (sets harness.report, the package: no function of that name)
    import harness.run.runner  # noqa: F401
    import harness.sweep  # noqa: F401

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

    meta = harness.export_model(results / "shapes" / "tiny" / "smoke" / "seed42", tmp_path / "exported")
    assert meta["step"] == record.step and meta["weights"] == "ema"
