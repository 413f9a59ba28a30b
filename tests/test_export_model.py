"""export-model: a run's weights as a folder diffusers loads, checked against the images the run itself drew.

The run's last evaluation saved its first samples as samples.png (uint8, drawn by the harness's sampler from
the EMA weights at the last step); the exported folder, loaded the way its README says, must draw exactly those
images from the same seeds, and agree with the harness's sampler on the same weights to 1e-5 before rounding.
"""
import re

import numpy as np
import pytest
import torch
from conftest import FAST, TINY_ARCH
from PIL import Image
from safetensors.torch import load_file

from harness.cli.main import main
from harness.launch import run
from harness.protocol.diffusion import ddim_sample, sample_seeds
from harness.protocol.tasks import spec_from_config
from harness.run.records import RunRecord

UNET_ARCH = '''
"""A two-level diffusers UNet2DModel with attention, small enough to train in seconds (widths fixed)."""
from diffusers import UNet2DModel


def build_model(device):
    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 16),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       attention_head_dim=8).to(device)
'''
# 16x16 images (the UNet's file says 32: the export must say 16) and stochastic DDIM (eta 1: every step's noise)
SETTINGS = dict(FAST, **{"data.image_size": 16, "sampling.eta": 1.0})


@pytest.fixture(autouse=True)
def architectures_here(tmp_path, monkeypatch):
    """The test's architecture files (written into tmp_path) are its architectures folder: export-model builds a
    record's file only from there (tests/test_safe_files.py checks the refusal of any other)."""
    monkeypatch.setenv("HARNESS_ARCH_DIR", str(tmp_path))


def trained(arch_path, results):
    record = run("shapes", str(arch_path), "smoke", device="cpu", results_dir=results, overrides=SETTINGS,
                 progress=False, log=lambda message: None)
    assert record.status == "completed"
    folder = results / "shapes" / arch_path.stem / "smoke" / "seed42"
    grid = np.asarray(Image.open(folder / "samples.png"))  # [rows*16, 8*16, 3]: the first samples, row-major
    size = 16
    tiles = [grid[r:r + size, c:c + size].transpose(2, 0, 1) for r in range(0, grid.shape[0], size)
             for c in range(0, grid.shape[1], size)]
    drawn = torch.from_numpy(np.stack(tiles[:record.evaluations[-1]["num_samples"]]))  # uint8 [N,3,16,16]
    return record, folder, drawn


def as_uint8(images01):
    return (images01 * 255).round().to(torch.uint8)


