"""Experiment trackers, read back with their own readers: TensorBoard's EventAccumulator, MLflow's client, and
W&B's offline run files. Each step is logged once per tracker run whatever happened before: a run killed after
a checkpoint, killed before its first one, or started over with --fresh. A tracker that fails, at its start or
mid-run (a server down, a path taken, its store removed), prints one warning and the run completes."""
import glob
import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from conftest import FAST, SLOW_ARCH
from test_signals import LONG, ONE_THREAD, checkpoint_step
from test_sweep import _run_command, folder

from harness.run.records import RunRecord

pytestmark = pytest.mark.slow


def tensorboard_events(run_folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_folder / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def scalars(events, tag):
    return [(e.step, e.value) for e in events.Scalars(tag)]


def steps(points):
    return [step for step, _ in points]


def assert_curve(points, curve):
    """The same steps, each once, and the same values (to float32's precision: TensorBoard keeps float32).
    pytest.approx compares the [step, value] pairs of a list exactly, so the values are compared apart."""
    assert steps(points) == steps(curve)
    assert [value for _, value in points] == pytest.approx([value for _, value in curve], rel=1e-6)


def wandb_runs(run_folder):
    """{run id: (config, history rows)} of the W&B offline runs in a run folder, from their .wandb files.
    wandb 0.31 ships no Python reader for them (its core is in Go), so the framing (a LevelDB-style log: 7-byte
    header, 32 KiB blocks, records of crc32/length/type chunks) is read here and each record parsed with wandb's
    own protobuf. A file cut short (its process killed) ends at its last whole record."""
    from wandb.proto import wandb_internal_pb2

    runs = {}
    for path in glob.glob(str(run_folder / "wandb" / "offline-run-*" / "run-*.wandb")):
        data, config, rows, pending, offset = open(path, "rb").read(), {}, [], b"", 7
        while offset + 7 <= len(data):
            if 32768 - offset % 32768 < 7:  # a block's tail too short for a chunk header is padding
                offset += 32768 - offset % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
            if offset + 7 + length > len(data):
                break
            pending += data[offset + 7:offset + 7 + length]
            offset += 7 + length
            if kind in (1, 4):  # FULL or LAST: one whole record
                record = wandb_internal_pb2.Record.FromString(pending)
                pending = b""
                if record.WhichOneof("record_type") == "run":
                    config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
                elif record.WhichOneof("record_type") == "history":
                    rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                 for item in record.history.item})
        runs[Path(path).stem.removeprefix("run-")] = (config, rows)
    return runs


