"""Architecture search: real Optuna studies (SQLite files) whose trials are real runs on a local Ray
instance, driven with `python -m harness search` as users drive it; the study read back with
Optuna's own CLI; exported winners run with `python -m harness run`."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from conftest import FAST, SLOW_ARCH, TINY_ARCH

from harness.protocol import registry
from harness.protocol.tasks import resolve_task, tier_names
from harness.run.records import RunRecord
from harness.search import export, space
from harness.search.space_file import load_space

# A space of tiny denoisers (the width is the one choice): conftest's slowed tiny denoiser, whose
# training steps take ~0.25 s so that a test can act while a trial trains; no baselines.
TINY_SPACE = SLOW_ARCH + '''

def suggest(trial):
    return {"channels": trial.suggest_categorical("channels", [4, 8])}


def build(choices, block_out_channels, device="cpu"):
    return Tiny(choices["channels"]).to(device)
'''

# Tiny denoisers of 2 to 12 channels whose output layer starts scaled by a factor: every point
# distinct (a float), each training to an FID of its own.
WIDTH_SPACE = TINY_ARCH.split("\n\ndef build_model")[0] + '''

def suggest(trial):
    return {"channels": trial.suggest_int("channels", 2, 12), "scale": trial.suggest_float("scale", 0.5, 2.0)}


def build(choices, block_out_channels, device="cpu"):
    model = Tiny(choices["channels"])
    with torch.no_grad():
        model.out.weight.mul_(choices["scale"])
    return model.to(device)
'''


def _settings_args(overrides):
    fast = dict(FAST, **(overrides or {}))
    args = ["--steps", str(fast.pop("training.steps"))]
    for key, value in fast.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def search_command(results, *args, overrides=None, estimate=False):
    """`python -m harness search` on shapes/smoke with the fast test settings, CPU, one thread per trial
    (without measuring its estimate first unless ``estimate``)."""
    return [sys.executable, "-m", "harness", "search", "--task", "shapes", "--tier", "smoke", "--results-dir",
            str(results), "--cpus-per-trial", "1", "--device", "cpu", "--no-progress",
            *([] if estimate else ["--no-estimate"]), *_settings_args(overrides), *args]


def harness(*args):
    """`python -m harness ARGS` through its entry point (harness.cli.main.main) in this process, its output caught:
    the checks that read a study's status, export a trial, run or report need no process of their own (the studies
    themselves run as `python -m harness search` processes)."""
    from harness.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def optuna_cli(*args):
    out = subprocess.run(["optuna", *args, "-f", "json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _params(model):
    return sum(p.numel() for p in model.parameters())


# -- without Ray ------------------------------------------------------------------------------------


@pytest.mark.parametrize("searched_at", ["smoke", "small"])
def test_an_exported_baseline_equals_its_file_at_every_tier(searched_at, tmp_path, monkeypatch):
    """The exported file follows the tier's widths and depth exactly as the baseline file does."""
    default = load_space()
    at = resolve_task("cifar10", searched_at).model
    text = export.render(default.source, "space.py", space.baseline("standard", at.layers_per_block),
                         at.block_out_channels, at.layers_per_block, title="t", about="a")
    path = tmp_path / "exported_standard.py"
    path.write_text(text)
    assert "harness" not in text.split('"""', 2)[2]  # no harness import in the code
    for tier in tier_names("cifar10"):
        env = resolve_task("cifar10", tier).width_env
        assert (registry.parameter_count(registry.find_architecture(str(path)), env)
                == registry.parameter_count(registry.find_architecture("standard"), env)), tier


