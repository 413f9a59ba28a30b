"""The training loop state: model, EMA, AdamW, RNG, data position, loss curve.

One ``Trainer`` owns everything a checkpoint must hold, so that a resumed run continues exactly
where it stopped (bitwise on the CPU). The hot path (``train_step``) does no host
synchronisation: losses stay on the device and are read back in ``flush_losses`` at log
intervals, which is also where a non-finite loss is noticed and pinned to its exact step.
"""
from __future__ import annotations

import copy
import hashlib

import torch

from harness.errors import NonFiniteLoss
from harness.protocol.data import ImageBatches
from harness.protocol.diffusion import NoiseSchedule
from harness.protocol.recipe import Recipe, recipe_for
from harness.protocol.spec import TaskSpec
from harness.world import SINGLE, World


def device_rng_state(device: torch.device) -> dict:
    """The device's own RNG state for a checkpoint: CUDA's (dropout on a GPU draws from it); none on a CPU,
    whose global state the checkpoint holds as torch_rng."""
    return {"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}


def restore_device_rng_state(state: dict, device: torch.device) -> None:
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def ema_weight(schedule: str, decay: float, update: int) -> float:
    """The weight of the live parameters in the EMA's ``update``-th step (1, 2, ...).

    constant:  1 - decay. The EMA starts as the initial weights: after k updates decay^k of it is still
               the initialisation (0.9995^5000 = 8%).
    warmup:    1 - min(decay, u / (9 + u)) and 1 at the first update, with u the update number: exactly the
               decay of diffusers' EMAModel (its (1+s)/(10+s), s counted from 0 after the first update).
    debiased:  (1 - decay) / (1 - decay^k), the bias correction of Adam's moments: the EMA is the
               exponentially weighted mean of the trained weights alone, with the constant decay's time
               constant (the two agree to 0.9995^k: 1e-4 at 18,000 steps).
    Written here rather than with diffusers' EMAModel because that class has only the warm-up (and it
    updates one parameter at a time; this is one foreach op)."""
    if schedule == "constant":
        return 1.0 - decay
    if schedule == "warmup":
        return 1.0 if update <= 1 else 1.0 - min(decay, update / (9 + update))
    if schedule == "debiased":
        return (1.0 - decay) / (1.0 - decay**update)
    raise ValueError(f"unknown EMA schedule {schedule!r}")


def _stream_digest(x0: torch.Tensor, gen: torch.Generator) -> str:
    """sha256 (16 hex digits) of a first batch [B,3,H,W] and of the generator state after its draws."""
    digest = hashlib.sha256(x0.detach().float().cpu().numpy().tobytes())  # note: a CPU-GPU sync, once
    digest.update(gen.get_state().numpy().tobytes())
    return digest.hexdigest()[:16]


class Trainer:
    """With a ``world`` of N processes, every rank draws the whole global batch from the same
    generator and trains on its slice under DDP (see harness/launch/local.py); ``self.model`` stays
    the bare module, so checkpoints are the same whatever the number of processes."""

    def __init__(self, model: torch.nn.Module, spec: TaskSpec, batches: ImageBatches, device: torch.device,
                 world: World = SINGLE, recipe: Recipe | None = None):
        self.spec = spec
        self.recipe = recipe or recipe_for(spec, device)
        self.device = device
        self.batches = batches
        self.world = world
        self.memory_format = self.recipe.memory_format
        self.model = model.to(memory_format=self.memory_format).train()
        # The EMA is a frozen copy updated in place; evaluation samples with it.
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ema_params = [p for p, q in zip(self.ema.parameters(), self.model.parameters()) if q.requires_grad]
        opt = spec.optimizer
        if opt.name != "adamw":
            raise ValueError(f"unknown optimizer {opt.name!r}")
        self.optimizer = torch.optim.AdamW(
            self.params, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay,
            **self.recipe.optimizer_options,
        )
        self.schedule = NoiseSchedule(spec.diffusion, device)
        self.gen = torch.Generator(device).manual_seed(spec.seed)  # every training draw comes from here
        self.autocast = self.recipe.autocast
        forward = self.model
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            forward = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward = torch.compile(forward) if self.recipe.compile else forward
        self.part = world.batch_slice(spec.training.batch_size)  # this rank's rows of each global batch
        self.step = 0
        self.loss_curve: list[tuple[int, float]] = []  # (step, mean loss over the log interval)
        self._pending: list[torch.Tensor] = []  # 0-dim device losses not yet read back
        self._pending_from = 1  # step number of _pending[0]
        self._interval: list[float] = []  # checked losses of the current log interval
        # what the first step drew (its images and the generator after its timesteps and noise): equal for
        # two runs of one seed whatever their architectures, which is what makes their FIDs a paired sample
        self.stream_sha256: str | None = None

    def train_step(self) -> None:
        x0 = self.batches.next(self.gen).contiguous(memory_format=self.memory_format)  # [B,3,32,32]
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            loss = self.schedule.loss(self.forward, x0, self.gen, self.part)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.spec.optimizer.grad_clip_norm, foreach=True)
        self.optimizer.step()
        self._update_ema()
        if self.step == 0:
            self.stream_sha256 = _stream_digest(x0, self.gen)
        if not self._pending:
            self._pending_from = self.step + 1
        self._pending.append(loss.detach())
        self.step += 1

    @torch.no_grad()
    def _update_ema(self) -> None:
        # ema <- ema + w * (param - ema), as one foreach op; w depends on training.ema_schedule (ema_weight)
        weight = ema_weight(self.spec.training.ema_schedule, self.spec.training.ema_decay, self.step + 1)
        torch._foreach_lerp_(self.ema_params, self.params, weight)

    @torch.no_grad()
    def ema_model(self) -> torch.nn.Module:
        """The EMA weights, with the live model's buffers (e.g. norm statistics), for evaluation."""
        for mine, live in zip(self.ema.buffers(), self.model.buffers()):
            mine.copy_(live)
        return self.ema

    def flush_losses(self, close_interval: bool = True) -> float | None:
        """Read back the pending losses (one host sync) and check them; raises NonFiniteLoss naming
        the first step whose loss was NaN or infinite. With ``close_interval`` the mean of the
        losses since the last point goes on the loss curve. Returns the mean of those read back."""
        if not self._pending:
            return None
        losses = torch.stack(self._pending).float().cpu()  # note: the CPU-GPU sync point
        losses = self.world.mean(losses)  # each rank's loss is its slice's: the batch's is their mean
        first = self._pending_from
        self._pending = []
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            index = int(bad[0])
            raise NonFiniteLoss(first + index, float(losses[index]))
        self._interval.extend(losses.tolist())
        if close_interval:
            self.loss_curve.append((self.step, sum(self._interval) / len(self._interval)))
            self._interval = []
        return float(losses.mean())

    def state_dict(self) -> dict:
        """Everything needed to continue bit-for-bit. Call after flush_losses()."""
        assert not self._pending, "flush_losses() before checkpointing so no unchecked step is saved"
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),  # for architectures that draw from the global RNG (dropout)
            "batches": self.batches.state_dict(),
            "loss_curve": list(self.loss_curve),
            "interval_losses": list(self._interval),
            "stream_sha256": self.stream_sha256,
        }
        state.update(device_rng_state(self.device))
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        restore_device_rng_state(state, self.device)
        self.batches.load_state_dict(state["batches"])
        self.step = state["step"]
        self.loss_curve = [tuple(x) for x in state["loss_curve"]]
        self._interval = list(state["interval_losses"])
        self.stream_sha256 = state.get("stream_sha256")
