"""A task over a folder of image files (tasks/templates/folder.yaml): 32 and 64 px through training, DDIM, FID
and the MAC count; the decoded images and their cache; the reference keyed by the folder; each bad-data case;
16-bit files, EXIF orientation, the seeded subsets, the cache write's memory and the host-held batches."""
import json
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from conftest import FAST, TINY_ARCH
from PIL import Image
from test_export_model import UNET_ARCH

from harness.cli.main import main
from harness.errors import HarnessError
from harness.flops import count_macs
from harness.launch import run
from harness.protocol import registry
from harness.protocol.data import ImageBatches, generate_shapes, keep_on_host, load_images
from harness.protocol.folder_data import _save_array, folder_identity, load_folder
from harness.protocol.reference import _cache_path, _load, _save, reference_key, reference_subset
from harness.protocol.spec import DataSpec
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


@pytest.mark.slow  # end to end
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
    ("32-bit", "1 images in {folder} have 32-bit integer samples (PIL mode I), which cannot be brought to 8 bits "
               "without knowing their range: deep.tif."),
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
    elif case == "32-bit":  # a 32-bit integer TIFF: no fixed range, so no faithful 8 bits
        picture_folder(folder, count=12)
        Image.fromarray(np.full((32, 32), 70000, np.int32), mode="I").save(folder / "deep.tif")
    err = run_error(capsys, folder, arch=arch, size=48 if case == "size 48" else 32, **more)
    assert message.format(folder=folder) in err, err
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


def png16(path, samples):
    """``samples`` (uint16 [H,W,C], C 1 to 4) as a 16-bit PNG, written by hand: PIL writes no 16-bit colour PNG."""
    height, width, channels = samples.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)  # filter 0, big-endian samples

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def folder_data(folder, **more):
    return DataSpec(**{"dataset": "folder", "path": str(folder), "image_size": 32, "fit": "exact", **more})


