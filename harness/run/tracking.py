"""Live curves in the experiment trackers researchers already watch: TensorBoard (on by default, into the run
folder), Weights & Biases and MLflow (optional extras), each through its own package in its usual way.

``Trackers`` is told what the run already has, at the points where it has it: the loss curve's new points
at each log interval (host floats the trainer already read back, so no device sync is added), FID/KID and
the sample grid at each evaluation, img/s and MFU at each checkpoint, the status at the end.

Each step is logged once per tracker run, whatever stopped the process before (docs/tracking.md). A process
that stopped may have logged steps past its checkpoint, which the next one trains again:
- TensorBoard: the writer purges every event from the checkpoint's step + 1 on (``purge_step``), or all of
  them when there is no checkpoint to resume from;
- W&B: every process starts a new run, naming the run it follows (``resumed_from_run``/``_step`` in its
  config). W&B 0.31 cannot resume or rewind a run offline: ``resume_from`` is applied by the server, and
  ``wandb sync`` of a second offline folder with the same id replaces the first;
- MLflow: a resumed process reopens the run (its id is kept in the run folder) and logs a metric only at
  steps past the last one that run holds: MLflow cannot delete a point, and one run keeps the whole curve.
``--fresh`` calls ``clear``: TensorBoard's files go, and W&B and MLflow start runs that continue nothing.
A tracker that fails (W&B offline, an MLflow server down, a full disk), at its start or later, prints one
warning and is dropped: it never stops a run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from harness.run import checkpoints

TENSORBOARD_DIR = "tensorboard"  # in the run folder: `tensorboard --logdir results` shows every run
WANDB_RUN_FILE = ".wandb_run_id"  # the W&B run the last process logged to: the next one names it
MLFLOW_RUN_FILE = ".mlflow_run_id"  # the MLflow run a resumed harness run continues


def clear(directory: Path) -> None:
    """A fresh start's part: the run folder's TensorBoard event files, and the W&B and MLflow run ids kept
    there, so that each tracker's next run starts from nothing and continues no earlier one."""
    if (directory / TENSORBOARD_DIR).is_dir():  # a file put there is not ours to remove
        for events in (directory / TENSORBOARD_DIR).rglob("events.out.tfevents.*"):
            events.unlink()
    for name in (WANDB_RUN_FILE, MLFLOW_RUN_FILE):
        (directory / name).unlink(missing_ok=True)


class RunInfo:
    """What a tracker names and groups a run by."""

    def __init__(self, task: str, arch: str, tier: str, seed: int, folder: Path, config: dict, tags: dict):
        self.task, self.arch, self.tier, self.seed, self.folder = task, arch, tier, seed, folder
        self.config, self.tags = config, {k: str(v) for k, v in tags.items()}
        self.name = f"{task}/{arch}/{tier}/seed{seed}"

    def flat_config(self) -> dict:
        out: dict = {}

        def walk(node: dict, prefix: str) -> None:
            for key, value in node.items():
                if isinstance(value, dict):
                    walk(value, f"{prefix}{key}.")
                else:  # TensorBoard's hparams and MLflow's params take scalars and strings
                    out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)

        walk(self.config, "")
        return out


def kept_id(path: Path) -> str | None:
    return (path.read_text().strip() or None) if path.is_file() else None


class TensorBoard:
    name = "tensorboard"

    def __init__(self, info: RunInfo, checkpoint: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard's reader drops every earlier event at or past purge_step: what a stopped process logged
        # after the checkpoint, or everything when there is none (the run restarts from step 0 and logs it all)
        self.writer = SummaryWriter(str(info.folder / TENSORBOARD_DIR),
                                    purge_step=0 if checkpoint is None else checkpoint + 1)
        if checkpoint is None:
            config = info.flat_config()
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(config.items())), 0)
            self.writer.add_hparams(config, {}, run_name=".")
        self.writer.add_text("run", f"{info.name} {' '.join(f'{k}={v}' for k, v in info.tags.items())}",
                             checkpoint or 0)

    def scalars(self, step: int, values: dict) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def image(self, step: int, grid: np.ndarray) -> None:
        self.writer.add_image("samples", grid, step, dataformats="HWC")
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class WandB:
    name = "wandb"

    def __init__(self, info: RunInfo, checkpoint: int | None):
        import wandb

        group = info.tags.get("sweep") or info.tags.get("study")
        kept = info.folder / WANDB_RUN_FILE
        config, previous = info.flat_config(), kept_id(kept)
        if previous:  # a new run, not the old one resumed: W&B offline can neither resume nor rewind a run
            config.update(resumed_from_run=previous, resumed_from_step=checkpoint or 0)
        self.wandb = wandb
        self.run = wandb.init(project=f"harness-{info.task}", name=info.name, group=group, job_type=info.tier,
                              dir=str(info.folder), config=config, reinit="create_new",
                              tags=[f"{k}:{v}" for k, v in info.tags.items()] + [info.arch, info.tier])
        kept.write_text(self.run.id)

    def scalars(self, step: int, values: dict) -> None:
        self.run.log(dict(values, step=step))

    def image(self, step: int, grid: np.ndarray) -> None:
        self.run.log({"samples": self.wandb.Image(grid), "step": step})

    def close(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "completed" else 1)


