"""The training loop state: model, EMA, AdamW, RNG, data position, loss curve.

One ``Trainer`` owns everything a checkpoint must hold, so that a resumed run continues exactly
where it stopped (bitwise on the CPU). The hot path (``train_step``) does no host
synchronisation: losses stay on the device and are read back in ``flush_losses`` at log
intervals, which is also where a non-finite loss is noticed and pinned to its exact step.
"""
from __future__ import annotations

import copy

import torch

from harness.data import ImageBatches
from harness.diffusion import NoiseSchedule
from harness.parallel import SINGLE, World
from harness.tasks import TaskSpec


class NonFiniteLoss(Exception):
    def __init__(self, step: int, value: float):
        super().__init__(f"loss was {value} at step {step}")
        self.step = step
        self.value = value


def autocast_dtype(spec: TaskSpec, device: torch.device) -> torch.dtype | None:
    """bf16 autocast only where the task asks for it and the device is a GPU; fp32 otherwise."""
    return torch.bfloat16 if spec.training.precision == "bf16" and device.type == "cuda" else None


def precision_name(spec: TaskSpec, device: torch.device) -> str:
    """What a record or profile calls the precision a run really used: "bf16" or "fp32"."""
    return "bf16" if autocast_dtype(spec, device) else "fp32"


def uses_channels_last(spec: TaskSpec, device: torch.device) -> bool:
    mode = spec.training.channels_last
    return mode == "always" or (mode == "cuda" and device.type == "cuda")


class Trainer:
    """With a ``world`` of N processes, every rank draws the whole global batch from the same
    generator and trains on its slice under DDP (see harness/parallel.py); ``self.model`` stays
    the bare module, so checkpoints are the same whatever the number of processes."""

    def __init__(self, model: torch.nn.Module, spec: TaskSpec, batches: ImageBatches, device: torch.device,
                 world: World = SINGLE):
        self.spec = spec
        self.device = device
        self.batches = batches
        self.world = world
        memory_format = torch.channels_last if uses_channels_last(spec, device) else torch.contiguous_format
        self.memory_format = memory_format
        self.model = model.to(memory_format=memory_format).train()
        # The EMA is a frozen copy updated in place; evaluation samples with it.
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ema_params = [p for p, q in zip(self.ema.parameters(), self.model.parameters()) if q.requires_grad]
        opt = spec.optimizer
        if opt.name != "adamw":
            raise ValueError(f"unknown optimizer {opt.name!r}")
        self.optimizer = torch.optim.AdamW(
            self.params, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay,
            # one fused kernel for the whole update on GPU; multi-tensor ops on CPU (35% faster than the default loop there)
            **({"fused": True} if device.type == "cuda" else {"foreach": True}),
        )
        self.schedule = NoiseSchedule(spec.diffusion, device)
        self.gen = torch.Generator(device).manual_seed(spec.seed)  # every training draw comes from here
        self.autocast = autocast_dtype(spec, device)
        forward = self.model
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            forward = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward = torch.compile(forward) if spec.training.compile else forward
        self.part = world.batch_slice(spec.training.batch_size)  # this rank's rows of each global batch
        self.step = 0
        self.loss_curve: list[tuple[int, float]] = []  # (step, mean loss over the log interval)
        self._pending: list[torch.Tensor] = []  # 0-dim device losses not yet read back
        self._pending_from = 1  # step number of _pending[0]
        self._interval: list[float] = []  # checked losses of the current log interval

    def train_step(self) -> None:
        x0 = self.batches.next(self.gen).contiguous(memory_format=self.memory_format)  # [B,3,32,32]
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            loss = self.schedule.loss(self.forward, x0, self.gen, self.part)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.spec.optimizer.grad_clip_norm, foreach=True)
        self.optimizer.step()
        self._update_ema()
        if not self._pending:
            self._pending_from = self.step + 1
        self._pending.append(loss.detach())
        self.step += 1

    @torch.no_grad()
    def _update_ema(self) -> None:
        # ema <- decay * ema + (1 - decay) * param, as one foreach op. Written here rather than with
        # diffusers' EMAModel because that class always warms its decay up as (1+t)/(10+t), and
        # the protocol's EMA is a constant decay.
        torch._foreach_lerp_(self.ema_params, self.params, 1.0 - self.spec.training.ema_decay)

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
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.batches.load_state_dict(state["batches"])
        self.step = state["step"]
        self.loss_curve = [tuple(x) for x in state["loss_curve"]]
        self._interval = list(state["interval_losses"])