@pytest.mark.parametrize("args, message", [
    (["--space", "{broken}"], "a syntax error at line 1"),
    (["--space", "{no_build}"], "it does not define build()"),
    (["--space", "{imports_harness}"], "it imports the harness"),
    (["--space", "{missing}"], "does not exist"),
    (["--storage", "nosuchdialect://x/y"], "Cannot open the study storage"),
    (["--storage", "sqlite:////proc/no/such/study.db"], "Cannot open the study storage"),
    (["--objectives", "fid,gflops", "--pruner", "median"], "Optuna does not prune multi-objective studies"),
    (["--objectives", "gflops"], "is not one of: fid, fid,gflops"),
    (["--study", "../x"], "a study name is letters"),
    (["--trials", "0"], "at least one trial"),
])
def test_bad_search_input_is_a_clear_error(args, message, tmp_path, capsys):
    from harness.cli.main import main

    files = {"broken": "def suggest(trial:\n", "no_build": "def suggest(trial):\n    return {}\n",
             "imports_harness": "from harness.search.space import *\n", "missing": None}
    for name, text in files.items():
        if text is not None:
            (tmp_path / f"{name}.py").write_text(text)
    args = [a.format(**{n: tmp_path / f"{n}.py" for n in files}) for a in args]
    code = main(["search", "--task", "shapes", "--tier", "smoke", "--results-dir", str(tmp_path), *args])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and message in err and "Traceback" not in err, err


def test_a_study_reopened_with_other_settings_is_refused(tmp_path):
    from harness.errors import HarnessError
    from harness.search.driver import SearchSpec, settings_for
    from harness.search.study import open_storage, open_study, storage_url

    spec = SearchSpec(task="shapes", tier="smoke", trials=3, study="s", results_dir=tmp_path)
    storage = open_storage(storage_url(None, tmp_path, "s"))
    open_study(settings_for(spec), storage)
    other = SearchSpec(**{**spec.__dict__, "objectives": "fid,params"})
    with pytest.raises(HarnessError, match="was made with other settings .*objectives"):
        open_study(settings_for(other), storage)


def test_a_journal_file_is_a_storage_optunas_cli_reads(tmp_path):
    from harness.search.driver import SearchSpec, settings_for
    from harness.search.study import open_storage, open_study

    journal = str(tmp_path / "shared" / "study.journal")
    spec = SearchSpec(task="shapes", tier="smoke", study="j", storage=journal, results_dir=tmp_path)
    open_study(settings_for(spec), open_storage(journal))
    open_study(settings_for(spec), open_storage(journal))  # the same settings open it again
    assert [s["name"] for s in optuna_cli("studies", "--storage", journal)] == ["j"]


def test_export_best_of_a_two_objective_study_shows_the_pareto_set_and_asks_for_a_trial(tmp_path):
    from harness.search.driver import SearchSpec, settings_for
    from harness.search.study import open_storage, open_study, storage_url

    spec = SearchSpec(task="shapes", tier="smoke", study="pareto", objectives="fid,params", results_dir=tmp_path)
    study = open_study(settings_for(spec), open_storage(storage_url(None, tmp_path, "pareto")))
    dist = {"attn_16": optuna.distributions.CategoricalDistribution([False, True])}
    for values in ([300.0, 2e6], [350.0, 1e6], [400.0, 3e6]):  # the third is dominated
        study.add_trial(optuna.trial.create_trial(params={"attn_16": True}, distributions=dist, values=values))
    out = harness("export", "--study", "pareto", "--results-dir", str(tmp_path), "--best")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "Pareto set" in out.stdout and "trials 0, 1" in " ".join(out.stderr.split()) and "--trial N" in out.stderr


