"""`estimate`: its arithmetic checked by hand, and the command's output on this machine (structure, speed).

How close its predictions come to real runs is measured, not tested: docs/estimate.md (docs/estimate/accuracy.py).
"""
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST

from harness.cli.estimate import estimate_text
from harness.measure.estimate import PIECES, counts, makespan, predict, study_totals
from harness.protocol.tasks import resolve_task
from harness.report.noise import seeds_for_power

# measured costs, made up so that every product can be checked by hand
COSTS = {"startup_seconds": 4.0, "build_seconds": 0.5, "profile_seconds": 0.25, "data_load_seconds": 3.0,
         "inception_load_seconds": 0.25, "sigma_root_seconds": 1.0, "reference_seconds": 10.0,
         "step_seconds": 0.5, "first_step_seconds": 2.5, "sampling_batch": 64, "sampling_batch_seconds": 12.0,
         "feature_seconds_per_image": 0.0625, "scoring_seconds": 1.5, "checkpoint_seconds": 0.2}


def test_a_run_is_the_sum_of_its_pieces_each_a_count_times_a_cost():
    spec = resolve_task("shapes", "smoke")  # 120 steps, evaluations at 0 and 120 of 64 samples, checkpoints every 40
    assert counts(spec) == {"steps": 120, "evaluations": 2, "samples_per_evaluation": 64, "checkpoints": 5}
    p = predict(spec, COSTS)
    assert p == {"startup": 4.0, "prepare": 0.5 + 0.25 + 3.0 + 0.25, "reference": 10.0,
                 "training": 120 * 0.5 + (2.5 - 0.5), "sampling": 2 * 12.0, "features": 2 * 64 * 0.0625,
                 "scoring": 2 * 1.5, "grid": 0.0, "checkpoints": 5 * 0.2, "total": p["total"]}
    assert p["total"] == pytest.approx(sum(p[k] for k in PIECES))
    # a sampler grid at the last evaluation: each pair's batch = fixed + its steps x a step, then features, scores
    grid = resolve_task("shapes", "smoke", {"samplers.grid": ["ddim:10", "dpmpp_2m:20"]})
    costs = dict(COSTS, sampling_step_seconds=0.2, sampling_fixed_seconds=1.0)
    one_pair = 64 * 0.0625 + 1.5  # features of 64 samples and the scores
    assert predict(grid, costs)["grid"] == pytest.approx((1.0 + 10 * 0.2) + (1.0 + 20 * 0.2) + 2 * one_pair)
    every = resolve_task("shapes", "smoke", {"samplers.grid": ["ddim:10"], "samplers.at": "every"})
    assert predict(every, costs)["grid"] == pytest.approx(2 * ((1.0 + 10 * 0.2) + one_pair))  # steps 0 and 120
    assert predict(grid, costs, 120)["grid"] == 0.0  # resumed at the end: nothing left
    # the protocol at the small tier: 7 evaluations of 50,000 samples in batches of 500, 35 + 7 checkpoints
    small = resolve_task("cifar10", "small")
    p = predict(small, dict(COSTS, sampling_batch=500))
    assert p["sampling"] == pytest.approx(7 * 100 * 12.0) and p["features"] == pytest.approx(7 * 50000 * 0.0625)
    assert p["checkpoints"] == pytest.approx(42 * 0.2)
    # resumed at step 80: 40 steps, the evaluation at 120, 1 checkpoint (at 120) + 1 (after the evaluation)
    assert counts(spec, 80) == {"steps": 40, "evaluations": 1, "samples_per_evaluation": 64, "checkpoints": 2}
    rest = predict(spec, COSTS, 80)
    assert rest["training"] == 40 * 0.5 + 2.0 and rest["sampling"] == 12.0 and rest["checkpoints"] == 0.4