def wandb_losses(rows):
    return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def mlflow_runs(tracking_uri, experiment):
    """MLflow's client and the experiment's runs, oldest first ([] before the run has made the experiment)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return client, sorted(runs, key=lambda run: run.info.start_time)


def mlflow_history(client, run, name):
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]


def mlflow_env(tmp_path):
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install -e '.[dev]' installs it)")
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e '.[dev]' installs it)")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, dict(ONE_THREAD, WANDB_MODE="offline", MLFLOW_TRACKING_URI=uri)


def kill_when(command, env, cwd, ready, timeout=240):
    """Start a run and kill -9 it once ``ready()`` (as an OOM killer or a lost node would): it ends nothing."""
    with open(cwd / "killed.log", "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None and time.time() < deadline, (cwd / "killed.log").read_text()
            time.sleep(0.05)
        proc.kill()
        proc.wait()


def finish(command, env, cwd):
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=cwd)
    said = done.stdout + done.stderr
    assert done.returncode == 0 and "tracker failed" not in said and "Traceback" not in said, said
    return said


ALL = ["--log-with", "tensorboard,wandb,mlflow"]


def test_a_run_killed_past_its_checkpoint_resumes_with_each_step_once_in_every_tracker(write_arch, tmp_path,
                                                                                      straight_run):
    uri, env = mlflow_env(tmp_path)
    arch = write_arch("slow", SLOW_ARCH)  # 0.25 s a step: it can be killed between checkpoints
    straight = RunRecord.load(straight_run(SLOW_ARCH, LONG) / "record.json")
    command = [*_run_command(arch, tmp_path / "killed", 42, LONG), *ALL]
    run_folder = folder(tmp_path / "killed", "slow")

    def logged_past_10():  # MLflow, fed after TensorBoard and W&B, holds a loss point past step 10
        client, runs = mlflow_runs(uri, "shapes-smoke")
        return bool(runs) and max(steps(mlflow_history(client, runs[0], "train/loss")), default=0) > 10

    kill_when(command, env, tmp_path, logged_past_10)
    # past step 10, before the checkpoint at 16: every tracker holds steps 9.. that the resumed run trains again
    assert checkpoint_step(run_folder) == 8
    killed_wandb = set(wandb_runs(run_folder))
    finish(command, env, tmp_path)
    record = RunRecord.load(run_folder / "record.json")
    assert record.loss_curve == straight.loss_curve  # bitwise resume, as the suite checks elsewhere
    fids = [(e["step"], e["fid"]) for e in record.evaluations]

    events = tensorboard_events(run_folder)  # TensorBoard: one curve, the killed process's steps 9.. purged
    losses = scalars(events, "train/loss")
    assert steps(losses) == list(range(1, 25))
    assert all(abs(value - loss) <= 1e-6 * abs(loss) for (_, value), (_, loss) in zip(losses, record.loss_curve))
    assert [(step, round(value, 3)) for step, value in scalars(events, "eval/fid")] == [(s, round(f, 3))
                                                                                     for s, f in fids]
    assert [e.step for e in events.Images("samples")] == [e["step"] for e in record.evaluations]
    assert steps(scalars(events, "speed/train_img_s")) == [8, 16, 24]  # at each checkpoint
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(events.PluginTagToContent("hparams"))

    client, runs = mlflow_runs(uri, "shapes-smoke")  # MLflow: the same run, each step once
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert_curve(mlflow_history(client, run, "train/loss"), record.loss_curve)
    assert_curve(mlflow_history(client, run, "eval/fid"), fids)
    assert steps(mlflow_history(client, run, "speed/train_img_s")) == [8, 16, 24]

    runs = wandb_runs(run_folder)  # W&B: a new run, naming the killed one and the step it goes on from
    assert killed_wandb and set(runs) == killed_wandb | {(run_folder / ".wandb_run_id").read_text()}
    (killed,) = killed_wandb
    (config, rows), (_, killed_rows) = runs[(run_folder / ".wandb_run_id").read_text()], runs[killed]
    assert (config["resumed_from_run"], config["resumed_from_step"]) == (killed, 8)
    assert_curve(wandb_losses(rows), record.loss_curve[8:])  # steps 9..24, once
    assert steps(wandb_losses(killed_rows)) == list(range(1, len(wandb_losses(killed_rows)) + 1))


def test_a_run_killed_before_its_first_checkpoint_restarts_each_tracker_from_nothing(write_arch, tmp_path):
    uri, env = mlflow_env(tmp_path)
    arch = write_arch("slow", SLOW_ARCH)
    command = [*_run_command(arch, tmp_path, 42, dict(LONG, **{"training.checkpoint_every": 16})), *ALL]
    run_folder = folder(tmp_path, "slow")

    def logged_3_steps():
        client, runs = mlflow_runs(uri, "shapes-smoke")
        return bool(runs) and len(mlflow_history(client, runs[0], "train/loss")) >= 3

    kill_when(command, env, tmp_path, logged_3_steps)
    assert not (run_folder / "checkpoint.pt").exists()  # the rerun starts from step 0
    killed_wandb = set(wandb_runs(run_folder))
    finish(command, env, tmp_path)
    record = RunRecord.load(run_folder / "record.json")

    events = tensorboard_events(run_folder)  # TensorBoard: everything the killed process wrote is purged
    assert steps(scalars(events, "train/loss")) == list(range(1, 25))
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    served = EventAccumulator(str(run_folder / "tensorboard"), size_guidance={"tensors": 0})  # as the server reads
    served.Reload()  # (the reader above purges no text): the killed process's config text is gone too
    assert [e.step for e in served.Tensors("config/text_summary")] == [0]

    client, (killed, run) = mlflow_runs(uri, "shapes-smoke")  # MLflow: a new run; the killed one is ended
    assert (killed.info.status, run.info.status) == ("KILLED", "FINISHED")
    assert_curve(mlflow_history(client, run, "train/loss"), record.loss_curve)
    assert run.data.params["training.steps"] == "24"

    runs = wandb_runs(run_folder)
    (new,) = set(runs) - killed_wandb
    config, rows = runs[new]
    assert (config["resumed_from_run"], config["resumed_from_step"]) == (*killed_wandb, 0)
    assert_curve(wandb_losses(rows), record.loss_curve)


def test_trackers_record_the_records_metrics_and_fresh_starts_new_tracker_runs(tiny_arch, tmp_path):
    """W&B (offline) and MLflow hold the record's loss curve, FIDs and sample grids; then --fresh starts new tracker
    runs that continue nothing, leaves the old ones as they were, and clears TensorBoard's files."""
    uri, env = mlflow_env(tmp_path)
    run_folder = folder(tmp_path, "tiny")
    # 6 steps, the loss logged at 2, 4, 6; evaluations at steps 0 and 6
    first = dict(FAST, **{"evaluation.eval_points": [0]})
    finish([*_run_command(tiny_arch, tmp_path, 42, first), *ALL], env, tmp_path)
    record = RunRecord.load(run_folder / "record.json")
    losses = [(step, loss) for step, loss in record.loss_curve]
    fids = [(e["step"], e["fid"]) for e in record.evaluations]
    assert [step for step, _ in fids] == [0, 6]

    ((config, rows),) = wandb_runs(run_folder).values()
    assert "resumed_from_run" not in config and config["training.steps"] == FAST["training.steps"]
    assert_curve(wandb_losses(rows), losses)
    assert_curve([(r["step"], r["eval/fid"]) for r in rows if "eval/fid" in r], fids)
    images = [r for r in rows if r.get("samples/_type") == "image-file"]  # W&B's Image, its file under files/
    assert [(r["step"], r["samples/width"], r["samples/height"]) for r in images] == [(s, 8 * 32, 32) for s, _ in fids]

    client, (run,) = mlflow_runs(uri, "shapes-smoke")
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.runName"] == "shapes/tiny/smoke/seed42"
    assert run.data.params["training.steps"] == str(FAST["training.steps"])
    assert_curve(mlflow_history(client, run, "train/loss"), losses)
    assert_curve(mlflow_history(client, run, "eval/fid"), fids)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "record.json" in artifacts and {f"samples_step{s:06d}.png" for s, _ in fids} <= artifacts

    old_events = set(os.listdir(run_folder / "tensorboard"))
    (old_wandb,) = wandb_runs(run_folder)
    command = [*_run_command(tiny_arch, tmp_path, 42, dict(FAST, **{"training.steps": 4})), *ALL, "--fresh"]
    finish(command, env, tmp_path)
    record = RunRecord.load(run_folder / "record.json")
    assert steps(record.loss_curve) == [2, 4]

    assert not old_events & set(os.listdir(run_folder / "tensorboard"))  # the old run's files are gone
    events = tensorboard_events(run_folder)
    assert_curve(scalars(events, "train/loss"), record.loss_curve)

    client, (old, run) = mlflow_runs(uri, "shapes-smoke")  # a new MLflow run; the old one as it was
    assert steps(mlflow_history(client, old, "train/loss")) == [2, 4, 6]
    assert_curve(mlflow_history(client, run, "train/loss"), record.loss_curve)
    assert run.info.status == "FINISHED" and run.data.params["training.steps"] == "4"
    assert (run_folder / ".mlflow_run_id").read_text() == run.info.run_id

    runs = wandb_runs(run_folder)  # a new W&B run that continues nothing
    (new,) = set(runs) - {old_wandb}
    config, rows = runs[new]
    assert "resumed_from_run" not in config
    assert_curve(wandb_losses(rows), record.loss_curve)
    assert steps(wandb_losses(runs[old_wandb][1])) == [2, 4, 6]


