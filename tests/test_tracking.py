"""Experiment trackers, read back with their own readers: TensorBoard's EventAccumulator, MLflow's client, and
W&B's offline run file. A run killed mid-way and resumed continues the same curves with no duplicate step; a
tracker that cannot start (a server down, a path taken) prints one warning and the run completes."""
import glob
import os
import struct
import subprocess

import pytest
from conftest import FAST, SLOW_ARCH
from test_signals import LONG, ONE_THREAD
from test_sweep import _run_command, folder, reference_run, wait_for_step

from harness.run.records import RunRecord

pytestmark = pytest.mark.slow


def tensorboard_events(run_folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_folder / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def scalars(events, tag):
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_has_the_loss_fid_and_samples_and_a_killed_run_resumes_the_same_curves(write_arch, tmp_path):
    arch = write_arch("slow", SLOW_ARCH)  # 0.25 s a step: it can be killed between checkpoints
    straight = reference_run(arch, tmp_path / "straight", overrides=LONG)
    command = _run_command(arch, tmp_path / "killed", 42, LONG)
    run_folder = folder(tmp_path / "killed", "slow")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    wait_for_step(run_folder, 8, proc)  # checkpoint at step 8; the loss is logged every step after it
    while not any(step > 10 for step, _ in scalars(tensorboard_events(run_folder), "train/loss")):
        assert proc.poll() is None
    proc.kill()  # past step 10, before the checkpoint at 16: TensorBoard holds steps 9.. the resumed run redoes
    proc.wait()
    again = subprocess.run(command, capture_output=True, text=True, env=ONE_THREAD, timeout=300)
    assert again.returncode == 0, again.stderr
    record = RunRecord.load(run_folder / "record.json")
    assert record.loss_curve == straight.loss_curve  # bitwise resume, as the suite checks elsewhere

    events = tensorboard_events(run_folder)
    losses = scalars(events, "train/loss")
    assert [step for step, _ in losses] == list(range(1, 25))  # each step once: the killed process's are purged
    assert all(abs(value - loss) <= 1e-6 * abs(loss) for (_, value), (_, loss) in zip(losses, record.loss_curve))
    fids = scalars(events, "eval/fid")
    assert [(step, round(value, 3)) for step, value in fids] == [(e["step"], round(e["fid"], 3))
                                                                for e in record.evaluations]
    assert [e.step for e in events.Images("samples")] == [e["step"] for e in record.evaluations]
    assert [step for step, _ in scalars(events, "speed/train_img_s")] == [8, 16, 24]  # at each checkpoint
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(events.PluginTagToContent("hparams"))


def wandb_history(run_folder):
    """The history rows of a W&B offline run, from its .wandb file. wandb 0.31 ships no Python reader for it
    (its core is in Go), so the framing (a LevelDB-style log: 7-byte header, 32 KiB blocks, records of
    crc32/length/type chunks) is read here and each record parsed with wandb's own protobuf."""
    import json

    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(run_folder / "wandb" / "offline-run-*" / "run-*.wandb"))
    data, rows, pending, offset = open(path, "rb").read(), [], b"", 7
    while offset + 7 <= len(data):
        if 32768 - offset % 32768 < 7:  # a block's tail too short for a chunk header is padding
            offset += 32768 - offset % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        pending += data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # FULL or LAST: one whole record
            record = wandb_internal_pb2.Record.FromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def mlflow_run(tracking_uri, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


def test_wandb_offline_and_mlflow_record_the_same_metrics_as_the_record(tiny_arch, tmp_path):
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install -e '.[dev]' installs it)")
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e '.[dev]' installs it)")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(ONE_THREAD, WANDB_MODE="offline", MLFLOW_TRACKING_URI=uri)
    command = _run_command(tiny_arch, tmp_path / "results", 42, dict(FAST, **{"evaluation.eval_points": [0]}))
    done = subprocess.run([*command, "--log-with", "tensorboard,wandb,mlflow"], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and "tracker failed" not in done.stdout + done.stderr, done.stdout + done.stderr
    run_folder = folder(tmp_path / "results", "tiny")
    record = RunRecord.load(run_folder / "record.json")
    losses = [(step, loss) for step, loss in record.loss_curve]
    fids = [(e["step"], e["fid"]) for e in record.evaluations]

    rows = wandb_history(run_folder)
    assert [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r] == pytest.approx(losses, rel=1e-6)
    assert [(r["step"], r["eval/fid"]) for r in rows if "eval/fid" in r] == pytest.approx(fids, rel=1e-6)
    images = [r for r in rows if r.get("samples/_type") == "image-file"]  # W&B's Image, its file under files/
    assert [(r["step"], r["samples/width"], r["samples/height"]) for r in images] == [(s, 8 * 32, 32) for s, _ in fids]

    client, run = mlflow_run(uri, "shapes-smoke")
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.runName"] == "shapes/tiny/smoke/seed42"
    assert run.data.params["training.steps"] == str(FAST["training.steps"])
    history = {name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
               for name in ("train/loss", "eval/fid")}
    assert history["train/loss"] == pytest.approx(losses, rel=1e-6) and history["eval/fid"] == pytest.approx(fids)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "record.json" in artifacts and {f"samples_step{s:06d}.png" for s, _ in fids} <= artifacts


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