def test_a_study_pays_the_reference_once_and_fills_its_slots_longest_first():
    assert makespan([3, 2, 2, 1], 2) == 4 and makespan([1, 2, 2, 3], 2) == 5 and makespan([3, 2, 2, 1], 1) == 8
    assert makespan([5], 8) == 5

    def run(total, reference=1.0, file="ref-a"):
        predicted = {"total": total, "reference": reference}
        return {"predicted": predicted, "reference_file": file}, predicted

    totals = study_totals([run(10), run(10), run(20, file="ref-b"), run(5, reference=0.0)], slots=2)
    # the second run on ref-a does not compute the reference again; in queue order on 2 slots:
    # [10, 9] start, the 20 takes the slot free at 9, the 5 the one free at 10
    assert totals["runs"] == 4 and totals["device_seconds"] == 10 + 9 + 20 + 5
    assert totals["device_hours"] == pytest.approx(44 / 3600, abs=1e-3) and totals["wall_seconds"] == 29
    assert study_totals([({"error": "boom"}, {})], 1) == {"runs": 0, "slots": 1, "device_seconds": 0,
                                                         "device_hours": 0.0, "wall_seconds": 0.0}


def _settings(extra=None):
    return [a for k, v in {**FAST, **(extra or {})}.items() for a in ("--set", f"{k}={json.dumps(v)}")]


@pytest.mark.slow  # end to end
def test_estimate_measures_each_arch_and_tier_in_seconds_and_says_what_it_measured(tiny_arch, tmp_path):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness", "estimate", "--task", "shapes", "--tier", "smoke",
                           "--arch", f"standard,{tiny_arch}", "--device", "cpu", "--seed", "1,2,3", "--gpus", "2",
                           "--burst-seconds", "0.2", *_settings(), "--json"], capture_output=True, text=True,
                          timeout=300)
    took = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert took < 120 and result["measured_seconds"] < took
    assert result["kind"] == "estimate" and result["device"]["type"] == "cpu" and "torch" in result["versions"]
    assert [(r["arch"], r["tier"]) for r in result["runs"]] == [("standard", "smoke"), ("tiny", "smoke")]
    for run in result["runs"]:
        p, m = run["predicted"], run["measured"]
        assert set(p) == {*PIECES, "total"} and all(p[k] >= 0 for k in PIECES)
        assert p["total"] == pytest.approx(sum(p[k] for k in PIECES), abs=0.01)
        warm_up = max(0.0, m["first_step_seconds"] - m["step_seconds"])
        assert p["training"] == pytest.approx(6 * m["step_seconds"] + warm_up, abs=0.01)
        assert m["steps_timed"] >= 3 and m["sampling_batch"] == 6 and m["reference_plan"] in ("compute", "cached")
        assert run["throughput"]["train_images_per_sec"] > 0 and run["memory"]["train_peak_mb"] > 0
        assert run["counts"] == {"steps": 6, "evaluations": 1, "samples_per_evaluation": 6, "checkpoints": 4}
    assert result["runs"][0]["throughput"]["train_mfu"] is None  # no known peak for this CPU
    assert result["runs"][0]["measured"]["gflops"] > 0
    # 3 seeds of 2 runs on 2 slots; the reference is paid once
    study = result["study"]
    assert study["runs"] == 6 and study["slots"] == 2
    totals = [r["predicted"]["total"] for r in result["runs"]] * 3
    reference = result["runs"][0]["predicted"]["reference"]  # the same reference file for both
    assert study["device_seconds"] == pytest.approx(sum(totals) - 5 * reference, abs=0.3)
    assert study["wall_seconds"] < study["device_seconds"]