class MLflow:
    name = "mlflow"

    def __init__(self, info: RunInfo, checkpoint: int | None):
        import mlflow
        from mlflow.exceptions import MlflowException

        self.mlflow, self.info, self.client = mlflow, info, mlflow.MlflowClient()
        mlflow.set_experiment(f"{info.task}-{info.tier}")
        kept = info.folder / MLFLOW_RUN_FILE
        previous = kept_id(kept)
        run_id = previous if checkpoint is not None else None
        if previous and run_id is None:  # a restart with no checkpoint: the killed process's run never ended
            try:
                if self.client.get_run(previous).info.status == "RUNNING":
                    self.client.set_terminated(previous, "KILLED")
            except MlflowException:  # not in this store (MLFLOW_TRACKING_URI changed): nothing to end here
                pass
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else info.name,
                                    tags=dict(info.tags, arch=info.arch, tier=info.tier, seed=str(info.seed)))
        kept.write_text(self.run.info.run_id)
        self.held: dict | None = {} if run_id else None  # per metric, the last step the reopened run holds
        if run_id is None:
            mlflow.log_params(info.flat_config())

    def _past_held(self, step: int, values: dict) -> dict:
        """The values at steps the run does not hold yet: the stopped process may have logged past its
        checkpoint, and MLflow cannot delete a point (each metric's history is read once)."""
        if self.held is None:
            return values
        for key in values.keys() - self.held.keys():
            history = self.client.get_metric_history(self.run.info.run_id, key)
            self.held[key] = max((m.step for m in history), default=-1)
        return {k: v for k, v in values.items() if step > self.held[k]}

    def scalars(self, step: int, values: dict) -> None:
        values = self._past_held(step, values)
        if values:
            self.mlflow.log_metrics(values, step=step)

    def image(self, step: int, grid: np.ndarray) -> None:  # one file per step: a second upload replaces it
        self.mlflow.log_image(grid, f"samples_step{step:06d}.png")

    def close(self, status: str) -> None:
        record = self.info.folder / "record.json"
        if record.is_file():
            self.mlflow.log_artifact(str(record))
        self.mlflow.end_run(status="FINISHED" if status == "completed" else "FAILED" if status == "failed"
                            else "KILLED")


BACKENDS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}
EXTRAS = {"wandb": "wandb", "mlflow": "mlflow"}  # pip extras: pip install -e ".[wandb]"


class Trackers:
    """The run's trackers. Every call goes to each; one that raises, at its start or at any later call, warns
    once and is dropped, and the others go on."""

    def __init__(self, names: list[str], info: RunInfo | None, warn: Callable[[str], None], fresh: bool = False):
        self.names, self.info, self.warn = list(names), info, warn
        self.active: list = []
        self.logged_to = self.timed_to = 0  # the last steps whose loss and speed are logged
        if fresh and info is not None:  # --fresh: the run starts over, and so does every tracker's run
            clear(info.folder)

    def start(self, resume_step: int) -> None:
        """After the run resumed (or not): ``resume_step`` is its step, from a checkpoint if the folder holds one."""
        self.logged_to = self.timed_to = resume_step
        # the runner loads a checkpoint whenever one is there, so one there now is the one this run resumed from
        checkpoint = resume_step if self.info is not None and checkpoints.exists(self.info.folder) else None
        for name in self.names:
            try:
                self.active.append(BACKENDS[name](self.info, checkpoint))
            except ImportError:
                self.warn(f"warning: --log-with {name}: the {name} package is not installed (pip install "
                          f"'diffusion-arch-harness[{EXTRAS.get(name, name)}]'); the run goes on without it.")
            except Exception as exc:  # an unreachable server, a bad setting: the run is worth more than a curve
                self._dropped(name, exc)

    def _dropped(self, name: str, exc: Exception) -> None:
        said = str(exc).splitlines()[0] if str(exc) else ""
        self.warn(f"warning: the {name} tracker failed ({type(exc).__name__}: {said}); the run goes on without it.")

    def _each(self, method: str, *args) -> None:
        for tracker in list(self.active):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:
                self.active.remove(tracker)
                self._dropped(tracker.name, exc)

    def losses(self, curve: list) -> None:
        """The loss curve's points after the last one logged: [(step, mean loss over the interval)]."""
        for step, loss in curve:
            if step > self.logged_to:
                self._each("scalars", step, {"train/loss": loss})
                self.logged_to = step

    def evaluation(self, step: int, evaluation: dict, grid: np.ndarray | None) -> None:
        values = {f"eval/{k}": evaluation[k] for k in ("fid", "kid", "fid_std") if evaluation.get(k) is not None}
        self._each("scalars", step, values)
        if grid is not None:
            self._each("image", step, grid)

    def timings(self, step: int, timings: dict) -> None:
        if step <= self.timed_to:  # step 0 (nothing trained yet), or a second checkpoint at one step
            return
        self.timed_to = step
        names = {"train_images_per_sec": "speed/train_img_s", "train_mfu": "speed/train_mfu",
                 "sampling_images_per_sec": "speed/sample_img_s"}
        self._each("scalars", step, {names[k]: v for k, v in timings.items() if k in names and v is not None})

    def close(self, status: str) -> None:
        self._each("close", status)
        self.active = []
