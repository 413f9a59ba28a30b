"""Live curves in the experiment trackers researchers already watch: TensorBoard (on by default, into the run
folder), Weights & Biases and MLflow (optional extras), each through its own package in its usual way.

``Trackers`` is told what the run already has, at the points where it has it: the loss curve's new points
at each log interval (host floats the trainer already read back, so no device sync is added), FID/KID and
the sample grid at each evaluation, img/s and MFU at each checkpoint, the status at the end. A resumed run
continues the same curves: TensorBoard purges what the stopped process logged past the checkpoint
(``purge_step``), W&B resumes the same run id (``resume="allow"``), MLflow the same run (its id is kept in
the run folder), and only points after the checkpoint are logged again. A tracker that fails (W&B offline,
an MLflow server down, a full disk) prints one warning and is dropped: it never stops a run.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np

TENSORBOARD_DIR = "tensorboard"  # in the run folder: `tensorboard --logdir results` shows every run
MLFLOW_RUN_FILE = ".mlflow_run_id"  # the MLflow run a resumed harness run continues


class RunInfo:
    """What a tracker names and groups a run by."""

    def __init__(self, task: str, arch: str, tier: str, seed: int, folder: Path, config: dict, tags: dict):
        self.task, self.arch, self.tier, self.seed, self.folder = task, arch, tier, seed, folder
        self.config, self.tags = config, {k: str(v) for k, v in tags.items()}
        self.name = f"{task}/{arch}/{tier}/seed{seed}"
        # one id per run folder, the same on every resume: W&B's run id
        self.id = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]

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


class TensorBoard:
    name = "tensorboard"

    def __init__(self, info: RunInfo, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # events a stopped process wrote past the checkpoint are discarded by TensorBoard's reader
        self.writer = SummaryWriter(str(info.folder / TENSORBOARD_DIR), purge_step=resume_step + 1 if resume_step
                                    else None)
        if not resume_step:
            config = info.flat_config()
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(config.items())), 0)
            self.writer.add_hparams(config, {}, run_name=".")
        self.writer.add_text("run", f"{info.name} {' '.join(f'{k}={v}' for k, v in info.tags.items())}",
                             resume_step)

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

    def __init__(self, info: RunInfo, resume_step: int):
        import wandb

        group = info.tags.get("sweep") or info.tags.get("study")
        self.wandb = wandb
        self.run = wandb.init(project=f"harness-{info.task}", name=info.name, id=info.id, resume="allow",
                              group=group, job_type=info.tier, dir=str(info.folder), config=info.flat_config(),
                              tags=[f"{k}:{v}" for k, v in info.tags.items()] + [info.arch, info.tier],
                              reinit="create_new")

    def scalars(self, step: int, values: dict) -> None:
        self.run.log(dict(values, step=step))

    def image(self, step: int, grid: np.ndarray) -> None:
        self.run.log({"samples": self.wandb.Image(grid), "step": step})

    def close(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "completed" else 1)


class MLflow:
    name = "mlflow"

    def __init__(self, info: RunInfo, resume_step: int):
        import mlflow

        self.mlflow, self.info = mlflow, info
        mlflow.set_experiment(f"{info.task}-{info.tier}")
        kept = info.folder / MLFLOW_RUN_FILE
        run_id = kept.read_text().strip() if resume_step and kept.is_file() else None
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else info.name,
                                    tags=dict(info.tags, arch=info.arch, tier=info.tier, seed=str(info.seed)))
        kept.write_text(self.run.info.run_id)
        if run_id is None:
            mlflow.log_params(info.flat_config())

    def scalars(self, step: int, values: dict) -> None:
        self.mlflow.log_metrics(values, step=step)

    def image(self, step: int, grid: np.ndarray) -> None:
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
    """The run's trackers. Every call goes to each; one that raises warns once and is dropped."""

    def __init__(self, names: list[str], info: RunInfo, warn: Callable[[str], None]):
        self.names, self.info, self.warn = list(names), info, warn
        self.active: list = []
        self.logged_to = self.timed_to = 0  # the last steps whose loss and speed are logged

    def start(self, resume_step: int) -> None:
        self.logged_to = self.timed_to = resume_step
        for name in self.names:
            try:
                self.active.append(BACKENDS[name](self.info, resume_step))
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