def test_bad_estimate_input_is_a_clear_error(capsys):
    from harness.cli.main import main

    assert main(["estimate", "--task", "shapes", "--tier", "huge"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "huge" in err and "Traceback" not in err
    assert main(["estimate", "--task", "shapes", "--tier", "smoke", "--arch", "standrd", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "not measured: standrd/smoke" in out and "Did you mean 'standard'?" in out


# --resolve: the fixture's records are real runs (tests/fixtures/make_report_records.py); their task file is read in
# place (its include is relative to it), the records from a copy so that no test can change them
REPORT_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report"


@pytest.fixture
def fixture_results(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_TASKS_DIR", str(REPORT_FIXTURE / "tasks"))
    shutil.copytree(REPORT_FIXTURE / "results", tmp_path / "results")
    return tmp_path / "results"


def _estimate_json(*args):
    done = subprocess.run([sys.executable, "-m", "harness", "estimate", "--device", "cpu", "--burst-seconds", "0.2",
                           *args, "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _priced_as_the_estimate_predicts(tier: dict, runs: list[dict]) -> None:
    """A tier's --resolve study is its seeds of every measured architecture, each at the estimate's own
    prediction of one run, with the shared FID reference paid once (as the study totals of --seed are)."""
    assert {r["reference_file"] for r in runs} and len({r["reference_file"] for r in runs}) == 1
    seeds, reference = tier["seeds"], runs[0]["predicted"]["reference"]
    assert tier["runs"] == seeds * len(runs) and tier["architectures"] == [r["arch"] for r in runs]
    one_of_each = sum(r["predicted"]["total"] for r in runs)
    assert tier["device_seconds"] == pytest.approx(seeds * one_of_each - (tier["runs"] - 1) * reference, abs=0.1)
    assert tier["device_hours"] == pytest.approx(tier["device_seconds"] / 3600, abs=1e-3)


def fixture_seed_cv(results: Path, tier: str) -> tuple[float, int, int]:
    """The pooled seed CV of best FID at ``tier``, by hand from the records: (cv, df, groups). Every record of the
    tier is one fp32 CPU run at the tier's settings except the copies and the --steps/--fid-samples variants of
    standard/smoke, which are their own groups (one seed each) and so drop out of the pool."""
    fids: dict[str, list[float]] = {}
    for path in results.rglob("record.json"):
        record = json.loads(path.read_text())
        config = record["config"]
        if (record["tier"] == tier and record["status"] == "completed" and "copy" not in str(path.relative_to(results))
                and config["training"]["steps"] == record["tier_config"]["training"]["steps"]
                and config["evaluation"]["num_samples"] == record["tier_config"]["evaluation"]["num_samples"]):
            fids.setdefault(record["arch"], []).append(record["best_fid"])
    several = [f for f in fids.values() if len(f) >= 2]
    df = sum(len(f) - 1 for f in several)
    # pooled on the relative scale, each group's variance over its own squared mean (as a borrowed spread)
    cv2 = sum(statistics.variance(f) / statistics.mean(f) ** 2 * (len(f) - 1) for f in several) / df
    return math.sqrt(cv2), df, len(several)


@pytest.mark.slow  # end to end
def test_resolve_prices_the_seeds_an_assumed_seed_cv_needs(tiny_arch, fixture_results):
    result = _estimate_json("--task", "shapesref", "--tier", "smoke", "--arch", f"standard,{tiny_arch}",
                            "--resolve", "2%", "--seed-cv", "2.5%", "--results-dir", str(fixture_results))
    plan = result["resolve"]
    assert plan["gap"] == 0.02 and plan["power"] == 0.8 and plan["alpha"] == pytest.approx(0.05)
    (tier,) = plan["tiers"]
    # --seed-cv wins; what the results measure is kept beside it
    assert tier["spread"]["source"] == "assumed" and tier["spread"]["cv"] == 0.025
    cv, df, groups = fixture_seed_cv(fixture_results, "smoke")
    measured = tier["spread"]["measured"]
    assert measured["cv"] == pytest.approx(cv) and (measured["df"], measured["groups"]) == (df, groups) == (3, 3)
    assert tier["seeds"] == seeds_for_power(0.02, 0.025, paired=False) == 26
    _priced_as_the_estimate_predicts(tier, result["runs"])
    text = estimate_text(result)
    assert (f"To separate a 2% gap at smoke (assumed seed CV 2.5%): 26 seeds per architecture (80% power, "
            f"two-sided 5%, unpaired) = 52 runs of 2 architecture(s), {tier['device_hours']:.2f} device-hours on "
            f"{result['device']['name']}") in text
    assert f"--results-dir: measured seed CV {measured['cv'] * 100:.3g}%" in text and "compared paired" in text


@pytest.mark.slow  # end to end
def test_resolve_measures_the_seed_cv_from_completed_runs_of_the_same_settings(fixture_results):
    result = _estimate_json("--task", "shapesref", "--tier", "noise", "--arch", "standard", "--resolve", "5%",
                            "--results-dir", str(fixture_results))
    (tier,) = result["resolve"]["tiers"]
    spread = tier["spread"]
    cv, df, groups = fixture_seed_cv(fixture_results, "noise")  # 3 architectures x 3 seeds
    assert spread["source"] == "measured" and spread["same_settings"] and spread["runs"] == 9
    assert spread["cv"] == pytest.approx(cv) and (spread["df"], spread["groups"]) == (df, groups) == (6, 3)
    assert tier["seeds"] == seeds_for_power(0.05, cv, paired=False)
    _priced_as_the_estimate_predicts(tier, result["runs"])
    assert (f"(measured seed CV {cv * 100:.3g}%: pooled within 3 group(s) of shapesref/noise runs in "
            f"{fixture_results}, 6 df, at these settings): {tier['seeds']} seeds per architecture"
            ) in estimate_text(result)


def test_resolve_pools_other_settings_only_when_its_own_have_no_spread(fixture_results):
    from harness.cli.estimate import measured_seed_cv

    # at 4 steps, standard/smoke has one seed: the spread comes from the tier's groups at its default settings
    spread = measured_seed_cv(str(fixture_results), resolve_task("shapesref", "smoke", {"training.steps": 4}))
    assert not spread["same_settings"] and "at other settings than these" in spread["label"]
    assert spread["cv"] == pytest.approx(fixture_seed_cv(fixture_results, "smoke")[0])
    assert "no group of completed shapesref/mini runs" in measured_seed_cv(str(fixture_results),
                                                                           resolve_task("shapesref", "mini"))


def test_resolve_without_a_seed_spread_is_a_clear_error_before_anything_is_measured(tmp_path, capsys):
    from harness.cli.main import main

    smoke = ["estimate", "--task", "shapes", "--tier", "smoke", "--device", "cpu", "--resolve", "2%"]
    start = time.perf_counter()
    assert main(smoke) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--seed-cv 2%" in err and "the field measures 1-2%" in err and "--results-dir DIR" in err
    (tmp_path / "empty").mkdir()
    assert main([*smoke, "--results-dir", str(tmp_path / "empty")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "holds no completed runs" in err and "--seed-cv 2%" in err
    assert main([*smoke, "--results-dir", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in " ".join(capsys.readouterr().err.split())
    assert main([*smoke[:-2], "--seed-cv", "2%"]) == 2
    assert "add --resolve GAP" in " ".join(capsys.readouterr().err.split())
    assert main([*smoke[:-1], "two", "--seed-cv", "2%"]) == 2
    err = capsys.readouterr().err
    assert "--resolve takes a fraction of the FID" in err and "Traceback" not in err
    assert time.perf_counter() - start < 30  # no burst ran


def test_successive_halving_waits_for_each_promotion_and_is_simulated_as_the_search_promotes():
    from harness.measure.estimate import halving_makespan

    hour = 3600.0
    plan = [[1 * hour] * 27, [4 * hour] * 9, [16 * hour] * 3]
    # 39 slots hold every run at once, but a promotion waits for the tier below: 1 h, then 4 h, then 16 h;
    # a makespan of independent runs said 16 h
    assert makespan([d for tier in plan for d in tier], 39) == 16 * hour
    assert halving_makespan(plan, 39, 3) == 21 * hour
    assert halving_makespan(plan, 39) == 21 * hour  # the reduction inferred from the counts, 27 / 9
    assert halving_makespan(plan, 1, 3) == (27 + 36 + 48) * hour  # one slot: every run after the other
    # 2 slots, 10 trials, reduction 3: ASHA promotes after the 3rd, 6th and 9th first-tier finish; a free slot
    # takes a promotion before a new trial: t=2: 4 done, the first promoted (2..6) beside trial 5 (2..3);
    # t=4: 6 done, the second (4..8); trials 7, 8 on the slot free at 6; t=8: trials 9, 10 (8..9); t=9: 10 done,
    # the third (9..13); t=13: 3 done at tier 1, the 16 s run: 29
    assert halving_makespan([[1.0] * 10, [4.0] * 3, [16.0]], 2, 3) == 29.0
    # a resumed search whose first tier has 2 runs left (of 10, 8 finished): 2 promotions start at once (0..4), the
    # third waits for the last first-tier run (2..6), then the 16 s run: 22, not the 36 of waiting for 9 more
    assert halving_makespan([[1.0] * 2, [4.0] * 3, [16.0]], 3, 3) == 22.0
    for slots in (1, 2, 5, 39):  # never under the chain of one run per tier, nor under device time / slots
        wall = halving_makespan(plan, slots, 3)
        assert wall >= 21 * hour and wall >= sum(map(sum, plan)) / slots


def test_the_estimate_command_plans_several_tiers_as_the_search_does(monkeypatch, capsys):
    from harness.cli import estimate as cli

    seen = {}

    def fake(archs, tiers, **kwargs):  # the arithmetic after the bursts, at made-up per-tier costs
        seen.update(kwargs, archs=archs)
        return {"device": {"name": "cpu", "type": "cpu"}, "task": "shapes", "runs": [], "notes": [],
                "measured_seconds": 0.0, "study": {"runs": 0, "slots": 1, "device_hours": 0.0, "wall_seconds": 0.0}}

    monkeypatch.setattr("harness.measure.estimate.estimate", fake)
    from harness.cli.main import main

    assert main(["estimate", "--task", "shapes", "--tier", "smoke,demo,small", "--trials", "27", "--device",
                 "cpu", "--reduction", "3"]) == 0
    assert seen["trials"] == {"smoke": 27, "demo": 9, "small": 3} and seen["reduction"] == 3
    assert main(["estimate", "--task", "shapes", "--tier", "smoke", "--trials", "27", "--device", "cpu"]) == 0
    assert seen["trials"] == 27
    assert seen["archs"] == ["standard", "full_attn", "no_attn"]  # with --trials: the search's baselines
    capsys.readouterr()
    assert cli.devices_note(1) == [] and cli.devices_note(None) == []
    (note,) = cli.devices_note(4)
    assert "one process" in note and "--devices 4" in note and "not modelled" in note


def test_a_search_over_tiers_prices_every_promotion_and_waits_for_it(monkeypatch):
    from harness.measure import estimate as est

    costs = {"smoke": 100.0, "demo": 400.0}

    def measure(self, arch, tier):
        predicted = {p: 0.0 for p in PIECES}
        predicted.update(training=costs[tier], total=costs[tier])
        return {"arch": arch, "tier": tier, "predicted": predicted, "reference_file": "ref"}

    monkeypatch.setattr(est.Estimator, "measure", measure)
    result = est.estimate(["standard"], ["smoke", "demo"], task="shapes", trials={"smoke": 9, "demo": 3}, slots=12,
                          reduction=3)
    study = result["study"]
    assert study["runs"] == 12 and study["device_seconds"] == 9 * 100 + 3 * 400
    assert study["wall_seconds"] == 100 + 400 and "promoted in finishing order" in study["schedule"]
    text = __import__("harness.cli.estimate", fromlist=["x"]).estimate_text(
        dict(result, runs=[], device={"name": "cpu", "type": "cpu"}, measured_seconds=0.0))
    assert "9 at smoke, 3 at demo as planned by successive halving" in text and "0:08:20 wall on 12" in text


def test_the_sampling_burst_splits_a_batch_into_fixed_and_per_step_costs(tiny_arch):
    """The burst times 2 and 6 DDIM steps: the slope is a step, the intercept the batch's fixed cost (generators,
    noise, scheduler, to_uint8), and a batch at the task's steps is fixed + steps x step, not a 3-step timing
    scaled by steps/3. How close that is to a timed whole batch is a measurement, not a test (timings on a shared
    VM): docs/estimate/sampling_burst.py prints it, and docs/estimate.md gives the figures."""
    import types

    import torch

    from harness.measure import bursts
    from harness.protocol import registry
    from harness.protocol.recipe import recipe_for

    spec = resolve_task("shapes", "smoke", {"sampling.steps": 50})
    device = torch.device("cpu")
    _, model = registry.load(str(tiny_arch), {"BLOCK_OUT_CHANNELS": "16"}, device, 0, spec.data.image_size)
    trainer = types.SimpleNamespace(ema_model=lambda: model, recipe=recipe_for(spec, device))
    burst = bursts.sampling_burst(trainer, spec, device)
    assert burst["sampling_steps_timed"] == [2, 6] and burst["sampling_fixed_seconds"] >= 0
    assert burst["sampling_step_seconds"] > 0
    assert burst["sampling_batch_seconds"] == pytest.approx(
        burst["sampling_fixed_seconds"] + 50 * burst["sampling_step_seconds"])
