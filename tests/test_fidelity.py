"""Proxy fidelity on the committed records of real runs (tests/fixtures/report): the report's tau, rho,
intervals and top-k against scipy on the records' own numbers, and a proxy made to reverse the order."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau, spearmanr

from harness.report import fidelity, tables

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report"


@pytest.fixture
def results(tmp_path, monkeypatch):
    shutil.copytree(FIXTURE, tmp_path, dirs_exist_ok=True)
    monkeypatch.setenv("HARNESS_TASKS_DIR", str(tmp_path / "tasks"))
    return tmp_path / "results"


def table(results):
    runs, records, _ = tables.load_runs(results)
    return fidelity.fidelity(runs[tables.usable(runs)], records)


def best_fids(results, tier):
    """Mean best FID per architecture of the plain (no variant), fp32 CPU, computed-reference runs of a tier,
    read from the record files themselves."""
    found = {}
    for path in results.rglob("record.json"):
        r = json.loads(path.read_text())
        config = r["config"]
        if (r["tier"] == tier and r["status"] == "completed" and r["precision"] == "fp32"
                and r["device"]["type"] == "cpu" and r["reference"]["source"].startswith("computed")
                and config["training"]["steps"] == r["tier_config"]["training"]["steps"]
                and config["evaluation"]["num_samples"] == r["tier_config"]["evaluation"]["num_samples"]):
            found.setdefault(r["arch"], []).append(r["best_fid"])
    return {a: float(np.mean(v)) for a, v in found.items()}


def test_tau_rho_and_top_k_between_two_tiers_are_scipys_on_the_records(results):
    rows = table(results)
    row = rows[(rows["proxy"] == "mini: best FID") & (rows["expensive"] == "smoke: best FID")].iloc[0]
    mini, smoke = best_fids(results, "mini"), best_fids(results, "smoke")
    archs = sorted(set(mini) & set(smoke))
    x, y = [mini[a] for a in archs], [smoke[a] for a in archs]
    assert row["archs"] == len(archs) == 3
    assert row["kendall_tau"] == pytest.approx(kendalltau(x, y).statistic)
    assert row["spearman_rho"] == pytest.approx(spearmanr(x, y).statistic)
    assert row["tau_low"] <= row["kendall_tau"] <= row["tau_high"]
    assert row["rho_low"] <= row["spearman_rho"] <= row["rho_high"]
    best = min(archs, key=smoke.get)
    assert row["expensive_best"] == best
    assert row["best_rank_by_proxy"] == sorted(archs, key=mini.get).index(best) + 1
    assert 0 < row["proxy_cost"] < 1  # the mini tier is the cheaper one
    # a resample drawing one architecture three times has no ranking: 1 in 9 of them, dropped and counted
    assert 0.07 < row["resamples_dropped"] / fidelity.RESAMPLES < 0.16


def test_a_proxy_that_reverses_the_order_gets_tau_minus_one_and_misses_the_best(results):
    # the mini tier's FID at step 2 rewritten to reverse its best-FID order (the rest of each record is real)
    mini = sorted(results.rglob("mini/seed*/record.json"))
    best = {p: json.loads(p.read_text())["best_fid"] for p in mini}
    for rank, path in enumerate(sorted(mini, key=best.get)):
        record = json.loads(path.read_text())
        for e in record["evaluations"]:
            if e["step"] == 2:
                e["fid"] = 1000.0 - rank
        path.write_text(json.dumps(record))
    rows = table(results)
    row = rows[(rows["proxy"] == "mini: FID at step 2") & (rows["expensive"] == "mini: best FID")].iloc[0]
    assert row["kendall_tau"] == pytest.approx(-1.0) and row["spearman_rho"] == pytest.approx(-1.0)
    assert row["best_rank_by_proxy"] == row["archs"] == 3
    # the proxy and target of one run are resampled together: every resample is reversed too
    assert row["paired"] and [row["tau_low"], row["tau_high"]] == pytest.approx([-1.0, -1.0], abs=1e-12)
    headers, cells = fidelity.display_rows(rows)
    shown = dict(zip(headers, cells[list(rows.index).index(row.name)]))
    # top-3 of 3 architectures always holds the best: not shown as a recall
    assert shown["top-1 / top-3 recall"] == "no / –" and shown["its rank by the proxy"] == "3 of 3"


def test_fewer_than_three_shared_architectures_are_not_compared(results):
    rows = table(results)
    assert (rows["archs"] >= fidelity.MINIMUM).all()
    assert not rows["proxy"].str.contains("noise").any()  # the noise tier shares two architectures with others