def test_a_tracker_that_cannot_start_warns_once_and_the_run_completes(tiny_arch, tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e '.[dev]' installs it)")
    run_folder = folder(tmp_path / "results", "tiny")
    run_folder.mkdir(parents=True)
    (run_folder / "tensorboard").write_text("a file where TensorBoard's folder goes")
    env = dict(ONE_THREAD, MLFLOW_TRACKING_URI="http://127.0.0.1:9",  # nothing listens there: a server down
               MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    command = [*_run_command(tiny_arch, tmp_path / "results", 42, FAST), "--log-with", "tensorboard,mlflow"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    assert said.count("warning: the tensorboard tracker failed") == 1, said
    assert said.count("warning: the mlflow tracker failed") == 1, said
    assert RunRecord.load(run_folder / "record.json").status == "completed"
    assert "Traceback" not in said and os.path.isfile(run_folder / "tensorboard")


def test_a_tracker_that_fails_mid_run_warns_once_and_the_others_log_every_step(write_arch, tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e '.[dev]' installs it)")
    arch = write_arch("slow", SLOW_ARCH)
    store = tmp_path / "mlruns"  # MLflow's file store: each point is a write into the run's own folder
    env = dict(ONE_THREAD, MLFLOW_TRACKING_URI=store.as_uri(), MLFLOW_ALLOW_FILE_STORE="true")
    command = [*_run_command(arch, tmp_path / "results", 42, LONG), "--log-with", "tensorboard,mlflow"]
    with open(tmp_path / "run.log", "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.time() + 240
        while not glob.glob(str(store / "*" / "*" / "metrics" / "train" / "loss")):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.05)
        (loss_file,) = glob.glob(str(store / "*" / "*" / "metrics" / "train" / "loss"))
        shutil.rmtree(Path(loss_file).parents[2])  # the run's folder, mid-run: MLflow's next point fails
        assert proc.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()
    said = (tmp_path / "run.log").read_text()
    assert said.count("warning: the mlflow tracker failed") == 1 and "Traceback" not in said, said
    run_folder = folder(tmp_path / "results", "slow")
    record = RunRecord.load(run_folder / "record.json")
    assert record.status == "completed" and record.step == 24
    assert steps(scalars(tensorboard_events(run_folder), "train/loss")) == list(range(1, 25))  # TensorBoard went on
