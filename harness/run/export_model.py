"""A run's trained weights as a folder diffusers loads: ``export_model(run_folder, out)``.

A diffusers model (``UNet2DModel`` and the like) is written as ``DDIMPipeline.save_pretrained`` writes
it (``model_index.json``, ``unet/``, ``scheduler/``, safetensors), so ``DDIMPipeline.from_pretrained(out)``
samples with the protocol's DDIM scheduler. Any other module is written as ``model.safetensors`` beside
its architecture file and the same ``scheduler/``; the folder's README.md holds the few lines that load
it. Either way ``harness_export.json`` says which run, step and weights (EMA or raw) it holds.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import textwrap
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.files import now
from harness.protocol import registry
from harness.protocol.diffusion import ddim_scheduler
from harness.protocol.spec import TaskSpec
from harness.protocol.tasks import spec_from_config
from harness.run import checkpoints
from harness.run.records import RECORD_FILE, RunRecord, read_record

EXPORT_FILE = "harness_export.json"
ARCH_FILE = "architecture.py"
WEIGHTS_FILE = "model.safetensors"

# The loader of a non-diffusers export, as its README shows it (tests/test_export_model.py runs this text).
LOADER = '''\
import importlib.util, json, os
from diffusers import DDIMScheduler
from safetensors.torch import load_file

folder = "{folder}"
meta = json.load(open(os.path.join(folder, "harness_export.json")))
os.environ.update(meta["width_env"])  # BLOCK_OUT_CHANNELS, LAYERS_PER_BLOCK: the file reads its widths here
spec = importlib.util.spec_from_file_location("architecture", os.path.join(folder, "architecture.py"))
architecture = importlib.util.module_from_spec(spec)
spec.loader.exec_module(architecture)
model = architecture.build_model("cpu").eval()
model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
'''

# DDIM with that model and scheduler, one generator per image, as DDIMPipeline samples.
SAMPLER = '''\
import torch

def sample(model, scheduler, generators, steps=meta["sampling_steps"], eta=meta["eta"], size=meta["image_size"]):
    x = torch.stack([torch.randn(3, size, size, generator=g) for g in generators])  # [B,3,S,S]
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        with torch.no_grad():
            eps = model(x, torch.full((len(x),), int(t))).sample
        noise = torch.stack([torch.randn(3, size, size, generator=g) for g in generators]) if eta > 0 else None
        x = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)  # [B,3,S,S] in [0,1], as DDIMPipeline(output_type="pt")
'''


def read_run(folder: Path) -> tuple[RunRecord, dict]:
    """The run's record and its newest readable checkpoint, or a HarnessError saying what is missing."""
    record, problem = read_record(folder / RECORD_FILE)
    if record is None:
        raise HarnessError(problem or f"{folder} holds no {RECORD_FILE}: it is not a run folder. Pass the folder of "
                           f"one run (results/<task>/<arch>/<tier>/seed<N>; `python -m harness report` lists them).")
    state = checkpoints.load(folder, log=lambda message: None, read_only=True)  # the run may be live: touch nothing
    if state is None:
        raise HarnessError(f"{folder} has a record but no checkpoint (status {record.status!r}, step {record.step}), "
                           f"so there are no weights to export. Run it again to train them.")
    return record, state


def chosen_architecture(record: RunRecord, arch: str | None) -> registry.Architecture:
    """The file to build the run's model from: ``arch`` (the user's --arch), else the record's file when it lies in
    the architectures folder. A record is data: a path it names elsewhere (a run folder from a colleague may carry
    a record naming a file beside it) is not run unless the user names that file."""
    if arch is not None:
        return registry.find_architecture(arch)
    named, home = Path(record.arch_file).resolve(), registry.architectures_dir().resolve()
    if named.parent != home:
        raise HarnessError(
            f"The run's record names the architecture file {named}, which is not in the architectures folder "
            f"({home}). A record is data, so the harness does not run a file only because a record names it. If you "
            f"trust that file, pass it: --arch {named}.")
    return registry.find_architecture(str(named))


def trained_model(record: RunRecord, state: dict, spec: TaskSpec, raw: bool, best: dict | None = None,
                  arch: str | None = None) -> tuple[torch.nn.Module, Path]:
    """The run's architecture (``arch``, else the record's file in the architectures folder) at its widths on the
    CPU, with ``best`` (the weights of its best evaluation), else the last checkpoint's EMA weights (the sampled
    ones; the live model's buffers, as evaluation uses them) or, ``raw``, its trained weights; and its file."""
    arch = chosen_architecture(record, arch)
    if record.arch_sha256 and arch.sha256 != record.arch_sha256:
        raise HarnessError(
            f"{arch.path} has changed since this run was trained (sha256 {arch.sha256[:12]} now, "
            f"{record.arch_sha256[:12]} in its record), so its weights may not fit it. Restore the file as it was "
            f"(git log -- {arch.path}) and export again.")
    model = registry.build(arch, spec.width_env, "cpu")
    live = state["trainer"]["model"]
    weights = dict(live if raw else state["trainer"]["ema"])
    if not raw:
        weights.update({name: live[name] for name, _ in model.named_buffers() if name in live})
    model.load_state_dict(best if best is not None else weights)
    return model.eval(), arch.path