# -- studies on Ray ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_five_trial_study_completes_reads_back_with_optuna_and_exports_its_winner(tmp_path):
    results = tmp_path / "results"
    overrides = {"evaluation.eval_points": [1], "training.steps": 2, "training.batch_size": 4}
    out = subprocess.run(search_command(results, "--trials", "5", overrides=overrides, estimate=True),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    # before the first trial: what the 5 trials will cost, from the baselines measured at these settings
    estimate = out.stdout.index("Predicted wall time of each run")
    assert out.stdout.index("Study shapes-smoke-fid:") < estimate < out.stdout.index("trial 0")
    # the estimate's text (harness/cli/estimate.py's estimate_text, as `harness estimate --trials` prints it): every
    # piece of each baseline's run, and the search priced as its trials at the baselines' mean
    for word in ("standard", "full_attn", "no_attn", "training", "sampling", "features", "scoring", "other",
                 "5 runs (5 trials per tier", "device-hours", "wall on 2 at once", "Measured for"):
        assert word in out.stdout[estimate:out.stdout.index("trial 0")], word
    url = f"sqlite:///{results}/studies/shapes-smoke-fid.db"
    assert [s["name"] for s in optuna_cli("studies", "--storage", url)] == ["shapes-smoke-fid"]
    trials = optuna_cli("trials", "--storage", url, "--study-name", "shapes-smoke-fid")
    counted = [t for t in trials if not t["user_attrs"].get("infeasible")]
    assert len(counted) == 5 and all(t["state"] == "COMPLETE" for t in counted)
    assert all("no attention head" in t["user_attrs"]["failure"] for t in trials if t not in counted)
    # the baselines come first, unchanged: their parameter counts are the baseline files'
    smoke = resolve_task("shapes", "smoke").width_env
    for trial, name in zip(trials[:3], ["standard", "full_attn", "no_attn"]):
        attrs = trial["user_attrs"]
        assert attrs["baseline"] == name
        assert attrs["param_count"] == registry.parameter_count(registry.find_architecture(name), smoke)
    for trial in counted:  # every trial is a harness run, with its record where the study says
        attrs = trial["user_attrs"]
        record = RunRecord.load(Path(attrs["run_folder"]) / "record.json")
        assert record.status == "completed" and record.best_fid == trial["value"] == attrs["best_fid"]
        assert (attrs["param_count"], attrs["gmacs"], attrs["best_step"]) == (
            record.param_count, record.profile["gmacs"], record.best_step)
    best = optuna_cli("best-trial", "--storage", url, "--study-name", "shapes-smoke-fid")
    status = json.loads(harness("search", "--task", "shapes", "--tier", "smoke", "--results-dir", str(results),
                                "--status", "--json").stdout)
    assert status["best"][0]["trial"] == best["number"] and status["counts"]["COMPLETE"] == 5

    # the same command again: nothing to do, and the baselines are not enqueued a second time
    again = subprocess.run(search_command(results, "--trials", "5", overrides=overrides), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "nothing to run" in again.stdout
    assert len(optuna_cli("trials", "--storage", url, "--study-name", "shapes-smoke-fid")) == len(trials)

    # export the winner: a standalone file with the trial's parameter count, that `run` trains
    archs = tmp_path / "archs"
    archs.mkdir()
    exported = harness("export", "--study", "shapes-smoke-fid", "--results-dir", str(results), "--best",
                       "--name", "winner", "--out-dir", str(archs))
    assert exported.returncode == 0, exported.stderr
    text = (archs / "winner.py").read_text()
    assert "import harness" not in text and "from harness" not in text
    assert f"trial {best['number']} of the architecture search 'shapes-smoke-fid'" in text
    winner = registry.find_architecture(str(archs / "winner.py"))
    assert registry.parameter_count(winner, smoke) == best["user_attrs"]["param_count"]
    ran = harness("run", "--task", "shapes", "--arch", str(archs / "winner.py"), "--tier", "smoke", "--device", "cpu",
                  "--results-dir", str(tmp_path / "exported-run"), "--no-progress", *_settings_args(overrides))
    assert ran.returncode == 0, ran.stderr
    assert RunRecord.load(tmp_path / "exported-run/shapes/winner/smoke/seed42/record.json").param_count == \
        best["user_attrs"]["param_count"]

    # the report shows the study, and names each trial's leaderboard row by its trial and study
    report = harness("report", "--results-dir", str(results), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    board = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "## Study shapes-smoke-fid" in board
    assert all(f"| trial {t['number']} of study shapes-smoke-fid: " in board for t in counted), board


@pytest.mark.slow
def test_a_trial_worse_than_the_median_is_pruned_at_once_with_a_checkpoint(tmp_path):
    """The constructed case: five earlier trials with an impossibly good FID (1.0) at every
    evaluation point; a real trial's FID is far above that median at its first point."""
    from harness.search.driver import SearchSpec, settings_for
    from harness.search.study import open_storage, open_study, storage_url

    results, space_file = tmp_path / "results", tmp_path / "tiny_space.py"
    space_file.write_text(TINY_SPACE)
    overrides = {"training.steps": 40, "evaluation.eval_points": [2, 20]}
    spec = SearchSpec(task="shapes", tier="smoke", study="prune", space=str(space_file), results_dir=results,
                      overrides={k: v for k, v in dict(FAST, **overrides).items()})
    study = open_study(settings_for(spec), open_storage(storage_url(None, results, "prune")))
    dist = {"channels": optuna.distributions.CategoricalDistribution([4, 8])}
    for _ in range(5):
        study.add_trial(optuna.trial.create_trial(params={"channels": 4}, distributions=dist, value=1.0,
                                                  intermediate_values={2: 1.0, 20: 1.0, 40: 1.0}))
    out = subprocess.run(search_command(results, "--study", "prune", "--space", str(space_file), "--trials", "6",
                                        overrides=overrides), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    trial = optuna_cli("trials", "--storage", storage_url(None, results, "prune"), "--study-name", "prune")[-1]
    assert trial["state"] == "PRUNED" and trial["number"] == 5, trial
    record = RunRecord.load(Path(trial["user_attrs"]["run_folder"]) / "record.json")
    # stopped within a few steps of its first evaluation (step 2), far short of 40, with a checkpoint
    assert record.status == "interrupted" and 2 <= record.step < 20
    assert (Path(trial["user_attrs"]["run_folder"]) / "checkpoint.pt").exists()
    assert "pruning    trial 5: FID" in out.stdout


@pytest.mark.slow
def test_a_killed_driver_resumes_its_study_without_duplicates_or_running_trials(tmp_path):
    results, space_file = tmp_path / "results", tmp_path / "tiny_space.py"
    space_file.write_text(TINY_SPACE)
    overrides = {"training.steps": 16}
    # two objectives: NSGA-II, which the resumed driver must load the study with again
    command = search_command(results, "--study", "resume", "--space", str(space_file), "--trials", "2",
                             "--max-parallel", "1", "--objectives", "fid,params", overrides=overrides)
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    folder = results / "shapes/resume_t0000/smoke/seed42"
    deadline = time.monotonic() + 300
    while not (folder / "record.json").exists() or RunRecord.load(folder / "record.json").step < 6:
        assert driver.poll() is None and time.monotonic() < deadline, (tmp_path / "driver.log").read_text()
        time.sleep(0.5)
    os.kill(driver.pid, signal.SIGKILL)  # the driver only, as a lost SSH session would
    driver.wait()
    url = storage_url_of(results, "resume")
    assert [t["state"] for t in optuna_cli("trials", "--storage", url, "--study-name", "resume")] == ["RUNNING"]

    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming   trial 0" in out.stdout
    trials = optuna_cli("trials", "--storage", url, "--study-name", "resume")
    assert [(t["number"], t["state"]) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
    for trial in trials:  # the values told are the run's best FID and its parameter count
        attrs = trial["user_attrs"]
        assert trial["values"] == [attrs["best_fid"], attrs["param_count"]]
    status = json.loads(harness("search", "--task", "shapes", "--tier", "smoke", "--results-dir", str(results),
                                "--study", "resume", "--space", str(space_file), "--objectives", "fid,params",
                                *_settings_args(overrides), "--status", "--json").stdout)
    assert status["kind"] == "pareto" and status["settings"]["sampler"] == "nsga2"
    log = (folder / "run.log").read_text()
    assert "Resuming" in log  # from its checkpoint, not from step 0
    record = RunRecord.load(folder / "record.json")
    logged = [step for step, _ in record.loss_curve]
    assert record.step == 16 and logged == sorted(set(logged))  # no step trained (and logged) twice


def storage_url_of(results, study):
    return f"sqlite:///{results}/studies/{study}.db"


RUNG_NAMES = ("halving", "halving.small", "halving.medium")


def _when(trial, key):
    return datetime.fromisoformat(trial[key])


def _check_promotions(rungs):
    """Each promoted trial was, when it started, among the top third (distinct points, best completed
    value) of the rung below's finished trials, and a point runs at most once per tier above the first;
    at the end the top third of each rung's finished points is in the next rung."""
    for below, rung in zip(rungs, rungs[1:]):
        by_number = {t["number"]: t for t in below}
        assert len({json.dumps(t["params"], sort_keys=True) for t in rung}) == len(rung)  # never twice
        assert len({t["user_attrs"]["run_folder"] for t in rung}) == len(rung)
        for trial in rung:
            source = by_number[trial["user_attrs"]["source_trial"]]
            assert source["params"] == trial["params"] and source["state"] == "COMPLETE"
            before = [t for t in below if t["datetime_complete"] and _when(t, "datetime_complete")
                      < _when(trial, "datetime_start")]
            assert source in before and source["number"] in _top_third(before), (trial, before)
        held = {json.dumps(t["params"], sort_keys=True) for t in rung}
        assert all(json.dumps(by_number[n]["params"], sort_keys=True) in held for n in _top_third(below))


def _top_third(trials):
    """Trial numbers the driver's own rule (harness.search.rungs.promotions, reduction 3: the best completed
    trial of each of the top n // 3 of n finished distinct points) promotes from ``trials``, the CLI's rows
    read as Optuna's trials. tests/test_rungs.py checks that rule against known values; this checks that the
    driver applied it, at the right moments."""
    from harness.search.rungs import promotions

    seen = [SimpleNamespace(number=t["number"], params=t["params"], values=[t["value"]],
                            state=optuna.trial.TrialState[t["state"]], user_attrs=t.get("user_attrs") or {})
            for t in trials]
    return [t.number for t, _ in promotions(seen, [], reduction=3)]


@pytest.mark.slow
def test_successive_halving_promotes_the_top_third_at_once_and_survives_a_killed_driver(tmp_path):
    """9 points at smoke, the best 3 promoted to small and the best of those to medium, one trial at a
    time (so that the run with a killed driver can be compared with the run without)."""
    space_file = tmp_path / "width_space.py"
    space_file.write_text(WIDTH_SPACE)

    def command(results):
        return search_command(results, "--tier", "smoke,small,medium", "--reduction", "3", "--study", "halving",
                              "--space", str(space_file), "--trials", "9", "--max-parallel", "1",
                              overrides={"training.batch_size": 4})

    def read(results):
        """Each rung's trials as Optuna's CLI prints them, with the times to the microsecond (the CLI
        prints whole seconds, and a tiny run takes about one)."""
        url = storage_url_of(results, "halving")
        rungs = [optuna_cli("trials", "--storage", url, "--study-name", name) for name in RUNG_NAMES]
        for name, rung in zip(RUNG_NAMES, rungs):
            exact = {t.number: t for t in optuna.load_study(study_name=name, storage=url).trials}
            for trial in rung:
                for key in ("datetime_start", "datetime_complete"):
                    when = getattr(exact[trial["number"]], key)
                    trial[key] = when.isoformat() if when else None
        return rungs

    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    url = storage_url_of(tmp_path / "whole", "halving")
    assert sorted(s["name"] for s in optuna_cli("studies", "--storage", url)) == sorted(RUNG_NAMES)
    rungs = read(tmp_path / "whole")
    assert len(rungs[0]) == 9 and len(rungs[1]) >= 3 and len(rungs[2]) >= 1
    assert all(t["state"] == "COMPLETE" for rung in rungs for t in rung)
    _check_promotions(rungs)
    # asynchronous: the first promotion ran before the first tier's last trial had finished
    assert min(_when(t, "datetime_start") for t in rungs[1]) < max(_when(t, "datetime_complete") for t in rungs[0])
    for tier, rung in zip(("smoke", "small", "medium"), rungs):  # each an ordinary run of rung 0's file
        for trial in rung:
            origin = trial["user_attrs"].get("origin_trial", trial["number"])
            record = RunRecord.load(Path(trial["user_attrs"]["run_folder"]) / "record.json")
            assert (record.tier, record.arch, record.best_fid) == (tier, f"halving_t{origin:04d}", trial["value"])
    assert "promoted   trial 0 at small (trial " in whole.stdout

    status = json.loads(harness("search", "--task", "shapes", "--tier", "smoke,small,medium", "--study", "halving",
                                "--space", str(space_file), "--results-dir", str(tmp_path / "whole"),
                                *_settings_args({"training.batch_size": 4}), "--status", "--json").stdout)
    assert [(r["tier"], r["counts"]) for r in status["rungs"]] == [
        (tier, {"COMPLETE": len(rung)}) for tier, rung in zip(("smoke", "small", "medium"), rungs)]

    # the report compares the rungs' FIDs: the first tier as a proxy for the second
    report = harness("report", "--results-dir", str(tmp_path / "whole"), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    fidelity = (tmp_path / "report" / "leaderboard.md").read_text().split("## Proxy fidelity")[1]
    # (which of the two is the cheaper, and so the proxy, is up to the timings: these runs cost the same)
    assert any(row.count("| smoke") + row.count("| small") == 2 and "| 3 |" in row and "nan" not in row
               for row in fidelity.splitlines()), fidelity

    # the same search, its driver killed -9 between promotions (one finished at small, the first
    # tier's points all drawn): the same command continues it to the same runs
    results = tmp_path / "killed"
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(command(results), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (_finished_in(results, RUNG_NAMES[1]) and _drawn_in(results, RUNG_NAMES[0]) == 9):
        assert driver.poll() is None and time.monotonic() < deadline, (tmp_path / "driver.log").read_text()
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    at_kill = sum(state in ("COMPLETE", "PRUNED", "FAIL") for name in RUNG_NAMES
                  for state, _ in _trials_of(results, name))
    again = subprocess.run(command(results), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = read(results)
    assert at_kill < sum(len(rung) for rung in resumed)  # the driver was killed with work left
    _check_promotions(resumed)

    def runs(rungs):
        return [sorted((json.dumps(t["params"]), t["state"], t["value"]) for t in rung) for rung in rungs]
    assert runs(resumed) == runs(rungs)


def _trials_of(results, name):
    """(state, number of parameters) of each of a study's trials, read from its SQLite file without opening an
    Optuna storage (which would create the schema, racing the driver that is creating it)."""
    import sqlite3

    path = results / "studies" / "halving.db"
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return db.execute("SELECT trials.state, (SELECT COUNT(*) FROM trial_params WHERE trial_params.trial_id = "
                              "trials.trial_id) FROM trials JOIN studies USING (study_id) WHERE studies.study_name = ?",
                              (name,)).fetchall()
    except sqlite3.OperationalError:  # no file yet, or no tables yet
        return []


def _drawn_in(results, name):
    """How many of a study's trials hold all their parameters (channels and scale). A trial exists in the file
    a moment before its parameters do: a driver killed in that moment leaves a point half drawn, and the next
    driver's sampler (its random state started again from the seed) draws the rest anew, so that study would
    not be the uninterrupted one. The test kills the driver once all nine points are whole."""
    return sum(params == 2 for _, params in _trials_of(results, name))


def _finished_in(results, name):
    return any(state in ("COMPLETE", "PRUNED", "FAIL") for state, _ in _trials_of(results, name))
