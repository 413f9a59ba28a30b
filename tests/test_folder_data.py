"""A task over a folder of image files (tasks/templates/folder.yaml): 32 and 64 px through training, DDIM, FID
and the MAC count; the decoded images and their cache; the reference keyed by the folder; each bad-data case."""
import json

import numpy as np
import pytest
from conftest import FAST, TINY_ARCH
from PIL import Image
from test_export_model import UNET_ARCH

from harness.cli.main import main
from harness.launch import run
from harness.measure.flops import count_macs
from harness.protocol import registry
from harness.protocol.data import generate_shapes, load_images
from harness.protocol.folder_data import folder_identity
from harness.protocol.reference import reference_key
from harness.protocol.tasks import REPO_ROOT, resolve_task

TEMPLATE = str(REPO_ROOT / "tasks" / "templates" / "folder.yaml")


def picture_folder(folder, count=40, size=32, mode="RGB", suffix=".png", width=None):
    """``count`` shapes images as files: PNGs of ``size`` px (``width`` x ``size`` where given) in two
    sub-folders (the listing is recursive)."""
    images = generate_shapes(count, seed=3, size=32).transpose(0, 2, 3, 1)  # uint8 [N,32,32,3]
    for i, array in enumerate(images):
        path = folder / ("a" if i % 2 else "b") / f"{i:03d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).resize((width or size, size), Image.Resampling.BICUBIC).convert(mode).save(path)
    return folder


def settings(folder, size=32, **more):
    return dict(FAST, **{"data.path": str(folder), "data.image_size": size, "evaluation.reference_images": 12},
                **more)


def test_the_template_reads_a_folder_into_images_and_caches_them(tmp_path, isolated_cache):
    folder = picture_folder(tmp_path / "pictures", count=20, size=48)
    (folder / ".DS_Store").write_bytes(b"\0\1 not an image")  # hidden: skipped
    spec = resolve_task(TEMPLATE, "smoke", {"data.path": str(folder), "data.image_size": 32})
    assert spec.data.dataset == "folder" and spec.data.fit == "center_crop" and spec.data.path == str(folder)
    images = load_images(spec.data)
    assert images.shape == (20, 3, 32, 32) and images.dtype == np.uint8
    first = sorted(folder.rglob("*.png"))[0]  # sorted order: a/001.png first
    expected = np.asarray(Image.open(first).convert("RGB").resize((32, 32), Image.Resampling.BICUBIC))
    assert np.array_equal(images[0], expected.transpose(2, 0, 1))  # a square image: the crop is the whole of it
    (cached,) = (isolated_cache / "folders").glob("pictures-32px-*.npy")
    assert np.array_equal(np.load(cached), images)

    key = reference_key(spec.data, spec.evaluation, "weights")
    assert key["data"]["listing_sha256"] == folder_identity(spec.data)["listing_sha256"]
    picture_folder(folder / "more", count=1, size=48)  # a changed folder: a new listing, a new reference, new images
    assert reference_key(spec.data, spec.evaluation, "weights") != key
    assert len(load_images(spec.data)) == 21

    wide = picture_folder(tmp_path / "wide", count=2, size=32, width=48)  # 48x32: the crop is the middle 32 columns
    files = sorted(wide.rglob("*.png"))
    for fit, expected in (("center_crop", np.asarray(Image.open(files[0]))[:, 8:40]),
                          ("stretch", np.asarray(Image.open(files[0]).resize((32, 32), Image.Resampling.BICUBIC)))):
        got = load_images(resolve_task(TEMPLATE, "smoke", {"data.path": str(wide), "data.fit": fit,
                                                            "data.image_size": 32}).data)
        assert np.array_equal(got[0], expected.transpose(2, 0, 1)), fit
    gray = picture_folder(tmp_path / "gray", count=4, mode="L")
    one = load_images(resolve_task(TEMPLATE, "smoke", {"data.path": str(gray), "data.image_size": 32}).data)
    assert one.shape == (4, 3, 32, 32) and np.array_equal(one[:, 0], one[:, 2])  # grayscale: replicated to RGB


def test_a_32px_folder_task_runs_end_to_end(tiny_arch, tmp_path):
    folder = picture_folder(tmp_path / "pictures")
    record = run(TEMPLATE, str(tiny_arch), "smoke", device="cpu", results_dir=tmp_path / "r", progress=False,
                 overrides=settings(folder), log=lambda message: None)
    assert record.status == "completed" and record.task == "folder"
    assert record.config["data"]["path"] == str(folder) and record.reference["source"].startswith("computed from 12")
    assert np.isfinite(record.best_fid)