def test_a_diffusers_model_exports_as_a_ddim_pipeline_that_draws_the_runs_images(write_arch, tmp_path, capsys):
    from diffusers import DDIMPipeline

    record, folder, drawn = trained(write_arch("unet", UNET_ARCH), tmp_path / "results")
    out = tmp_path / "exported"
    assert main(["export-model", str(folder), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "ema weights at step 6" in said and "DDIMPipeline.from_pretrained" in said
    assert {p.name for p in out.iterdir()} >= {"model_index.json", "unet", "scheduler", "harness_export.json",
                                               "architecture.py", "README.md"}
    assert list((out / "unet").glob("*.safetensors"))

    pipe = DDIMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    spec = spec_from_config(record.config, "test")
    seeds = sample_seeds(record.seed, len(drawn))
    images = pipe(batch_size=len(seeds), generator=[torch.Generator().manual_seed(s) for s in seeds],
                  num_inference_steps=spec.sampling.steps, eta=spec.sampling.eta, output_type="pt").images
    assert images.shape == (len(seeds), 3, 16, 16)
    assert torch.equal(as_uint8(images), drawn)  # the run's own images, to the bit
    ours = ddim_sample(pipe.unet, spec.diffusion, spec.sampling, seeds, torch.device("cpu"), image_size=16)
    assert (ours / 2 + 0.5).clamp(0, 1).sub(images).abs().max() < 1e-5

    # the README's snippet runs as written (from the folder's parent) and draws 8 images
    code = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
    scope = {}
    exec(code.replace('"exported"', repr(str(out))), scope)
    assert scope["images"].shape == (8, 3, 16, 16)


def test_any_other_model_exports_as_safetensors_and_its_file_and_the_readme_loads_it(write_arch, tmp_path):
    record, folder, drawn = trained(write_arch("tiny", TINY_ARCH), tmp_path / "results")
    out = tmp_path / "exported"
    assert main(["export-model", str(folder), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "architecture.py", "scheduler", "README.md",
                                               "harness_export.json"}
    # the FID beside the weights is the one measured with them, at their step; the run's best is named as such
    meta = __import__("json").loads((out / "harness_export.json").read_text())
    last = record.evaluations[-1]
    assert (meta["step"], meta["fid"], meta["fid_of"]) == (last["step"], last["fid"], "the EMA weights at this step")
    assert (meta["run_best_fid"], meta["run_best_step"]) == (record.best_fid, record.best_step)
    assert f"FID {last['fid']:.2f} at this step" in (out / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S)
    scope = {}
    for block in blocks:  # the loader, the sampler, and eight images: every line as the README has it
        exec(block.replace('"exported"', repr(str(out))), scope)
    assert scope["images"].shape == (8, 3, 16, 16)
    model, scheduler, sample = scope["model"], scope["scheduler"], scope["sample"]
    seeds = sample_seeds(record.seed, len(drawn))
    images = sample(model, scheduler, [torch.Generator().manual_seed(s) for s in seeds])
    assert torch.equal(as_uint8(images), drawn)
    spec = spec_from_config(record.config, "test")
    ours = ddim_sample(model, spec.diffusion, spec.sampling, seeds, torch.device("cpu"), image_size=16)
    assert (ours / 2 + 0.5).clamp(0, 1).sub(images).abs().max() < 1e-5

    raw = tmp_path / "raw"
    assert main(["export-model", str(folder), "--out", str(raw), "--raw", "--which", "last"]) == 0
    raw_meta = __import__("json").loads((raw / "harness_export.json").read_text())
    assert raw_meta["fid"] is None and raw_meta["fid_of"] == "raw weights are never evaluated"
    trained_weights = torch.load(folder / "checkpoint.pt", weights_only=False)["trainer"]["model"]
    saved = load_file(raw / "model.safetensors")
    assert saved.keys() == trained_weights.keys() and all(torch.equal(saved[k], trained_weights[k]) for k in saved)
    assert not all(torch.equal(saved[k], v) for k, v in load_file(out / "model.safetensors").items())  # EMA != raw


def test_export_reads_a_run_folder_without_renaming_or_moving_anything(write_arch, tmp_path):
    """A run may be live while it is exported: a checkpoint between save()'s two renames (only the pending
    .checkpoint.pt.next there) and a damaged latest one beside its previous are read where they are."""
    import os

    _, folder, _ = trained(write_arch("tiny", TINY_ARCH), tmp_path / "results")

    def listing():
        return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}

    os.replace(folder / "checkpoint.pt", folder / ".checkpoint.pt.next")
    before = listing()
    assert main(["export-model", str(folder), "--out", str(tmp_path / "pending")]) == 0
    assert listing() == before
    os.replace(folder / ".checkpoint.pt.next", folder / "checkpoint.pt")
    (folder / "checkpoint.prev.pt").write_bytes((folder / "checkpoint.pt").read_bytes())
    (folder / "checkpoint.pt").write_bytes(b"cut short")
    before = listing()
    assert main(["export-model", str(folder), "--out", str(tmp_path / "damaged")]) == 0
    assert listing() == before and not (folder / "checkpoint.pt.corrupt").exists()
    assert (load_file(tmp_path / "pending" / "model.safetensors").keys()
            == load_file(tmp_path / "damaged" / "model.safetensors").keys())


def test_the_default_export_is_the_best_evaluations_weights_and_last_is_the_last_checkpoints(write_arch, tmp_path,
                                                                                                 capsys):
    """The run keeps the EMA weights of each new best evaluation (best_ema.safetensors): export-model exports
    those by default, with their step and FID; --which last exports the last checkpoint's."""
    from harness.run import checkpoints

    arch = write_arch("tiny", TINY_ARCH)
    record = run("shapes", str(arch), "smoke", device="cpu", results_dir=tmp_path / "results", progress=False,
                 overrides=dict(SETTINGS, **{"evaluation.eval_points": [0, 2, 4]}), log=lambda message: None)
    folder = tmp_path / "results" / "shapes" / "tiny" / "smoke" / "seed42"
    kept, step, fid = checkpoints.load_best(folder)
    assert (step, fid) == (record.best_step, record.best_fid) and len(record.evaluations) == 4
    for which in ("best", "last"):
        assert main(["export-model", str(folder), "--out", str(tmp_path / which), "--which", which]) == 0
    best, last = (__import__("json").loads((tmp_path / which / "harness_export.json").read_text())
                  for which in ("best", "last"))
    assert (best["which"], best["step"], best["fid"]) == ("best", record.best_step, record.best_fid)
    assert (last["step"], last["fid"]) == (6, record.evaluations[-1]["fid"])
    exported = load_file(tmp_path / "best" / "model.safetensors")
    assert all(torch.equal(exported[k], kept[k]) for k in exported)
    # a run that kept no best weights (made before runs did): the last checkpoint's when they are the best's, else
    # a refusal that says how to export the last ones
    (folder / checkpoints.BEST_FILE).unlink()
    if record.best_step == 6:
        assert main(["export-model", str(folder), "--out", str(tmp_path / "again")]) == 0
    else:
        assert main(["export-model", str(folder), "--out", str(tmp_path / "again")]) == 2
        assert "keeps no weights of its best evaluation" in " ".join(capsys.readouterr().err.split())
    assert main(["export-model", str(folder), "--out", str(tmp_path / "raw"), "--raw"]) == 2
    assert "pass --which last --raw" in " ".join(capsys.readouterr().err.split())


def test_bad_input_is_one_clear_message(tiny_arch, tmp_path, capsys):
    def error(*args):
        assert main(["export-model", *map(str, args)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "Traceback" not in err and err.startswith("error: ")
        return err

    assert "holds no record.json: it is not a run folder" in error(tmp_path, "--out", tmp_path / "x")
    results = tmp_path / "results"
    record = run("shapes", str(tiny_arch), "smoke", device="cpu", results_dir=results, overrides=FAST,
                 progress=False, log=lambda message: None)
    folder = results / "shapes" / "tiny" / "smoke" / "seed42"
    (tmp_path / "taken").mkdir()
    assert "already exists. Pass another --out, or --force" in error(folder, "--out", tmp_path / "taken")
    assert main(["export-model", str(folder), "--out", str(tmp_path / "taken"), "--force"]) == 0
    tiny_arch.write_text(tiny_arch.read_text() + "\n# edited after the run\n")
    assert "has changed since this run was trained" in error(folder, "--out", tmp_path / "y")
    assert RunRecord.load(folder / "record.json").status == record.status == "completed"
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (folder / name).unlink(missing_ok=True)
    assert "has a record but no checkpoint" in error(folder, "--out", tmp_path / "z")
    assert not any((tmp_path / name).exists() for name in ("x", "y", "z"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


@pytest.fixture(autouse=True)
def _quiet_diffusers():
    from diffusers.utils import logging

    logging.set_verbosity_error()
