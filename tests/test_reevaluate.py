"""`harness evaluate`: a finished run's kept weights sampled with a sampler grid, without training, give the
grid results the same grid gives when computed during training (the same weights, seeds and noise)."""
import json

import pytest
from conftest import FAST

from harness.cli.main import main
from harness.errors import HarnessError
from harness.launch import run
from harness.run.reevaluate import evaluate_run

GRID = ["ddim:3", "dpmpp_2m:3", "unipc:4"]


def _run(arch, results, overrides):
    return run("shapes", str(arch), "smoke", device="cpu", results_dir=results, overrides=dict(FAST, **overrides),
               progress=False, log=lambda msg: None)


def _scores(samplers):
    return {key: {k: v for k, v in got.items() if k not in ("sample_seconds", "feature_seconds",
                                                            "added_after_training")}
            for key, got in samplers.items()}


@pytest.mark.slow  # three runs and two grid evaluations: about 60 s on 2 cores
def test_evaluate_adds_the_grid_training_would_have_computed_to_a_finished_run(tiny_arch, tmp_path, capsys):
    points = {"evaluation.eval_points": [2]}
    trained_with = _run(tiny_arch, tmp_path / "a", dict(points, **{"samplers.grid": GRID}))
    plain = _run(tiny_arch, tmp_path / "b", points)
    assert "samplers" not in plain.evaluations[-1]
    folder = tmp_path / "b" / "shapes" / "tiny" / "smoke" / "seed42"
    saved = json.loads((folder / "record.json").read_text())  # as a record from before the grid existed says it
    del saved["config"]["samplers"]
    (folder / "record.json").write_text(json.dumps(saved))
    logs = []
    record = evaluate_run(folder, {"samplers.grid": GRID}, arch=str(tiny_arch), log=logs.append, progress=False)
    final = record.evaluations[-1]
    assert _scores(final["samplers"]) == _scores(trained_with.evaluations[-1]["samplers"])
    assert all(got["added_after_training"]["weights"] == "last checkpoint's EMA weights"
               for got in final["samplers"].values())
    saved = json.loads((folder / "record.json").read_text())
    assert saved["evaluations"][-1]["samplers"] == final["samplers"] and saved["status"] == "completed"
    assert [e["fid"] for e in saved["evaluations"]] == [e["fid"] for e in plain.evaluations]  # untouched
    mark = final["samplers"]["ddim:3"]["added_after_training"]
    assert (mark["device"], mark["sampling_precision"]) == ("cpu", "fp32") and mark["reference"].startswith("computed")
    resumed = _run(tiny_arch, tmp_path / "b", points)  # the run's own command again: what was added stays
    assert _scores(resumed.evaluations[-1]["samplers"]) == _scores(final["samplers"])
    assert json.loads((folder / "record.json").read_text())["evaluations"][-1]["samplers"] == final["samplers"]
    if record.best_step != record.step:  # the best evaluation's kept weights are sampled at their own step
        best = next(e for e in saved["evaluations"] if e["step"] == record.best_step)
        assert list(best["samplers"]) == GRID
    # asked again: nothing to do; --again computes the same numbers
    logs.clear()
    evaluate_run(folder, {"samplers.grid": GRID}, arch=str(tiny_arch), log=logs.append, progress=False)
    assert any("has every pair already" in line for line in logs)
    again = evaluate_run(folder, {"samplers.grid": GRID[:1]}, arch=str(tiny_arch), again=True, progress=False,
                         log=logs.append)
    assert _scores(again.evaluations[-1]["samplers"]) == _scores(final["samplers"])

    # what may not be set, and a run without a grid asked for none: clear errors, no traceback
    code = main(["evaluate", str(folder), "--arch", str(tiny_arch), "--set", "training.steps=8"])
    said = capsys.readouterr().err
    assert code == 2 and "`evaluate --set training.steps=...` is refused" in said and "Traceback" not in said
    with pytest.raises(HarnessError, match="nothing to evaluate: the run's task has no sampler grid"):
        evaluate_run(folder, {}, arch=str(tiny_arch), progress=False)
    with pytest.raises(HarnessError, match="samplers.grid entry 'euler:10'"):
        evaluate_run(folder, {"samplers.grid": ["euler:10"]}, arch=str(tiny_arch), progress=False)
    other = json.loads((folder / "record.json").read_text())
    other["reference"]["source"] = "clean-fid precomputed cifar10/train/32"  # evaluated elsewhere against another
    (folder / "record.json").write_text(json.dumps(other))
    with pytest.raises(HarnessError, match="would not be comparable with its own"):
        evaluate_run(folder, {"samplers.grid": ["unipc:3"]}, arch=str(tiny_arch), progress=False)
