"""Files the harness reads cannot run code (issue 36, item 7): checkpoints are read with torch's restricted
unpickler; one that needs Python's own is refused, naming --trust-checkpoint, which rewrites a trusted one.

The crafted checkpoint below is a real run's state plus one object whose unpickling touches a marker file: the
test first shows that the ordinary loader does touch it, then that `run` (resuming) and `export-model` refuse the
file and leave the marker absent.
"""
import ast
import copy
import json
import pathlib
import re
import shutil
import textwrap

import numpy as np
import pytest
import torch
from conftest import FAST, TINY_ARCH

from harness.cli.main import main
from harness.errors import HarnessError, RunInterrupted
from harness.launch import run
from harness.run import checkpoints

RUN = ("shapes", "tiny", "smoke", "seed42")


class TouchesWhenUnpickled:
    """What an attacker puts in a checkpoint: unpickling it calls Path.touch(marker) (os.system would do as well)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """(architecture file, results folder) of a tiny run stopped at step 2: checkpoint.pt at step 2, a record."""
    arch = tmp_path_factory.mktemp("arch") / "tiny.py"
    arch.write_text(textwrap.dedent(TINY_ARCH))
    results = tmp_path_factory.mktemp("interrupted")
    with pytest.raises(RunInterrupted):
        run("shapes", str(arch), "smoke", device="cpu", results_dir=results, overrides=FAST, progress=False,
            log=lambda message: None, should_stop=lambda step: step == 2)
    return arch, results


@pytest.fixture
def copy_of(interrupted, tmp_path):
    """A copy of the interrupted run for one test: (architecture file, results folder, run folder)."""
    arch, results = interrupted
    shutil.copytree(results, tmp_path / "results")
    return arch, tmp_path / "results", (tmp_path / "results").joinpath(*RUN)


def _cli_run(arch, results, *extra):
    return ["run", "--task", "shapes", "--arch", str(arch), "--tier", "smoke", "--device", "cpu", "--results-dir",
            str(results), "--no-progress", *extra, *[f"--set={key}={json.dumps(value)}" for key, value in FAST.items()]]


def test_a_checkpoint_that_would_run_code_is_refused_by_run_and_export_model(copy_of, tmp_path, capsys):
    arch, results, folder = copy_of
    marker = tmp_path / "code-ran"
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    torch.save(dict(state, note=TouchesWhenUnpickled(marker)), folder / "checkpoint.pt")
    torch.load(folder / "checkpoint.pt", weights_only=False)  # the ordinary loader runs it: the file is live
    assert marker.exists()
    marker.unlink()
    for argv in (_cli_run(arch, results), ["export-model", str(folder), "--out", str(tmp_path / "exported")]):
        code = main(argv)  # the command's entry point, in this process: code the file ran would touch the marker
        err = capsys.readouterr().err
        said = " ".join(err.split())  # the CLI wraps its messages
        assert code == 2, err
        assert f"The checkpoint {folder / 'checkpoint.pt'} holds objects" in said and "pathlib.Path" in said, said
        assert "could run any code" in said and "pass --trust-checkpoint once" in said and "Traceback" not in said
        assert not marker.exists(), f"`harness {argv[0]}` ran the checkpoint's code"
    assert not (tmp_path / "exported").exists()
    # the previous checkpoint is read as carefully when the latest is damaged
    shutil.copy(folder / "checkpoint.pt", folder / "checkpoint.prev.pt")
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HarnessError, match=r"checkpoint\.prev\.pt holds objects .* --trust-checkpoint"):
        checkpoints.load(folder, log=lambda message: None)
    assert not marker.exists()


def test_trust_checkpoint_rewrites_a_trusted_old_checkpoint_and_the_run_resumes(copy_of, tmp_path, capsys):
    arch, results, folder = copy_of
    # what an older harness might have saved: numpy where tensors and floats are now
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    state["trainer"]["batches"]["order"] = state["trainer"]["batches"]["order"].numpy()
    state["totals"] = {key: np.float64(value) for key, value in state["totals"].items()}
    torch.save(state, folder / "checkpoint.pt")
    assert main(_cli_run(arch, results)) == 2
    assert "pass --trust-checkpoint once" in " ".join(capsys.readouterr().err.split())
    assert main(_cli_run(arch, results, "--trust-checkpoint")) == 0
    out = capsys.readouterr().out
    assert f"{folder / 'checkpoint.pt'} was read with Python's unrestricted unpickler and rewritten" in out
    assert "Resuming" in (folder / "run.log").read_text() and "from its checkpoint at step 2" in out + (
        folder / "run.log").read_text()
    # resumed to the bit: the converted batch order is the one the run would have used
    straight = run("shapes", str(arch), "smoke", device="cpu", results_dir=tmp_path / "straight", overrides=FAST,
                   progress=False, log=lambda message: None)
    resumed = json.loads((folder / "record.json").read_text())
    assert resumed["status"] == "completed" and resumed["loss_curve"] == [list(p) for p in straight.loss_curve]
    assert resumed["final_fid"] == straight.final_fid
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        torch.load(folder / name, weights_only=True)  # what the run wrote since, safe too


def test_a_runs_checkpoints_hold_only_what_the_safe_loader_reads(interrupted):
    _, results = interrupted
    state = torch.load(results.joinpath(*RUN, "checkpoint.pt"), weights_only=True)
    assert state["trainer"]["step"] == 2 and isinstance(state["trainer"]["torch_rng"], torch.Tensor)
    assert checkpoints.safe_form(state, "state") is state  # nothing in it needed converting


def test_safe_form_converts_numpy_keeps_state_dicts_and_names_what_it_cannot_store(tmp_path):
    module_state = torch.nn.Linear(2, 2).state_dict()
    out = checkpoints.safe_form({"m": module_state, "fid": np.float32(1.5), "a": [np.arange(3)]}, "state")
    assert out["m"] is module_state and out["fid"] == 1.5 and type(out["fid"]) is float
    assert torch.equal(out["a"][0], torch.arange(3))
    with_numpy = copy.copy(module_state)  # an OrderedDict with its _metadata
    with_numpy["n"] = np.int64(3)
    converted = checkpoints.safe_form({"m": with_numpy}, "state")["m"]
    assert converted is not with_numpy and converted["n"] == 3 and type(converted["n"]) is int
    assert converted._metadata == module_state._metadata  # load_state_dict's version information kept
    with pytest.raises(TypeError, match=r"state\['trainer'\]\['x'\] is a test_safe_files.TouchesWhenUnpickled"):
        checkpoints.save(tmp_path, {"trainer": {"x": TouchesWhenUnpickled(tmp_path / "m")}})
    assert not checkpoints.exists(tmp_path)  # nothing written


def test_a_garbled_checkpoint_is_still_damage_not_distrust(tmp_path):
    checkpoints.save(tmp_path, {"trainer": {"step": 2}})
    checkpoints.save(tmp_path, {"trainer": {"step": 4}})
    (tmp_path / "checkpoint.pt").write_bytes(b"\x80\x02garbled" * 100)
    logs = []
    assert checkpoints.load(tmp_path, logs.append)["trainer"]["step"] == 2
    assert "Resuming from the previous checkpoint" in logs[0] and (tmp_path / "checkpoint.pt.corrupt").exists()


def test_export_model_builds_no_file_only_because_a_record_names_it(copy_of, tmp_path, capsys):
    """A run folder from elsewhere may carry a record naming a file beside it: export-model refuses to build a
    file outside the architectures folder until the user names it with --arch."""
    arch, results, folder = copy_of
    marker = tmp_path / "code-ran"
    planted = folder / "planted.py"
    planted.write_text(textwrap.dedent(TINY_ARCH) + f"\nimport pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    record = json.loads((folder / "record.json").read_text())
    (folder / "record.json").write_text(json.dumps(dict(record, arch_file=str(planted))))
    argv = ["export-model", str(folder), "--out", str(tmp_path / "out"), "--which", "last"]
    code = main(argv)  # in this process: a file built only because the record names it would touch the marker
    err = capsys.readouterr().err
    said = " ".join(err.split())
    assert code == 2 and "Traceback" not in said, err
    assert f"names the architecture file {planted}, which is not in the architectures folder" in said
    assert f"pass it: --arch {planted}" in said and not marker.exists()
    assert main(argv + ["--arch", str(arch)]) == 0, capsys.readouterr().err  # the file the user names is built
    assert json.loads((tmp_path / "out" / "harness_export.json").read_text())["step"] == 2
    assert not marker.exists()


def test_export_writes_a_studys_trial_without_running_the_code_the_study_holds(tmp_path, capsys):
    """A study stores its space's source; `export` writes it into the file as text, checked against the
    hash the search recorded and compared with the space file, and takes the trial's choices from the
    trial's stored values, so a study edited to run code on load runs nothing."""
    import hashlib

    import optuna

    from harness.search import space
    from harness.search.driver import SearchSpec, settings_for
    from harness.search.study import open_storage, open_study, storage_url

    marker = tmp_path / "code-ran"
    settings = settings_for(SearchSpec(task="shapes", tier="smoke", study="s", results_dir=tmp_path))
    study = open_study(settings, open_storage(storage_url(None, tmp_path, "s")))
    choices = space.baseline("standard", 1)
    dist = {name: optuna.distributions.CategoricalDistribution(options) for name, options in space.CHOICES.items()}
    odd = 'conv"""\nimport os; os.system("touch x")  # \\'  # a value that would end a docstring or a literal
    for attrs in ({"choices": choices}, {}, {"choices": dict(choices, resample=odd)},
                  {"choices": dict(choices, resample=float("nan"))}):
        study.add_trial(optuna.trial.create_trial(params=choices, distributions=dist, values=[300.0],
                                                  user_attrs=attrs))

    def export(number, *extra):
        code = main(["export", "--study", "s", "--results-dir", str(tmp_path), "--trial", str(number), "--out-dir",
                     str(tmp_path), "--name", f"t{number}", *extra])
        said = capsys.readouterr()
        return code, " ".join((said.out + said.err).split())

    code, said = export(0)
    assert code == 0 and "note:" not in said, said  # the stored code is the space file's, byte for byte
    assert f"byte for byte {settings.space.path}" in " ".join((tmp_path / "t0.py").read_text().split())
    code, said = export(1)  # a trial from before choices were stored: only the user's own space file rebuilds it
    assert code == 2 and "a study is data and the harness does not run it. Pass --space" in said, said
    edited = tmp_path / "edited_space.py"
    edited.write_text(settings.space.source + "\n# edited\n")
    code, said = export(1, "--space", str(edited))
    assert code == 2 and "is not the space study 's' was searched with" in said, said
    assert export(1, "--space", str(settings.space.path))[0] == 0
    chosen = [re.search(r"\nCHOSEN = (\{.*?\n\})", (tmp_path / f"t{n}.py").read_text(), re.S).group(1) for n in (0, 1)]
    assert chosen[0] == chosen[1] and ast.literal_eval(chosen[0]) == choices  # stored or rebuilt: the same values

    assert export(2)[0] == 0  # any string is a literal through repr(), and is escaped in the docstring
    tree = ast.parse((tmp_path / "t2.py").read_text())
    assert f"resample = {odd!r}" in ast.get_docstring(tree)  # as repr() writes it
    [chosen] = [n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "CHOSEN"]
    assert ast.literal_eval(chosen) == dict(choices, resample=odd)
    assert [n.names[0].name for n in tree.body if isinstance(n, ast.Import)] == ["os"]  # `import os as _os` only
    code, said = export(3)
    assert code == 2 and "are not plain values (resample)" in said, said

    tampered = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n" + settings.space.source
    study.set_user_attr("space_source", tampered)
    code, said = export(0, "--force")  # the code is not the code the search ran: nothing is written
    assert code == 2 and "is not the code the search ran" in said, said
    assert "pathlib.Path(" not in (tmp_path / "t0.py").read_text()
    attrs = dict(study.user_attrs["harness"], space_sha256=hashlib.sha256(tampered.encode()).hexdigest())
    study.set_user_attr("harness", attrs)  # hash edited too: written, with where the code came from said
    code, said = export(0, "--force")
    assert code == 0 and "note: The space's code below is the copy stored in the study" in said, said
    assert f"{settings.space.path}, has changed since" in said and "read the code before running it" in said
    assert f"pathlib.Path({str(marker)!r}).touch()" in (tmp_path / "t0.py").read_text()  # written, not run
    assert not marker.exists()