def test_64px_images_go_through_training_ddim_fid_and_the_mac_count(write_arch, tmp_path):
    arch = write_arch("unet", UNET_ARCH)  # the file says sample_size=32; a UNet runs at any size
    folder = picture_folder(tmp_path / "pictures", size=64, suffix=".jpg")
    record = run(TEMPLATE, str(arch), "smoke", device="cpu", results_dir=tmp_path / "r", progress=False,
                 overrides=settings(folder, size=64), log=lambda message: None)
    assert record.status == "completed" and np.isfinite(record.best_fid)
    run_folder = tmp_path / "r" / "folder" / "unet" / "smoke" / "seed42"
    assert Image.open(run_folder / "samples.png").size == (8 * 64, 64)  # 6 samples of 64x64 in one row
    model = registry.build(registry.find_architecture(str(arch)), {}, "cpu")
    assert record.profile["gmacs"] == round(count_macs(model, None, 64).gmacs, 4)
    assert record.profile["gmacs"] > 3.5 * count_macs(model, None, 32).gmacs  # 4x the pixels


def run_error(capsys, folder, *, arch, size=32, **more):
    args = ["run", "--task", TEMPLATE, "--arch", str(arch), "--tier", "smoke", "--device", "cpu", "--no-progress",
            "--results-dir", str(folder.parent / "results")]
    for key, value in settings(folder, size, **more).items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and err.startswith("error: ")
    return err


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist. Point data.path"),
    ("empty", "is empty: it holds no image files"),
    ("not images", "2 of the 12 files in"),
    ("too few", "The FID reference asks for 12 images (evaluation.reference_images) but the folder dataset has "
                "only 5"),
    ("mixed channels", "have mixed channel counts: grayscale (1 channels), e.g. b/000.png; RGB (3 channels)"),
    ("exact size", "data.fit is 'exact' but 10 images in"),
    ("size 48", "data.image_size must be 32 or 64 for the folder dataset, not 48"),
])
def test_bad_data_is_one_clear_message(case, message, tmp_path, capsys):
    arch = tmp_path / "tiny.py"
    arch.write_text(TINY_ARCH)
    folder = tmp_path / "pictures"
    more = {}
    if case == "empty":
        folder.mkdir()
    elif case == "not images":
        picture_folder(folder, count=10)
        (folder / "notes.txt").write_text("labels are elsewhere")
        (folder / "a" / "cut.png").write_bytes((folder / "a" / "001.png").read_bytes()[:40])  # a truncated PNG
    elif case == "too few":
        picture_folder(folder, count=5)
    elif case == "mixed channels":
        picture_folder(folder, count=10)
        Image.open(folder / "b" / "000.png").convert("L").save(folder / "b" / "000.png")
    elif case == "exact size":
        picture_folder(folder, count=10, size=40)
        more = {"data.fit": "exact"}
    elif case == "size 48":
        picture_folder(folder, count=10)
    err = run_error(capsys, folder, arch=arch, size=48 if case == "size 48" else 32, **more)
    assert message in err, err
    if case == "not images":
        assert "a/cut.png, notes.txt" in err


def test_runs_over_different_contents_of_one_folder_are_never_averaged():
    """The report's conditions hold the folder's identity: its reference cache is keyed by the listing's hash
    (a changed folder gets a new one, test above), so two runs over one data.path with other files differ."""
    from harness.report.tables import conditions_label, run_conditions

    def record(cache):
        return {"config": {"data": {"dataset": "folder", "path": "/photos"}}, "precision": "fp32",
                "device": {"type": "cpu"}, "reference": {"source": "computed from 12 training images",
                                                         "cache_file": cache}}

    before, after = (run_conditions(record(f"/cache/fid_refs/folder-{h}.npz")) for h in ("1a2b", "3c4d"))
    assert before != after and "images: folder contents 1a2b" in conditions_label(before)
    shapes = run_conditions({**record("/cache/fid_refs/shapes-1a2b.npz"), "config": {"data": {"dataset": "shapes"}}})
    assert shapes["images"] is None and "images:" not in conditions_label(shapes)