def exported_fid(record: RunRecord, step: int, raw: bool) -> dict:
    """The FID that belongs to the exported weights, and the run's best beside it, each with its step: the
    weights are the last checkpoint's, and the best evaluation may be an earlier step (its weights are gone)."""
    at_step = [e["fid"] for e in record.evaluations if e["step"] == step]
    fid = at_step[-1] if at_step and not raw else None  # the FIDs were measured with the EMA weights
    why = ("the EMA weights at this step" if fid is not None else "raw weights are never evaluated" if raw
           else f"no evaluation at step {step}")
    return {"fid": fid, "fid_of": why, "run_best_fid": record.best_fid, "run_best_step": record.best_step}


def best_weights(folder: Path, record: RunRecord, state: dict, raw: bool) -> tuple[dict | None, int]:
    """The weights of the run's best evaluation and their step: the kept file, or the last checkpoint's when that
    is the best's step (None then); a HarnessError when neither holds them."""
    last = state["trainer"]["step"]
    if raw:
        raise HarnessError("--raw exports the trained (not EMA) weights, which only the last checkpoint keeps: pass "
                           "--which last --raw.")
    kept = checkpoints.load_best(folder)
    if kept is not None and kept[1] == record.best_step:
        return kept[0], kept[1]
    if record.best_step == last:
        return None, last
    raise HarnessError(f"{folder} keeps no weights of its best evaluation (step {record.best_step}, FID "
                       f"{record.best_fid:.2f}), only the last checkpoint's (step {last}): runs made before the "
                       f"harness kept them have none. Pass --which last to export those.")


def export_model(folder: str | Path, out: str | Path, *, raw: bool = False, force: bool = False,
                 which: str = "best", arch: str | None = None) -> dict:
    """Write the run in ``folder`` to ``out`` (a new folder; ``force`` replaces one): the weights of its best
    evaluation (``which="best"``, the ones its leaderboard FID belongs to) or of its last checkpoint, built with
    ``arch`` (a name or file; default: the record's file, if it is in the architectures folder). Returns what
    ``harness_export.json`` holds."""
    folder, out = Path(folder), Path(out)
    record, state = read_run(folder)
    if out.exists() and not (force and out.is_dir()):
        raise HarnessError(f"{out} already exists. Pass another --out, or --force to replace it.")
    spec = spec_from_config(record.config, where=str(folder / RECORD_FILE))
    best, step = best_weights(folder, record, state, raw) if which == "best" else (None, state["trainer"]["step"])
    model, arch_path = trained_model(record, state, spec, raw, best, arch)
    scheduler = ddim_scheduler(spec.diffusion, spec.sampling)
    is_diffusers = hasattr(model, "save_pretrained") and hasattr(model, "register_to_config")
    meta = {"run_folder": str(folder.resolve()), "task": record.task, "task_version": record.task_version,
            "arch": record.arch, "tier": record.tier, "seed": record.seed, "status": record.status,
            "which": which, "step": step, "weights": "raw" if raw else "ema", "width_env": spec.width_env,
            "arch_sha256": record.arch_sha256, "image_size": spec.data.image_size,
            "sampling_steps": spec.sampling.steps, "eta": spec.sampling.eta,
            "layout": "diffusers DDIMPipeline" if is_diffusers else "safetensors + architecture.py",
            **exported_fid(record, step, raw), "exported_at": now()}
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        _write(staging, out.name, model, scheduler, meta, arch_path, is_diffusers)
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(staging), out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def _write(folder: Path, name: str, model, scheduler, meta: dict, arch_path: Path, is_diffusers: bool) -> None:
    """Everything into ``folder`` (the staging one), its README naming the final folder ``name``."""
    from diffusers import DDIMPipeline
    from safetensors.torch import save_file

    if is_diffusers:
        # the pipeline draws images of unet.config.sample_size: the task's size, whatever the file wrote
        model.register_to_config(sample_size=meta["image_size"])
        DDIMPipeline(unet=model, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / WEIGHTS_FILE)
        scheduler.save_pretrained(folder / "scheduler")
    shutil.copyfile(arch_path, folder / ARCH_FILE)  # provenance for both layouts; the loader of the second
    (folder / EXPORT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (folder / "README.md").write_text(readme(name, meta, is_diffusers))


def readme(name: str, meta: dict, is_diffusers: bool) -> str:
    fid = f"FID {meta['fid']:.2f} at this step" if meta["fid"] is not None else f"FID not measured ({meta['fid_of']})"
    title = (f"# {meta['arch']} / {meta['tier']} / seed {meta['seed']}: {meta['weights']} weights at step "
             f"{meta['step']} ({meta['task']} task)\n\n{fid}; the run's best: {meta['run_best_fid']} at step "
             f"{meta['run_best_step']}.\n\n")
    if is_diffusers:
        return title + textwrap.dedent(f'''\
            Exported by `python -m harness export-model`. Load and sample it with diffusers:

            ```python
            import torch
            from diffusers import DDIMPipeline

            pipe = DDIMPipeline.from_pretrained("{name}")
            generators = [torch.Generator().manual_seed(s) for s in range(8)]
            images = pipe(batch_size=8, generator=generators, num_inference_steps={meta["sampling_steps"]},
                          eta={meta["eta"]}, output_type="pt").images  # [8,3,S,S] in [0,1]
            ```
            ''')
    return title + ("Exported by `python -m harness export-model`. The architecture is not a diffusers model, "
                    "so this folder holds its weights (model.safetensors), its file (architecture.py) and the "
                    "protocol's DDIM scheduler (scheduler/). Load them:\n\n```python\n"
                    + LOADER.format(folder=name) + "```\n\nand sample as the harness does:\n\n```python\n"
                    + SAMPLER + "\nimages = sample(model, scheduler, [torch.Generator().manual_seed(s) for s in "
                    "range(8)])\n```\n")