def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path):
    ramp = (np.arange(32 * 32) * 65535 // (32 * 32 - 1)).astype(np.uint16).reshape(32, 32)  # [32,32], 0..65535
    high_byte = (ramp >> 8).astype(np.uint8)
    gray = tmp_path / "gray"
    gray.mkdir()
    Image.fromarray(ramp).save(gray / "ramp.png")  # PIL writes a 16-bit grayscale PNG (mode I;16)
    assert Image.open(gray / "ramp.png").mode == "I;16"
    Image.frombytes("I;16B", (32, 32), ramp.astype(">u2").tobytes()).save(gray / "ramp_big_endian.tif")
    got = load_folder(folder_data(gray), tmp_path / "cache")  # uint8 [2,3,32,32]
    assert (got == 255).mean() < 0.01  # PIL's convert("RGB") made 99.6% of it 255
    for image in got:
        assert np.array_equal(image[0], high_byte) and np.array_equal(image[0], image[2])
        assert np.abs(image[0] - ramp / 257).max() <= 1  # within 1 of the nearest 8-bit value
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    png16(rgb / "ramp.png", np.stack([ramp, ramp[::-1], ramp.T], axis=-1))  # PIL reads 16-bit RGB PNGs itself
    (colour,) = load_folder(folder_data(rgb), tmp_path / "cache")
    assert np.array_equal(colour[0], got[0, 0])  # the same bytes as the grayscale file's: value >> 8 both
    assert np.array_equal(colour[1], high_byte[::-1]) and np.array_equal(colour[2], high_byte.T)


def test_exif_orientation_turns_a_photo_as_a_viewer_shows_it(tmp_path):
    stored = np.zeros((32, 48, 3), np.uint8)  # as the sensor saw it: 48 wide, red above, blue below
    stored[:16, :, 0] = 255
    stored[16:, :, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: turn 90 degrees clockwise to view
    (tmp_path / "photos").mkdir()
    Image.fromarray(stored).save(tmp_path / "photos" / "phone.jpg", exif=exif.tobytes(), quality=95)
    pixels = np.asarray(Image.open(tmp_path / "photos" / "phone.jpg").convert("RGB"))  # [32,48,3], not turned
    turned = np.rot90(pixels, k=-1)  # [48,32,3], clockwise: red on the right, blue on the left
    with pytest.raises(HarnessError, match="are not 32x32: phone.jpg"):  # "exact" sees the turned 32x48
        load_folder(folder_data(tmp_path / "photos"), tmp_path / "cache")
    got = load_folder(folder_data(tmp_path / "photos", fit="center_crop"), tmp_path / "cache")[0]  # [3,32,32]
    assert np.array_equal(got.transpose(1, 2, 0), turned[8:40])  # the middle 32 rows of the 48, as a viewer has it
    assert got[0, :, 20:].mean() > 200 and got[2, :, :12].mean() > 200 and got[0, :, :12].mean() < 50


def test_subsets_are_seeded_uniform_samples_across_class_folders(tmp_path):
    for index in range(30):  # 3 class folders of 10: sorted, the first 10 files are all class 0
        folder = tmp_path / "classes" / f"class{index // 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (index * 8, index // 10 * 100, 0)).save(folder / f"{index:02d}.png")

    def picked(seed, num_images=9):
        images = load_folder(folder_data(tmp_path / "classes", num_images=num_images, seed=seed), tmp_path / "c")
        return images[:, 0, 0, 0] // 8  # each image's index, from its red

    first, again, other = picked(0), picked(0), picked(1)
    assert len(first) == 9 and len(set(first // 10)) == 3  # the first 9 files would all be class 0
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.array_equal(first, np.sort(first))  # kept in listing order
    assert np.array_equal(picked(0, num_images=None), np.arange(30))  # no subset: every file, in order

    task = resolve_task(TEMPLATE, "smoke", {"data.path": str(tmp_path / "classes"), "data.image_size": 32,
                                            "evaluation.reference_images": 9})
    everything = load_folder(folder_data(tmp_path / "classes"), tmp_path / "c")  # uint8 [30,3,32,32]
    reference, how = reference_subset(task.data, task.evaluation, everything)
    chosen = reference[:, 0, 0, 0] // 8
    assert len(set(chosen // 10)) == 3 and "uniform random sample of the 30, seeded by data.seed=0" in how
    assert np.array_equal(chosen, reference_subset(task.data, task.evaluation, everything)[0][:, 0, 0, 0] // 8)
    reseeded = resolve_task(TEMPLATE, "smoke", {"data.path": str(tmp_path / "classes"), "data.image_size": 32,
                                                "evaluation.reference_images": 9, "data.seed": 5})
    assert not np.array_equal(chosen, reference_subset(reseeded.data, task.evaluation, everything)[0][:, 0, 0, 0] // 8)
    key = reference_key(task.data, task.evaluation, "w")
    assert key["data"]["reference_subset"].startswith("uniform random sample") and key["data"]["seed"] == 0
    assert reference_key(reseeded.data, reseeded.evaluation, "w") != key  # another seed, another cache


def test_the_rule_reaches_the_kid_features_of_a_folder_only_and_leaves_the_builtin_caches_named(tmp_path):
    """A folder's KID features are a seeded sample too; shapes' and CIFAR-10's stay strided and their cache
    files keep the names they had before the rule (computed with the code before it, 2026-12-07)."""
    features = np.arange(10_500, dtype=np.float32)[:, None]  # [n,1]: each row says which it is
    for dataset, key in (("folder", {"data": {"dataset": "folder", "seed": 0}}),
                         ("shapes", {"data": {"dataset": "shapes"}})):
        _save(tmp_path / f"{dataset}.npz", key, np.zeros(1), np.zeros((1, 1)), features, "test", 10_500)
        kept = _load(tmp_path / f"{dataset}.npz").kid_features[:, 0].astype(int)  # [10000]
        strided = np.linspace(0, 10_499, 10_000).astype(int)
        assert len(kept) == 10_000 and (np.array_equal(kept, strided) == (dataset == "shapes")), dataset
    for task, tier, name in (("shapes", "smoke", "shapes-1aa82b9456e31f88.npz"),
                             ("cifar10", "small", "cifar10-f397a164ad842930.npz")):
        spec = resolve_task(task, tier)
        assert _cache_path(reference_key(spec.data, spec.evaluation, "w")).name == name


def test_the_cache_write_holds_no_second_copy_of_the_images(tmp_path):
    """np.save into a real file writes from the array itself: the traced peak stays far below the array's size
    (the BytesIO buffer of before held 1x more, its copy another). A decoded folder holds 1x (and a little)."""
    images = np.random.default_rng(0).integers(0, 256, (400, 3, 64, 64), dtype=np.uint8)  # 4.9 MB
    tracemalloc.start()
    _save_array(tmp_path / "images.npy", images)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 0.1 * images.nbytes and np.array_equal(np.load(tmp_path / "images.npy"), images)
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image.transpose(1, 2, 0)).resize((16, 16)).save(folder / f"{i:03d}.png")
    tracemalloc.start()
    loaded = load_folder(folder_data(folder, image_size=64, fit="stretch"), tmp_path / "cache")  # [400,3,64,64]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert loaded.shape == images.shape and peak < 1.5 * loaded.nbytes  # 2.3x before


def test_data_above_a_quarter_of_gpu_memory_stays_on_the_host_and_gives_the_same_batches():
    assert keep_on_host(26, 100) and not keep_on_host(25, 100) and not keep_on_host(10 ** 12, None)
    images = torch.from_numpy(generate_shapes(40, seed=0))  # uint8 [40,3,32,32]
    cpu = torch.device("cpu")
    assert not ImageBatches(images, 16, cpu).on_host  # a CPU run: the host is the device
    resident, held = ImageBatches(images, 16, cpu), ImageBatches(images, 16, cpu, on_host=True)
    assert held.placement.startswith("in host memory (0.00 GB, as asked)") and resident.placement == "on the device"
    gens = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(3):  # 40 // 16 = 2 batches an epoch: crosses into the second epoch
        assert torch.equal(resident.next(gens[0]), held.next(gens[1]))
    state, gen_state = held.state_dict(), gens[1].get_state()
    expected = [held.next(gens[1]) for _ in range(3)]
    resumed = ImageBatches(images, 16, cpu, on_host=True)
    resumed.load_state_dict(state)
    gens[1].set_state(gen_state)
    assert all(torch.equal(a, resumed.next(gens[1])) for a in expected)
